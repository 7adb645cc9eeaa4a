"""The benchmarks read conf/bench/*.yaml through Hydra: overrides apply, mistakes stop with one line."""

from __future__ import annotations

import pytest

from bench.config import bench_config


@pytest.mark.parametrize(
    "name",
    ["serving", "ingest", "scale", "label_update", "batch", "ddp", "row_groups", "contract", "lifecycle"],
)
def test_every_benchmark_has_its_config(name):
    assert bench_config(name, [], "")


def test_overrides_apply_and_mistakes_stop_the_command(capsys):
    cfg = bench_config("serving", ["seconds=2", "rates=[50]"], "")
    assert cfg.seconds == 2 and list(cfg.rates) == [50] and cfg.repeats == 3
    for argv, said in ((["secnds=2"], "secnds"), (["--seconds", "2"], "key=value")):
        with pytest.raises(SystemExit) as stop:
            bench_config("serving", argv, "")
        assert stop.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        bench_config("scale", ["--help"], "Scale benchmark.")
    assert stop.value.code == 0 and "merchants:" in capsys.readouterr().out
