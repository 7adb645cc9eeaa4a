"""Trainer, callbacks and logger come from conf/ (built with hydra.utils.instantiate): the logger
is chosen by a config group (csv, tensorboard, mlflow with a local store), an unknown trainer key
or a bad callback is an error, the data module gives the same batches as before."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SETUP, TEST_MODEL, TEST_TRAINER, FakeEmbedder, toy_problem
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tagger.estimators import make_estimator
from tagger.metrics import selection_score
from tagger.model.shared_estimator import SharedEstimator
from tagger.paths import PROJECT_ROOT


def _logger(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(PROJECT_ROOT / "conf" / "logger" / f"{name}.yaml"))


def _fit(tmp_path, logger: dict) -> SharedEstimator:
    data = toy_problem(n_per_label=15)
    n = len(data)
    train, val = data.subset(np.arange(n) < 0.7 * n), data.subset(np.arange(n) >= 0.7 * n)
    trainer = {**TEST_TRAINER, "max_epochs": 2}
    est = SharedEstimator(
        TEST_MODEL, trainer, log_dir=tmp_path / "logs", embedder=FakeEmbedder(), **{**SETUP, "logger": logger}
    )
    return est.fit(train, val)


def test_csv_logger_writes_the_selection_score(tmp_path):
    _fit(tmp_path, _logger("csv"))
    metrics = next((tmp_path / "logs" / "shared").glob("*/metrics.csv")).read_text()
    assert "val_account_macro_f1" in metrics.splitlines()[0]


def test_tensorboard_logger_writes_event_files(tmp_path):
    _fit(tmp_path, _logger("tensorboard"))
    events = list((tmp_path / "logs" / "shared").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_mlflow_logger_tracks_the_run_in_a_local_store(tmp_path):
    store = tmp_path / "mlruns"
    _fit(tmp_path, {**_logger("mlflow"), "tracking_uri": f"file:{store}"})
    logged = list(store.rglob("metrics/val_account_macro_f1"))
    assert logged, sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))[:20]
    assert len(logged[0].read_text().splitlines()) == 2  # one value per validation epoch


def test_the_logger_group_reaches_the_estimator():
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=mlflow", "callbacks.early_stopping.patience=7"])
    est = make_estimator(OmegaConf.to_container(cfg.model, resolve=True), cfg)
    assert est.logger_cfg["_target_"].endswith("MLFlowLogger")
    assert est.callbacks_cfg["early_stopping"]["patience"] == 7


def test_a_key_that_is_not_a_trainer_argument_is_an_error():
    with pytest.raises(ValueError, match="patience"):
        SharedEstimator(TEST_MODEL, {**TEST_TRAINER, "patience": 4})


def test_a_bad_callback_config_is_an_error_naming_it(tmp_path):
    bad = {**SETUP["callbacks"], "early_stopping": {**SETUP["callbacks"]["early_stopping"], "patiense": 3}}
    data = toy_problem(n_per_label=10)
    n = len(data)
    train, val = data.subset(np.arange(n) < 0.7 * n), data.subset(np.arange(n) >= 0.7 * n)
    est = SharedEstimator(
        TEST_MODEL,
        TEST_TRAINER,
        log_dir=tmp_path,
        embedder=FakeEmbedder(),
        callbacks=bad,
        logger=None,
        score=selection_score,
    )
    with pytest.raises(ValueError, match=r"callbacks\.early_stopping"):
        est.fit(train, val)
