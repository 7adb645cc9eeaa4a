"""``python -m tagger.backtest.audit``: verbatim text overlap of every split the project evaluates on.

    python -m tagger.backtest.audit                      # the built-in data, the backtest's folds
    python -m tagger.backtest.audit data.path=/x.parquet backtest.test_days=7

The splits: train.py's training vs validation and development vs final holdout, and each backtest
fold's training window vs test window and inner training vs validation (the same folds as
``python backtest.py`` with the same overrides). Writes results/data/audit.md and audit.json.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from tagger.backtest.folds import Fold, configured_folds
from tagger.backtest.run import fold_split
from tagger.data.audit import boilerplate_ids, cross_merchant_reuse, encoder_classes, overlap
from tagger.data.splits import Split, holdout_split
from tagger.data.tickets import Tickets
from tagger.paths import resolve, shown

COLUMNS = {
    "tickets_with_a_sentence_seen_in_training": "a sentence seen in training",
    "tickets_with_a_sentence_seen_at_the_same_merchant": "... at the same merchant",
    "tickets_equal_to_a_training_ticket_of_the_merchant": "same sentences as a training ticket",
    "sentence_occurrences_seen_in_training": "sentences seen in training",
}


def splits(tickets: Tickets, cfg: DictConfig, folds: list[Fold]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (training mask, test mask)}`` of every split train.py and the backtest use, from
    the splits they build themselves (:class:`~tagger.data.splits.Split`)."""
    ts = tickets.meta["unix_timestamp"].to_numpy()
    align = bool(cfg.data.align_days)
    development, holdout = holdout_split(tickets, cfg.data.holdout_days, align)
    split = Split.of_window(development, cfg.data.val_days, align, refit=True)
    start = holdout["holdout_start"]
    dev = ts < (pd.Timestamp(start).timestamp() if start else np.inf)
    out = {
        "train.py: training vs validation": (ts < split.val_start, (ts >= split.val_start) & dev),
        "train.py: development vs final holdout": (dev, ~dev),
    }
    for fold in folds:
        last = fold is folds[-1]
        val_start = fold_split(cfg, tickets, fold, last).val_start
        train, test = fold.masks(ts, last=last)
        out[f"fold {fold.index}: training window vs test"] = (train, test)
        inner = (train & (ts < val_start), train & (ts >= val_start))
        out[f"fold {fold.index}: inner training vs validation"] = inner
    return out


def audit(tickets: Tickets, cfg: DictConfig, folds: list[Fold]) -> dict:
    """The overlap of every split, and how much text merchants share."""
    boilerplate, source = boilerplate_ids(tickets, resolve(cfg.data.path))
    classes = encoder_classes(tickets)
    split_masks = splits(tickets, cfg, folds)
    return {
        "boilerplate_from": source,
        "cross_merchant_reuse": cross_merchant_reuse(tickets, boilerplate),
        "sentences": len(tickets.sentence_vocab),
        "encoder_distinct_sentences": len(np.unique(classes)),
        "splits": {
            name: overlap(tickets, train, test, boilerplate) for name, (train, test) in split_masks.items()
        },
        "splits_encoder": {
            name: overlap(tickets, train, test, boilerplate, classes=classes)
            for name, (train, test) in split_masks.items()
        },
    }


def _table(splits: dict) -> str:
    frame = pd.DataFrame(splits).T[["test_tickets_with_text", *COLUMNS]].rename(columns=COLUMNS)
    frame = frame.rename(columns={"test_tickets_with_text": "test tickets with text"})
    for column in COLUMNS.values():
        frame[column] = frame[column].map(lambda v: f"{v:.1%}")
    frame["test tickets with text"] = frame["test tickets with text"].map(lambda v: f"{int(v):,}")
    return frame.to_markdown()


def markdown(result: dict) -> str:
    """The audit as two tables: by sentence hash (verbatim) and by vector (as the encoder sees it)."""
    return "\n".join(
        [
            "Share of test tickets (with embeddings) whose wording the training side has seen verbatim, "
            f"boilerplate excepted (boilerplate from {result['boilerplate_from']}).",
            "",
            _table(result["splits"]),
            "",
            "The same, as the encoder sees the text: a test sentence counts as seen when a training "
            "sentence has the same all-MiniLM-L6-v2 vector (rounded to 3 decimals; the encoder is "
            "uncased and splits punctuation off, so case and punctuation twins are one sentence to "
            f"every model). The file's {result['sentences']:,} distinct sentences are "
            f"{result['encoder_distinct_sentences']:,} distinct vectors.",
            "",
            _table(result["splits_encoder"]),
            "",
            f"Across the whole file, {result['cross_merchant_reuse']:.1%} of non-boilerplate sentence "
            "occurrences use a sentence that another merchant also uses (inside one text period on the "
            "built-in data).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Compose the backtest config with ``argv`` overrides, audit, write results/data/audit.*."""
    from hydra import compose, initialize_config_dir

    from tagger.data.dataset import load_dataset
    from tagger.paths import PROJECT_ROOT

    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("backtest", overrides=args)
    tickets = load_dataset(cfg.data)
    ts = tickets.meta["unix_timestamp"].to_numpy()
    folds = configured_folds(ts, cfg)
    result = {"data": shown(resolve(cfg.data.path)), **audit(tickets, cfg, folds)}
    out = resolve("results/data")
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(result, indent=2))
    text = f"# Text overlap audit\n\nData: `{result['data']}`. Command: `python -m tagger.backtest.audit`\n\n"
    (out / "audit.md").write_text(text + markdown(result) + "\n")
    print(markdown(result))
    print(f"\nwrote {shown(out / 'audit.md')} and audit.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
