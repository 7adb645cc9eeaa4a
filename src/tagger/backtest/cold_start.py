"""The backtest's cold-start measurements: zero-shot labels and merchants, and few-shot learning curves.

Zero-shot: in each fold the fitted shared model is also given, by name only, each merchant's whole
declared taxonomy at the end of the test window (:class:`Taxonomy`: from the build record on the
built-in data, else every label the merchant uses up to then), new merchants included. That model
is "shared+names"; the zero-shot label-name similarity baseline gets the same candidates.

Learning curves (last fold): a sample of well-populated (account, label) pairs is held out of the
training window entirely; the shared model is refit once without them and then gets each held-out
label back by name plus 0, 1, 5, 10 or 50 of its training tickets (no retraining); the baselines are
refit with the same tickets. Scored on the held-out labels' test tickets (with embeddings).
"""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from tagger.data.labels import normalise_label
from tagger.data.splits import DAY, Split
from tagger.data.tickets import Tickets
from tagger.estimators import load_model_config, make_estimator
from tagger.metrics import chance, outcomes, summary
from tagger.model.cold_start import update_labels
from tagger.model.label_update import LabelUpdate


class Taxonomy:
    """Each merchant's declared labels over time, and what each label is about where that is known.

    On the built-in data the build record beside the file (``<file>.build.json``) says when each
    merchant created each label (and renamed it) and which intents a label covers. On any other file
    a merchant's declared taxonomy at a date is every label it uses up to that date (the test window
    included: a merchant declares a label before its agents can use it), and intents are unknown.
    """

    def __init__(self, path: Path, meta: pd.DataFrame):
        record = Path(f"{path}.build.json")
        self.meta = meta
        self.record = json.loads(record.read_text()) if record.exists() else None
        self.source = f"the build record ({record.name})" if self.record else "labels used up to the date"
        self.intents: dict[tuple[str, str], list[str]] = {}
        if self.record:
            self.start = pd.Timestamp(self.record["config"]["start"], tz="UTC").timestamp()
            for m in self.record["merchants"]:
                for label in m["labels"]:
                    for name in filter(None, (label["name"], label.get("renamed_to"))):
                        key = (m["account_id"], normalise_label(name).casefold())
                        self.intents[key] = label["intents"]

    def at(self, until: float) -> dict[str, list[str]]:
        """``{account: labels}`` declared by ``until`` (seconds since 1970)."""
        if self.record is None:
            used = self.meta[self.meta["unix_timestamp"].to_numpy() <= until]  # the last fold keeps its end
            return {str(a): sorted(map(str, g.unique())) for a, g in used.groupby("account_id")["label"]}
        day = (until - self.start) / DAY
        out = {}
        for m in self.record["merchants"]:
            if m["start_day"] >= day:
                continue
            names = []
            for label in m["labels"]:
                if label.get("start_day", 0.0) < day:
                    names.append(label["name"])
                    if label.get("renamed_to") and label["rename_day"] < day:
                        names.append(label["renamed_to"])
            out[m["account_id"]] = [normalise_label(n) for n in names]
        return out

    def intent_unseen(self, frame: pd.DataFrame, train_meta: pd.DataFrame) -> np.ndarray:
        """Whether each outcome row's label covers intents no merchant's label had in training
        (always False without a build record, or for a catch-all that covers no intent)."""
        if self.record is None:
            return np.zeros(len(frame), bool)
        pairs = train_meta[["account_id", "label"]].astype(str).drop_duplicates()
        seen = {
            i
            for a, lab in zip(pairs["account_id"], pairs["label"], strict=True)
            for i in self.intents.get((a, lab.casefold()), [])
        }
        return np.array(
            [
                bool(its) and not set(its) & seen
                for its in (
                    self.intents.get((a, str(lab).casefold()), [])
                    for a, lab in zip(frame["account_id"], frame["label"], strict=True)
                )
            ]
        )


def name_seen_elsewhere(frame: pd.DataFrame, train_meta: pd.DataFrame) -> np.ndarray:
    """Whether each outcome row's label name (case-insensitively) is a label of another merchant in
    the training data: the encoder may have learned that reason there, under that name."""
    names = train_meta["label"].astype(str).str.casefold()
    accounts = train_meta["account_id"].astype(str)
    owners = accounts.groupby(names.to_numpy()).agg(set)
    return np.array(
        [
            bool(owners.get(lab.casefold(), set()) - {a})
            for a, lab in zip(frame["account_id"], frame["label"], strict=True)
        ]
    )


