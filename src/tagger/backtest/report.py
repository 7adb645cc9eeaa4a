"""report.md of a backtest: templates/report.md.j2 holds the prose, this module the figures it shows,
its tables as DataFrames rendered by :meth:`pandas.DataFrame.to_markdown` (the plots:
:mod:`tagger.backtest.plots`)."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from tagger.metrics import coverage_ceiling
from tagger.model.ensemble import SeedEnsemble

# the metrics compared against the baselines, as the report names them
LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "macro_f1_account_mean": "macro-F1 (account mean)",
    "top3_accuracy": "top-3",
    "coverage_at_90_precision": "coverage @90% precision",
    "coverage_at_95_precision": "coverage @95% precision",
    "precision_at_95_target": "precision @95% target",
    "ece": "ECE (answered)",
}
# the per-seed table's rows
SEED_METRICS = (
    "accuracy",
    "macro_f1",
    "macro_f1_account_mean",
    "top3_accuracy",
    "ece",
    "coverage_at_90_precision",
    "coverage_at_95_precision",
    "precision_at_95_target",
)
PROMISE = 0.945  # the realised precision a 95% target must reach on every fold (issue goal)
# the 95% target's figures with their intervals, as the final holdout and the promise tables show them
AT_95 = (
    "coverage_at_95_precision",
    "precision_at_95_target",
    "hier_coverage_at_95_precision",
    "hier_precision_at_95_target",
)


def write_report(
    result: dict, pooled: dict[str, pd.DataFrame], out: Path, staleness_plot: bool = False
) -> None:
    """Write report.md into ``out`` from metrics.json's content ``result`` and each model's test
    outcomes ``pooled`` (the first seed's); ``staleness_plot``: whether staleness.png is drawn (the
    scored models are refits)."""
    (out / "report.md").write_text(render("report.md.j2", report_context(result, pooled, staleness_plot)))


def report_context(result: dict, pooled: dict[str, pd.DataFrame], staleness_plot: bool = False) -> dict:
    """What templates/report.md.j2 renders: metrics.json's figures its prose quotes, and every table
    as markdown."""
    seeds = result.get("seeds") or []
    seeded = [n for n in result.get("seeded_models", []) if n in result["models"]]
    return {
        "data": result["data"],
        "n_folds": len(result["folds"]),
        "refit": bool(result.get("refit")),  # the refit's effect is measured when the models were refit
        "seconds": result["seconds"],
        "final": _final_holdout(result.get("final_holdout")),
        "intervals": result.get("intervals"),
        "containment": _containment(result["models"]),
        "seeds": seeds,
        "seeded": seeded if len(seeds) > 1 else [],
        "overall": _overall_table(result["models"]),
        "promise": _promise(result, pooled),
        "promise_level": PROMISE,
        "ensemble": _ensemble(result.get("ensemble")),
        "stacks": _stacks(result),
        "variants": _variants(result),
        "seed_tables": _seed_tables(result["models"]),
        "comparison": _comparison(result.get("paired_bootstrap")),
        "refit_table": _refit_table(result.get("refit")),
        "staleness": _staleness_table(result.get("staleness") or {}),
        "search": _search_table(result["models"]),
        "cold": _cold_start(result.get("cold_start") or {}),
        "conclusions": _conclusions(result),
        "slices": _slices_table(result["models"]),
        "folds": _folds_table(result["folds"]),
        "staleness_plot": staleness_plot,
        "learning_curve_plot": bool((result.get("cold_start") or {}).get("learning_curve")),
    }


def render(template: str, context: dict) -> str:
    """``template`` of templates/ beside this module rendered with ``context``; the number formats
    of the report are its filters: ``f3`` (three decimals or n/a), ``signed_ci`` (the interval of a
    difference), ``fmt`` (a Python format spec)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tagger.backtest", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # markdown, not HTML
    )
    env.filters.update(f3=_f, signed_ci=_signed_ci, fmt=format)
    return env.get_template(template).render(context)


def _f(value: float | None) -> str:
    """Three decimals, or n/a."""
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _ci(model: dict, metric: str) -> str:
    """`` [lo, hi]``: the model's interval of ``metric``, or nothing without one."""
    ci = model.get("ci95", {}).get(metric)
    return f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else ""


