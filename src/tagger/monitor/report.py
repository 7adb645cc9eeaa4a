"""The drift report as one page a person scans: the merchants most in need of attention first,
two plots, and (on the built-in data) the check against the drift its builder injected."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from tagger.monitor.drift import TESTS
from tagger.paths import shown


def where(path: str) -> str:
    """A path as a committed report may show it: relative to the project, else its file name."""
    shown_path = shown(path)
    return shown_path if not Path(shown_path).is_absolute() else Path(path).name


def _day(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d") if seconds is not None else "-"


def plots(table: pd.DataFrame, out_dir: Path, top: int = 25) -> list[str]:
    """attention.png (the label-mix shift against its no-drift threshold, the top merchants) and
    abstain.png (each merchant's abstain rate, reference against current); their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tested = table[table.tested].head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(tested))))
    colours = ["tab:red" if n else "tab:grey" for n in tested["n_flags"]]
    ax.barh(tested.account_id, tested.js / tested.js_threshold, color=colours)
    ax.axvline(1.0, color="black", lw=1, ls="--")
    ax.set_xlabel("label-mix shift / its no-drift threshold (red: flagged by any test)")
    ax.set_title("Merchants most in need of attention")
    fig.tight_layout()
    fig.savefig(out_dir / "attention.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    shown = table[table.tested]
    flagged = shown.n_flags > 0
    for mask, colour, name in ((~flagged, "tab:grey", "not flagged"), (flagged, "tab:red", "flagged")):
        part = shown[mask]
        ax.scatter(
            part.abstain_reference, part.abstain_current, s=10 + part.n_current**0.5 * 2, c=colour, label=name
        )
    ax.plot([0, 1], [0, 1], color="black", lw=1, ls="--")
    ax.set_xlabel("abstain rate, reference")
    ax.set_ylabel("abstain rate, current")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "abstain.png", dpi=110)
    plt.close(fig)
    return ["attention.png", "abstain.png"]


def _rows(table: pd.DataFrame) -> pd.DataFrame:
    def arrow(a, b, fmt="{:.2f}"):
        return f"{fmt.format(a)} -> {fmt.format(b)}"

    out = pd.DataFrame(
        {
            "merchant": table.account_id,
            "tickets ref / now": [
                f"{a:,} / {b:,}" for a, b in zip(table.n_reference, table.n_current, strict=True)
            ],
            "flags": [", ".join(f) or "-" for f in table["flagged_by"]],
            "label mix JS (threshold)": [
                f"{j:.3f} ({t:.3f})" if pd.notna(j) else "-"
                for j, t in zip(
                    table.get("js", pd.Series(dtype=float)),
                    table.get("js_threshold", pd.Series(dtype=float)),
                    strict=False,
                )
            ],
            "abstain": [
                arrow(a, b) for a, b in zip(table.abstain_reference, table.abstain_current, strict=True)
            ],
            "confidence": [
                arrow(a, b) for a, b in zip(table.confidence_reference, table.confidence_current, strict=True)
            ],
            "unfamiliar": table.unfamiliar_share.map(lambda x: f"{x:.0%}" if pd.notna(x) else "-"),
            "labels never predicted now": table.get("vanished_labels", pd.Series([[]] * len(table))).map(
                lambda v: ", ".join(v) if isinstance(v, list) and v else "-"
            ),
        }
    )
    if "unknown_labels" in table:
        out["labels the model does not know"] = table.unknown_labels.map(lambda v: ", ".join(v[:3]) or "-")
    return out


def markdown(info: dict, table: pd.DataFrame, figures: list[str], verdict: dict | None) -> str:
    """The report's text (figures referenced by file name, beside it)."""
    flagged = table[table.n_flags > 0]
    counts = {
        t: int(sum(t in f for f in table["flagged_by"]))
        for t in (*TESTS, "unknown_merchant", "unknown_labels")
    }
    lines = [
        "# Drift report",
        "",
        f"Command: `{info['command']}`. Model: `{info['model_version']}`.",
        f"Reference: its answers on {info['reference_source']} from {_day(info['reference_start'])} to "
        f"{_day(info['reference_end'])} (the end of its training window), "
        f"{info['reference_tickets']:,} tickets. "
        f"Current: {info['current_source']}, {info['current_tickets']:,} tickets"
        + (f" from {_day(info['current_start'])}." if info.get("current_start") else "."),
        "",
        f"**{len(flagged)} of {len(table)} merchants need attention**; "
        f"{int(table.tested.sum())} had at least "
        f"{info['settings']['min_tickets']} tickets on both sides and were tested. Flags: "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        + ". Each test is against chance with the merchant's own counts (docs/operating.md: drift).",
        "",
        *[f"![{f}]({f})" for f in figures],
        "",
        "## Merchants, most in need of attention first",
        "",
        _rows(pd.concat([flagged, table[table.n_flags == 0].head(10)])).to_markdown(index=False),
        "",
    ]
    if verdict is not None:
        lines += check_section(verdict)
    untested = table[~table.tested]
    if len(untested):
        lines += [
            "## Not tested (too few tickets)",
            "",
            ", ".join(
                f"{a} ({r:,}/{c:,})"
                for a, r, c in zip(untested.account_id, untested.n_reference, untested.n_current, strict=True)
            ),
            "",
        ]
    return "\n".join(lines)


def check_section(verdict: dict) -> list[str]:
    """The check against the builder's injected drift."""
    rows = [
        {
            "injected drift": kind,
            "merchants": v["merchants"],
            "tested": v["tested"],
            "flagged": v["flagged"],
            "missed (tested, not flagged)": ", ".join(v["missed"]) or "-",
            "too few tickets to test": len(v["too_few_tickets"]),
        }
        for kind, v in verdict["by_cause"].items()
    ]
    without = verdict["flagged_without_cause"]
    return [
        "## Check against the drift the builder injected",
        "",
        "The built-in data's builder recorded what it injected (`<file>.build.json`); each merchant's "
        "causes that can move its answers between the two windows, against what this report flagged.",
        "",
        pd.DataFrame(rows).to_markdown(index=False),
        "",
        f"Merchants flagged without an injected cause: {len(without)}"
        + (f" ({', '.join(without)})." if without else "."),
        "",
    ]
