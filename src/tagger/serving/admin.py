"""Onboarding without retraining: add, rename or retire a merchant's labels in an export directory,
optionally folding in a few labelled tickets, and make the change live for running APIs.

    python -m tagger.serving.admin account=ID 'add=["Billing::Invoice copy"]' 'rename=["Refund=Refunds"]' \\
        'retire=["Old label"]' [examples=tickets.parquet] [create_account=true] [export_dir=DIR]
    python -m tagger.serving.admin account=ID rollback=true   # the merchant's previous labels again

The same :func:`update_export` serves the API's ``POST /admin/labels``. The label names are embedded
with all-MiniLM-L6-v2 in ONNX Runtime (``name_encoder.onnx``, no torch) and go through
``label_tower.onnx``; examples go through ``model.onnx``. The change is a new label generation,
checked before it is made live (:mod:`tagger.serving.label_store`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from tagger.data.tickets import Tickets
from tagger.manifest import ArtifactError
from tagger.model.label_update import AccountLabels, LabelState, LabelUpdate, UpdateError, apply_update
from tagger.paths import command_config, latest_export
from tagger.serving.label_store import (
    catch_up,
    current_generation,
    generation_number,
    lock,
    rollback,
    write_generation,
)
from tagger.serving.name_encoder import NameEncoder
from tagger.serving.onnx_predictor import LabelView, OnnxPredictor

TextEmbedder = Callable[[list[str]], np.ndarray]


def update_export(
    predictor: OnnxPredictor, updates: list[LabelUpdate], embed: TextEmbedder, by: str = "admin"
) -> dict:
    """Apply ``updates`` (all or none) to the live generation of ``predictor``'s export directory,
    write the result as a new live generation and serve it in ``predictor``; returns a summary.
    Raises :class:`UpdateError` for a refused update (nothing is written)."""
    started = time.perf_counter()
    weight = float(predictor.serving.get("cold_start", {}).get("name_weight", 2.0))
    updates = [dataclasses.replace(u, account_id=str(u.account_id or "").strip()) for u in updates]

    def encode_names(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        emb = np.asarray(embed(texts), np.float32)
        return emb, predictor.name_vectors(emb)

    def encode_tickets(labels: AccountLabels, tickets: list[np.ndarray]) -> np.ndarray:
        batch = Tickets.from_vectors(["-"] * len(tickets), tickets)
        pending = LabelView("pending", LabelState({"-": labels}, labels.query))
        return predictor.ticket_vectors(batch, view=pending)

    with lock(predictor.export_dir):
        name = current_generation(predictor.export_dir)  # the latest, whoever wrote it
        if name != predictor.view.generation:
            predictor.refresh()
        if predictor.view.generation != name:
            raise UpdateError(
                "labels", f"the live generation {name} cannot be read: {predictor.last_reload_error}", 503
            )
        state = predictor.view.state
        for update in updates:
            state = apply_update(state, update, encode_names, encode_tickets, weight)
        changed = {u.account_id: state.accounts[u.account_id] for u in updates}
        created = tuple(a for a in changed if a not in predictor.view.state.accounts)
        change = {"by": by, "from": name, "updates": [_describe(u) for u in updates]}
        generation = write_generation(predictor.export_dir, changed, change, created)
        # checked from disk, as every other server process will read it
        since = generation_number(name)
        fresh, read = catch_up(
            predictor.export_dir, predictor.view.state, since, generation_number(generation)
        )
        predictor.use(LabelView(generation, fresh), read)
    return {
        "generation": generation,
        "previous": name,
        "model_version": predictor.version,
        "accounts": {u.account_id: list(state.accounts[u.account_id].labels) for u in updates},
        "seconds": round(time.perf_counter() - started, 4),
    }


def _describe(update: LabelUpdate) -> dict:
    return {
        "account_id": update.account_id,
        "add": list(update.add),
        "rename": dict(update.rename),
        "retire": list(update.retire),
        "examples": {k: len(v) for k, v in update.examples.items()},
        "create_account": update.create_account,
    }


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
    account = str(cfg.account)
    rename = {}
    for pair in cfg.rename:
        old, sep, new = str(pair).partition("=")
        if not sep:
            print(f"rename {pair!r}: expected OLD=NEW", file=sys.stderr)
            return 2
        rename[old] = new
    export_dir = Path(cfg.export_dir) if cfg.export_dir else latest_export()
    if cfg.rollback:
        try:
            with lock(export_dir):
                generation = rollback(export_dir, account.strip(), {"by": "cli"})
        except (ValueError, ArtifactError) as err:
            print(f"refused, nothing changed: {err}", file=sys.stderr)
            return 2
        print(f"{export_dir}: {account} rolled back in generation {generation}")
        return 0
    examples = examples_from_parquet(cfg.examples, account) if cfg.examples else {}
    add, retire = [str(name) for name in cfg.add], [str(name) for name in cfg.retire]
    update = LabelUpdate(account, add, rename, retire, examples, bool(cfg.create_account))
    predictor = OnnxPredictor(export_dir)
    try:
        result = update_export(predictor, [update], NameEncoder(predictor.export_dir).embed, by="cli")
    except UpdateError as err:
        print(f"refused, nothing changed: {err}", file=sys.stderr)
        return 2
    print(
        f"{predictor.export_dir}: generation {result['previous']} -> {result['generation']} "
        f"in {result['seconds']:.2f} s"
    )
    for changed, labels in result["accounts"].items():
        print(f"  {changed}: {len(labels)} labels: {', '.join(labels)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