def _with_ci(model: dict, metric: str) -> str:
    """The model's ``metric`` and its interval."""
    return f"{_f(model['overall'].get(metric))}{_ci(model, metric)}"


def _signed(value: float) -> str:
    """A difference with its sign, three decimals."""
    # a difference of two equal figures can come out as -1e-16 (a mean over seeds): not "-0.000"
    return "n/a" if np.isnan(value) else f"{0.0 if abs(value) < 1e-12 else value:+.3f}"


def _signed_ci(ci: list[float] | None) -> str:
    """The interval of a difference, or n/a."""
    if not ci:
        return "n/a"
    return "n/a" if any(np.isnan(v) for v in ci) else f"[{_signed(ci[0])}, {_signed(ci[1])}]"


def markdown_table(rows: list[list[str]], columns: list[str]) -> str:
    """A markdown table of ``rows`` (every cell already text) under ``columns``."""
    # numparse off: "0.000" and "+0.000" stay as written; alignment off: each cell as it is, unpadded,
    # so that a figure's change does not re-pad its whole column
    return pd.DataFrame(rows, columns=columns).to_markdown(index=False, disable_numparse=True, stralign=None)


def _containment(models: dict) -> dict:
    """How many intervals of the overall table there are, and how many contain their own estimate
    (counted, not assumed)."""
    checked = missed = 0
    for m in models.values():
        for metric, ci in (m.get("ci95") or {}).items():
            value = m["overall"].get(metric)
            if ci and value is not None and np.isfinite(value) and all(np.isfinite(ci)):
                checked += 1
                missed += not ci[0] - 1e-12 <= value <= ci[1] + 1e-12
    return {"checked": checked, "contained": checked - missed}


def _overall_table(models: dict) -> str:
    """The headline table: every model's figures over all folds, with their intervals."""
    rows = []
    for name, m in models.items():
        o = m["overall"]
        rows.append(
            [
                name,
                _with_ci(m, "accuracy"),
                _f(o.get("accuracy_chance")),
                _with_ci(m, "macro_f1"),
                _with_ci(m, "macro_f1_account_mean"),
                _f(o["weighted_f1"]),
                _with_ci(m, "top3_accuracy"),
                _f(o.get("top3_chance")),
                _f(o["parent_accuracy"]),
                _f(o["ece"]),
                f"{_f(o.get('coverage_at_90_precision'))} ({_f(o.get('precision_at_90_target'))})",
                f"{_with_ci(m, 'coverage_at_95_precision')} ({_f(o.get('precision_at_95_target'))})",
            ]
        )
    columns = [
        "model",
        "accuracy",
        "chance acc.",
        "macro-F1",
        "macro-F1 (account mean)",
        "weighted F1",
        "top-3",
        "chance top-3",
        "parent acc.",
        "ECE",
        "coverage @90% (prec.)",
        "coverage @95% (prec.)",
    ]
    return markdown_table(rows, columns)


def _final_holdout(final: dict | None) -> dict | None:
    """The last fold alone: its table, and the shared model's and the ensemble's comparisons."""
    if not final:
        return None
    headline = ("accuracy", "macro_f1", "macro_f1_account_mean", "top3_accuracy", *AT_95)
    rows = [[name, *(_with_ci(m, k) for k in headline)] for name, m in final["models"].items()]
    columns = ["model", "accuracy", "macro-F1", "macro-F1 (account mean)", "top-3", "coverage @95%"]
    columns += ["realised precision", "with parents: coverage @95%", "realised precision"]
    return {
        **{k: final[k] for k in ("fold", "test_start", "test_end", "intervals")},
        "table": markdown_table(rows, columns),
        "comparison": _strongest_table(final["comparison"]) if final.get("comparison") else None,
        "ensemble": _strongest_table(final["ensemble"]["comparison"], "ensemble")
        if final.get("ensemble")
        else None,
    }


