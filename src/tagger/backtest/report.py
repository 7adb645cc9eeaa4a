"""report.md and the plots of a backtest."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tagger.metrics import coverage_ceiling
from tagger.model.ensemble import SeedEnsemble


def _f(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _ci(model: dict, metric: str) -> str:
    ci = model.get("ci95", {}).get(metric)
    return f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else ""


def _signed(value: float) -> str:
    # a difference of two equal figures can come out as -1e-16 (a mean over seeds): not "-0.000"
    return "n/a" if np.isnan(value) else f"{0.0 if abs(value) < 1e-12 else value:+.3f}"


def _signed_ci(ci: list[float] | None) -> str:
    if not ci:
        return "n/a"
    return "n/a" if any(np.isnan(v) for v in ci) else f"[{_signed(ci[0])}, {_signed(ci[1])}]"


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


def _interval_words(result: dict) -> str:
    """How the intervals were made, in words, from metrics.json's record of it."""
    iv = result.get("intervals")
    if not iv:
        return "No bootstrap intervals (backtest.bootstrap=0)."
    if iv.get("unit") == "ticket":
        return (
            f"{iv['level']:.0%} intervals in brackets: {iv['description']}: with {iv['merchants']} "
            "merchant(s) a merchant resample is degenerate, so a resample draws test tickets with "
            "replacement (tickets of one merchant are not independent: these intervals are too narrow, "
            "read them as a lower bound on the uncertainty)." + _containment_words(result)
        )
    return (
        f"{iv['level']:.0%} intervals in brackets: {iv['description']} (a resample draws the "
        f"{iv['merchants']:,} merchants with replacement, each with all of its test tickets of every fold; "
        "the same draws for every model and seed)." + _containment_words(result)
    )


def _containment_words(result: dict) -> str:
    """Whether every interval of the overall table contains its own estimate (counted, not assumed)."""
    checked = missed = 0
    for m in result["models"].values():
        for metric, ci in (m.get("ci95") or {}).items():
            value = m["overall"].get(metric)
            if ci and value is not None and np.isfinite(value) and all(np.isfinite(ci)):
                checked += 1
                missed += not ci[0] - 1e-12 <= value <= ci[1] + 1e-12
    return f" {checked - missed} of {checked} intervals contain their estimate." if checked else ""


def _seed_words(result: dict) -> list[str]:
    """What the shared model's figures are when it was fit once per seed."""
    seeds = result.get("seeds") or []
    seeded = [n for n in result.get("seeded_models", []) if n in result["models"]]
    if len(seeds) < 2 or not seeded:
        return []
    listed = ", ".join(str(s) for s in seeds)
    return [
        "",
        f"{', '.join(seeded)}: fit once per seed ({listed}) in every fold; the figures are the mean over "
        "seeds and the interval is that of the mean (each resample scores every seed on the same "
        f"merchants). Each seed's figures: the next section. Slices, the per-merchant table, the plots and "
        f"the cold-start section use seed {seeds[0]}'s outcomes.",
    ]


