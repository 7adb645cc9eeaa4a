"""Export a trained shared model to ONNX for ONNX Runtime, with a parity check against PyTorch, and
register it in the model registry (a new immutable directory, never written again).

    python export.py                         # the latest models/shared-* -> registry/models/<version>
    python export.py model_dir=models/shared-20230601-120000 promote=true
    python export.py out_dir=exports/v1               # a standalone directory instead (refused if it exists)

Fails loudly (and writes nothing) if onnx.checker rejects the graph or if ONNX and PyTorch
scores differ by more than parity.atol, or their top-1 differs, on real held-out tickets. Exporting
the same model again registers nothing new. Serving a model is a separate step (``promote``, see
docs/lifecycle.md), except for the first model of an empty registry (``promote=auto``).
"""

import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tagger.schema import register

warnings.filterwarnings("ignore", category=DeprecationWarning)

register()  # the schema of conf/, before Hydra composes it


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from tagger.manifest import ArtifactError
    from tagger.paths import resolve, shown
    from tagger.serving.admin import who
    from tagger.serving.registry import MODELS, Registry

    if cfg.model_dir:
        model_dir = resolve(cfg.model_dir)
    else:
        candidates = sorted(resolve(cfg.models_dir).glob("shared-*"))
        if not candidates:
            sys.exit(f"no trained model under {resolve(cfg.models_dir)}: run `python train.py` first")
        model_dir = candidates[-1]
    if cfg.out_dir:
        out_dir = resolve(cfg.out_dir)
        if out_dir.exists():
            sys.exit(f"export refused: {out_dir} exists (an export directory is never rewritten)")
        _export(cfg, model_dir, out_dir)
        print(
            f"written to {shown(out_dir)} (not registered: "
            "`python -m tagger.serving.models register path=...` adds it to a registry)"
        )
        return
    registry = Registry(resolve(cfg.registry_dir))
    # written beside the registered models, then moved in whole; the scratch never outlives the run
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=registry.root / MODELS))
    by = str(cfg.by or who())
    try:
        _export(cfg, model_dir, scratch / "onnx")
        version, new = registry.register(scratch / "onnx", by=by, move=True)
    except ArtifactError as err:
        sys.exit(f"export refused: {err}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    where = shown(registry.model_dir(version))
    print(
        f"registered {version} at {where}"
        if new
        else f"{version} was already registered ({where}): nothing new"
    )
    served = registry.served()
    promote = str(cfg.promote).lower()
    if promote == "true" or (promote == "auto" and served is None):
        from tagger.serving.models import print_report

        print_report(registry.promote(version, by=by))
    elif served and served[1] != version:
        print(
            f"served: {served[1]}; to serve this one: "
            f"python -m tagger.serving.models promote version={version}"
        )


def _export(cfg: DictConfig, model_dir: Path, out_dir: Path) -> None:
    """Export ``model_dir`` to ``out_dir`` with its parity check, and say how it went (exits on failure)."""
    from tagger.serving.onnx_export import ExportError, export_model

    try:
        serving = export_model(
            model_dir,
            out_dir,
            cfg.opset,
            cfg.parity.tickets,
            cfg.parity.atol,
            cfg.name_encoder_cache,
            member=cfg.get("member"),
        )
    except ExportError as err:
        sys.exit(f"export failed: {err}")
    p = serving["parity"]
    print(f"exported {model_dir.name}: model version {serving['model_version']}")
    print(
        f"parity on {p['tickets']:,} held-out tickets: "
        f"max |logit diff| {p['max_abs_diff']:.2e}, top-1 disagreements {p['top1_disagreements']}; "
        f"label tower {p['label_tower_max_abs_diff']:.2e}, name encoder vs sentence-transformers "
        f"{p['name_encoder_max_abs_diff']:.2e}"
    )


if __name__ == "__main__":
    main()
