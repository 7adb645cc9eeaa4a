"""The drift report: each test against chance with a merchant's own counts, and the command end to end
on a served model (an unknown merchant, a shifted merchant, a steady one)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import exported, served_copy

from tagger.monitor.causes import check
from tagger.monitor.drift import DriftSettings, drift_table

SETTINGS = DriftSettings(
    min_tickets=30,
    z=4.0,
    js_quantile=0.999,
    null_draws=2000,
    low_confidence_quantile=0.05,
    vanished_min_expected=8,
    seed=0,
)


def _answers(account: str, n: int, shares: dict[str, float], seed: int, abstain: float = 0.2, conf=(8, 2)):
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(shares), size=n, p=list(shares.values()))
    return pd.DataFrame(
        {
            "account_id": account,
            "label": labels,
            "confidence": rng.beta(*conf, size=n),
            "abstained": rng.random(n) < abstain,
        }
    )


STEADY = {"A": 0.5, "B": 0.3, "C": 0.2}


def test_a_steady_merchant_is_not_flagged_whatever_its_size():
    """Answers drawn from one distribution on both sides: no flag at 40 tickets or at 4,000."""
    for n in (40, 400, 4000):
        ref = _answers("m", 2 * n, STEADY, seed=n)
        cur = _answers("m", n, STEADY, seed=n + 1)
        table = drift_table(ref, cur, SETTINGS, {"m"})
        assert table.loc[0, "tested"] and table.loc[0, "flagged_by"] == [], (n, table.loc[0].to_dict())


def test_each_kind_of_drift_is_flagged_by_its_test():
    ref = pd.concat([_answers(m, 600, STEADY, seed=i) for i, m in enumerate("abcde")], ignore_index=True)
    cur = pd.concat(
        [
            _answers("a", 300, {"A": 0.2, "B": 0.3, "C": 0.5}, seed=10),  # the mix moved
            _answers("b", 300, STEADY, seed=11, abstain=0.45),  # abstains more
            _answers("c", 300, STEADY, seed=12, conf=(3, 3)),  # less sure, more unfamiliar
            _answers("d", 300, {"A": 0.6, "B": 0.4}, seed=13),  # C vanished
            _answers("e", 10, {"C": 1.0}, seed=14),  # too few to test
            _answers("new", 50, {"X": 1.0}, seed=15),  # unknown to the model
        ],
        ignore_index=True,
    )
    table = drift_table(ref, cur, SETTINGS, set("abcde")).set_index("account_id")
    assert "label_mix" in table.loc["a", "flagged_by"]
    assert "abstain" in table.loc["b", "flagged_by"]
    assert {"confidence", "unfamiliar"} <= set(table.loc["c", "flagged_by"])
    assert table.loc["d", "vanished_labels"] == ["C"] and "vanished" in table.loc["d", "flagged_by"]
    assert not table.loc["e", "tested"] and table.loc["e", "flagged_by"] == []
    assert "unknown_merchant" in table.loc["new", "flagged_by"]
    verdict = check(
        table.reset_index(), {"a": ["late intent 'X' (day 90)"], "b": [], "c": [], "d": [], "e": []}
    )
    assert verdict["by_cause"]["late intent"] == {
        "merchants": 1,
        "tested": 1,
        "flagged": 1,
        "missed": [],
        "too_few_tickets": [],
    }
    assert verdict["flagged_without_cause"] == ["b", "c", "d", "new"]


def test_labels_the_model_does_not_know_are_flagged_as_training_reads_them():
    """A true label absent from the model's labels is flagged; a quoting or case variant is not."""
    ref, cur = _answers("m", 400, STEADY, seed=1), _answers("m", 200, STEADY, seed=2)
    truth = pd.Series(
        ["Shipping::Delay"] * 150 + ['"shipping :: delay"'] * 40 + ["Brand New"] * 10, index=cur.index
    )
    table = drift_table(ref, cur, SETTINGS, {"m"}, {"m": {"Shipping::Delay"}}, truth)
    assert table.loc[0, "unknown_labels"] == ["Brand New"] and "unknown_labels" in table.loc[0, "flagged_by"]
    assert table.loc[0, "unknown_label_share"] == pytest.approx(0.05)


@pytest.mark.slow
def test_the_command_reports_a_merchant_the_model_does_not_know(trained, tmp_path):
    """``python -m tagger.monitor drift path=FILE`` on a served model: the ticket file scored, a
    merchant the model has never seen flagged, the report and its plots written."""
    _, data, _ = trained
    registry = served_copy(exported(trained, "monitor-onnx"), tmp_path)
    table = pq.read_table(data).to_pandas()
    first = table["account_id"].iloc[0]
    table.loc[table["account_id"] == first, "account_id"] = "a-new-merchant"
    current = tmp_path / "current.parquet"
    table.to_parquet(current)
    out = tmp_path / "drift"
    command = [sys.executable, "-m", "tagger.monitor", "drift", f"registry_dir={registry}", f"path={current}"]
    command += [f"reference={data}", f"out_dir={out}", "tests.min_tickets=5", "tests.null_draws=200"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "drift.json").read_text())
    rows = {r["account_id"]: r for r in result["merchants"]}
    assert "unknown_merchant" in rows["a-new-merchant"]["flagged_by"]
    assert (out / "report.md").read_text().startswith("# Drift report")
    assert (out / "attention.png").stat().st_size > 0 and (out / "abstain.png").stat().st_size > 0
    assert "a-new-merchant" in done.stdout
