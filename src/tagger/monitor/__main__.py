"""``python -m tagger.monitor drift [key=value ...]``: which merchants' tickets drift away from what
the deployed model learned (keys of conf/monitor.yaml).

    python -m tagger.monitor drift                          # the built-in data after the model's window
    python -m tagger.monitor drift path=logs/predictions    # the API's prediction log
    python -m tagger.monitor drift path=/x/t.parquet out_dir=/x/drift   # any ticket file, scored here

Writes report.md (one page: the merchants most in need of attention first, with plots), drift.json
and drift.csv (every merchant's figures) under ``out_dir``.
"""

from __future__ import annotations

import json
import sys

from omegaconf import OmegaConf

from tagger.paths import command_config, resolve, shown


def drift(argv: list[str]) -> int:
    """Run the drift report; 0 on success."""
    import pyarrow.parquet as pq

    from tagger.monitor.causes import check, injected
    from tagger.monitor.drift import DriftSettings, drift_table
    from tagger.monitor.report import markdown, plots, where
    from tagger.monitor.windows import deployed, sides

    cfg = command_config("monitor", argv, __doc__)
    model = deployed(cfg.registry_dir)
    reference, current = sides(cfg, model)
    settings = DriftSettings(**OmegaConf.to_container(cfg.tests))
    table = drift_table(
        reference.answers, current.answers, settings, model.accounts, model.labels, current.truth
    )
    verdict = None
    if cfg.path is None and reference.start is not None:  # the model's own data file on both sides
        times = pq.read_table(model.data_file, columns=["unix_timestamp"]).column(0).to_numpy()
        causes = injected(model.data_file, float(times.min()), reference.start, float(times.max()) + 1)
        verdict = check(table, causes) if causes is not None else None
    out_dir = resolve(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "command": " ".join(["python -m tagger.monitor drift", *argv]),
        "model_version": model.version,
        "reference_source": where(reference.source),
        "reference_start": reference.start,
        "reference_end": reference.end,
        "reference_tickets": len(reference.answers),
        "current_source": where(current.source),
        "current_start": current.start,
        "current_tickets": len(current.answers),
        "settings": OmegaConf.to_container(cfg.tests),
    }
    figures = plots(table, out_dir)
    (out_dir / "report.md").write_text(markdown(info, table, figures, verdict))
    table.to_csv(out_dir / "drift.csv", index=False)
    rows = json.loads(table.to_json(orient="records"))
    (out_dir / "drift.json").write_text(json.dumps({**info, "check": verdict, "merchants": rows}, indent=1))
    flagged = table[table.n_flags > 0]
    print(f"{len(flagged)} of {len(table)} merchants need attention; report: {shown(out_dir / 'report.md')}")
    for row in flagged.head(10).itertuples():
        print(f"  {row.account_id}: {', '.join(row.flagged_by)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``drift`` and its overrides."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] != "drift":
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return drift(argv[1:])
    except (FileNotFoundError, ValueError) as err:  # one line, not a traceback
        print(f"tagger.monitor drift: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
