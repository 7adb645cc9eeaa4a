"""The public-split benchmark: Banking77's train/test files as one merchant, end to end on a small copy."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tagger.backtest.banking77 import main

pytestmark = pytest.mark.slow  # fits every model on the Banking77 split

PHRASES = {
    "card_arrival": ["where is my new card", "my card has not arrived", "when will the card come"],
    "lost_or_stolen_card": ["i lost my card", "someone stole my card", "my card is missing"],
    "exchange_rate": ["what is the exchange rate", "how much is a euro in dollars", "currency rate today"],
}


def _write(path, n: int) -> None:
    rows = [(f"{p} {i}", label) for label, ps in PHRASES.items() for p in ps for i in range(n)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)


def test_the_public_split_is_scored_once_with_every_choice_made_on_train(tmp_path):
    _write(tmp_path / "train.csv", 8)
    _write(tmp_path / "test.csv", 2)
    out = tmp_path / "out"
    code = main(
        [
            f"sources_dir={tmp_path}",
            f"output_dir={out}",
            f"data.sentence_cache_dir={tmp_path / 's'}",
            "backtest.models=[shared,logreg]",
            "backtest.seeds=[0,1]",
            "backtest.stacks=[['shared ensemble',logreg]]",
            "backtest.bootstrap=50",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            "model.projection.hidden=64",
            "model.projection.out_dim=32",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    split = metrics["split"]
    assert (split["train"] + split["val"], split["test"], split["labels"]) == (72, 18, 3)
    assert set(metrics["models"]) == {"shared", "logreg", "shared ensemble", "shared ensemble + logreg"}
    assert metrics["strongest_baseline"] == "logreg"
    for m in metrics["models"].values():
        assert 0 <= m["estimate"]["accuracy"] <= 1
    # one merchant: the intervals resample tickets, and say so
    assert metrics["intervals"].startswith("ticket-level")
    report = (out / "report.md").read_text()
    assert "Casanueva" in report and "shared minus logreg" in report
    assert "shared ensemble + logreg minus logreg" in report  # a stack is compared, never a baseline
    assert main(["--help"]) == 0
