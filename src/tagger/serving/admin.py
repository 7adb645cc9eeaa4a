"""Onboarding without retraining: add, rename or retire a merchant's labels, optionally folding in a
few labelled tickets; live for running APIs within their ``reload_interval``, and kept in the
registry so that the change outlives the model it was made on.

    python -m tagger.serving.admin account=ID 'add=["Billing::Invoice copy"]' 'rename=["Refund=Refunds"]' \\
        'retire=["Old label"]' [examples=tickets.parquet] [create_account=true] [registry_dir=DIR]
    python -m tagger.serving.admin account=ID rollback=true   # undo the merchant's last change
    python -m tagger.serving.admin account=ID history=true    # the merchant's changes: who, when, what

The API's ``POST /admin/labels`` makes the same change (:meth:`Registry.update`). Label names are
embedded with all-MiniLM-L6-v2 in ONNX Runtime (``name_encoder.onnx``, no torch) and go through the
served model's ``label_tower.onnx``; examples go through its ``model.onnx``.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from tagger.model.label_update import LabelUpdate, UpdateError
from tagger.paths import command_config, resolve
from tagger.serving.name_encoder import NameEncoder
from tagger.serving.registry import LockTimeout, Registry


def who() -> str:
    """Who runs a command, as the registry records it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def examples_from_parquet(path: str | Path, account: str) -> dict[str, list[np.ndarray]]:
    """An account's labelled tickets with embeddings from a parquet of the product's schema."""
    import tempfile

    from tagger.data.cache import load_tickets

    with tempfile.TemporaryDirectory() as cache:
        tickets = load_tickets(path, cache_dir=cache, progress=False)
        if tickets.report.n_quarantined:
            print(tickets.report.summary(), file=sys.stderr)
        meta = tickets.meta
        mine = (meta["account_id"].astype(str) == account).to_numpy() & (tickets.n_sentences > 0)
        out: dict[str, list[np.ndarray]] = {}
        for i in np.flatnonzero(mine):
            out.setdefault(str(meta["label"].iat[i]), []).append(np.array(tickets.sentences(i)))
    return out


def _history(registry: Registry, account: str) -> int:
    for change in registry.changes(account, limit=1000):
        when = datetime.fromtimestamp(change["at"], UTC).isoformat(timespec="seconds")
        what = (
            f"rollback of change {change['reverts']}" if change["reverts"] else json.dumps(change["change"])
        )
        print(f"{change['seq']:>8}  {when}  {change['by']}  {what}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``key=value`` overrides of conf/admin.yaml (``account=`` required)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = command_config("admin", argv, __doc__)
    except SystemExit as stop:  # --help, or a mistake said in one line
        return int(stop.code or 0)
    if OmegaConf.is_missing(cfg, "account"):
        print("python -m tagger.serving.admin: say which merchant, account=ID", file=sys.stderr)
        return 2
    account = str(cfg.account).strip()
    rename = {}
    for pair in cfg.rename:
        old, sep, new = str(pair).partition("=")
        if not sep:
            print(f"rename {pair!r}: expected OLD=NEW", file=sys.stderr)
            return 2
        rename[old] = new
    try:
        registry = Registry(resolve(cfg.registry_dir), create=False)
    except Exception as err:
        print(f"refused, nothing changed: {err}", file=sys.stderr)
        return 2
    if cfg.history:
        return _history(registry, account)
    by = str(cfg.by or who())
    try:
        if cfg.rollback:
            result = registry.revert(account, by)
        else:
            examples = examples_from_parquet(cfg.examples, account) if cfg.examples else {}
            update = LabelUpdate(
                account,
                [str(n) for n in cfg.add],
                rename,
                [str(n) for n in cfg.retire],
                examples,
                bool(cfg.create_account),
            )
            served = registry.served()
            embed = NameEncoder(registry.model_dir(served[1])).embed if served else None
            result = registry.update(update, by, embed)
    except (UpdateError, LockTimeout) as err:
        print(f"refused, nothing changed: {err}", file=sys.stderr)
        return 2
    what = f"rolled back change {result['reverted']}" if "reverted" in result else "updated"
    print(
        f"{registry.root}: {result['model_version']} ({what} by {by}); "
        "running servers serve it within their reload interval"
    )
    print(f"  {account}: {len(result['labels'])} labels: {', '.join(result['labels'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