def zero_shot_summary(named: pd.DataFrame, plain: pd.DataFrame, names: pd.DataFrame | None = None) -> dict:
    """Accuracy and top-3 of "shared+names" (``named``) on new labels of known merchants and on new
    merchants, against the shared model without names (``plain``), the zero-shot label-name
    similarity baseline given the same declared taxonomies (``names``, rows aligned) and chance."""
    out = {}
    slices = {
        "new_labels": named["new_label"] & ~named["new_account"],
        "new_merchants": named["new_account"],
    }
    slices.update(
        {
            "new_labels_name_unseen": slices["new_labels"] & ~named["name_seen_elsewhere"],
            "new_labels_intent_unseen": slices["new_labels"] & named["intent_unseen"],
            "new_merchants_names_unseen": slices["new_merchants"] & ~named["name_seen_elsewhere"],
        }
    )
    nan = float("nan")
    for name, rows in slices.items():
        part = named[rows.to_numpy()]
        n_labels = part["n_account_labels"].to_numpy(float)
        accuracy_chance, top3_chance = chance(n_labels)
        some = len(part) > 0
        out[name] = {
            "tickets": len(part),
            "accounts": int(part["account_id"].nunique()),
            "accuracy": float(part["correct"].mean()) if some else nan,
            "top3_accuracy": float(part["top3_hit"].mean()) if some else nan,
            "chance_accuracy": float(accuracy_chance.mean()) if some else nan,
            "chance_top3": float(top3_chance.mean()) if some else nan,
            "mean_labels": float(n_labels.mean()) if some else nan,
            "without_names_accuracy": float(plain[rows.to_numpy()]["correct"].mean()) if some else nan,
        }
        if names is not None:
            baseline = names[rows.to_numpy()]
            out[name]["names_baseline_accuracy"] = float(baseline["correct"].mean()) if some else nan
            out[name]["names_baseline_top3"] = float(baseline["top3_hit"].mean()) if some else nan
    with_embeddings = ~named["no_embeddings"]
    out["new_labels_with_embeddings"] = {
        "tickets": int((slices["new_labels"] & with_embeddings).sum()),
        "top3_accuracy": float(named[(slices["new_labels"] & with_embeddings).to_numpy()]["top3_hit"].mean()),
    }
    return out


def _model(configs: dict[str, DictConfig], name: str) -> dict:
    """The model config of ``name``: from its run config where the backtest runs it, else conf/model."""
    if name not in configs:
        return load_model_config(name)
    return OmegaConf.to_container(configs[name].model, resolve=True)


def learning_curve(
    cfg: DictConfig, window: Tickets, test: Tickets, configs: dict[str, DictConfig], log_dir
) -> pd.DataFrame:
    """One row per (model, shots): accuracy and top-3 on held-out labels' test tickets, and accuracy
    on the other test tickets of the same merchants (does the new label steal from the old ones?)."""
    lc = cfg.backtest.cold_start.learning_curve
    shots = sorted(int(s) for s in lc.shots)
    rng = np.random.default_rng(cfg.seed)
    split = Split.of_window(window, cfg.data.val_days, bool(cfg.data.align_days), refit=False)
    train, val = split.train, split.val
    held = _held_out_pairs(train, test, max(shots), int(lc.min_test), int(lc.labels), rng)
    if not held:
        return pd.DataFrame()
    is_held = _pair_mask(train.meta, held)
    train_wo = train.subset(~is_held)
    val_wo = val.subset(~_pair_mask(val.meta, held))
    accounts = {a for a, _ in held}
    scored = (
        test.meta["account_id"].astype(str).isin(accounts).to_numpy() & test.meta["has_embeddings"].to_numpy()
    )
    eval_tickets = test.subset(scored)
    target = _pair_mask(eval_tickets.meta, held)
    # the examples: each held-out label's training tickets with embeddings, in a fixed random order
    pool = {
        pair: rng.permutation(
            np.flatnonzero(_pair_mask(train.meta, {pair}) & train.meta["has_embeddings"].to_numpy())
        )
        for pair in held
    }

    score = partial(_held_out_scores, tickets=eval_tickets, target=target, known=train_wo.meta)
    progress = tqdm(total=1 + len(lc.models), desc="learning curve", unit="model")
    shared = make_estimator(_model(configs, "shared"), cfg, log_dir=log_dir).fit(train_wo, val_wo)
    rows = [{**row, **score(model)} for row, model in _named_with_examples(shared, shots, held, pool, train)]
    progress.update()
    # per-account baselines only need the affected merchants' tickets
    affected = train.meta["account_id"].astype(str).isin(accounts).to_numpy() & ~is_held
    affected_val = val_wo.subset(val_wo.meta["account_id"].astype(str).isin(accounts).to_numpy())
    for name in lc.models:
        for n in shots:
            rows_n = affected.copy()
            for pair in held:
                rows_n[pool[pair][:n]] = True
            estimator = make_estimator(_model(configs, name), cfg, log_dir=log_dir)
            rows.append(
                {"model": name, "shots": n, **score(estimator.fit(train.subset(rows_n), affected_val))}
            )
        progress.update()
    progress.close()
    seen = name_seen_elsewhere(pd.DataFrame(held, columns=["account_id", "label"]), train_wo.meta)
    return pd.DataFrame(rows).assign(held_out_labels=len(held), held_out_names_seen_elsewhere=int(seen.sum()))


