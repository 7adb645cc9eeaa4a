"""The statistics PRODUCT.md gives for the real dataset, computed for any ticket file."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tagger.data.labels import normalise_label
from tagger.data.tickets import Tickets


def _quantiles(values: np.ndarray, names: dict[str, float]) -> dict[str, float]:
    if len(values) == 0:
        return {k: float("nan") for k in names}
    return {k: float(np.percentile(values, q)) for k, q in names.items()}


def describe(tickets: Tickets, worst: int = 5) -> dict:
    """A JSON-ready dict of the dataset's statistics and its validation report."""
    meta = tickets.meta
    has_labels = "label" in meta
    no_emb = ~meta["has_embeddings"]
    per_account_null = (
        no_emb.groupby(meta["account_id"])
        .agg(["mean", "size"])
        .rename_axis("account")
        .reset_index()
        .sort_values(["mean", "size", "account"], ascending=[False, False, True])
        .set_index("account")
    )
    sentences = tickets.n_sentences[meta["has_embeddings"].to_numpy()]
    out: dict = {
        "tickets": len(meta),
        "accounts": int(meta["account_id"].nunique()),
        "null_embeddings": {
            "share": float(no_emb.mean()) if len(meta) else 0.0,
            "worst_accounts": [
                {"account_id": str(a), "share": float(r["mean"]), "tickets": int(r["size"])}
                for a, r in per_account_null.head(worst).iterrows()
            ],
            "accounts_over_40pct": int((per_account_null["mean"] > 0.4).sum()),
        },
        "sentences_per_email": {
            "mean": float(sentences.mean()) if len(sentences) else float("nan"),
            **_quantiles(sentences, {"median": 50, "p75": 75, "p99": 99}),
            "max": int(sentences.max()) if len(sentences) else 0,
            "unique_sentences": len(tickets.sentence_vocab),
        },
        "time_span": _time_span(meta["unix_timestamp"]),
        "validation": tickets.report.to_dict(),
    }
    if has_labels:
        out["labels"] = _label_stats(meta)
    return out


def _time_span(ts: pd.Series) -> dict:
    if ts.empty:
        return {}
    first, last = pd.to_datetime(ts.min(), unit="s", utc=True), pd.to_datetime(ts.max(), unit="s", utc=True)
    return {
        "first": first.isoformat(),
        "last": last.isoformat(),
        "days": round((last - first).total_seconds() / 86400, 1),
    }


def _label_stats(meta: pd.DataFrame) -> dict:
    raw_pairs = meta[["account_id", "contact_reason"]].drop_duplicates()
    per_label = meta.groupby(["account_id", "label"]).size()
    per_account = per_label.groupby(level=0).size()
    depth = meta.drop_duplicates(["account_id", "label"])["depth"]
    shared = meta.drop_duplicates(["account_id", "label"]).groupby("label").size()
    return {
        "raw": len(raw_pairs),
        "raw_strings": int(meta["contact_reason"].nunique()),
        "normalised": len(per_label),
        "normalised_strings": int(meta["label"].nunique()),
        "changed_by_normalisation": int(
            (raw_pairs["contact_reason"].map(normalise_label) != raw_pairs["contact_reason"]).sum()
        ),
        "max_depth": int(depth.max()),
        "tickets_per_label": {
            "median": float(per_label.median()),
            "mean": float(per_label.mean()),
            "max": int(per_label.max()),
        },
        "labels_per_account": {
            "min": int(per_account.min()),
            "median": float(per_account.median()),
            "max": int(per_account.max()),
        },
        "accounts_with_label_of_10_or_fewer": int((per_label <= 10).groupby(level=0).any().sum()),
        "single_label_accounts": int((per_account == 1).sum()),
        "labels_at_several_accounts": int((shared > 1).sum()),
        "most_shared": {str(k): int(v) for k, v in shared.sort_values(ascending=False).head(5).items()},
    }


def format_description(stats: dict, title: str = "") -> str:
    """The describe output as aligned text lines."""
    lines = [title] if title else []
    add = lines.append
    add(f"tickets                 {stats['tickets']:,}")
    add(f"accounts                {stats['accounts']:,}")
    if "labels" in stats:
        lab = stats["labels"]
        add(
            f"labels (account, name)  raw {lab['raw']:,} -> normalised {lab['normalised']:,} "
            f"({lab['changed_by_normalisation']:,} raw strings cleaned); max depth {lab['max_depth']}"
        )
        add(
            f"distinct label strings  raw {lab['raw_strings']:,} -> "
            f"normalised {lab['normalised_strings']:,}; "
            f"{lab['labels_at_several_accounts']:,} at several accounts (top: "
            + ", ".join(f"{k} x{v}" for k, v in lab["most_shared"].items())
            + ")"
        )
        t = lab["tickets_per_label"]
        add(f"tickets per label       median {t['median']:g}, mean {t['mean']:.1f}, max {t['max']:,}")
        a = lab["labels_per_account"]
        add(
            f"labels per account      min {a['min']}, median {a['median']:g}, max {a['max']}; "
            f"{lab['single_label_accounts']} single-label accounts; "
            f"{lab['accounts_with_label_of_10_or_fewer']} accounts with a label of <=10 tickets"
        )
    n = stats["null_embeddings"]
    worst = ", ".join(f"{w['account_id']} {w['share']:.0%} of {w['tickets']:,}" for w in n["worst_accounts"])
    add(
        f"null embeddings         {n['share']:.1%} overall; {n['accounts_over_40pct']} accounts over 40%; "
        f"worst: {worst}"
    )
    s = stats["sentences_per_email"]
    add(
        f"sentences per email     mean {s['mean']:.2f}, median {s['median']:g}, p75 {s['p75']:g}, "
        f"p99 {s['p99']:g}, max {s['max']}; {s['unique_sentences']:,} unique sentences"
    )
    span = stats["time_span"]
    if span:
        add(f"time span               {span['first'][:19]} .. {span['last'][:19]} ({span['days']} days)")
    v = stats["validation"]
    add(
        f"validation              {v['rows']:,} rows, {v['kept']:,} kept "
        f"({v['no_embeddings']:,} no embeddings), "
        f"{v['quarantined']:,} quarantined"
    )
    for key, info in v["problems"].items():
        ids = ", ".join(info["ticket_ids"][:5]) + (" ..." if info["count"] > 5 else "")
        add(f"  {key}: {info['count']:,} (ticket_ids {ids})")
    return "\n".join(lines)