def _strongest_table(comparison: dict, who: str = "shared") -> str:
    """``who`` (the shared model) minus the strongest baseline on each metric, one row per metric."""
    rows = [
        [
            LABELS.get(metric, metric),
            c["baseline"],
            _f(c["baseline_value"]),
            _f(c["shared_value"]),
            _signed(c["difference"]),
            _signed_ci(c.get("ci95")),
            str(c.get("excludes_zero", "n/a")),
        ]
        for metric, c in comparison["strongest"].items()
    ]
    columns = ["metric", "strongest baseline", "baseline", who, f"{who} minus baseline", "95% interval"]
    return markdown_table(rows, [*columns, "excludes zero"])


def _against_rows(rows: dict) -> list[list[str]]:
    """Per metric: its name, the paired difference, its interval and whether that excludes zero."""
    return [
        [
            LABELS.get(metric, metric),
            _signed(c["difference"]),
            _signed_ci(c.get("ci95")),
            str(c.get("excludes_zero", "n/a")),
        ]
        for metric, c in rows.items()
    ]


def _paired_table(first: str, minus: str, entries: list[tuple[str, dict, dict]]) -> str:
    """One row per (name, metric) of ``entries`` (name, its paired differences over all folds, those
    on the final holdout): the difference and its interval, both ways."""
    rows = [
        [
            name,
            LABELS.get(metric, metric),
            _signed(c["difference"]),
            _signed_ci(c.get("ci95")),
            _signed(held.get(metric, {}).get("difference", float("nan"))),
            _signed_ci(held.get(metric, {}).get("ci95")),
        ]
        for name, rows, held in entries
        for metric, c in rows.items()
    ]
    return markdown_table(rows, [first, "metric", minus, "95% interval", "final holdout", "95% interval"])


def _ceiling(frame: pd.DataFrame, target: float) -> float:
    """:func:`coverage_ceiling` fold by fold (a merchant's thresholds may differ between folds)."""
    parts = [(len(part), coverage_ceiling(part, target)) for _, part in frame.groupby("fold")]
    return sum(n * c for n, c in parts) / max(sum(n for n, _ in parts), 1)


def _promise(result: dict, pooled: dict[str, pd.DataFrame]) -> dict | None:
    """Whether the thresholds keep their promise: the threshold method's settings, each model's
    figures at the 95% target with its AURC and ceiling, and the shared model's and the ensemble's
    fold by fold."""
    models = result["models"]
    if not any("hier_coverage_at_95_precision" in m["overall"] for m in models.values()):
        return None
    method = (result.get("config") or {}).get("thresholds") or {}
    rows = []
    for name, m in models.items():
        ceiling = _ceiling(pooled[name], 0.95) if name in pooled else np.nan
        o = m["overall"]
        rows.append(
            [
                name,
                _f(o.get("aurc")),
                *(_with_ci(m, k) for k in AT_95),
                _f(o.get("parent_share_at_95")),
                _f(ceiling),
            ]
        )
    columns = [
        "model",
        "AURC",
        "leaf: coverage @95%",
        "leaf: realised precision",
        "with parents: coverage @95%",
        "with parents: realised precision",
        "answered at the parent",
        "ceiling",
    ]
    by_fold = [(name, models.get(name)) for name in ("shared", SeedEnsemble.name)]
    return {
        "method": {k: method.get(k, "?") for k in ("grid", "kappa", "margin", "delta")},
        "table": markdown_table(rows, columns),
        "by_fold": [{"name": n, "table": _promise_by_fold(m)} for n, m in by_fold if m and m.get("folds")],
    }


def _promise_by_fold(model: dict) -> str:
    """One model's realised precision at the 95% target fold by fold (mean over seeds)."""
    rows = []
    for fold, r in pd.DataFrame(model["folds"]).groupby("fold").mean(numeric_only=True).iterrows():
        precisions = [r.get("precision_at_95_target", np.nan), r.get("hier_precision_at_95_target", np.nan)]
        # nothing auto-tagged keeps the promise vacuously: n/a, not a failure
        kept = "n/a" if np.isnan(precisions).all() else "yes" if np.nanmin(precisions) >= PROMISE else "NO"
        rows.append([str(fold), *(_f(r.get(k)) for k in AT_95), kept])
    columns = ["fold", "leaf coverage", "leaf precision", "coverage with parents", "precision with parents"]
    return markdown_table(rows, [*columns, "kept"])


