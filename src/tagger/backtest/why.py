"""How far the sentences an answer names as its reason ("why") decide it, on the backtest's last fold.

    python -m tagger.backtest.why [key=value ...]      # keys of conf/backtest.yaml

The shared model (one seed) is fit, chosen and refit on the last fold's training window as in the
backtest, exported to ONNX (the served scoring path, whose ``sentence_weights`` output is what
``?why=true`` reports) and scores the fold's test tickets with two sentences or more. Each ticket is
scored again from one sentence alone: the one with the largest weight (the top of its "why"), and
for comparison its first sentence and one drawn at random. Reported: how often that one sentence
gives the same top label as the whole ticket, and how often the true one. Writes
``why.output_dir``: report.md and metrics.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from tagger.data.tickets import Tickets


def one_sentence(tickets: Tickets, pick: np.ndarray) -> Tickets:
    """Each ticket reduced to its sentence at position ``pick[i]``."""
    rows = tickets.offsets[:-1] + pick
    vectors = [np.asarray(tickets.embeddings[r : r + 1]) for r in rows]
    return Tickets.from_vectors(tickets.meta["account_id"].astype(str).tolist(), vectors)


def run_why(cfg: DictConfig) -> dict:
    """The measurement described in the module docstring; returns metrics.json's content."""
    from tagger.backtest.folds import configured_folds
    from tagger.backtest.run import fold_fit, fold_split, model_configs, single_process
    from tagger.data.dataset import load_dataset
    from tagger.paths import resolve, shown
    from tagger.serving.onnx_export import export_estimator
    from tagger.serving.onnx_predictor import OnnxPredictor

    started = time.perf_counter()
    single_process(cfg)
    out_dir = resolve(cfg.backtest.why.output_dir)
    cfg = OmegaConf.merge(cfg, {"output_dir": str(out_dir)})  # the fit's logs under its own folder
    tickets = load_dataset(cfg.data)
    fold = configured_folds(tickets.meta["unix_timestamp"].to_numpy(), cfg)[-1]
    data = fold_split(cfg, tickets, fold, last=True)
    configs = model_configs(OmegaConf.merge(cfg, {"backtest": {"models": ["shared"]}}))
    fit = fold_fit(cfg, "shared", configs["shared"], int(cfg.seed), data)
    test = data.test
    several = test.subset(np.flatnonzero(np.diff(test.offsets) >= 2))
    with tempfile.TemporaryDirectory() as tmp:
        checked = data.val.subset(data.val.meta["has_embeddings"].to_numpy())
        export_estimator(fit.served, Path(tmp) / "export", checked, {"model_version": "why"})
        predictor = OnnxPredictor(Path(tmp) / "export")
        whole = predictor.predict(several)
        lengths = np.diff(several.offsets)
        weights = whole.sentence_weights[:, : lengths.max()]
        rng = np.random.default_rng(int(cfg.seed))
        picks = {
            "top_weight": np.argmax(np.where(np.arange(weights.shape[1]) < lengths[:, None], weights, -1), 1),
            "first": np.zeros(len(several), np.int64),
            "random": rng.integers(0, lengths),
        }
        full_label = whole.labels(0)
        truth = several.meta["label"].astype(str).to_numpy()
        alone = {
            name: predictor.predict(one_sentence(several, pick)).labels(0) for name, pick in picks.items()
        }
    result = {
        "fold": fold.describe(),
        "tickets": len(several),
        "mean_sentences": float(lengths.mean()),
        "whole_ticket_accuracy": float((full_label == truth).mean()),
        "same_label_as_whole": {name: float((labels == full_label).mean()) for name, labels in alone.items()},
        "accuracy_alone": {name: float((labels == truth).mean()) for name, labels in alone.items()},
        "top_weight_mean": float(np.take_along_axis(weights, picks["top_weight"][:, None], 1).mean()),
        "seconds": time.perf_counter() - started,
        "data": {"file": shown(resolve(cfg.data.path)), "sha256": tickets.digest},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    (out_dir / "report.md").write_text(_markdown(result))
    return result


def _markdown(r: dict) -> str:
    same, acc = r["same_label_as_whole"], r["accuracy_alone"]
    names = {
        "top_weight": 'its top "why" sentence',
        "first": "its first sentence",
        "random": "a random sentence",
    }
    return "\n".join(
        [
            "# Why: does the top sentence decide the answer?",
            "",
            "Command: `python -m tagger.backtest.why` (src/tagger/backtest/why.py). The shared model "
            f"(one seed) of the backtest's last fold (test window {r['fold']['test_start']} to "
            f"{r['fold']['test_end']}), exported to ONNX; its {r['tickets']} test tickets with two "
            f"sentences or more ({r['mean_sentences']:.1f} on average), each scored whole and from one "
            f"sentence alone. Whole tickets: accuracy {r['whole_ticket_accuracy']:.3f}. The top sentence "
            f"holds {r['top_weight_mean']:.2f} of a ticket's attention on average.",
            "",
            "| one sentence alone | same label as the whole ticket | accuracy |",
            "|---|---|---|",
            *(f"| {names[k]} | {same[k]:.3f} | {acc[k]:.3f} |" for k in ("top_weight", "first", "random")),
            "",
            f"Took {r['seconds'] / 60:.1f} min.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``key=value`` overrides of conf/backtest.yaml."""
    from tagger.paths import command_config

    cfg = command_config("backtest", sys.argv[1:] if argv is None else argv, __doc__)
    result = run_why(cfg)
    print(json.dumps({k: result[k] for k in ("tickets", "same_label_as_whole", "accuracy_alone")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
