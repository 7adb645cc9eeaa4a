"""Agents' corrections measured on the backtest's last fold: do they improve a merchant's answers
the next week, without retraining?

    python -m tagger.backtest.feedback [key=value ...]      # keys of conf/backtest.yaml

The shared model (one seed) and the per-merchant logistic regression are fit, chosen and refit on
the last fold's training window exactly as in the backtest. Every wrong top-1 answer of the first
``feedback.days`` of the test window (a ticket with embeddings) comes back as a correction with its
true label; each merchant's corrections fold into its label vectors (:func:`correction_batch`, the
label-update path); the model is scored on the next ``feedback.days``, on the merchants that got
corrections (the others' labels are not touched, and the report counts their answers that changed).
The comparison is the logistic regression refit per merchant on its training window plus the same
corrected tickets.

The fold rule's ``example_weight`` and ``min_agree`` are chosen on the validation slice, never on
the test window: the selection fit (which has not seen the validation slice) gets the wrong answers
of the slice's first ``feedback.days`` as corrections and is scored on the next ``feedback.days``.

Writes ``feedback.output_dir``: report.md, metrics.json, per_merchant.csv, gain.png.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from tagger.data.splits import DAY
from tagger.data.tickets import Tickets
from tagger.metrics import outcomes
from tagger.model.cold_start import update_labels
from tagger.model.corrections import Correction, FoldRule, correction_batch

SYSTEMS = ("shared", "shared + corrections", "logreg", "logreg refit + corrections")


def corrections_of(model, tickets: Tickets) -> tuple[list[Correction], np.ndarray]:
    """A correction for each ticket (with embeddings) whose top-1 answer by ``model`` is wrong, and
    the positions of those tickets in ``tickets``."""
    pred = model.predict(tickets)
    given = np.asarray(pred.labels(0), object)
    truth = tickets.meta["label"].astype(str).to_numpy()
    rows = np.flatnonzero(tickets.meta["has_embeddings"].to_numpy() & (given != truth))
    accounts = tickets.meta["account_id"].astype(str).to_numpy()
    out = [
        Correction(
            accounts[i],
            truth[i],
            None if given[i] is None else str(given[i]),
            embeddings=np.asarray(tickets.sentences(int(i))),
        )
        for i in rows
    ]
    return out, rows


def with_corrections(model, corrections: list[Correction], rule: FoldRule):
    """``model`` with each merchant's corrections folded in (one update per merchant); and the
    merchants whose labels moved."""
    by_account: dict[str, list[Correction]] = {}
    for c in corrections:
        by_account.setdefault(c.account_id, []).append(c)
    updates = []
    for account, mine in sorted(by_account.items()):
        rows = model.table.rows_of(account)
        labels = model.table.frame["label"].iloc[rows.start : rows.stop].astype(str).tolist()
        batch = correction_batch(account, labels, mine, rule)
        if batch.update is not None and len(rows):
            updates.append(batch.update)
    moved = [u.account_id for u in updates]
    return (update_labels(model, updates) if updates else model), moved


def _days(tickets: Tickets, start: float, days: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the first ``days`` from ``start`` and of the ``days`` after them."""
    ts = tickets.meta["unix_timestamp"].to_numpy()
    cut = start + days * DAY
    return ts < cut, (ts >= cut) & (ts < cut + days * DAY)


def _accuracy(model, tickets: Tickets, seen) -> pd.DataFrame:
    out = outcomes(model.predict(tickets), tickets, seen)
    return out[["ticket_id", "account_id", "correct", "top3_hit"]]


def choose_rule(cfg: DictConfig, selection, val: Tickets, seen, fixed: FoldRule) -> tuple[FoldRule, list]:
    """The (example_weight, min_agree) of ``cfg.backtest.feedback``'s grid with the most correct answers
    on the validation slice's second stretch, after the first stretch's corrections (ties: the
    earlier point, so the lighter touch)."""
    fb = cfg.backtest.feedback
    first, second = _days(val, float(val.meta["unix_timestamp"].min()), float(fb.days))
    first_t, second_t = val.subset(first), val.subset(second)
    corrections, _ = corrections_of(selection, first_t)
    corrected = sorted({c.account_id for c in corrections})
    scored = second_t.subset(second_t.meta["account_id"].astype(str).isin(corrected).to_numpy())
    base = int(_accuracy(selection, scored, seen)["correct"].sum())
    search, best = [], (base, None)
    for weight in fb.example_weights:
        for agree in fb.min_agree:
            rule = replace(fixed, example_weight=float(weight), min_agree=int(agree))
            model, _ = with_corrections(selection, corrections, rule)
            hits = int(_accuracy(model, scored, seen)["correct"].sum())
            search.append(
                {
                    "example_weight": float(weight),
                    "min_agree": int(agree),
                    "val_gain": (hits - base) / len(scored) if len(scored) else float("nan"),
                }
            )
            if best[1] is None or hits > best[0]:
                best = (hits, rule)
    return best[1], search