def _held_out_scores(estimator, tickets: Tickets, target: np.ndarray, known: pd.DataFrame) -> dict:
    """One learning-curve row's figures: accuracy, top-3 and macro-F1 on the ``target`` (held-out
    labels') tickets, accuracy on the same merchants' other ones; ``known``: the training tickets."""
    frame = outcomes(estimator.predict(tickets), tickets, known)
    mine, rest = frame[target], frame[~target]
    return {
        "held_out_tickets": len(mine),
        "accuracy": float(mine["correct"].mean()),
        "top3_accuracy": float(mine["top3_hit"].mean()),
        "macro_f1_held_out": summary(mine)["macro_f1"],
        "other_tickets": len(rest),
        "other_accuracy": float(rest["correct"].mean()) if len(rest) else float("nan"),
    }


def _named_with_examples(shared, shots: list[int], held: list, pool: dict, train: Tickets):
    """(row, model) for each number of examples: the shared model given each held-out label back by
    name plus N of its training tickets, and without the name's weight (``shared[examples only]``)."""
    no_name = copy.copy(shared)
    no_name.cfg = {**shared.cfg, "cold_start": {**shared.cfg.get("cold_start", {}), "name_weight": 0.0}}
    for n in shots:
        for name, base in (("shared", shared), ("shared[examples only]", no_name)):
            if name != "shared" and n == 0:
                continue
            updates = [
                LabelUpdate(a, add=[lab], examples={lab: _examples(train, pool[(a, lab)][:n])} if n else {})
                for a, lab in held
            ]
            yield {"model": name, "shots": n}, update_labels(base, updates)


def _held_out_pairs(
    train: Tickets, test: Tickets, min_train: int, min_test: int, n: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Up to ``n`` (account, label) pairs, one per account, with enough training and test tickets,
    from accounts that keep at least two other labels."""
    has = train.meta["has_embeddings"].to_numpy()
    counts = (
        train.meta[has].groupby([train.meta["account_id"].astype(str)[has], "label"], observed=True).size()
    )
    test_counts = test.meta.groupby([test.meta["account_id"].astype(str), "label"], observed=True).size()
    labels_per_account = counts.groupby(level=0).size()
    candidates = [
        (a, str(lab))
        for (a, lab), c in counts.items()
        if c >= min_train and test_counts.get((a, lab), 0) >= min_test and labels_per_account[a] >= 3
    ]
    picked: dict[str, tuple[str, str]] = {}
    for i in rng.permutation(len(candidates)):
        picked.setdefault(candidates[i][0], candidates[i])
    pairs = list(picked.values())
    return sorted(pairs[i] for i in rng.permutation(len(pairs))[:n])


def _pair_mask(meta: pd.DataFrame, pairs) -> np.ndarray:
    keys = meta["account_id"].astype(str) + "\x1f" + meta["label"].astype(str)
    return keys.isin({f"{a}\x1f{lab}" for a, lab in pairs}).to_numpy()


def _examples(tickets: Tickets, rows: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(tickets.sentences(int(i))) for i in rows]
