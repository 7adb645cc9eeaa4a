"""Contact-reason label normalisation.

Raw label strings are messy: surrounding double quotes (``"\\"Shipping::Tracking\\""``),
irregular spaces around ``::`` (``Subscription:: Cancel``) and case variants of one label
inside one account. Normalisation makes one canonical display name per (account, label).
"""

from __future__ import annotations

import re

import pandas as pd

SEPARATOR = "::"
_SEP_SPACES = re.compile(r"\s*::\s*")
_WHITESPACE = re.compile(r"\s+")
_QUOTES = "\"'\\ \t\r\n"


def normalise_label(raw: str) -> str:
    """Strip surrounding quotes and whitespace, collapse spaces around ``::`` and inside words.

    Case is kept: case variants are merged per account by :func:`canonical_labels`.
    """
    text = str(raw)
    previous = None
    while previous != text:  # quotes may be nested: "\"Other\""
        previous = text
        text = text.strip(_QUOTES)
    text = _SEP_SPACES.sub(SEPARATOR, text)
    text = _WHITESPACE.sub(" ", text)
    return SEPARATOR.join(part.strip() for part in text.split(SEPARATOR))


def label_levels(label: str) -> list[str]:
    """The hierarchy levels of a label: ``"Shipping::Tracking"`` -> ``["Shipping", "Tracking"]``."""
    return [part for part in label.split(SEPARATOR) if part]


def parent_label(label: str) -> str:
    """The first level of a label (its parent category)."""
    levels = label_levels(label)
    return levels[0] if levels else label


def label_text(label: str) -> str:
    """The label as words, levels joined, for embedding with a sentence model."""
    return " ".join(label_levels(label))


def canonical_labels(accounts: pd.Series, raw: pd.Series) -> pd.Series:
    """Canonical display name of every row's label.

    Case variants of one account's label merge into the variant that account uses most
    (ties: the alphabetically first), so ``shipping::tracking`` and ``Shipping::Tracking``
    at one account become one label, while two accounts keep their own spellings.
    """
    unique_raw = pd.unique(raw)
    normalised_of = {r: normalise_label(r) for r in unique_raw}
    normalised = raw.map(normalised_of)
    frame = pd.DataFrame({"account": accounts.to_numpy(), "norm": normalised.to_numpy()})
    frame["key"] = frame["norm"].str.casefold()
    counts = frame.groupby(["account", "key", "norm"], sort=True).size().reset_index(name="n")
    # highest count first, then alphabetical: a deterministic choice
    counts = counts.sort_values(["account", "key", "n", "norm"], ascending=[True, True, False, True])
    best = counts.drop_duplicates(["account", "key"]).set_index(["account", "key"])["norm"]
    index = pd.MultiIndex.from_arrays([frame["account"], frame["key"]])
    return pd.Series(best.reindex(index).to_numpy(), index=raw.index, name="label")
