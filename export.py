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

import sys
import tempfile
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

warnings.filterwarnings("ignore", category=DeprecationWarning)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from tagger.manifest import ArtifactError
    from tagger.paths import resolve, shown
    from tagger.serving.admin import who
    from tagger.serving.onnx_export import ExportError, export_model
    from tagger.serving.registry import MODELS, Registry

    if cfg.model_dir:
        model_dir = resolve(cfg.model_dir)
    else:
        candidates = sorted(resolve(cfg.models_dir).glob("shared-*"))
        if not candidates:
            sys.exit(f"no trained model under {resolve(cfg.models_dir)}: run `python train.py` first")
        model_dir = candidates[-1]
    registry = None if cfg.out_dir else Registry(resolve(cfg.registry_dir))
    if registry is None:
        out_dir = resolve(cfg.out_dir)
        if out_dir.exists():
            sys.exit(f"export refused: {out_dir} exists (an export directory is never rewritten)")
    else:  # written beside the registered models, then moved in whole
        out_dir = Path(tempfile.mkdtemp(prefix=".export-", dir=registry.root / MODELS)) / "onnx"
    try:
        serving = export_model(
            model_dir, out_dir, cfg.opset, cfg.parity.tickets, cfg.parity.atol, cfg.name_encoder_cache
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
    if registry is None:
        print(
            f"written to {shown(out_dir)} (not registered: "
            "`python -m tagger.serving.models register path=...` adds it to a registry)"
        )
        return
    by = str(cfg.by or who())
    try:
        version, new = registry.register(out_dir, by=by, move=True)
    except ArtifactError as err:
        sys.exit(f"export refused: {err}")
    finally:
        import shutil

        shutil.rmtree(out_dir.parent, ignore_errors=True)
    where = shown(registry.model_dir(version))
    print(
        f"registered {version} at {where}"
        if new
        else f"{version} was already registered ({where}): nothing new"
    )
    promote = str(cfg.promote).lower()
    if promote == "true" or (promote == "auto" and registry.served() is None):
        from tagger.serving.models import print_report

        print_report(registry.promote(version, by=by))
    elif registry.served() and registry.served()[1] != version:
        print(
            f"served: {registry.served()[1]}; to serve this one: "
            f"python -m tagger.serving.models promote version={version}"
        )


if __name__ == "__main__":
    main()
