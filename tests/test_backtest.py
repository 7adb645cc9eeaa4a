"""backtest: fold boundaries, no leakage, hand-checked metrics, thresholds from validation, the report."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from conftest import baseline, make_tickets, tiny_backtest, tiny_run, toy_parquet, toy_problem, unit_vectors
from hydra import compose, initialize_config_dir

from tagger.backtest.folds import DAY, rolling_folds
from tagger.backtest.run import run_backtest
from tagger.metrics import outcomes, summary
from tagger.model.thresholds import ThresholdMethod, Thresholds
from tagger.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow  # runs the backtest end to end on toy data


def test_fold_boundaries_expanding_and_sliding():
    ts = np.arange(0, 100 * DAY, 3600.0)
    folds = rolling_folds(ts, n_folds=3, test_days=10)
    assert [round((f.test_end - f.test_start) / DAY) for f in folds] == [10, 10, 10]
    assert folds[-1].test_end == ts.max()
    for a, b in itertools.pairwise(folds):
        assert a.test_end == b.test_start
    for f in folds:
        assert f.train_start == 0 and f.train_end == f.test_start
        train, test = f.masks(ts, last=f is folds[-1])
        assert ts[train].max() < ts[test].min()
    # every ticket of the test span is in exactly one fold
    tested = sum(f.masks(ts, last=f is folds[-1])[1].astype(int) for f in folds)
    assert tested[ts >= folds[0].test_start].tolist() == [1] * int((ts >= folds[0].test_start).sum())
    sliding = rolling_folds(ts, n_folds=2, test_days=10, window="sliding", train_days=30, gap_days=2)
    for f in sliding:
        assert f.test_start - f.train_end == 2 * DAY and f.train_end - f.train_start == 30 * DAY
    with pytest.raises(ValueError, match="no training data"):
        rolling_folds(ts, n_folds=20, test_days=10)


def test_a_label_absent_from_training_cannot_be_predicted():
    train = toy_problem(n_per_label=20, accounts={"a": ["Refund", "Other"]})
    v = unit_vectors(1)
    test = make_tickets([("a", "Brand New Label", v), ("a", "Refund", v), ("b", "Other", v)])
    model = baseline("logreg").fit(train)
    out = outcomes(model.predict(test), test, train.meta)
    assert out["new_label"].tolist() == [True, False, True]
    assert out["new_account"].tolist() == [False, False, True]
    assert not out.loc[0, "correct"] and "Brand New Label" not in set(out["predicted"].dropna())
    assert out.loc[2, "abstained"] and pd.isna(out.loc[2, "predicted"])


def _frame(rows):
    return pd.DataFrame(rows, columns=["account_id", "label", "predicted", "confidence", "top3_hit"]).assign(
        correct=lambda f: f["predicted"] == f["label"],
        parent_correct=lambda f: f["predicted"].str.split("::").str[0] == f["label"].str.split("::").str[0],
        abstained=lambda f: f["predicted"].isna(),
    )


def test_metrics_on_a_hand_checked_case():
    frame = _frame(
        [
            ("a", "X::1", "X::1", 0.9, True),
            ("a", "X::1", "X::2", 0.6, True),
            ("a", "Y", "Y", 0.8, True),
            ("b", "X::1", "X::1", 0.95, True),
            ("b", "Z", None, 0.0, False),
        ]
    )
    s = summary(frame, {0.9: np.full(5, 0.85)})
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["top3_accuracy"] == pytest.approx(4 / 5)
    assert s["parent_accuracy"] == pytest.approx(4 / 5)
    # classes (account, label): a/X::1 F1 2/3, a/X::2 F1 0, a/Y 1, b/X::1 1, b/Z 0 -> mean 0.5333
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0 + 1 + 1 + 0) / 5)
    # per account: a -> (2/3 + 0 + 1) / 3, b -> (1 + 0) / 2
    assert s["macro_f1_account_mean"] == pytest.approx(((2 / 3 + 1) / 3 + 0.5) / 2)
    # auto-tagged at 0.85: the 0.9 and 0.95 tickets, both right
    assert s["coverage_at_90_precision"] == pytest.approx(2 / 5)
    assert s["precision_at_90_target"] == 1.0
    assert 0 <= s["ece"] <= 1


def test_threshold_is_chosen_on_validation_only():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, 2000)
    val = _frame([("a", "X", "X", c, True) for c in conf]).assign(correct=rng.uniform(size=2000) < conf)
    th = Thresholds(val, [0.95], ThresholdMethod(min_account=10_000))
    test = _frame([("a", "X", "Y", 0.99, False)])  # a wrong test ticket does not move the threshold
    assert th.of(test)[0.95].tolist() == [th.global_["leaf"][0.95]]
    assert 0.85 < th.global_["leaf"][0.95] < 1.0


def test_backtest_end_to_end_and_report(tmp_path):
    data = toy_parquet(tmp_path / "tickets.parquet", n_per_label=40, days=8, late_account=True)
    cfg = tiny_backtest(
        tmp_path,
        data,
        2,
        "backtest.bootstrap=20",
        "backtest.min_merchants=1",  # the toy file's few merchants, resampled as merchants all the same
        "backtest.seeds=[0]",  # several seeds: test_backtest_fits_the_shared_model_once_per_seed
        "trainer.max_epochs=3",
        "backtest.models=[shared,majority,logreg,names]",
        "data.holdout_days=2",  # the last fold's test window is the final holdout
        "backtest.cold_start.learning_curve.shots=[0,1,5]",
        "backtest.cold_start.learning_curve.labels=1",
        "backtest.cold_start.learning_curve.min_test=1",
        "backtest.cold_start.learning_curve.models=[logreg]",
    )
    result = run_backtest(cfg)
    out = tmp_path / "out"
    for name in (
        "report.md",
        "metrics.json",
        "folds.csv",
        "per_merchant.csv",
        "outcomes.parquet",
        "coverage_precision.png",
        "reliability.png",
        "per_fold.png",
        "per_merchant.png",
        "learning_curve.png",
        "learning_curve.csv",
    ):
        assert (out / name).exists(), name
    written = json.loads((out / "metrics.json").read_text())
    assert set(written["models"]) == {"shared", "majority", "logreg", "names"}
    overall = written["models"]["shared"]["overall"]
    for key in (
        "accuracy",
        "macro_f1",
        "top3_accuracy",
        "coverage_at_95_precision",
        "ece",
        "parent_accuracy",
    ):
        assert key in overall
    outcomes_frame = pd.read_parquet(out / "outcomes.parquet")
    tested = outcomes_frame[outcomes_frame["model"] == "shared"]
    assert tested["ticket_id"].is_unique  # each test ticket once per model
    assert tested["no_embeddings"].any() and tested["new_account"].any()  # nothing dropped
    strongest = written["paired_bootstrap"]["strongest"]
    for metric, c in strongest.items():  # the strongest baseline is the best point estimate on each metric
        values = {b: written["models"][b]["overall"][metric] for b in ("majority", "logreg", "names")}
        assert c["baseline_value"] == max(values.values()) and values[c["baseline"]] == c["baseline_value"]
        assert c["difference"] == pytest.approx(overall[metric] - c["baseline_value"])
    assert set(written["paired_bootstrap"]["against"]) == {"majority", "logreg", "names"}
    assert written["intervals"]["description"] == "merchant-clustered, 20 resamples, percentile"
    assert len(written["models"]["shared"]["folds"]) == 2
    report = (out / "report.md").read_text()
    assert "## Overall" in report and "| shared |" in report and "## Slices" in report
    for metric, (lo, hi) in result["models"]["shared"]["ci95"].items():
        assert lo <= overall[metric] <= hi or np.isnan(overall[metric]), metric
    assert "merchant-clustered, 20 resamples, percentile" in report and "chance top-3" in report
    # cold start: the late merchant is scored from its label names; the curve covers every model and shot
    zero = written["cold_start"]["zero_shot"]["new_merchants"]
    assert zero["tickets"] >= 1 and zero["chance_accuracy"] == 1.0  # "late" declares one label
    curve = pd.DataFrame(written["cold_start"]["learning_curve"])
    assert set(curve["model"]) == {"shared", "shared[examples only]", "logreg"}
    assert set(curve[curve["model"] == "logreg"]["shots"]) == {0, 1, 5}
    assert curve[(curve["model"] == "logreg") & (curve["shots"] == 0)]["accuracy"].iloc[0] == 0.0
    assert "## Cold start" in report and "### Learning curve" in report
    assert (outcomes_frame["model"] == "shared+names (declared taxonomy)").sum() == len(tested)
    assert (outcomes_frame["model"] == "names (declared taxonomy)").sum() == len(tested)
    assert "names_baseline_accuracy" in zero and "names: acc. / top-3" in report
    final = written["final_holdout"]
    assert final["fold"] == 1 and set(final["models"]) == set(written["models"])
    last = tested[tested["fold"] == 1]
    assert final["models"]["shared"]["overall"]["n"] == len(last)
    assert "## Final holdout: fold 1 alone" in report
    # each model's refit is scored, and its selection fit on the same tickets beside it
    refit = written["refit"]["shared"]
    assert refit["refit"]["n"] == refit["no_refit"]["n"] == len(tested)
    assert refit["refit"]["n_new_label"] <= refit["no_refit"]["n_new_label"]
    assert (outcomes_frame["model"] == "shared (no refit)").sum() == len(tested)
    assert set(tested["model_age"]) <= {"0-3", "4-7"} and (out / "staleness.png").exists()
    assert "## Refit on the whole window" in report and "## Staleness" in report
    # logreg chose its C on each fold's validation slice, out of its whole grid
    assert "## Choices made on validation" in report
    assert all(r["search_fits"] == 8 for r in written["models"]["logreg"]["folds"])  # C x class weight


def test_backtest_with_the_onnx_runtime_agrees_with_torch(tmp_path):
    data = toy_parquet(tmp_path / "tickets.parquet", n_per_label=40, days=8, late_account=True)
    common = [
        *tiny_run(tmp_path, data),
        "data.val_days=1",
        "backtest.n_folds=1",
        "backtest.test_days=2",
        "backtest.bootstrap=0",
        "backtest.seeds=[0]",
        "trainer.max_epochs=2",
        "backtest.models=[shared]",
    ]
    results = {}
    for runtime in ("torch", "onnx"):
        with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "backtest",
                overrides=[*common, f"backtest.runtime={runtime}", f"output_dir={tmp_path / runtime}"],
            )
        results[runtime] = run_backtest(cfg)["models"]["shared"]
    assert results["onnx"]["folds"][0]["onnx_parity_top1_disagreements"] == 0
    assert results["onnx"]["folds"][0]["onnx_parity_max_abs_diff"] < 1e-4
    a = pd.read_parquet(tmp_path / "torch" / "outcomes.parquet")
    b = pd.read_parquet(tmp_path / "onnx" / "outcomes.parquet")
    assert (a["predicted"].fillna("") == b["predicted"].fillna("")).all()
    np.testing.assert_allclose(a["confidence"], b["confidence"], atol=1e-5)


def _one_fold(tmp_path, data) -> list[str]:
    """Overrides of a one-fold backtest of ``data`` with a small bootstrap, written under tmp_path/out."""
    return [
        *tiny_run(tmp_path, data),
        "data.val_days=1",
        f"output_dir={tmp_path / 'out'}",
        "backtest.n_folds=1",
        "backtest.test_days=2",
        "backtest.bootstrap=50",
        "backtest.min_merchants=1",
    ]


def test_backtest_fits_the_shared_model_once_per_seed(tmp_path, monkeypatch):
    import tagger.backtest.run as run

    calls = []
    real = run.make_estimator

    def counting(model_cfg, cfg, log_dir=None):
        calls.append((model_cfg["name"], cfg.seed))
        return real(model_cfg, cfg, log_dir=log_dir)

    monkeypatch.setattr(run, "make_estimator", counting)
    data = toy_parquet(tmp_path / "tickets.parquet", n_per_label=40, days=8)
    overrides = [
        *_one_fold(tmp_path, data),
        "backtest.seeds=[0,1,2]",
        "trainer.max_epochs=1",
        "backtest.models=[shared,majority]",
        "backtest.stacks=[['shared ensemble',majority],[shared,xlogreg]]",  # the second: xlogreg not run
        "backtest.cold_start.declare_names=false",
        "backtest.cold_start.learning_curve.labels=0",
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("backtest", overrides=overrides)
    result = run_backtest(cfg)
    # the shared model once per seed, the deterministic baseline once (with the run's seed)
    assert sorted(calls) == [("majority", 0), ("shared", 0), ("shared", 1), ("shared", 2)]
    shared = result["models"]["shared"]
    assert set(shared["seeds"]) == {"0", "1", "2"} and "seeds" not in result["models"]["majority"]
    for metric in ("accuracy", "macro_f1", "top3_accuracy", "ece"):
        per_seed = [s[metric] for s in shared["seeds"].values()]
        assert shared["overall"][metric] == pytest.approx(np.mean(per_seed))
        spread = shared["seed_spread"][metric]
        assert spread["min"] == min(per_seed) and spread["max"] == max(per_seed)
        assert spread["sd"] == pytest.approx(np.std(per_seed, ddof=1))
    for metric, (lo, hi) in shared["ci95"].items():
        assert lo <= shared["overall"][metric] <= hi or np.isnan(shared["overall"][metric]), metric
    assert [(r["model"], r["seed"]) for r in shared["folds"]] == [("shared", 0), ("shared", 1), ("shared", 2)]
    out = pd.read_parquet(tmp_path / "out" / "outcomes.parquet")
    assert sorted(out.loc[out["model"] == "shared", "seed"].unique()) == [0, 1, 2]
    assert out.loc[out["model"] == "majority", "seed"].isna().all()
    n_test = (out["model"] == "majority").sum()
    assert (out["model"] == "shared").sum() == 3 * n_test
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Seeds" in report and "| seed 0 | seed 1 | seed 2 | mean | sd | min - max |" in report
    assert "use seed 0's outcomes" in report and "merchant-clustered, 50 resamples, percentile" in report
    assert "## Shared model against the strongest baseline on each metric" in report
    # the ensemble of the seeds is scored from those fits (no fit of its own) and never a baseline
    ensemble = result["models"]["shared ensemble"]
    assert [r["model"] for r in ensemble["folds"]] == ["shared ensemble"]
    assert (out["model"] == "shared ensemble").sum() == n_test
    assert {c["baseline"] for c in result["paired_bootstrap"]["strongest"].values()} == {"majority"}
    assert set(result["ensemble"]["comparison"]["against"]) == {"majority"}
    assert "## Ensemble of seeds" in report
    # a stack is scored like a model, never a baseline, against each member with paired intervals
    stack = "shared ensemble + majority"
    assert list(result["stacks"]) == [stack] and (out["model"] == stack).sum() == n_test
    assert set(result["stacks"][stack]["against_members"]) == {"shared ensemble", "majority"}
    assert stack not in result["paired_bootstrap"]["against"]
    assert f"### {stack}" in report


def test_a_variant_is_compared_with_the_shared_model_paired(tmp_path):
    """``backtest.ablations``: the variant fit beside the shared model, its paired difference in
    metrics.json and in the report (all folds and the final holdout)."""
    data = toy_parquet(tmp_path / "tickets.parquet", n_per_label=30, days=8)
    overrides = [
        *_one_fold(tmp_path, data),
        "backtest.seeds=[0]",
        "trainer.max_epochs=1",
        "backtest.models=[shared,majority]",
        "backtest.ablations=['mean pooling']",
        "backtest.cold_start.declare_names=false",
        "backtest.cold_start.learning_curve.labels=0",
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("backtest", overrides=overrides)
    result = run_backtest(cfg)
    models, variant = result["models"], "shared[mean pooling]"
    paired = result["variants"][variant]["accuracy"]
    expected = models[variant]["overall"]["accuracy"] - models["shared"]["overall"]["accuracy"]
    assert paired["difference"] == pytest.approx(expected)
    assert paired["ci95"][0] <= paired["difference"] <= paired["ci95"][1]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Variants of the shared model" in report and f"| {variant} | accuracy |" in report


def test_the_backtest_refuses_a_multi_process_trainer():
    from omegaconf import OmegaConf

    from tagger.backtest.run import single_process

    single_process(OmegaConf.create({"trainer": {"strategy": "auto"}}))
    with pytest.raises(ValueError, match="one process"):
        single_process(OmegaConf.create({"trainer": {"strategy": "ddp", "devices": 2}}))


def test_the_feedback_measurement_end_to_end(tmp_path):
    from tagger.backtest.feedback import run_feedback

    data = toy_parquet(tmp_path / "tickets.parquet", n_per_label=40, days=8)
    cfg = tiny_backtest(
        tmp_path,
        data,
        1,
        "backtest.bootstrap=20",
        "trainer.max_epochs=1",  # an under-trained model: wrong answers to correct
        "data.val_days=2",  # a day of corrections, a day to score them on
        "backtest.feedback.days=1",
        "backtest.feedback.example_weights=[1,3]",
        "backtest.feedback.min_agree=[1]",
        f"backtest.feedback.output_dir={tmp_path / 'feedback'}",
    )
    result = run_feedback(cfg)
    out = tmp_path / "feedback"
    for name in ("report.md", "metrics.json", "per_merchant.csv", "gain.png"):
        assert (out / name).exists(), name
    assert len(result["rule_search_on_validation"]) == 2  # the grid, searched on the validation slice
    assert result["other_merchants_answers_changed"] == 0
    if result["corrections"]:
        gain = result["gain_corrections"]
        assert gain["ci95"][0] <= gain["gain"] <= gain["ci95"][1]
        assert sum(result["corrected_merchants_up_same_down"]) == gain["merchants"]
