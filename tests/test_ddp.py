"""Training on several processes: each DDP rank reads its shard of the one memory-mapped ticket store
(a time split is a view of it, not a copy), and ``python train.py trainer.strategy=ddp
trainer.devices=2`` trains for real on CPU (gloo), rank 0 writing the metrics."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_run, toy_parquet

from tagger.data.cache import load_tickets
from tagger.data.splits import holdout_split, time_split
from tagger.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow  # trains by train.py in subprocesses, two of them on two processes


def test_a_time_split_of_the_memory_mapped_store_is_a_view_not_a_copy(tmp_path):
    data = toy_parquet(tmp_path / "tickets.parquet")  # time-ordered, every tenth ticket without embeddings
    tickets = load_tickets(data, cache_dir=tmp_path / "cache", progress=False)
    assert isinstance(tickets.embeddings, np.memmap)
    development, _ = holdout_split(tickets, 0.01)
    train, val, _ = time_split(development, 0.05)
    has = train.meta["has_embeddings"].to_numpy()
    for part in (development, train, val, train.subset(has)):
        assert np.shares_memory(part.embeddings, tickets.embeddings)  # pages shared, nothing copied
    for i in (0, 7, len(train) - 1):
        j = int(np.flatnonzero(tickets.meta["ticket_id"] == train.meta["ticket_id"].iat[i])[0])
        np.testing.assert_array_equal(train.sentences(i), tickets.sentences(j))
    scattered = tickets.subset(np.array([5, 1, 30]))  # out of order: gathered, the same vectors
    assert not np.shares_memory(scattered.embeddings, tickets.embeddings)
    for i, j in enumerate((5, 1, 30)):
        np.testing.assert_array_equal(scattered.sentences(i), tickets.sentences(j))


def _train(tmp_path, data, name: str, *extra: str) -> dict:
    overrides = [
        *tiny_run(tmp_path, data),
        "data.val_days=0.05",
        f"output_dir={tmp_path / name}",
        "save_model=false",
        "trainer.max_epochs=2",
        "compare_with=[]",
        f"hydra.run.dir={tmp_path / name / 'hydra'}",
        *extra,
    ]
    command = [sys.executable, "train.py", *overrides]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / name / "metrics.json").read_text())["models"]["shared"]


def test_ddp_on_two_cpu_processes_splits_the_tickets_and_rank_zero_reports(tmp_path):
    data = toy_parquet(tmp_path / "tickets.parquet")
    single = _train(tmp_path, data, "single")
    ddp = _train(tmp_path, data, "ddp", "trainer.strategy=ddp", "trainer.devices=2")
    assert single["fit"]["world_size"] == 1 and ddp["fit"]["world_size"] == 2
    n, batch = single["fit"]["train_tickets"], 128  # conf/model/shared.yaml optim.batch_size
    assert single["fit"]["batches_per_epoch"] == math.ceil(n / batch)
    assert ddp["fit"]["batches_per_epoch"] == math.ceil(math.ceil(n / 2) / batch)  # each rank: its half
    assert ddp["overall"]["n"] == single["overall"]["n"]  # rank 0 scores every validation ticket
    assert ddp["overall"]["accuracy"] > 0.8
