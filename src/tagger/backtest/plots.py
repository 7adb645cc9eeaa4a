"""The backtest's figures, one function per PNG; report.md shows them (:mod:`tagger.backtest.report`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def write_plots(
    result: dict,
    pooled: dict[str, pd.DataFrame],
    per_merchant: pd.DataFrame,
    out: Path,
    before_refit: dict[str, pd.DataFrame] | None = None,
) -> None:
    """Every figure of a backtest into ``out``: ``result`` is metrics.json's content, ``pooled`` each
    model's test outcomes (the first seed's), ``per_merchant`` per_merchant.csv, ``before_refit`` each
    model's selection fit's outcomes (the staleness figure, when the scored models are refits)."""
    coverage_precision(pooled, out / "coverage_precision.png")
    reliability(result, pooled, out / "reliability.png")
    per_fold(result, out / "per_fold.png")
    learning_curve(result, out / "learning_curve.png")
    merchant_scatter(result, per_merchant, out / "per_merchant.png")
    if before_refit:
        staleness(pooled, before_refit, out / "staleness.png")


def coverage_precision(pooled: dict[str, pd.DataFrame], path: Path) -> None:
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
    _save(fig, path)


def reliability(result: dict, pooled: dict[str, pd.DataFrame], path: Path) -> None:
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
    _save(fig, path)


def per_fold(result: dict, path: Path) -> None:
    """Accuracy and macro-F1 of every model per fold."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for metric, ax in zip(("accuracy", "macro_f1"), axes, strict=True):
        for name, m in result["models"].items():
            by_fold = pd.DataFrame(m["folds"]).groupby("fold")[metric].mean()  # mean over seeds
            ax.plot(by_fold.index, by_fold.to_numpy(), marker="o", label=name)
        ax.set(xlabel="fold", ylabel=metric, title=f"{metric} per fold")
        ax.set_xticks([f["fold"] for f in result["folds"]])
    axes[0].legend(fontsize=8)
    _save(fig, path)


def learning_curve(result: dict, path: Path) -> None:
    """The learning curve of the held-out labels (when there is one)."""
    curve = pd.DataFrame((result.get("cold_start") or {}).get("learning_curve") or [])
    if not len(curve):
        return
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
    _save(fig, path)


def merchant_scatter(result: dict, per_merchant: pd.DataFrame, path: Path) -> None:
    """Shared against the strongest baseline, merchant by merchant (when there is a comparison)."""
    comparison = result.get("paired_bootstrap")
    if not comparison:
        return
    b = comparison["strongest"]["macro_f1"]["baseline"]
    wide = per_merchant.pivot(index="account_id", columns="model", values="macro_f1")
    sizes = per_merchant[per_merchant["model"] == "shared"].set_index("account_id")["n"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(
        wide[b], wide["shared"], s=10 + 60 * np.sqrt(sizes.reindex(wide.index) / sizes.max()), alpha=0.6
    )
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set(xlabel=f"{b} macro-F1", ylabel="shared macro-F1", title="Per merchant (size = test tickets)")
    _save(fig, path)


def staleness(pooled: dict[str, pd.DataFrame], before: dict[str, pd.DataFrame], path: Path) -> None:
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
    _save(fig, path, dpi=120)


def _save(fig, path: Path, dpi: int = 110) -> None:
    """Lay ``fig`` out, write it to ``path`` and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