def clustered_gain(a: pd.DataFrame, b: pd.DataFrame, draws: int, seed: int) -> dict:
    """Accuracy of ``b`` minus ``a`` (rows aligned, one per ticket) with a merchant-clustered percentile
    bootstrap interval (95%)."""
    if not len(a):
        return {"gain": float("nan"), "ci95": [float("nan")] * 2, "merchants": 0, "tickets": 0}
    accounts = a["account_id"].to_numpy()
    codes, names = pd.factorize(accounts)
    n = np.bincount(codes, minlength=len(names)).astype(float)
    diff = np.bincount(codes, b["correct"].to_numpy(float) - a["correct"].to_numpy(float), len(names))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), size=(draws, len(names)))
    stats = diff[picks].sum(1) / n[picks].sum(1)
    return {
        "gain": float(diff.sum() / n.sum()),
        "ci95": [float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))],
        "merchants": len(names),
        "tickets": int(n.sum()),
    }


def run_feedback(cfg: DictConfig) -> dict:
    """The experiment described in the module docstring; returns metrics.json's content."""
    from tagger.backtest.folds import configured_folds
    from tagger.backtest.run import fold_fit, fold_split, model_configs, single_process
    from tagger.data.dataset import load_dataset
    from tagger.paths import compose_config, resolve, shown

    started = time.perf_counter()
    single_process(cfg)
    fb = cfg.backtest.feedback
    cfg = OmegaConf.merge(cfg, {"output_dir": fb.output_dir})  # the fits' logs under its own folder
    fixed = FoldRule(**OmegaConf.to_container(compose_config("feedback").fold))
    tickets = load_dataset(cfg.data)
    folds = configured_folds(tickets.meta["unix_timestamp"].to_numpy(), cfg)
    fold = folds[-1]
    data = fold_split(cfg, tickets, fold, last=True)
    configs = model_configs(OmegaConf.merge(cfg, {"backtest": {"models": ["shared", "logreg"]}}))
    shared = fold_fit(cfg, "shared", configs["shared"], int(cfg.seed), data)
    logreg = fold_fit(cfg, "logreg", configs["logreg"], None, data)
    rule, search = choose_rule(cfg, shared.selection, data.val, data.train.meta, fixed)
    print(f"chosen on the validation slice: {rule}")

    # the test window: corrections from its first days, scored on the next ones
    first, second = _days(data.test, fold.test_start, float(fb.days))
    week1, week2 = data.test.subset(first), data.test.subset(second)
    corrections, rows = corrections_of(shared.served, week1)
    corrected_model, moved = with_corrections(shared.served, corrections, rule)
    seen = data.window.meta
    frames = {
        "shared": _accuracy(shared.served, week2, seen),
        "shared + corrections": _accuracy(corrected_model, week2, seen),
        "logreg": _accuracy(logreg.served, week2, seen),
    }
    # the baseline refit on the corrected merchants' window tickets plus the same corrected tickets
    in_window, in_test = fold.masks(tickets.meta["unix_timestamp"].to_numpy(), last=True)
    test_at = np.flatnonzero(in_test)[np.flatnonzero(first)[rows]]
    tuned = logreg.selection
    refit = tuned.factory(**tuned.chosen)
    corrected = sorted({c.account_id for c in corrections})
    ids = tickets.meta["account_id"].astype(str).isin(corrected).to_numpy()
    refit.fit(tickets.subset(np.sort(np.r_[np.flatnonzero(in_window & ids), test_at])), None)
    corrected_rows = week2.meta["account_id"].astype(str).isin(corrected).to_numpy()
    refit_frame = frames["logreg"].copy()
    refit_frame.loc[corrected_rows, "correct"] = _accuracy(refit, week2.subset(corrected_rows), seen)[
        "correct"
    ].to_numpy()
    frames["logreg refit + corrections"] = refit_frame
    result = _summary(cfg, frames, corrected_rows, corrections, moved, rule, search, fold, week1, week2)
    result["seconds"] = time.perf_counter() - started
    result["data"] = {"file": shown(resolve(cfg.data.path)), "sha256": tickets.digest}
    out = resolve(fb.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(out, result, frames, corrected_rows)
    return result


def _summary(cfg, frames, corrected_rows, corrections, moved, rule, search, fold, week1, week2) -> dict:
    draws, seed = int(cfg.backtest.bootstrap), int(cfg.seed)
    on = {name: f[corrected_rows].reset_index(drop=True) for name, f in frames.items()}
    off = {name: f[~corrected_rows] for name, f in frames.items()}
    untouched = off["shared + corrections"]["correct"].to_numpy() != off["shared"]["correct"].to_numpy()
    by_merchant = {n: f.groupby("account_id")["correct"].mean() for n, f in on.items()}
    moved_by = np.sign(by_merchant["shared + corrections"] - by_merchant["shared"])
    return {
        "fold": fold.describe(),
        "rule": {k: getattr(rule, k) for k in ("min_agree", "example_weight", "max_turn_deg", "add_unknown")},
        "rule_search_on_validation": search,
        "corrections": len(corrections),
        "corrections_tickets_first_days": len(week1),
        "merchants_corrected": len({c.account_id for c in corrections}),
        "merchants_moved": len(moved),
        "scored_tickets": len(week2),
        "accuracy_corrected_merchants": {n: float(f["correct"].mean()) for n, f in on.items()},
        "accuracy_other_merchants": {n: float(f["correct"].mean()) for n, f in off.items()},
        "other_merchants_answers_changed": int(untouched.sum()),
        "corrected_merchants_up_same_down": [
            int((moved_by > 0).sum()),
            int((moved_by == 0).sum()),
            int((moved_by < 0).sum()),
        ],
        "gain_corrections": clustered_gain(on["shared"], on["shared + corrections"], draws, seed),
        "gain_logreg_refit": clustered_gain(on["logreg"], on["logreg refit + corrections"], draws, seed),
        "corrections_vs_logreg_refit": clustered_gain(
            on["logreg refit + corrections"], on["shared + corrections"], draws, seed
        ),
    }


def _write(out, result: dict, frames: dict, corrected_rows: np.ndarray) -> None:
    """report.md, metrics.json, per_merchant.csv and gain.png under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    table = pd.DataFrame(
        {n: f[corrected_rows].groupby("account_id")["correct"].mean() for n, f in frames.items()}
    )
    table.insert(0, "tickets", frames["shared"][corrected_rows].groupby("account_id").size())
    table = table.sort_values("tickets", ascending=False)
    table.to_csv(out / "per_merchant.csv", float_format="%.4f")
    fig, ax = plt.subplots(figsize=(6, 4))
    gain = table["shared + corrections"] - table["shared"]
    ax.scatter(table["tickets"], gain, s=14, label="shared + corrections")
    ax.scatter(
        table["tickets"],
        table["logreg refit + corrections"] - table["logreg"],
        s=14,
        marker="x",
        label="logreg refit + corrections",
    )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set(
        xlabel="merchant's scored tickets",
        ylabel="accuracy gain over no feedback",
        title="Corrections, next week: gain per merchant",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gain.png", dpi=120)
    plt.close(fig)
    (out / "report.md").write_text(_markdown(result, table))


def _markdown(r: dict, table: pd.DataFrame) -> str:
    def ci(g: dict) -> str:
        return f"{g['gain']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]"

    acc_on, acc_off = r["accuracy_corrected_merchants"], r["accuracy_other_merchants"]
    lines = [
        "# Agents' corrections, measured on the last fold",
        "",
        "Command: `python -m tagger.backtest.feedback` (src/tagger/backtest/feedback.py). Test window "
        f"{r['fold']['test_start']} to {r['fold']['test_end']}: the wrong top-1 answers of its first "
        f"days ({r['corrections_tickets_first_days']} tickets) came back as {r['corrections']} corrections "
        f"from {r['merchants_corrected']} merchants; {r['merchants_moved']} merchants' labels moved "
        f"(rule chosen on the validation slice: {r['rule']}). Scored on the next days: "
        f"{r['scored_tickets']} tickets.",
        "",
        "| system | accuracy, merchants with corrections | accuracy, other merchants |",
        "|---|---|---|",
        *(f"| {n} | {acc_on[n]:.4f} | {acc_off[n]:.4f} |" for n in SYSTEMS),
        "",
        "Gains on the merchants with corrections (merchant-clustered bootstrap, 95%):",
        "",
        f"- corrections folded into the shared model: {ci(r['gain_corrections'])}",
        f"- the per-merchant logreg refit with the same tickets: {ci(r['gain_logreg_refit'])}",
        f"- shared + corrections minus logreg refit + corrections: {ci(r['corrections_vs_logreg_refit'])}",
        "- merchants with corrections, next-days accuracy up / unchanged / down: "
        + " / ".join(map(str, r["corrected_merchants_up_same_down"])),
        f"- other merchants (no correction): {r['other_merchants_answers_changed']} answers changed "
        "(their labels are not touched)",
        "",
        "![gain per merchant](gain.png)",
        "",
        "Rule search on the validation slice (accuracy gain on its second stretch):",
        "",
        "| example_weight | min_agree | gain |",
        "|---|---|---|",
        *(
            f"| {s['example_weight']:g} | {s['min_agree']} | {s['val_gain']:+.4f} |"
            for s in r["rule_search_on_validation"]
        ),
        "",
        f"Per merchant: per_merchant.csv ({len(table)} merchants). Took {r['seconds'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``key=value`` overrides of conf/backtest.yaml."""
    from tagger.paths import command_config

    cfg = command_config("backtest", sys.argv[1:] if argv is None else argv, __doc__)
    result = run_feedback(cfg)
    print(json.dumps({k: result[k] for k in ("gain_corrections", "gain_logreg_refit")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
