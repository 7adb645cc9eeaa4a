"""Rolling-origin temporal evaluation of the shared model and the baselines.

    python backtest.py                                      # built-in dataset, 3 folds of 14 days
    python backtest.py data.path=/x.parquet backtest.n_folds=4 backtest.test_days=7
    python backtest.py backtest.window=sliding backtest.train_days=60 backtest.gap_days=1
    python backtest.py "backtest.ablations=[mean pooling,labels from random init (no names)]"

Writes results/backtest/ (output_dir=...): report.md, metrics.json, folds.csv, per_merchant.csv,
outcomes.parquet and plots.
"""

import warnings

import hydra
from omegaconf import DictConfig

from tagger.schema import register

warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a deprecation inside Lightning itself

register()  # the schema of conf/, before Hydra composes it


@hydra.main(version_base="1.3", config_path="conf", config_name="backtest")
def main(cfg: DictConfig) -> None:
    from tagger.backtest.run import run_backtest

    run_backtest(cfg)


if __name__ == "__main__":
    main()
