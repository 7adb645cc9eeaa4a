"""Choose on validation, then refit on the whole window: what the refit keeps, what it learns, and
that no fit in the backtest ever sees a ticket of its fold's test window."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import (
    SETUP,
    TEST_MODEL,
    TEST_TRAINER,
    FakeEmbedder,
    baseline,
    embeddings_json,
    make_tickets,
    tiny_backtest,
    tiny_run,
    toy_parquet,
    toy_problem,
    unit_vectors,
    write_tickets,
)
from hydra import compose, initialize_config_dir

from tagger.backtest.folds import configured_folds
from tagger.data.dataset import load_dataset
from tagger.data.tickets import Tickets
from tagger.metrics import model_age, selection_score
from tagger.model.artifacts import load_shared
from tagger.model.baselines import LogReg
from tagger.model.selection import Tuned
from tagger.model.shared_estimator import SharedEstimator
from tagger.paths import PROJECT_ROOT
from tagger.training import run

pytestmark = pytest.mark.slow  # runs train.py and the backtest end to end


def _split(tickets: Tickets, share: float = 0.75) -> tuple[Tickets, Tickets]:
    n = int(len(tickets) * share)
    keep = np.arange(len(tickets)) < n
    return tickets.subset(keep), tickets.subset(~keep)


def _with_new_label(n_new: int = 12) -> Tickets:
    """The toy problem, then ``n_new`` tickets of a label account "a" never had before, last in time."""
    toy = toy_problem(n_per_label=30)
    centre = unit_vectors(1, seed=7)[0]
    rng = np.random.default_rng(1)
    rows = [(m.account_id, m.label, toy.sentences(i)) for i, m in enumerate(toy.meta.itertuples())]
    for _ in range(n_new):
        v = centre + 0.3 * rng.normal(size=centre.shape) / np.sqrt(len(centre))
        rows.append(("a", "Returns::Late", (v / np.linalg.norm(v))[None]))
    return make_tickets(rows)


def test_early_stopping_chooses_by_the_figure_the_reports_lead_with(tmp_path):
    train, val = _split(toy_problem(n_per_label=30))
    est = SharedEstimator(
        TEST_MODEL, TEST_TRAINER, seed=0, log_dir=tmp_path, embedder=FakeEmbedder(), **SETUP
    )
    est.fit(train, val)
    # the best checkpoint's logged score is the per-account macro-F1 the backtest computes
    reported = selection_score(est.predict(val), val, train)
    assert est.fit_info["best_score"] == pytest.approx(reported, abs=1e-6)
    logged = pd.read_csv(next(tmp_path.glob("shared/*/metrics.csv")))
    assert "val_account_macro_f1" in logged.columns


def test_shared_refit_carries_its_choices_and_learns_the_validation_labels(tmp_path):
    tickets = _with_new_label()
    train, val = _split(tickets, share=1 - 12 / len(tickets))
    assert "Returns::Late" not in set(train.meta["label"])
    est = SharedEstimator(
        TEST_MODEL, TEST_TRAINER, seed=0, log_dir=tmp_path, embedder=FakeEmbedder(), **SETUP
    )
    est.fit(train, val)
    refit = est.refit(tickets)
    assert refit is not est and refit.temperature == est.temperature  # chosen on validation, kept
    assert refit.fit_info["epochs"] == est.fit_info["best_epoch"] + 1
    assert refit.fit_info["train_tickets"] == int(tickets.meta["has_embeddings"].sum())
    assert refit.fit_info["selection"]["best_epoch"] == est.fit_info["best_epoch"]
    assert ("a", "Returns::Late") in set(
        zip(refit.table.frame["account_id"], refit.table.frame["label"], strict=True)
    )
    assert len(est.table) == len(refit.table) - 1  # the selection fit itself is left as it was
    late = val.subset((val.meta["label"] == "Returns::Late").to_numpy())
    assert (refit.predict(late).labels(0) == "Returns::Late").mean() >= 0.75
    assert (est.predict(late).labels(0) == "Returns::Late").sum() == 0  # it cannot name it


def test_a_tuned_baseline_refits_its_chosen_point_only():
    tickets = _with_new_label()
    train, val = _split(tickets, share=1 - 12 / len(tickets))
    tuned = Tuned(lambda **p: baseline("logreg", **p), {"C": [0.01, 100.0]}, selection_score).fit(train, val)
    models_before = dict(tuned.best.models)
    refit = tuned.refit(tickets)
    assert isinstance(refit, LogReg) and tuned.chosen == {"C": refit.C}
    assert "Returns::Late" in set(refit.table.frame["label"])
    assert tuned.best.models == models_before and "Returns::Late" not in set(tuned.best.table.frame["label"])


def test_model_age_buckets():
    day = 86_400.0
    days, buckets = model_age(np.array([0.5, 3.9, 4.0, 14.0, 21.0, 40.0]) * day, 0.0)
    assert days.tolist() == [0, 3, 4, 14, 21, 40]
    assert buckets.tolist() == ["0-3", "0-3", "4-7", "8-14", "15-21", ">35"]


def _late_label_parquet(path, days: float = 8.0):
    """The toy file over ``days``, plus 15 tickets of a new label of account "a" in its last day."""
    toy_parquet(path, n_per_label=30, days=days)
    frame = pd.read_parquet(path)
    start = frame["unix_timestamp"].max()
    centre = unit_vectors(1, seed=7)[0]
    rng = np.random.default_rng(2)
    rows = []
    for i in range(15):
        v = centre + 0.3 * rng.normal(size=centre.shape) / np.sqrt(len(centre))
        rows.append(
            {
                **frame.iloc[0].to_dict(),
                "account_id": "a",
                "ticket_id": f"late{i}",
                "unix_timestamp": start + 60.0 * (i + 1),
                "contact_reason": "Returns::Late",
                "email_sentence_embeddings": embeddings_json((v / np.linalg.norm(v))[None], [f"9{i:03d}"]),
            }
        )
    return write_tickets(path, [*frame.to_dict("records"), *rows])


@pytest.mark.parametrize("refit", [True, False])
def test_train_saves_a_model_that_knows_a_label_of_the_last_validation_week(tmp_path, refit):
    data = _late_label_parquet(tmp_path / "tickets.parquet")
    overrides = [
        *tiny_run(tmp_path, data),
        "data.val_days=2",
        f"output_dir={tmp_path / 'out'}",
        f"models_dir={tmp_path / 'models'}",
        "trainer.max_epochs=4",
        "compare_with=[]",
        f"refit={str(refit).lower()}",
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = run(cfg)
    model = load_shared(out["model_dir"])
    pairs = set(zip(model.table.frame["account_id"], model.table.frame["label"], strict=True))
    tickets = load_dataset(cfg.data)
    late = tickets.subset((tickets.meta["label"] == "Returns::Late").to_numpy())
    assert late.meta["unix_timestamp"].min() >= pd.Timestamp(out["split"]["cutoff"]).timestamp()
    if not refit:  # the model fit before the validation slice never heard of it
        assert ("a", "Returns::Late") not in pairs and out["models"]["shared"]["refit"] is None
        return
    assert ("a", "Returns::Late") in pairs
    assert out["models"]["shared"]["refit"]["train_tickets"] == len(tickets)
    pred = model.predict(late)
    top = np.stack([pred.labels(r) for r in range(3)], axis=1)
    assert (top == "Returns::Late").any(axis=1).all()  # scored: a candidate of every such ticket


def test_no_fit_in_the_backtest_sees_its_folds_test_window(tmp_path, monkeypatch):
    import tagger.backtest.run as backtest
    from tagger.model.baselines import CrossMerchantLogReg, NameSimilarity, PerAccountEstimator

    data = toy_parquet(tmp_path / "tickets.parquet", n_per_label=40, days=8, late_account=True)
    cfg = tiny_backtest(
        tmp_path,
        data,
        2,
        "backtest.bootstrap=0",
        "backtest.seeds=[0,1]",
        "trainer.max_epochs=2",
        "backtest.models=[shared,majority,logreg,xlogreg,knn,centroid,names]",
        "backtest.cold_start.learning_curve.shots=[0,1]",
        "backtest.cold_start.learning_curve.labels=1",
        "backtest.cold_start.learning_curve.min_test=1",
        "backtest.cold_start.learning_curve.models=[logreg]",
    )
    folds = configured_folds(load_dataset(cfg.data).meta["unix_timestamp"].to_numpy(), cfg)
    fold = {"index": None}
    fits = []
    real_fit = backtest.fold_fit

    def in_fold(cfg, name, model_cfg, seed, data):
        fold["index"] = data.index
        return real_fit(cfg, name, model_cfg, seed, data)

    def recording(cls):
        original = cls.__dict__["fit"]

        def fit(self, train, val=None):
            seen = [train] + ([val] if val is not None and len(val) else [])
            latest = max(float(t.meta["unix_timestamp"].max()) for t in seen if len(t))
            fits.append((type(self).__name__, fold["index"], latest, val is None))
            return original(self, train, val)

        monkeypatch.setattr(cls, "fit", fit)

    for cls in (SharedEstimator, PerAccountEstimator, CrossMerchantLogReg, NameSimilarity):
        recording(cls)
    monkeypatch.setattr(backtest, "fold_fit", in_fold)
    backtest.run_backtest(cfg)
    assert {name for name, *_ in fits} >= {"SharedEstimator", "LogReg", "CrossMerchantLogReg", "KNN"}
    for name, index, latest, _ in fits:  # the learning curve's fits belong to the last fold
        assert latest < folds[index].test_start, (name, index)
    # the refits (no validation) learnt from the whole window: its validation days included
    for f in folds:
        window_end = max(latest for _, index, latest, refit in fits if index == f.index and refit)
        assert window_end >= f.train_end - cfg.data.val_days * 86_400
