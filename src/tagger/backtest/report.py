"""report.md and the plots of a backtest."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _f(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def _ci(model: dict, metric: str) -> str:
    ci = model.get("ci95", {}).get(metric)
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def write_report(
    result: dict, pooled: dict[str, pd.DataFrame], per_merchant: pd.DataFrame, out: Path
) -> None:
    """Write report.md and the PNG plots into ``out``."""
    models = result["models"]
    lines = [
        "# Backtest report",
        "",
        f"Data: `{result['data']['file']}` ({result['data']['tickets']:,} tickets), "
        f"{len(result['folds'])} rolling-origin folds, every model refit on each training window. "
        f"Run time {result['seconds'] / 60:.1f} min.",
        "",
        "## Overall (all test tickets of all folds)",
        "",
        "95% bootstrap intervals in brackets. Coverage: share of tickets auto-tagged at a confidence "
        "threshold chosen on the training window's validation slice for that precision; the precision "
        "actually reached on the test tickets is beside it.",
        "",
        "| model | accuracy | macro-F1 | macro-F1 (account mean) | weighted F1 | top-3 | parent acc. | "
        "ECE | coverage @90% (prec.) | coverage @95% (prec.) |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, m in models.items():
        o = m["overall"]
        lines.append(
            f"| {name} | {_f(o['accuracy'])}{_ci(m, 'accuracy')} | {_f(o['macro_f1'])}{_ci(m, 'macro_f1')} | "
            f"{_f(o['macro_f1_account_mean'])} | {_f(o['weighted_f1'])} | "
            f"{_f(o['top3_accuracy'])}{_ci(m, 'top3_accuracy')} | {_f(o['parent_accuracy'])} | "
            f"{_f(o['ece'])} | "
            f"{_f(o.get('coverage_at_90_precision'))} ({_f(o.get('precision_at_90_target'))}) | "
            f"{_f(o.get('coverage_at_95_precision'))} ({_f(o.get('precision_at_95_target'))}) |"
        )
    comparison = result.get("paired_bootstrap")
    if comparison:
        lines += [
            "",
            "## Shared model against each baseline, paired bootstrap "
            f"(best baseline by macro-F1: {comparison['baseline']})",
            "",
            "| baseline | metric | shared minus baseline | 95% interval | excludes zero |",
            "|---|---|---:|---|---|",
        ]
        for baseline, paired in comparison.get("against", {comparison["baseline"]: comparison}).items():
            for metric in ("accuracy", "macro_f1", "top3_accuracy"):
                c = paired[metric]
                ci = c.get("ci95")
                lines.append(
                    f"| {baseline} | {metric} | {c['difference']:+.3f} | "
                    f"{f'[{ci[0]:+.3f}, {ci[1]:+.3f}]' if ci else 'n/a'} | {c.get('excludes_zero', 'n/a')} |"
                )
    lines += _cold_start_section(result.get("cold_start") or {})
    lines += [
        "",
        "## Conclusions",
        "",
        *_conclusions(result),
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
    lines += ["", "## Folds", "", "| fold | train | test | train / val / test tickets |", "|---|---|---|---|"]
    for f in result["folds"]:
        lines.append(
            f"| {f['fold']} | {f['train_start'][:10]} .. {f['train_end'][:10]} | "
            f"{f['test_start'][:10]} .. {f['test_end'][:10]} | "
            f"{f['train_tickets']:,} / {f['val_tickets']:,} / {f['test_tickets']:,} |"
        )
    lines += [
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
        *(
            ["![learning curve](learning_curve.png)"]
            if (result.get("cold_start") or {}).get("learning_curve")
            else []
        ),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plots(result, pooled, per_merchant, out)


def _cold_start_section(cold: dict) -> list[str]:
    if not cold:
        return []
    lines = ["", "## Cold start: labels and merchants the training window never saw", ""]
    zero = cold.get("zero_shot")
    if zero:
        lines += [
            '"shared+names" is the fitted shared model given, by name only, every label first seen in the '
            "test window (a merchant declares its labels when it creates them) and every new merchant's "
            "label names; no retraining. Chance: one over the merchant's label count (top-3: three over it). "
            "Every model fit before a label appeared scores 0 on it.",
            "",
            "| slice | tickets | merchants | accuracy | top-3 | chance acc. | chance top-3 "
            "| labels per merchant | shared without names |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, title in (
            ("new_labels", "new labels of known merchants"),
            ("new_labels_name_unseen", "... whose name no other merchant uses"),
            ("new_merchants", "new merchants"),
            ("new_merchants_names_unseen", "... labels whose name no other merchant uses"),
        ):
            z = zero.get(key)
            if not z or not z["tickets"]:
                continue
            lines.append(
                f"| {title} | {z['tickets']:,} | {z['accounts']} | {_f(z['accuracy'])} "
                f"| {_f(z['top3_accuracy'])} | {_f(z['chance_accuracy'])} | {_f(z['chance_top3'])} "
                f"| {z['mean_labels']:.1f} | {_f(z['without_names_accuracy'])} |"
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


def _conclusions(result: dict) -> list[str]:
    models = result["models"]
    out = []
    comparison = result.get("paired_bootstrap")
    if comparison and "shared" in models:
        b = comparison["baseline"]
        for metric, label in (("macro_f1", "macro-F1"), ("accuracy", "accuracy"), ("top3_accuracy", "top-3")):
            c = comparison[metric]
            if abs(c["difference"]) < 0.0005:
                out.append(f"- The shared model and {b} are level in {label}.")
                continue
            verdict = "better" if c["difference"] > 0 else "worse"
            sure = (
                " (the interval excludes zero)"
                if c.get("excludes_zero")
                else " (the interval includes zero: no clear difference)"
            )
            out.append(
                f"- The shared model is {abs(c['difference']):.3f} {verdict} than {b} in {label}{sure}."
            )
        shared = models["shared"]
        for other in comparison.get("against", {b: None}):
            for column, values in shared["slices"].items():
                for value, s in values.items():
                    if value == "False":  # the complement of a yes/no slice says nothing new
                        continue
                    base = models[other]["slices"][column].get(value, {})
                    if (
                        s.get("n", 0) >= 30
                        and base.get("accuracy") is not None
                        and (s["accuracy"] < base["accuracy"] - 0.01)
                    ):
                        out.append(
                            f"- Where the shared model loses: {column} = {value} "
                            f"(accuracy {s['accuracy']:.3f} vs {base['accuracy']:.3f} for {other}, "
                            f"n={s['n']:,})."
                        )
        cov = shared["overall"].get("coverage_at_95_precision")
        if cov is not None:
            out.append(
                f"- At the 95% precision target the shared model would auto-tag {cov:.1%} of tickets, "
                f"reaching {shared['overall'].get('precision_at_95_target', float('nan')):.1%} precision "
                "on the test windows."
            )
    return out or ["- (no shared model in this run)"]


def _plots(result: dict, pooled: dict[str, pd.DataFrame], per_merchant: pd.DataFrame, out: Path) -> None:
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

    fig, ax = plt.subplots(figsize=(5, 5))
    for name in [n for n in pooled if n == "shared" or n in ("logreg",)]:
        frame = pooled[name][~pooled[name]["abstained"]]
        bins = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(frame["confidence"], bins) - 1, 0, 9)
        conf = [frame["confidence"][which == b].mean() for b in range(10)]
        acc = [frame["correct"][which == b].mean() for b in range(10)]
        ece = result["models"][name]["overall"]["ece"]
        ax.plot(conf, acc, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability diagram")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for metric, ax in zip(("accuracy", "macro_f1"), axes, strict=True):
        for name, m in result["models"].items():
            ax.plot([f["fold"] for f in m["folds"]], [f[metric] for f in m["folds"]], marker="o", label=name)
        ax.set(xlabel="fold", ylabel=metric, title=f"{metric} per fold")
        ax.set_xticks([f["fold"] for f in result["folds"]])
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "per_fold.png", dpi=110)
    plt.close(fig)

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

    comparison = result.get("paired_bootstrap")
    if comparison:
        b = comparison["baseline"]
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