def _ensemble(ensemble: dict | None) -> dict | None:
    """The ensemble of seeds against the strongest baseline and against the shared model."""
    if not ensemble:
        return None
    columns = ["metric", "ensemble minus shared", "95% interval", "excludes zero"]
    return {
        "strongest": _strongest_table(ensemble["comparison"], "ensemble"),
        "against_shared": markdown_table(_against_rows(ensemble["against_shared"]), columns),
    }


def _stacks(result: dict) -> list[dict]:
    """Each stack against the strongest baseline, and against each of its members (all folds and
    the final holdout)."""
    final = (result.get("final_holdout") or {}).get("stacks") or {}
    out = []
    for name, st in (result.get("stacks") or {}).items():
        held = (final.get(name) or {}).get("against_members", {})
        entries = [(member, rows, held.get(member, {})) for member, rows in st["against_members"].items()]
        out.append(
            {
                "name": name,
                "strongest": _strongest_table(st["comparison"], "stack"),
                "members": _paired_table("member", "stack minus member", entries),
            }
        )
    return out


def _variants(result: dict) -> str | None:
    """Each variant of the shared model minus the shared model, all folds and the final holdout."""
    variants = result.get("variants") or {}
    if not variants:
        return None
    final = (result.get("final_holdout") or {}).get("variants") or {}
    entries = [(name, rows, final.get(name) or {}) for name, rows in variants.items()]
    return _paired_table("variant", "variant minus shared", entries)


def _seed_tables(models: dict) -> list[dict]:
    """Each seed's figures of every model fit once per seed, their mean and spread."""
    out = []
    for name, m in models.items():
        per_seed = m.get("seeds") or {}
        if len(per_seed) < 2:
            continue
        rows = []
        for metric in (k for k in SEED_METRICS if k in m["overall"]):
            spread = m["seed_spread"][metric]
            rows.append(
                [
                    LABELS.get(metric, metric),
                    *(_f(per_seed[s][metric]) for s in per_seed),
                    _f(m["overall"][metric]),
                    _f(spread["sd"]),
                    f"{_f(spread['min'])} - {_f(spread['max'])}",
                ]
            )
        columns = ["metric", *(f"seed {s}" for s in per_seed), "mean", "sd", "min - max"]
        out.append({"name": name, "table": markdown_table(rows, columns)})
    return out


def _comparison(comparison: dict | None) -> dict | None:
    """The shared model minus the strongest baseline on each metric, then minus every baseline."""
    if not comparison:
        return None
    rows = [[b, *row] for b, paired in comparison["against"].items() for row in _against_rows(paired)]
    columns = ["baseline", "metric", "shared minus baseline", "95% interval", "excludes zero"]
    return {"strongest": _strongest_table(comparison), "against": markdown_table(rows, columns)}


def _refit_table(effect: dict | None) -> str | None:
    """Each model refit on the whole window against its own selection fit, on the same tickets."""
    if not effect:
        return None
    rows = []
    for name, e in effect.items():
        r, b, d = e["refit"], e["no_refit"], e.get("difference") or {}

        def both(metric: str, r=r, b=b) -> str:
            return f"{_f(r.get(metric))} / {_f(b.get(metric))}"

        def diff(metric: str, r=r, b=b, d=d) -> str:
            paired = d.get(metric) or {}
            return f"{_signed(r[metric] - b[metric])} {_signed_ci(paired.get('ci95'))}".strip()

        rows.append(
            [
                name,
                both("accuracy"),
                diff("accuracy"),
                both("macro_f1_account_mean"),
                diff("macro_f1_account_mean"),
                both("coverage_at_95_precision"),
                both("precision_at_95_target"),
                f"{r.get('n_new_label', 0):,} / {b.get('n_new_label', 0):,}",
            ]
        )
    columns = [
        "model",
        "accuracy: refit / no refit",
        "difference",
        "macro-F1 (account mean): refit / no refit",
        "difference",
        "coverage @95%: refit / no refit",
        "precision @95%: refit / no refit",
        "new-label tickets: refit / no refit",
    ]
    return markdown_table(rows, columns)


