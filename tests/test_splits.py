"""Time splits at UTC midnights, the final holdout, and the backtest's declared taxonomies."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from conftest import make_tickets, unit_vectors

from tagger.backtest.cold_start import Taxonomy
from tagger.backtest.folds import rolling_folds
from tagger.data.splits import DAY, Split, end_of_day, holdout_split, time_split

MIDNIGHT = 1_683_072_000.0  # 2023-05-03T00:00:00Z


def _days(n_days: int, per_day: int = 4):
    rows = [("a", "X", unit_vectors(1, i)) for i in range(n_days * per_day)]
    tickets = make_tickets(rows)
    tickets.meta["unix_timestamp"] = MIDNIGHT + np.arange(len(rows)) * DAY / per_day + 3600.0
    return tickets


def test_aligned_splits_fall_on_midnights():
    assert end_of_day(MIDNIGHT + 1) == MIDNIGHT + DAY and end_of_day(MIDNIGHT) == MIDNIGHT
    tickets = _days(30)
    ts = tickets.meta["unix_timestamp"].to_numpy()
    development, info = holdout_split(tickets, 7, align=True)
    assert pd.Timestamp(info["holdout_start"]).timestamp() % DAY == 0
    assert info["holdout_tickets"] == 7 * 4 and len(development) == len(tickets) - 28
    _, val, split = time_split(development, 5, align=True)
    assert pd.Timestamp(split["cutoff"]).timestamp() % DAY == 0 and len(val) == 5 * 4
    folds = rolling_folds(ts, 2, 7, align=True)
    assert all(f.test_start % DAY == 0 and f.train_end % DAY == 0 for f in folds)
    assert folds[-1].test_end == end_of_day(ts.max())
    # unaligned: counted back from the latest ticket itself
    assert rolling_folds(ts, 2, 7)[-1].test_end == ts.max()


def test_one_split_object_says_what_the_selection_fit_and_the_refit_learn_from():
    window = _days(20)
    test = _days(3)
    end = MIDNIGHT + 21 * DAY
    split = Split.of_window(window, 5, align=True, refit=True, test=test, window_end=end, index=2)
    assert len(split.val) == 5 * 4 and len(split.train) + len(split.val) == len(window)
    assert split.val_start == MIDNIGHT + 15 * DAY and split.record["val_tickets"] == 20
    assert split.seen is window and split.trained_until == MIDNIGHT + 21 * DAY and split.index == 2
    kept = Split.of_window(window, 5, align=True, refit=False)
    assert kept.seen is kept.train and kept.trained_until == kept.val_start
    assert kept.window_end == MIDNIGHT + 20 * DAY and kept.test is None  # the end of validation


def test_declared_taxonomy_from_the_build_record(tmp_path):
    path = tmp_path / "t.parquet"
    record = {
        "config": {"start": "2023-02-01"},
        "merchants": [
            {
                "account_id": "a",
                "start_day": 0.0,
                "labels": [
                    {"name": "Shipping::Tracking", "intents": ["track_order"]},
                    {"name": "CR-101", "intents": ["get_refund"], "start_day": 50.0},
                    {"name": "Old", "intents": ["x"], "renamed_to": "New", "rename_day": 20.0},
                    {"name": "Other", "intents": []},
                ],
            },
            {"account_id": "b", "start_day": 60.0, "labels": [{"name": "Refund", "intents": ["get_refund"]}]},
        ],
    }
    path.with_name("t.parquet.build.json").write_text(json.dumps(record))
    start = pd.Timestamp("2023-02-01", tz="UTC").timestamp()
    taxonomy = Taxonomy(path, pd.DataFrame())
    at_30 = taxonomy.at(start + 30 * DAY)
    assert at_30 == {"a": ["Shipping::Tracking", "Old", "New", "Other"]}  # b has not joined; CR-101 not yet
    assert "CR-101" in taxonomy.at(start + 70 * DAY)["a"] and "b" in taxonomy.at(start + 70 * DAY)
    train = pd.DataFrame({"account_id": ["a"], "label": ["Shipping::Tracking"]})
    test = pd.DataFrame({"account_id": ["a", "b", "a"], "label": ["CR-101", "Refund", "Other"]})
    assert taxonomy.intent_unseen(test, train).tolist() == [True, True, False]
    train = pd.DataFrame({"account_id": ["b"], "label": ["Refund"]})  # another merchant had get_refund
    assert taxonomy.intent_unseen(test.iloc[:1], train).tolist() == [False]


def test_declared_taxonomy_without_a_record_is_what_each_account_uses(tmp_path):
    meta = pd.DataFrame(
        {"account_id": ["a", "a", "b"], "label": ["X", "Y", "Z"], "unix_timestamp": [1.0, 5.0, 9.0]}
    )
    taxonomy = Taxonomy(tmp_path / "real.parquet", meta)
    assert taxonomy.at(6.0) == {"a": ["X", "Y"]}
    assert not taxonomy.intent_unseen(meta, meta).any()
