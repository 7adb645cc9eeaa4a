"""The life of a model in the registry: list, register, promote, roll back.

    python -m tagger.serving.models list                     # the models, what is served, the last promotions
    python -m tagger.serving.models promote version=VERSION  # serve it, label changes replayed onto it
    python -m tagger.serving.models promote                  # the newest registered model
    python -m tagger.serving.models rollback                 # serve again the model served before
    python -m tagger.serving.models register path=EXPORT_DIR # add a standalone export directory (copied)

Running servers of the registry swap to a promoted model within their ``reload_interval``, with no
restart and no failed request. Settings: conf/models.yaml (registry_dir, version, path, by).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from tagger.paths import resolve, shown, subcommand_config
from tagger.serving.registry import Registry

COMMANDS = ("list", "promote", "rollback", "register")


def print_report(report: dict) -> None:
    """What a promotion did, in a few lines."""
    if report.get("unchanged"):
        print(f"{report['version']} is already served: nothing changed")
        return
    print(
        f"{report['kind']}: now serving {report['version']} (was {report['previous']}) "
        f"in {report['seconds']:.2f} s; label changes of {report['merchants_carried']} merchants carried "
        f"(through change {report['through_change']})"
    )
    for account, notes in report["not_carried_as_asked"].items():
        for note in notes:
            print(f"  {account}: {note}")


def _when(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds") if seconds else "-"


def _list(registry: Registry) -> None:
    served = registry.served()
    print(f"registry {shown(registry.root)}: {len(registry.models())} models")
    for m in registry.models():
        mark = "*" if served and served[1] == m["version"] else " "
        print(
            f" {mark} {m['version']}  registered {_when(m['registered'])} by {m['by']}  "
            f"last promoted {_when(m['last_promoted'])}"
        )
    for p in registry.promotions(5):
        print(f"   promotion {p['seq']}: {p['kind']} {p['version']} at {_when(p['at'])} by {p['by']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: a command, then ``key=value`` overrides of conf/models.yaml."""
    from tagger.serving.admin import who

    try:
        command, cfg = subcommand_config("models", sys.argv[1:] if argv is None else argv, __doc__, COMMANDS)
    except SystemExit as stop:  # --help, or a mistake said in one line
        return int(stop.code or 0)
    by = str(cfg.by or who())
    try:
        registry = Registry(resolve(cfg.registry_dir), create=command == "register")
        if command == "list":
            _list(registry)
        elif command == "register":
            if not cfg.path:
                print("register: say which export directory, path=DIR", file=sys.stderr)
                return 2
            version, new = registry.register(resolve(cfg.path), by=by)
            print(f"registered {version}" if new else f"{version} was already registered")
        elif command == "promote":
            models = registry.models()
            if not models:
                print("no registered model: run `python export.py` first", file=sys.stderr)
                return 2
            print_report(registry.promote(str(cfg.version or models[-1]["version"]), by=by))
        else:
            print_report(registry.rollback(by=by))
    except Exception as err:
        print(f"{command} refused, nothing changed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
