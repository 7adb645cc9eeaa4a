"""Export a trained shared model to ONNX for ONNX Runtime, with a parity check against PyTorch.

    python export.py                                  # the latest models/shared-* -> <it>/onnx
    python export.py model_dir=models/shared-20230601-120000 out_dir=exports/v1

Fails loudly (and writes nothing) if onnx.checker rejects the graph or if ONNX and PyTorch
scores differ by more than parity.atol, or their top-1 differs, on real held-out tickets.
"""

import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

warnings.filterwarnings("ignore", category=DeprecationWarning)


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from tagger.paths import resolve
    from tagger.serving.onnx_export import ExportError, export_model

    if cfg.model_dir:
        model_dir = resolve(cfg.model_dir)
    else:
        candidates = sorted(resolve(cfg.models_dir).glob("shared-*"))
        if not candidates:
            sys.exit(f"no trained model under {resolve(cfg.models_dir)}: run `python train.py` first")
        model_dir = candidates[-1]
    out_dir = resolve(cfg.out_dir) if cfg.out_dir else model_dir / "onnx"
    try:
        serving = export_model(
            model_dir, out_dir, cfg.opset, cfg.parity.tickets, cfg.parity.atol, cfg.name_encoder_cache
        )
    except ExportError as err:
        sys.exit(f"export failed: {err}")
    p = serving["parity"]
    print(f"exported {model_dir.name} -> {out_dir}")
    print(
        f"model version {serving['model_version']}; parity on {p['tickets']:,} held-out tickets: "
        f"max |logit diff| {p['max_abs_diff']:.2e}, top-1 disagreements {p['top1_disagreements']}; "
        f"label tower {p['label_tower_max_abs_diff']:.2e}, name encoder vs sentence-transformers "
        f"{p['name_encoder_max_abs_diff']:.2e}"
    )
    print(f"files: {', '.join(sorted(f.name for f in Path(out_dir).iterdir()))}")


if __name__ == "__main__":
    main()