def _staleness_table(stale: dict) -> str | None:
    """Accuracy / n by the model's age at each test ticket, of the shared model and the logregs."""
    shown = [n for n in stale if n.split(" ")[0] in ("shared", "xlogreg", "logreg")]
    if not shown:
        return None
    ages = list(dict.fromkeys(a for n in shown for a in stale[n]))
    rows = [
        [
            name,
            *(
                f"{_f(stale[name][a]['accuracy'])} / {stale[name][a]['n']:,}" if a in stale[name] else "-"
                for a in ages
            ),
        ]
        for name in shown
    ]
    return markdown_table(rows, ["model", *(f"{a} days" for a in ages)])


def _search_table(models: dict) -> str | None:
    """What each model chose on each fold's validation slice, in how many fits, and how it converged."""
    rows = []
    for name, m in models.items():
        for r in m.get("folds", []):
            if r.get("chosen"):
                fits = "; ".join(
                    _converged(r.get(k)) for k in ("convergence", "refit_convergence") if r.get(k)
                )
                rows.append([name, str(r["fold"]), f"`{r['chosen']}`", str(r["search_fits"]), fits])
    if not rows:
        return None
    return markdown_table(rows, ["model", "fold", "chosen", "fits", "convergence (selection fit; refit)"])


def _converged(record: str | dict) -> str:
    """``converged in 212/1000 iterations`` or ``NOT converged: 1000/1000, max gradient 3e-3 > 1e-4``."""
    c = json.loads(record) if isinstance(record, str) else record
    if c["converged"]:
        return f"converged in {c['iterations']}/{c['max_iter']} iterations"
    return (
        f"NOT converged: {c['iterations']}/{c['max_iter']} iterations, "
        f"max gradient {c['max_gradient']:.1e} > {c['tol']:.0e}"
    )


# the zero-shot table's rows: the slices of zero_shot_summary, as the report names them
ZERO_SHOT_SLICES = (
    ("new_labels", "new labels of known merchants"),
    ("new_labels_name_unseen", "... whose name no other merchant uses"),
    ("new_labels_intent_unseen", "... whose intent no training merchant had"),
    ("new_merchants", "new merchants"),
    ("new_merchants_names_unseen", "... labels whose name no other merchant uses"),
)


def _cold_start(cold: dict) -> dict | None:
    """The declared-taxonomy (zero-shot) figures and the learning curve of the last fold."""
    if not cold:
        return None
    return {
        "candidates": cold.get("candidates", "the labels used"),
        "zero": _zero_shot(cold.get("zero_shot"), cold.get("overall")),
        "curve": _learning_curve(pd.DataFrame(cold.get("learning_curve") or [])),
    }


def _zero_shot(zero: dict | None, overall: dict | None) -> dict | None:
    """The zero-shot table (with the names baseline's column when it ran), the new labels' tickets
    with embeddings, and every test ticket scored with the declared names."""
    if not zero:
        return None
    has_names = any("names_baseline_accuracy" in z for z in zero.values() if isinstance(z, dict))
    rows = []
    for key, title in ZERO_SHOT_SLICES:
        z = zero.get(key)
        if not z or not z["tickets"]:
            continue
        names = [f"{_f(z.get('names_baseline_accuracy'))} / {_f(z.get('names_baseline_top3'))}"]
        rows.append(
            [
                title,
                f"{z['tickets']:,}",
                str(z["accounts"]),
                *(_f(z[k]) for k in ("accuracy", "top3_accuracy", "chance_accuracy", "chance_top3")),
                f"{z['mean_labels']:.1f}",
                _f(z["without_names_accuracy"]),
                *(names if has_names else []),
            ]
        )
    columns = ["slice", "tickets", "merchants", "accuracy", "top-3", "chance acc.", "chance top-3"]
    columns += ["candidate labels per merchant", "shared without names"]
    columns += ["names: acc. / top-3"] if has_names else []
    return {
        "has_names": has_names,
        "table": markdown_table(rows, columns),
        "embeddings": zero.get("new_labels_with_embeddings"),
        "overall": overall,
    }


