"""Per-merchant drift between a reference window of answers and a current one.

Both sides are the deployed model's answers (predict.py's columns, the prediction log's): the
reference its answers on the end of its own training window, the current a prediction log or any
ticket file scored the same way. Each merchant gets five tests, each against what chance alone would
give with its own ticket counts, so a merchant with 12 tickets is not flagged for noise:

- ``label_mix``: the Jensen-Shannon divergence (base 2) of the predicted-label distributions, past
  the ``js_quantile`` of its no-drift null (current-sized draws from the reference's distribution);
- ``abstain``: the abstain rate up by more than ``z`` standard errors (two proportions);
- ``confidence``: the mean confidence down by more than ``z`` standard errors;
- ``unfamiliar``: the share of current tickets below the reference's ``low_confidence_quantile``
  (expected: that quantile) past ``z`` standard errors: tickets unlike what the labels covered
  (the log keeps confidences, not ticket vectors);
- ``vanished``: labels predicted in the reference that would be expected at least
  ``vanished_min_expected`` times now and are never predicted.

Merchants the model does not know, and (when the current file has true labels) labels the model
does not know, are flagged as they are. Merchants with fewer than ``min_tickets`` current tickets are
listed, not tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tagger.data.labels import normalise_label

TESTS = ("label_mix", "abstain", "confidence", "unfamiliar", "vanished")


@dataclass(frozen=True)
class DriftSettings:
    """conf/monitor.yaml's test settings."""

    min_tickets: int
    z: float
    js_quantile: float
    null_draws: int
    low_confidence_quantile: float
    vanished_min_expected: float
    seed: int


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (bits, 0 to 1) between distributions on the last axis."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(p > 0, p * np.log2(p / m), 0.0).sum(-1)
        b = np.where(q > 0, q * np.log2(q / m), 0.0).sum(-1)
    return 0.5 * (a + b)


def _smoothed(counts: np.ndarray) -> np.ndarray:
    counts = counts + 0.5  # a label seen on one side only still has a finite share on the other
    return counts / counts.sum(-1, keepdims=True)


def label_mix(ref: pd.Series, cur: pd.Series, settings: DriftSettings, rng) -> tuple[float, float]:
    """(JS divergence of the two label distributions, its no-drift threshold)."""
    labels = sorted(set(ref.dropna()) | set(cur.dropna()))
    ref_counts = ref.value_counts().reindex(labels, fill_value=0).to_numpy(float)
    cur_counts = cur.value_counts().reindex(labels, fill_value=0).to_numpy(float)
    observed = float(js_divergence(_smoothed(ref_counts), _smoothed(cur_counts)))
    p = ref_counts / ref_counts.sum()
    draws = rng.multinomial(int(cur_counts.sum()), p, size=settings.null_draws).astype(float)
    null = js_divergence(_smoothed(ref_counts)[None, :], _smoothed(draws))
    return observed, float(np.quantile(null, settings.js_quantile))


def _two_proportions(a: float, n_a: int, b: float, n_b: int) -> float:
    """z of b - a for two proportions (pooled standard error; 0 where it is 0)."""
    pooled = (a * n_a + b * n_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return float((b - a) / se) if se > 0 else 0.0


def merchant_drift(ref: pd.DataFrame, cur: pd.DataFrame, settings: DriftSettings) -> dict:
    """The figures and flags of one merchant: ``ref`` and ``cur`` its answers (predict.py's columns)."""
    n_ref, n_cur = len(ref), len(cur)
    row = {"n_reference": n_ref, "n_current": n_cur}
    row["abstain_reference"], row["abstain_current"] = ref.abstained.mean(), cur.abstained.mean()
    row["confidence_reference"], row["confidence_current"] = ref.confidence.mean(), cur.confidence.mean()
    floor = float(np.quantile(ref.confidence, settings.low_confidence_quantile)) if n_ref else np.nan
    row["unfamiliar_share"] = float((cur.confidence < floor).mean()) if n_cur else np.nan
    if n_cur < settings.min_tickets or n_ref < settings.min_tickets:
        return row | {"tested": False, "flagged_by": []}
    rng = np.random.default_rng(settings.seed)
    row["js"], row["js_threshold"] = label_mix(ref.label, cur.label, settings, rng)
    row["abstain_z"] = _two_proportions(row["abstain_reference"], n_ref, row["abstain_current"], n_cur)
    spread = np.sqrt(ref.confidence.var() / n_ref + cur.confidence.var() / n_cur)
    shift = row["confidence_current"] - row["confidence_reference"]
    row["confidence_z"] = float(shift / spread) if spread > 0 else 0.0  # one label: always sure
    q = settings.low_confidence_quantile
    row["unfamiliar_z"] = float((row["unfamiliar_share"] - q) / np.sqrt(q * (1 - q) / n_cur))
    expected = ref.label.value_counts() / n_ref * n_cur
    seen = set(cur.label.dropna())
    row["vanished_labels"] = sorted(
        str(label)
        for label, e in expected.items()
        if e >= settings.vanished_min_expected and label not in seen
    )
    flags = {
        "label_mix": row["js"] > row["js_threshold"],
        "abstain": row["abstain_z"] > settings.z,
        "confidence": row["confidence_z"] < -settings.z,
        "unfamiliar": row["unfamiliar_z"] > settings.z,
        "vanished": bool(row["vanished_labels"]),
    }
    return row | {"tested": True, "flagged_by": [name for name in TESTS if flags[name]]}


def _label_key(name: str) -> str:
    return normalise_label(name).casefold()


def drift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    settings: DriftSettings,
    known_accounts: set[str],
    known_labels: dict[str, set[str]] | None = None,
    truth: pd.Series | None = None,
) -> pd.DataFrame:
    """One row per merchant of ``current``, the ones most in need of attention first.

    ``known_accounts``/``known_labels``: the deployed model's merchants and their labels; ``truth``
    (aligned with ``current``): the true labels when the current file has them."""
    ref_by = dict(tuple(reference.groupby("account_id", sort=False)))
    rows = []
    for account, cur in current.groupby("account_id", sort=True):
        ref = ref_by.get(account, reference.iloc[:0])
        row = {"account_id": account} | merchant_drift(ref, cur, settings)
        if account not in known_accounts:
            row["flagged_by"] = [*row["flagged_by"], "unknown_merchant"]
        if truth is not None and known_labels is not None:
            true = truth.loc[cur.index].dropna()
            known = {_label_key(name) for name in known_labels.get(account, ())}
            unknown = true[~true.map(_label_key).isin(known)]  # as training reads labels: case, quotes
            row["unknown_labels"] = sorted(unknown.unique().tolist())
            row["unknown_label_share"] = len(unknown) / max(len(true), 1)
            if len(unknown) >= settings.min_tickets // 10 and row["unknown_labels"]:
                row["flagged_by"] = [*row["flagged_by"], "unknown_labels"]
        rows.append(row)
    table = pd.DataFrame(rows)
    table["n_flags"] = table["flagged_by"].map(len)
    severity = (table.get("js", 0) / table.get("js_threshold", 1)).fillna(0)
    table["attention"] = table["n_flags"] + severity.clip(upper=0.99)  # flags first, then the mix shift
    return table.sort_values(["attention", "n_current"], ascending=False).reset_index(drop=True)