def write_report(
    result: dict,
    pooled: dict[str, pd.DataFrame],
    per_merchant: pd.DataFrame,
    out: Path,
    before_refit: dict[str, pd.DataFrame] | None = None,
) -> None:
    """Write report.md and the PNG plots into ``out`` (``before_refit``: each model's selection
    fit's test outcomes, when the scored models are refits)."""
    overall = _overall_section(result)
    title, rest = overall[:4], overall[4:]  # the final holdout leads: no choice was made on it
    lines = [
        *title,
        *_final_holdout_section(result),
        "",
        *rest,
        *_promise_section(result, pooled),
        *_ensemble_section(result),
        *_stacks_section(result),
        *_variants_section(result),
        *_seeds_section(result),
        *_comparison_section(result),
        *_refit_section(result),
        *_staleness_section(result),
        *_search_section(result),
        *_cold_start_section(result.get("cold_start") or {}),
        "",
        "## Conclusions",
        "",
        *_conclusions(result),
        *_slices_section(result["models"]),
        *_folds_section(result),
        *_plots_section(result, bool(before_refit)),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plots(result, pooled, per_merchant, out)
    if before_refit:
        _staleness_plot(pooled, before_refit, out / "staleness.png")


def _overall_section(result: dict) -> list[str]:
    """The title, what was run, and the headline table with its intervals."""
    lines = [
        "# Backtest report",
        "",
        f"Data: `{result['data']['file']}` ({result['data']['tickets']:,} tickets), "
        f"{len(result['folds'])} rolling-origin folds, every model fit afresh on each training window"
        + (
            ", its choices made on the window's validation slice, then refit on the whole window. "
            if result.get("refit")
            else ", its choices made on the window's validation slice (no refit). "
        )
        + f"Run time {result['seconds'] / 60:.1f} min.",
        "",
        "## Overall (all test tickets of all folds)",
        "",
        _interval_words(result),
        *_seed_words(result),
        "",
        "Chance: accuracy and top-3 of guessing uniformly among the ticket's merchant's labels in the "
        "model (0 for a merchant it never saw). ECE over answered tickets (an abstention has no "
        "confidence). Coverage: share of tickets auto-tagged at a confidence threshold chosen on the "
        "training window's validation slice for that precision; the precision actually reached on the "
        "test tickets is beside it.",
        "",
        "| model | accuracy | chance acc. | macro-F1 | macro-F1 (account mean) | weighted F1 | top-3 | "
        "chance top-3 | parent acc. | ECE | coverage @90% (prec.) | coverage @95% (prec.) |",
        "|---|---|---:|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for name, m in result["models"].items():
        o = m["overall"]
        lines.append(
            f"| {name} | {_f(o['accuracy'])}{_ci(m, 'accuracy')} | {_f(o.get('accuracy_chance'))} | "
            f"{_f(o['macro_f1'])}{_ci(m, 'macro_f1')} | "
            f"{_f(o['macro_f1_account_mean'])}{_ci(m, 'macro_f1_account_mean')} | {_f(o['weighted_f1'])} | "
            f"{_f(o['top3_accuracy'])}{_ci(m, 'top3_accuracy')} | {_f(o.get('top3_chance'))} | "
            f"{_f(o['parent_accuracy'])} | {_f(o['ece'])} | "
            f"{_f(o.get('coverage_at_90_precision'))} ({_f(o.get('precision_at_90_target'))}) | "
            f"{_f(o.get('coverage_at_95_precision'))}{_ci(m, 'coverage_at_95_precision')} "
            f"({_f(o.get('precision_at_95_target'))}) |"
        )
    return lines


def _slices_section(models: dict) -> list[str]:
    """Accuracy / macro-F1 / n of every slice value, a column per model."""
    lines = [
        "",
        "## Slices",
        "",
        "Accuracy / macro-F1 / n of each slice (tickets without embeddings are scored from the account "
        "prior; a new label or a new account cannot be predicted by any model fit before it appeared).",
        "",
    ]
    names = list(models)
    lines += ["| slice | value | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    first = models[names[0]]["slices"]
    for column, values in first.items():
        for value in values:
            cells = []
            for name in names:
                s = models[name]["slices"][column].get(value, {"n": 0})
                cells.append(
                    f"{_f(s.get('accuracy'))} / {_f(s.get('macro_f1'))} / {s['n']:,}" if s["n"] else "-"
                )
            lines.append(f"| {column} | {value} | " + " | ".join(cells) + " |")
    return lines


def _folds_section(result: dict) -> list[str]:
    lines = ["", "## Folds", "", "| fold | train | test | train / val / test tickets |", "|---|---|---|---|"]
    for f in result["folds"]:
        lines.append(
            f"| {f['fold']} | {f['train_start'][:10]} .. {f['train_end'][:10]} | "
            f"{f['test_start'][:10]} .. {f['test_end'][:10]} | "
            f"{f['train_tickets']:,} / {f['val_tickets']:,} / {f['test_tickets']:,} |"
        )
    return lines


def _plots_section(result: dict, staleness: bool) -> list[str]:
    return [
        "",
        "Per fold and model: `folds.csv`. Per merchant (accuracy, macro-F1, coverage at 90% and 95% "
        "precision for every model): `per_merchant.csv`. Every test ticket's outcome: `outcomes.parquet`.",
        "",
        "## Plots",
        "",
        "![coverage vs precision](coverage_precision.png)",
        "![reliability](reliability.png)",
        "![per fold](per_fold.png)",
        "![per merchant](per_merchant.png)",
        *(["![staleness](staleness.png)"] if staleness else []),
        *(
            ["![learning curve](learning_curve.png)"]
            if (result.get("cold_start") or {}).get("learning_curve")
            else []
        ),
    ]


def _cold_start_section(cold: dict) -> list[str]:
    if not cold:
        return []
    return [
        "",
        "## Cold start: labels and merchants the training window never saw",
        "",
        *_zero_shot_lines(cold),
        *_learning_curve_lines(cold),
    ]


def _zero_shot_lines(cold: dict) -> list[str]:
    """The declared-taxonomy (zero-shot) table of the cold-start section."""
    lines: list[str] = []
    zero = cold.get("zero_shot")
    if not zero:
        return lines
    has_names = any("names_baseline_accuracy" in z for z in zero.values() if isinstance(z, dict))
    lines += [
        '"shared+names" is the fitted shared model given, by name only, each merchant\'s whole declared '
        f"taxonomy at the end of the test window (from {cold.get('candidates', 'the labels used')}): "
        "labels it never saw in training and new merchants' labels, no retraining. "
        + (
            '"names" is the zero-shot baseline given the same candidates: cosine between the ticket\'s '
            "mean-pooled embedding and all-MiniLM-L6-v2's embedding of each label name. "
            if has_names
            else ""
        )
        + "Chance: one over the number of candidate labels of the merchant (top-3: three over it). "
        "Every model fit before a label appeared and not given its name scores 0 on it. "
        '"whose intent no training merchant had": labels of intents that no label in the training '
        "window covered (from the build record), the control for meaning learned from other "
        "merchants' tickets rather than from the name.",
        "",
        "| slice | tickets | merchants | accuracy | top-3 | chance acc. | chance top-3 "
        "| candidate labels per merchant | shared without names"
        + (" | names: acc. / top-3" if has_names else "")
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_names else ""),
    ]
    for key, title in (
        ("new_labels", "new labels of known merchants"),
        ("new_labels_name_unseen", "... whose name no other merchant uses"),
        ("new_labels_intent_unseen", "... whose intent no training merchant had"),
        ("new_merchants", "new merchants"),
        ("new_merchants_names_unseen", "... labels whose name no other merchant uses"),
    ):
        z = zero.get(key)
        if not z or not z["tickets"]:
            continue
        lines.append(
            f"| {title} | {z['tickets']:,} | {z['accounts']} | {_f(z['accuracy'])} "
            f"| {_f(z['top3_accuracy'])} | {_f(z['chance_accuracy'])} | {_f(z['chance_top3'])} "
            f"| {z['mean_labels']:.1f} | {_f(z['without_names_accuracy'])}"
            + (
                f" | {_f(z.get('names_baseline_accuracy'))} / {_f(z.get('names_baseline_top3'))}"
                if has_names
                else ""
            )
            + " |"
        )
    e = zero.get("new_labels_with_embeddings")
    if e:
        lines += [
            "",
            f"New labels of known merchants, tickets with embeddings only ({e['tickets']:,}): top-3 "
            f"{_f(e['top3_accuracy'])} (a ticket without embeddings is scored from the label prior, "
            "which a new label does not have yet).",
        ]
    o = cold.get("overall")
    if o:
        lines += [
            "",
            f"All test tickets with the declared names: accuracy {_f(o['accuracy'])}, macro-F1 "
            f"{_f(o['macro_f1'])}, top-3 {_f(o['top3_accuracy'])}.",
        ]
    return lines


def _learning_curve_lines(cold: dict) -> list[str]:
    """The learning-curve table of the cold-start section (the last fold)."""
    lines: list[str] = []
    curve = pd.DataFrame(cold.get("learning_curve") or [])
    if len(curve):
        lines += [
            "",
            f"### Learning curve (last fold, {int(curve['held_out_labels'].iloc[0])} held-out labels, "
            f"{int(curve['held_out_names_seen_elsewhere'].iloc[0])} named as another merchant's label)",
            "",
            "Each held-out (merchant, label) pair is removed from the training window; the shared model is "
            "refit once without them, then gets each label back by name plus N of its training tickets "
            "(no retraining; `shared[examples only]` ignores the name). Baselines are refit with the same "
            "tickets. Accuracy / top-3 on the held-out labels' test tickets with embeddings; "
            '"other" = accuracy on the same merchants\' other test tickets.',
            "",
        ]
        models = list(dict.fromkeys(curve["model"]))
        shots = sorted(curve["shots"].unique())
        lines += [
            "| model | " + " | ".join(f"{n} examples" for n in shots) + " |",
            "|---|" + "---:|" * len(shots),
        ]
        for model in models:
            cells = []
            for n in shots:
                row = curve[(curve["model"] == model) & (curve["shots"] == n)]
                cells.append(
                    f"{_f(row['accuracy'].iloc[0])} / {_f(row['top3_accuracy'].iloc[0])} "
                    f"(other {_f(row['other_accuracy'].iloc[0])})"
                    if len(row)
                    else "-"
                )
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _seeds_section(result: dict) -> list[str]:
    """Each seed's figures of every model fit once per seed, their mean and spread."""
    lines: list[str] = []
    for name, m in result["models"].items():
        per_seed = m.get("seeds") or {}
        if len(per_seed) < 2:
            continue
        if not lines:
            lines += ["", "## Seeds", ""]
        seeds = list(per_seed)
        lines += [
            f"{name}: each seed's figure, their mean (the figure reported above), sd (n - 1) and range.",
            "",
            "| metric | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd | min - max |",
            "|---|" + "---:|" * (len(seeds) + 3),
        ]
        for metric in (k for k in SEED_METRICS if k in m["overall"]):
            spread = m["seed_spread"][metric]
            lines.append(
                f"| {LABELS.get(metric, metric)} | "
                + " | ".join(_f(per_seed[s][metric]) for s in seeds)
                + f" | {_f(m['overall'][metric])} | {_f(spread['sd'])} | "
                f"{_f(spread['min'])} - {_f(spread['max'])} |"
            )
        lines.append("")
    return lines


def _comparison_section(result: dict) -> list[str]:
    """Shared minus the strongest baseline on each metric, then minus every baseline."""
    comparison = result.get("paired_bootstrap")
    if not comparison:
        return []
    iv = result.get("intervals")
    how = (
        f"paired intervals: {iv['description']}, the same merchant draws for both models"
        if iv
        else "no intervals (backtest.bootstrap=0)"
    )
    lines = [
        "",
        "## Shared model against the strongest baseline on each metric",
        "",
        "Shared minus baseline. The strongest baseline on a metric is the one with the best point estimate "
        f"on it; {how}.",
        "",
        *_strongest_table(comparison),
    ]
    lines += [
        "",
        "### Against every baseline",
        "",
        "| baseline | metric | shared minus baseline | 95% interval | excludes zero |",
        "|---|---|---:|---|---|",
    ]
    for baseline, paired in comparison["against"].items():
        for metric, c in paired.items():
            lines.append(
                f"| {baseline} | {LABELS.get(metric, metric)} | {_signed(c['difference'])} | "
                f"{_signed_ci(c.get('ci95'))} | {c.get('excludes_zero', 'n/a')} |"
            )
    return lines


def _strongest_table(comparison: dict, who: str = "shared") -> list[str]:
    """``who`` (the shared model) minus the strongest baseline on each metric, one row per metric."""
    lines = [
        f"| metric | strongest baseline | baseline | {who} | {who} minus baseline | 95% interval "
        "| excludes zero |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for metric, c in comparison["strongest"].items():
        lines.append(
            f"| {LABELS.get(metric, metric)} | {c['baseline']} | {_f(c['baseline_value'])} | "
            f"{_f(c['shared_value'])} | {_signed(c['difference'])} | {_signed_ci(c.get('ci95'))} | "
            f"{c.get('excludes_zero', 'n/a')} |"
        )
    return lines


def _search_section(result: dict) -> list[str]:
    """What each model chose on each fold's validation slice, and how many fits the choice cost."""
    rows = []
    for name, m in result["models"].items():
        for r in m.get("folds", []):
            if r.get("chosen"):
                fits = "; ".join(
                    _converged(r.get(k)) for k in ("convergence", "refit_convergence") if r.get(k)
                )
                rows.append(f"| {name} | {r['fold']} | `{r['chosen']}` | {r['search_fits']} | {fits} |")
    if not rows:
        return []
    return [
        "",
        "## Choices made on validation, and their budget",
        "",
        "Each baseline's hyperparameters are chosen per fold on that fold's validation slice (the "
        "`grid:` of conf/model/NAME.yaml), by the per-account mean macro-F1 scored as here; a setting "
        "only predict reads (a temperature, k) shares one fit. The shared model's design was chosen "
        "once, on train.py's validation slice before the final holdout, among the variants of "
        "`python -m tagger.ablations` (results/ablations/ablations.md); per fold it chooses only its "
        "epoch (early stopping on the same per-account macro-F1) and its temperature, one fit per seed; "
        "then each model is refit on the whole window with its choices (`refit: true`). An iterative "
        "fit says how it ended (the chosen point's selection fit; its refit): converged when no entry "
        "of the gradient exceeds the tolerance before the iterations run out.",
        "",
        "| model | fold | chosen | fits | convergence (selection fit; refit) |",
        "|---|---:|---|---:|---|",
        *rows,
    ]


def _converged(record: str | dict) -> str:
    """``converged in 212/1000 iterations`` or ``NOT converged: 1000/1000, max gradient 3e-3 > 1e-4``."""
    c = json.loads(record) if isinstance(record, str) else record
    if c["converged"]:
        return f"converged in {c['iterations']}/{c['max_iter']} iterations"
    return (
        f"NOT converged: {c['iterations']}/{c['max_iter']} iterations, "
        f"max gradient {c['max_gradient']:.1e} > {c['tol']:.0e}"
    )


def _refit_section(result: dict) -> list[str]:
    """Each model refit on the whole window against its own selection fit, on the same tickets."""
    effect = result.get("refit")
    if not effect:
        return []
    lines = [
        "",
        "## Refit on the whole window against the selection fit",
        "",
        "The selection fit learns from the window less its validation slice and chooses there (epochs, "
        "temperature, confidence thresholds, a baseline's grid point); the refit learns from the whole "
        "window with those choices, its temperature and thresholds carried over. Both score the same "
        "test tickets (the shared model: its first seed). Differences are refit minus selection fit, "
        "with paired merchant-clustered intervals. The realised precision at the 95% target shows "
        "whether the carried-over thresholds hold for the refit model.",
        "",
        "| model | accuracy: refit / no refit | difference | macro-F1 (account mean): refit / no refit | "
        "difference | coverage @95%: refit / no refit | precision @95%: refit / no refit | "
        "new-label tickets: refit / no refit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in effect.items():
        r, b, d = e["refit"], e["no_refit"], e.get("difference") or {}

        def diff(metric: str, r=r, b=b, d=d) -> str:
            paired = d.get(metric) or {}
            return f"{_signed(r[metric] - b[metric])} {_signed_ci(paired.get('ci95'))}".strip()

        lines.append(
            f"| {name} | {_f(r['accuracy'])} / {_f(b['accuracy'])} | {diff('accuracy')} | "
            f"{_f(r['macro_f1_account_mean'])} / {_f(b['macro_f1_account_mean'])} | "
            f"{diff('macro_f1_account_mean')} | "
            f"{_f(r.get('coverage_at_95_precision'))} / {_f(b.get('coverage_at_95_precision'))} | "
            f"{_f(r.get('precision_at_95_target'))} / {_f(b.get('precision_at_95_target'))} | "
            f"{r.get('n_new_label', 0):,} / {b.get('n_new_label', 0):,} |"
        )
    return lines


def _staleness_section(result: dict) -> list[str]:
    """Accuracy by the model's age at each test ticket: what waiting longer to retrain costs."""
    stale = result.get("staleness") or {}
    shown = [n for n in stale if n.split(" ")[0] in ("shared", "xlogreg", "logreg")]
    if not shown:
        return []
    ages = list(dict.fromkeys(a for n in shown for a in stale[n]))
    lines = [
        "",
        "## Staleness: accuracy by the model's age",
        "",
        "Days between a test ticket and the end of the scored model's training data. A refit model's "
        "test windows are its days 0-13; the selection fit of the same fold stops learning "
        "`data.val_days` earlier, so the same tickets are its days 21-34. Accuracy / n (the tickets "
        "of new labels and new merchants, misses for every model, included).",
        "",
        "| model | " + " | ".join(f"{a} days" for a in ages) + " |",
        "|---|" + "---:|" * len(ages),
    ]
    for name in shown:
        cells = [
            f"{_f(stale[name][a]['accuracy'])} / {stale[name][a]['n']:,}" if a in stale[name] else "-"
            for a in ages
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _staleness_plot(pooled: dict[str, pd.DataFrame], before: dict[str, pd.DataFrame], path: Path) -> None:
    """Accuracy by the model's age in days, refit and selection fit, for the shared model and the
    baselines beside it."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, frame in pooled.items():
        if name not in before or name in ("majority",):
            continue
        both = pd.concat([frame, before[name]])
        daily = both.groupby("model_age_days")["correct"].mean()
        ax.plot(daily.index, daily.to_numpy(), marker=".", label=name)
    ax.axvspan(-0.5, 13.5, color="0.93", zorder=0)
    ax.set_xlabel("model age at the ticket (days since its training data ends)")
    ax.set_ylabel("accuracy")
    ax.set_title("Staleness: refit models (days 0-13) and their selection fits (days 21+)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PROMISE = 0.945  # the realised precision a 95% target must reach on every fold (issue goal)


def _ceiling(frame: pd.DataFrame, target: float) -> float:
    """:func:`coverage_ceiling` fold by fold (a merchant's thresholds may differ between folds)."""
    parts = [(len(part), coverage_ceiling(part, target)) for _, part in frame.groupby("fold")]
    return sum(n * c for n, c in parts) / max(sum(n for n, _ in parts), 1)


def _promise_section(result: dict, pooled: dict[str, pd.DataFrame]) -> list[str]:
    """Whether the thresholds keep their promise: realised precision at the 95% target per fold and on
    the final holdout, leaf-only and with parent answers, each model's risk-coverage area and the
    coverage that thresholds chosen on the test tickets themselves would reach."""
    models = result["models"]
    if not any("hier_coverage_at_95_precision" in m["overall"] for m in models.values()):
        return []
    method = (result.get("config") or {}).get("thresholds") or {}
    lines = [
        "",
        "## Auto-tagging at the promised precision",
        "",
        "Thresholds are chosen on each fold's validation slice (never on a test window): per merchant, "
        f"the lowest of {method.get('grid', '?')} label-blind candidates at which the merchant's precision, "
        f"shrunk toward the pooled curve with {method.get('kappa', '?')} pseudo-tickets, reaches an "
        "internal target; that target is the lowest (within the promised one "
        f"+- {method.get('margin', '?')}) at which thresholds chosen on alternate halves of the "
        "validation tickets, applied to the other half, keep a one-sided Clopper-Pearson lower bound "
        f"(level {method.get('delta', '?')}) of precision at the promised one. A ticket is answered at its "
        "leaf label when the leaf's confidence reaches its merchant's leaf threshold, else at its parent "
        "label (the first `::` level, its confidence the sum over its labels) when that reaches the "
        "parent-level threshold, else it abstains. AURC: area under the risk-coverage curve of the leaf "
        "answers (lower is better; it needs no threshold). Ceiling: the leaf coverage that per-merchant "
        "thresholds chosen on each fold's test tickets themselves would reach with every merchant's "
        "precision at 95% (not a method: the most that thresholds keeping each merchant's own precision "
        "at 95% could answer with this model's confidences; a promise kept only over all merchants "
        "together can answer more; seed 0's for the shared model).",
        "",
        "| model | AURC | leaf: coverage @95% | leaf: realised precision | with parents: coverage @95% "
        "| with parents: realised precision | answered at the parent | ceiling |",
        "|---|---:|---|---|---|---|---:|---:|",
    ]
    for name, m in models.items():
        o = m["overall"]
        ceiling = _ceiling(pooled[name], 0.95) if name in pooled else np.nan
        lines.append(
            f"| {name} | {_f(o.get('aurc'))} | {_f(o.get('coverage_at_95_precision'))}"
            f"{_ci(m, 'coverage_at_95_precision')} | {_f(o.get('precision_at_95_target'))}"
            f"{_ci(m, 'precision_at_95_target')} | {_f(o.get('hier_coverage_at_95_precision'))}"
            f"{_ci(m, 'hier_coverage_at_95_precision')} | {_f(o.get('hier_precision_at_95_target'))}"
            f"{_ci(m, 'hier_precision_at_95_target')} | {_f(o.get('parent_share_at_95'))} | {_f(ceiling)} |"
        )
    for name in ("shared", SeedEnsemble.name):
        lines += _promise_by_fold(name, models.get(name))
    return lines


def _promise_by_fold(name: str, model: dict | None) -> list[str]:
    """One model's realised precision at the 95% target fold by fold (mean over seeds)."""
    lines: list[str] = []
    if model and model.get("folds"):
        folds = pd.DataFrame(model["folds"]).groupby("fold").mean(numeric_only=True)
        lines += [
            "",
            f"`{name}` fold by fold (mean over seeds), the promise being a realised precision of at "
            f"least {PROMISE} at the 95% target:",
            "",
            "| fold | leaf coverage | leaf precision | coverage with parents | precision with parents "
            "| kept |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for fold, r in folds.iterrows():
            precisions = [
                r.get("precision_at_95_target", np.nan),
                r.get("hier_precision_at_95_target", np.nan),
            ]
            # nothing auto-tagged keeps the promise vacuously: n/a, not a failure
            kept = (
                "n/a" if np.isnan(precisions).all() else "yes" if np.nanmin(precisions) >= PROMISE else "NO"
            )
            cells = [
                _f(r.get(k))
                for k in (
                    "coverage_at_95_precision",
                    "precision_at_95_target",
                    "hier_coverage_at_95_precision",
                    "hier_precision_at_95_target",
                )
            ]
            lines.append(f"| {fold} | {' | '.join(cells)} | {kept} |")
    return lines


def _final_holdout_section(result: dict) -> list[str]:
    """The last fold alone: the one test window no design choice, ablation or train.py run has seen."""
    final = result.get("final_holdout")
    if not final:
        return []
    iv = final.get("intervals")
    lines = [
        "",
        f"## Final holdout: fold {final['fold']} alone "
        f"({final['test_start'][:10]} .. {final['test_end'][:10]})",
        "",
        "The last test window lies inside `data.holdout_days`: train.py, the ablations and every design "
        "choice of the shared model were made on data before it (folds 0 and 1 overlap train.py's "
        "validation slice, on which the design was chosen, so their figures are development figures). "
        "Baselines choose their hyperparameters on this fold's own validation slice, as everywhere."
        + (f" Intervals: {iv['description']}, over this fold's {iv['merchants']} merchants." if iv else ""),
        "",
        "| model | accuracy | macro-F1 | macro-F1 (account mean) | top-3 | coverage @95% "
        "| realised precision | with parents: coverage @95% | realised precision |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in final["models"].items():
        o = m["overall"]
        lines.append(
            f"| {name} | {_f(o['accuracy'])}{_ci(m, 'accuracy')} | {_f(o['macro_f1'])}{_ci(m, 'macro_f1')} | "
            f"{_f(o['macro_f1_account_mean'])}{_ci(m, 'macro_f1_account_mean')} | "
            f"{_f(o['top3_accuracy'])}{_ci(m, 'top3_accuracy')} | "
            f"{_f(o.get('coverage_at_95_precision'))}{_ci(m, 'coverage_at_95_precision')} | "
            f"{_f(o.get('precision_at_95_target'))}{_ci(m, 'precision_at_95_target')} | "
            f"{_f(o.get('hier_coverage_at_95_precision'))}{_ci(m, 'hier_coverage_at_95_precision')} | "
            f"{_f(o.get('hier_precision_at_95_target'))}{_ci(m, 'hier_precision_at_95_target')} |"
        )
    if final.get("comparison"):
        lines += ["", "Shared minus the strongest baseline on each metric, on the final holdout:", ""]
        lines += _strongest_table(final["comparison"])
    if final.get("ensemble"):
        lines += ["", "The ensemble of seeds minus the strongest baseline, on the final holdout:", ""]
        lines += _strongest_table(final["ensemble"]["comparison"], "ensemble")
    return lines


def _stacks_section(result: dict) -> list[str]:
    """Each stack (fitted models' probabilities averaged, ``backtest.stacks``) against the strongest
    baseline and against each of its members, overall and on the final holdout."""
    stacks = result.get("stacks") or {}
    if not stacks:
        return []
    final = (result.get("final_holdout") or {}).get("stacks") or {}
    lines = [
        "",
        "## Stacks: models averaged (an experiment)",
        "",
        "Each stack is its members' probabilities over the ticket's account's labels, averaged with "
        "equal weights (`backtest.stacks`, src/tagger/model/stacking.py); every member fit, chose and "
        "was refit as it is alone, and the stack's thresholds come from the members' selection fits "
        "averaged on the validation slice. An experiment: train.py does not serve a stack.",
    ]
    for name, st in stacks.items():
        lines += ["", f"### {name}", "", *_strongest_table(st["comparison"], "stack"), ""]
        lines += [
            "The stack minus each member, paired (all folds; final holdout):",
            "",
            "| member | metric | stack minus member | 95% interval | final holdout | 95% interval |",
            "|---|---|---:|---|---:|---|",
        ]
        for member, rows in st["against_members"].items():
            held = (final.get(name) or {}).get("against_members", {}).get(member, {})
            lines += _paired_rows(member, rows, held)
    return lines


def _paired_rows(name: str, rows: dict, held: dict) -> list[str]:
    """One table row per metric: ``name``, the paired difference and interval over all folds, then
    on the final holdout (``held``)."""
    return [
        f"| {name} | {LABELS.get(metric, metric)} | {_signed(c['difference'])} | "
        f"{_signed_ci(c.get('ci95'))} | {_signed(held.get(metric, {}).get('difference', float('nan')))} | "
        f"{_signed_ci(held.get(metric, {}).get('ci95'))} |"
        for metric, c in rows.items()
    ]


def _variants_section(result: dict) -> list[str]:
    """Each variant of the shared model minus the shared model, overall and on the final holdout."""
    variants = result.get("variants") or {}
    if not variants:
        return []
    final = (result.get("final_holdout") or {}).get("variants") or {}
    lines = [
        "",
        "## Variants of the shared model (`backtest.ablations`)",
        "",
        "Each variant (conf/experiment/NAME.yaml, fit once per seed like the shared model) minus the "
        "shared model, paired merchant-clustered intervals (all folds; final holdout):",
        "",
        "| variant | metric | variant minus shared | 95% interval | final holdout | 95% interval |",
        "|---|---|---:|---|---:|---|",
    ]
    for name, rows in variants.items():
        lines += _paired_rows(name, rows, final.get(name) or {})
    return lines


def _ensemble_section(result: dict) -> list[str]:
    """The mean of the shared model's seeds against the strongest baseline and against one seed."""
    ens = result.get("ensemble")
    if not ens:
        return []
    lines = [
        "",
        "## Ensemble of seeds",
        "",
        "`shared ensemble`: the shared model's "
        f"{len(result.get('seeds', []))} seeds as one model, the mean of their logits each at its own "
        "temperature, its thresholds chosen on the validation outcomes of the seeds' selection fits "
        "so combined, like every model's (`backtest.ensemble`). This is what `train.py` serves "
        "(`model.members` seeds, 3 by default): one model.onnx.",
        "",
        *_strongest_table(ens["comparison"], "ensemble"),
        "",
        "Ensemble minus the shared model (mean of its seeds), paired:",
        "",
        "| metric | ensemble minus shared | 95% interval | excludes zero |",
        "|---|---:|---|---|",
    ]
    for metric, c in ens["against_shared"].items():
        lines.append(
            f"| {LABELS.get(metric, metric)} | {_signed(c['difference'])} | {_signed_ci(c.get('ci95'))} | "
            f"{c.get('excludes_zero', 'n/a')} |"
        )
    return lines


def _conclusions(result: dict) -> list[str]:
    """The report's conclusions, each computed from the figures in metrics.json."""
    models = result["models"]
    if "shared" not in models:
        return ["- (no shared model in this run)"]
    shared = models["shared"]
    o = shared["overall"]
    comparison = result.get("paired_bootstrap") or {}
    out = [_against_strongest(metric, c) for metric, c in comparison.get("strongest", {}).items()]
    if "top3_chance" in o:
        out.append(
            f"- Against chance (guessing among the merchant's labels): accuracy {_f(o['accuracy'])} vs "
            f"{_f(o['accuracy_chance'])}, top-3 {_f(o['top3_accuracy'])} vs {_f(o['top3_chance'])}."
        )
    spread = shared.get("seed_spread") or {}
    seeds = result.get("seeds") or []
    if len(shared.get("seeds") or {}) > 1:
        parts = [
            f"{LABELS[k]} {_f(spread[k]['min'])} - {_f(spread[k]['max'])} (sd {_f(spread[k]['sd'])})"
            for k in ("accuracy", "macro_f1")
        ]
        listed = ", ".join(map(str, seeds))
        out.append(f"- Across seeds {listed} the shared model's " + ", ".join(parts) + ".")
    which = f"the shared model (seed {seeds[0]})" if len(seeds) > 1 else "the shared model"
    for other in comparison.get("against", {}):
        out += _where_it_loses(shared, models[other], other, which)
    cov = o.get("coverage_at_95_precision")
    if cov is not None:
        reached = o.get("precision_at_95_target", float("nan"))
        undefined = "undefined (nothing auto-tagged, in at least one seed)"
        reached = f"{reached:.1%}" if np.isfinite(reached) else undefined
        out.append(
            f"- At the 95% precision target the shared model would auto-tag {cov:.1%} of tickets, "
            f"reaching {reached} precision on the test windows."
        )
    return out


def _against_strongest(metric: str, c: dict) -> str:
    """One conclusion: the shared model against the strongest baseline on ``metric``."""
    label, b = LABELS.get(metric, metric), c["baseline"]
    figures = f"{_f(c['shared_value'])} against {_f(c['baseline_value'])}"
    interval = f"the merchant-clustered interval {_signed_ci(c.get('ci95'))}"
    if abs(c["difference"]) < 0.0005:
        return f"- {label}: the shared model and the strongest baseline there, {b}, are level ({figures})."
    verdict = "better" if c["difference"] > 0 else "worse"
    if "ci95" not in c:
        sure = " (no interval)"
    elif c["excludes_zero"]:
        sure = f"; {interval} excludes zero"
    else:
        sure = f"; {interval} includes zero: no clear difference"
    return (
        f"- {label}: the shared model is {abs(c['difference']):.3f} {verdict} than the strongest "
        f"baseline there, {b} ({figures}){sure}."
    )


def _where_it_loses(shared: dict, base_model: dict, other: str, which: str) -> list[str]:
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
                    f"- Where {which} loses: {column} = {value} "
                    f"(accuracy {s['accuracy']:.3f} vs {base['accuracy']:.3f} for {other}, "
                    f"n={s['n']:,})."
                )
    return out


def _plots(result: dict, pooled: dict[str, pd.DataFrame], per_merchant: pd.DataFrame, out: Path) -> None:
    for plot in (_coverage_plot, _reliability_plot, _per_fold_plot, _learning_curve_plot, _per_merchant_plot):
        plot(result, pooled, per_merchant, out)


def _coverage_plot(
    result: dict, pooled: dict[str, pd.DataFrame], per_merchant: pd.DataFrame, out: Path
) -> None:
    """Precision against coverage of every model."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, frame in pooled.items():
        answered = frame[~frame["abstained"]].sort_values("confidence", ascending=False)
        hits = answered["correct"].to_numpy(float)
        coverage = np.arange(1, len(hits) + 1) / len(frame)
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ax.plot(coverage, precision, label=name)
    for target in (0.9, 0.95):
        ax.axhline(target, color="grey", lw=0.6, ls="--")
    ax.set(
        xlabel="coverage (share of tickets auto-tagged)",
        ylabel="precision",
        ylim=(0.5, 1.01),
        title="Auto-tagging: precision against coverage",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "coverage_precision.png", dpi=110)
    plt.close(fig)


def _reliability_plot(
    result: dict, pooled: dict[str, pd.DataFrame], per_merchant: pd.DataFrame, out: Path
) -> None:
    """Reliability diagram of the shared model and per-merchant logreg."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name in [n for n in pooled if n == "shared" or n in ("logreg",)]:
        frame = pooled[name][~pooled[name]["abstained"]]
        bins = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(frame["confidence"], bins) - 1, 0, 9)
        conf = [frame["confidence"][which == b].mean() for b in range(10)]
        acc = [frame["correct"][which == b].mean() for b in range(10)]
        model = result["models"][name]
        # the curve is the first seed's outcomes: its ECE, not the mean over seeds
        first = next(iter((model.get("seeds") or {"": model["overall"]}).values()))
        ece = first["ece"]
        ax.plot(conf, acc, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)


def _per_fold_plot(
    result: dict, pooled: dict[str, pd.DataFrame], per_merchant: pd.DataFrame, out: Path
) -> None:
    """Accuracy and macro-F1 of every model per fold."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for metric, ax in zip(("accuracy", "macro_f1"), axes, strict=True):
        for name, m in result["models"].items():
            per_fold = pd.DataFrame(m["folds"]).groupby("fold")[metric].mean()  # mean over seeds
            ax.plot(per_fold.index, per_fold.to_numpy(), marker="o", label=name)
        ax.set(xlabel="fold", ylabel=metric, title=f"{metric} per fold")
        ax.set_xticks([f["fold"] for f in result["folds"]])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "per_fold.png", dpi=110)
    plt.close(fig)


def _learning_curve_plot(
    result: dict, pooled: dict[str, pd.DataFrame], per_merchant: pd.DataFrame, out: Path
) -> None:
    """The learning curve of the held-out labels (when there is one)."""
    curve = pd.DataFrame((result.get("cold_start") or {}).get("learning_curve") or [])
    if len(curve):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        shots = sorted(curve["shots"].unique())
        position = {n: i for i, n in enumerate(shots)}
        for metric, ax in zip(("accuracy", "top3_accuracy"), axes, strict=True):
            for model, part in curve.groupby("model", sort=False):
                ax.plot(part["shots"].map(position), part[metric], marker="o", label=model)
            ax.set_xticks(range(len(shots)), [str(n) for n in shots])
            ax.set(
                xlabel="examples per held-out label",
                ylabel=metric,
                ylim=(0, 1),
                title=f"{metric}, held-out labels",
            )
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "learning_curve.png", dpi=110)
        plt.close(fig)


def _per_merchant_plot(
    result: dict, pooled: dict[str, pd.DataFrame], per_merchant: pd.DataFrame, out: Path
) -> None:
    """Shared against the strongest baseline, merchant by merchant."""
    comparison = result.get("paired_bootstrap")
    if comparison:
        b = comparison["strongest"]["macro_f1"]["baseline"]
        wide = per_merchant.pivot(index="account_id", columns="model", values="macro_f1")
        sizes = per_merchant[per_merchant["model"] == "shared"].set_index("account_id")["n"]
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.scatter(
            wide[b], wide["shared"], s=10 + 60 * np.sqrt(sizes.reindex(wide.index) / sizes.max()), alpha=0.6
        )
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        ax.set(xlabel=f"{b} macro-F1", ylabel="shared macro-F1", title="Per merchant (size = test tickets)")
        fig.tight_layout()
        fig.savefig(out / "per_merchant.png", dpi=110)
        plt.close(fig)