def _learning_curve(curve: pd.DataFrame) -> dict | None:
    """The learning curve's table: accuracy / top-3 (other) per model and number of examples."""
    if not len(curve):
        return None
    shots = sorted(curve["shots"].unique())
    rows = []
    for model in dict.fromkeys(curve["model"]):
        cells = []
        for n in shots:
            row = curve[(curve["model"] == model) & (curve["shots"] == n)]
            cells.append(
                f"{_f(row['accuracy'].iloc[0])} / {_f(row['top3_accuracy'].iloc[0])} "
                f"(other {_f(row['other_accuracy'].iloc[0])})"
                if len(row)
                else "-"
            )
        rows.append([model, *cells])
    return {
        "labels": int(curve["held_out_labels"].iloc[0]),
        "named": int(curve["held_out_names_seen_elsewhere"].iloc[0]),
        "table": markdown_table(rows, ["model", *(f"{n} examples" for n in shots)]),
    }


def _conclusions(result: dict) -> dict | None:
    """What the conclusions quote, each from the figures in metrics.json: the shared model against
    the strongest baseline on each metric and against chance, its spread over seeds, the slices where
    it loses, its coverage at the 95% target. None without a shared model."""
    models = result["models"]
    if "shared" not in models:
        return None
    shared = models["shared"]
    o = shared["overall"]
    comparison = result.get("paired_bootstrap") or {}
    seeds = result.get("seeds") or []
    which = f"the shared model (seed {seeds[0]})" if len(seeds) > 1 else "the shared model"
    spread = shared.get("seed_spread") or {}
    reached = o.get("precision_at_95_target", float("nan"))
    return {
        "strongest": [{**c, "label": LABELS.get(m, m)} for m, c in comparison.get("strongest", {}).items()],
        "chance": o if "top3_chance" in o else None,
        "spread": [{"label": LABELS[k], **spread[k]} for k in ("accuracy", "macro_f1")]
        if len(shared.get("seeds") or {}) > 1
        else [],
        "losses": [
            loss
            for other in comparison.get("against", {})
            for loss in _losses(shared, models[other], other, which)
        ],
        "coverage": o.get("coverage_at_95_precision"),
        "reached": reached if np.isfinite(reached) else None,
    }


def _losses(shared: dict, base_model: dict, other: str, which: str) -> list[dict]:
    """The slices (of at least 30 tickets) where the shared model is more than a point below ``other``."""
    out = []
    for column, values in shared["slices"].items():
        for value, s in values.items():
            if value == "False":  # the complement of a yes/no slice says nothing new
                continue
            base = base_model["slices"][column].get(value, {})
            if (
                s.get("n", 0) >= 30
                and base.get("accuracy") is not None
                and (s["accuracy"] < base["accuracy"] - 0.01)
            ):
                out.append(
                    {
                        "which": which,
                        "column": column,
                        "value": value,
                        "accuracy": s["accuracy"],
                        "base": base["accuracy"],
                        "other": other,
                        "n": s["n"],
                    }
                )
    return out


def _slices_table(models: dict) -> str:
    """Accuracy / macro-F1 / n of every slice value, a column per model."""
    names = list(models)
    rows = []
    for column, values in models[names[0]]["slices"].items():
        for value in values:
            cells = []
            for name in names:
                s = models[name]["slices"][column].get(value, {"n": 0})
                cells.append(
                    f"{_f(s.get('accuracy'))} / {_f(s.get('macro_f1'))} / {s['n']:,}" if s["n"] else "-"
                )
            rows.append([column, value, *cells])
    return markdown_table(rows, ["slice", "value", *names])


def _folds_table(folds: list[dict]) -> str:
    """Each fold's training and test windows and its ticket counts."""
    rows = [
        [
            str(f["fold"]),
            f"{f['train_start'][:10]} .. {f['train_end'][:10]}",
            f"{f['test_start'][:10]} .. {f['test_end'][:10]}",
            f"{f['train_tickets']:,} / {f['val_tickets']:,} / {f['test_tickets']:,}",
        ]
        for f in folds
    ]
    return markdown_table(rows, ["fold", "train", "test", "train / val / test tickets"])
