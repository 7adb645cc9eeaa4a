"""Variants of the shared model, each a list of Hydra overrides: each design choice switched off
(or one part added) in turn. Run on train.py's split by ``python -m tagger.ablations`` and beside
the baselines by ``python backtest.py "backtest.ablations=[NAME, ...]"``."""

VARIANTS = {
    "default": [],
    "mean pooling": ["model.encoder.pooling=mean"],
    "max pooling": ["model.encoder.pooling=max"],
    "no account-conditioned query": ["model.encoder.account_query=false"],
    "labels from random init (no names)": ["model.labels.label_init=random"],
    "untied label tower": ["model.labels.tie_label_tower=false"],
    "logit adjustment tau=1": ["model.imbalance.method=logit_adjust", "model.imbalance.tau=1.0"],
    "3 prototypes per label": ["model.score.prototypes=3"],
    "a learned bias per label": ["model.score.label_bias=true"],
    "no early stopping (30 epochs)": ["callbacks.early_stopping.patience=1000"],
}
