"""Label normalisation: quotes, spaces around ::, case variants merged per account."""

from __future__ import annotations

import pandas as pd
import pytest

from tagger.data.labels import canonical_labels, label_levels, label_text, normalise_label, parent_label


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('"Shipping::Tracking"', "Shipping::Tracking"),
        ('"\\"Shipping::Tracking\\""', "Shipping::Tracking"),
        ("Subscription:: Cancel", "Subscription::Cancel"),
        ("  Return ::Refund  ", "Return::Refund"),
        ("No Action  Req :: Others", "No Action Req::Others"),
        ("'Other'", "Other"),
        ("Other", "Other"),
        ("A::B::C::D", "A::B::C::D"),
    ],
)
def test_normalise_label(raw, clean):
    assert normalise_label(raw) == clean


def test_levels_parent_and_text():
    assert label_levels("Shipping::Tracking::Late") == ["Shipping", "Tracking", "Late"]
    assert parent_label("Shipping::Tracking") == "Shipping"
    assert parent_label("Other") == "Other"
    assert label_text("Return::Refund Request") == "Return Refund Request"


def test_case_variants_merge_into_the_most_used_spelling_per_account():
    accounts = pd.Series(["a", "a", "a", "a", "b", "b"])
    raw = pd.Series(
        [
            "shipping::tracking",
            "Shipping::Tracking",
            '"Shipping::Tracking"',
            "Other",
            "SHIPPING::TRACKING",
            "Other",
        ]
    )
    assert canonical_labels(accounts, raw).tolist() == [
        "Shipping::Tracking",
        "Shipping::Tracking",
        "Shipping::Tracking",
        "Other",
        "SHIPPING::TRACKING",
        "Other",
    ]


def test_tie_between_case_variants_is_deterministic():
    accounts = pd.Series(["a", "a"])
    assert canonical_labels(accounts, pd.Series(["other", "Other"])).tolist() == ["Other", "Other"]
    assert canonical_labels(accounts, pd.Series(["Other", "other"])).tolist() == ["Other", "Other"]
