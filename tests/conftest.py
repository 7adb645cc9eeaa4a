"""Shared helpers: small ticket parquet files written by the tests themselves."""

from __future__ import annotations

import json
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from tagger.metrics import selection_score
from tagger.paths import PROJECT_ROOT, compose_config

DIM = 384


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit float32 vectors."""
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def embeddings_json(vectors: np.ndarray, ids: list[str] | None = None) -> str:
    """The embeddings field as the real data writes it."""
    ids = ids or [str(1000 + i) for i in range(len(vectors))]
    return json.dumps({k: v.astype(np.float64).tolist() for k, v in zip(ids, vectors, strict=True)})


def ticket(i: int, emb: object, account: str = "acc1", label: str = "Shipping::Tracking", **extra) -> dict:
    """One row of the ticket schema."""
    row = {
        "account_id": account,
        "ticket_id": f"t{i}",
        "raw_body": 10_000 + i,
        "channel": "email",
        "unix_timestamp": 1_683_000_000.0 + 60 * i,
        "contact_reason": label,
        "processed_body": 20_000 + i,
        "email_sentence_embeddings": emb,
    }
    row.update(extra)
    return row


def write_tickets(path: Path, rows: list[dict], **column_overrides) -> Path:
    """Write ``rows`` to a parquet file (optionally replacing whole columns)."""
    frame = pd.DataFrame(rows)
    for name, values in column_overrides.items():
        if values is None:
            frame = frame.drop(columns=name)
        else:
            frame[name] = values
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def make_tickets(rows: list[tuple], start: float = 1_683_000_000.0):
    """In-memory Tickets from ``(account, label, vectors or None)`` rows, one minute apart."""
    from tagger.data.tickets import Tickets
    from tagger.data.validation import ValidationReport

    meta = pd.DataFrame(
        {
            "account_id": [r[0] for r in rows],
            "ticket_id": [f"t{i}" for i in range(len(rows))],
            "unix_timestamp": start + 60.0 * np.arange(len(rows)),
            "label": [r[1] for r in rows],
            "has_embeddings": [r[2] is not None and len(r[2]) > 0 for r in rows],
        }
    )
    vectors = [
        np.asarray(r[2], np.float32).reshape(-1, DIM) if r[2] is not None else np.zeros((0, DIM), np.float32)
        for r in rows
    ]
    lengths = np.array([len(v) for v in vectors], np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    meta["n_sentences"] = lengths.astype(np.int32)
    embeddings = np.concatenate(vectors) if len(rows) else np.zeros((0, DIM), np.float32)
    return Tickets(
        meta,
        embeddings,
        offsets,
        np.arange(len(embeddings), dtype=np.int32),
        np.asarray([str(i) for i in range(len(embeddings))]),
        ValidationReport(len(rows), len(rows)),
    )


TOKEN = "s3cret-token-of-at-least-32-chars"  # an admin token (the launcher refuses one under 32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeEmbedder:
    """Stands in for all-MiniLM-L6-v2 on label names: a fixed random unit vector per text."""

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        out = []
        for text in texts:
            rng = np.random.default_rng(zlib.crc32(text.encode()))
            v = rng.normal(size=DIM).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out) if out else np.zeros((0, DIM), np.float32)


def fake_embed(texts: list[str]) -> np.ndarray:
    """:class:`FakeEmbedder` as the ``embed`` function the API and the registry take."""
    return FakeEmbedder().embed(texts)


def toy_problem(n_per_label: int = 40, seed: int = 0, accounts: dict | None = None, noise: float = 0.3):
    """Separable tickets: each (account, label) has its own direction (``noise`` around it);
    boilerplate sentences are shared."""
    rng = np.random.default_rng(seed)
    accounts = accounts or {
        "a": ["Shipping::Tracking", "Refund", "Other"],
        "b": ["Billing", "Other"],
        "c": ["General"],
    }
    boiler = unit_vectors(3, seed=99)
    centres = {
        (a, lab): unit_vectors(1, seed=zlib.crc32(f"{a}|{lab}".encode()))[0]
        for a, labs in accounts.items()
        for lab in labs
    }
    rows = []
    for _ in range(n_per_label):
        for (a, lab), c in centres.items():
            v = c + noise * rng.normal(size=DIM) / np.sqrt(DIM)
            sentences = [v / np.linalg.norm(v)] + [boiler[i] for i in range(rng.integers(0, 3))]
            rows.append((a, lab, np.stack(sentences)))
    order = rng.permutation(len(rows))
    return make_tickets([rows[i] for i in order])


# the model, trainer, callbacks and logger as conf/ composes them for train.py, made small and quick
# for toy data by overrides (the same keys a user would override)
TEST_OVERRIDES = [
    "model.members=1",
    "model.encoder.heads=2",
    "model.encoder.key_dim=16",
    "model.encoder.sentence_dropout=0.0",
    "model.projection.hidden=64",
    "model.projection.out_dim=32",
    "model.projection.dropout=0.0",
    "model.optim.lr=0.01",
    "model.optim.batch_size=32",
    "trainer.max_epochs=12",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=5",
]
_TEST_CONFIG = OmegaConf.to_container(compose_config("config", TEST_OVERRIDES), resolve=True)
TEST_MODEL = _TEST_CONFIG["model"]
TEST_TRAINER = _TEST_CONFIG["trainer"]
TEST_CALLBACKS = _TEST_CONFIG["callbacks"]
TEST_LOGGER = _TEST_CONFIG["logger"]
SETUP = {"callbacks": TEST_CALLBACKS, "logger": TEST_LOGGER, "score": selection_score}


def toy_parquet(
    path: Path, n_per_label: int = 30, days: float | None = None, late_account: bool = False
) -> Path:
    """The toy problem as a ticket parquet: every tenth ticket without embeddings; one minute apart,
    or spread over ``days``; optionally one more ticket of an account that appears last."""
    toy = toy_problem(n_per_label=n_per_label)
    n = len(toy)
    step = days * 86_400 / n if days else 60.0
    rows = []
    for i in range(n):
        m = toy.meta.iloc[i]
        emb = embeddings_json(toy.sentences(i)) if i % 10 else None
        rows.append(
            ticket(
                i, emb, account=m["account_id"], label=m["label"], unix_timestamp=1_683_000_000.0 + i * step
            )
        )
    if late_account:
        rows.append(
            ticket(
                n,
                embeddings_json(unit_vectors(1)),
                account="late",
                label="Other",
                unix_timestamp=1_683_000_000.0 + n * step,
            )
        )
    return write_tickets(path, rows)


def tiny_run(tmp: Path, data: Path) -> list[str]:
    """Hydra overrides for a quick run on a toy file, everything written under ``tmp``."""
    return [
        f"data.path={data}",
        f"data.cache_dir={tmp / 'cache'}",
        f"data.sentence_cache_dir={tmp / 's'}",
        "trainer.enable_progress_bar=false",
        "data.align_days=false",  # toy files span minutes to days: split where the settings say
        "data.holdout_days=0",
        "model.projection.hidden=64",
        "model.projection.out_dim=32",
        "model.members=1",  # one seed: the ensemble's own tests ask for more
    ]


def tiny_backtest(tmp: Path, data: Path, n_folds: int, *extra: str):
    """The backtest config of a quick run on a toy file: ``n_folds`` test windows of 2 days, a
    1-day validation slice, output under ``tmp / "out"``, then ``extra`` overrides."""
    from hydra import compose, initialize_config_dir

    from tagger.paths import PROJECT_ROOT

    overrides = [
        *tiny_run(tmp, data),
        "data.val_days=1",
        f"output_dir={tmp / 'out'}",
        f"backtest.n_folds={n_folds}",
        "backtest.test_days=2",
        *extra,
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("backtest", overrides=overrides)


def exported(trained: tuple, name: str) -> Path:
    """The ONNX export of the session's ``trained`` model (model_dir, data, tmp), made once as
    ``tmp / name``."""
    from tagger.serving.onnx_export import export_model

    model_dir, _, tmp = trained
    out = tmp / name
    if not out.exists():
        export_model(model_dir, out, parity_tickets=50)
    return out


def served_copy(export_dir: Path, tmp_path: Path) -> Path:
    """A registry of its own at ``tmp_path / "registry"`` with a copy of ``export_dir`` registered
    and promoted: what a test serves and may change (label updates, promotions, broken rows)."""
    from tagger.serving.registry import Registry

    registry = Registry(tmp_path / "registry")
    version, _ = registry.register(export_dir, by="test")
    registry.promote(version, by="test")
    registry.close()
    return tmp_path / "registry"


def registry_for(export_dir: Path) -> Path:
    """A registry beside ``export_dir`` serving it, made once: for tests that only read."""
    registry = export_dir.parent / f"{export_dir.name}-registry"
    if not (registry / "registry.sqlite").exists():
        served_copy(export_dir, registry.parent / f"{export_dir.name}-scratch")
        (registry.parent / f"{export_dir.name}-scratch" / "registry").rename(registry)
    return registry


def serve(registry: Path, *overrides: str, env: dict | None = None):
    """A real API process (``python -m tagger.serving``) over ``registry`` with ``overrides``: (the
    context manager that runs it until /health answers and stops it after, its URL)."""
    import sys

    from bench.servers import free_port, server_process

    port = free_port()
    command = [sys.executable, "-m", "tagger.serving", f"registry_dir={registry}", f"port={port}", *overrides]
    return server_process(command, port, env), f"http://127.0.0.1:{port}"


def wait_for(check, seconds: float, what: str) -> None:
    """Poll ``check()`` until it is true; fail the test with ``what`` after ``seconds``."""
    import time

    started = time.perf_counter()
    while not check():
        assert time.perf_counter() - started < seconds, f"{what} within {seconds:g} s"
        time.sleep(0.01)


@contextmanager
def in_background(work, threads: int = 3):
    """Run ``work(stop)`` in ``threads`` threads for the duration of the block (``stop``, a
    threading.Event, is set at its end, and the threads joined)."""
    import threading

    stop = threading.Event()
    pool = [threading.Thread(target=work, args=(stop,)) for _ in range(threads)]
    for t in pool:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in pool:
            t.join()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One shared model trained by train.py on the toy file, for every test that exports, serves or
    predicts with it: (model_dir, data, tmp). A test that changes what it serves works on a copy
    (:func:`served_copy`) or an export of its own name (:func:`exported`)."""
    from hydra import compose, initialize_config_dir

    from tagger.training import run

    tmp = tmp_path_factory.mktemp("trained")
    data = toy_parquet(tmp / "tickets.parquet")
    overrides = [
        *tiny_run(tmp, data),
        "data.val_days=0.05",
        f"output_dir={tmp / 'out'}",
        f"models_dir={tmp / 'models'}",
        "trainer.max_epochs=2",
        "model.members=2",  # what train.py serves by default: an ensemble of seeds, as one model
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        out = run(compose("config", overrides=overrides))
    return out["model_dir"], data, tmp


def baseline(name: str, **overrides):
    """The baseline ``name`` built with conf/model/NAME.yaml's settings (its grid aside), then
    ``overrides``: the settings a test changes, never a second copy of the defaults."""
    from tagger.estimators import load_model_config, make_baseline

    return make_baseline(load_model_config(name), tuned=False, **overrides)


@pytest.fixture(scope="session")
def real_trained(tmp_path_factory):
    """A model trained on a small dataset built by the project's builder from real text (its
    all-MiniLM-L6-v2 sentence embeddings: intent sentences among greetings, signatures and quoted
    history), exported: (export directory, its held-out tickets after the training window as
    /predict bodies, the data file). Tests serve it through a copy (:func:`served_copy`)."""
    import pyarrow.parquet as pq
    from hydra import compose, initialize_config_dir

    from tagger.data.splits import cutoff_seconds
    from tagger.embed import SentenceEmbedder
    from tagger.serving.onnx_export import export_model
    from tagger.synth.build import build_dataset
    from tagger.synth.config import build_config
    from tagger.training import run

    tmp = tmp_path_factory.mktemp("real")
    config = build_config(n_accounts=6, n_tickets=1500, n_single_label=1, n_few_label=1, max_labels=20)
    data = build_dataset(config, tmp / "tickets.parquet", embedder=SentenceEmbedder(tmp / "sentences"))
    overrides = [
        *tiny_run(tmp, data),
        "data.holdout_days=14",  # the last two weeks are never seen: the held-out tickets
        f"output_dir={tmp / 'out'}",
        f"models_dir={tmp / 'models'}",
        "trainer.max_epochs=4",
    ]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        out = run(compose("config", overrides=overrides))
    export_model(out["model_dir"], tmp / "export", parity_tickets=50)
    split = json.loads((Path(out["model_dir"]) / "data.json").read_text())["split"]
    table = pq.read_table(data, columns=["account_id", "unix_timestamp", "email_sentence_embeddings"])
    held = np.flatnonzero(table.column("unix_timestamp").to_numpy() >= cutoff_seconds(split))
    accounts = table.column("account_id").to_pylist()
    texts = table.column("email_sentence_embeddings").to_pylist()
    bodies = [{"account_id": accounts[i], "email_sentence_embeddings": texts[i]} for i in held]
    return tmp / "export", bodies, data
