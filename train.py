"""Train the shared contact-reason model (selection fit, refit, its validation figures).

    python train.py                                   # built-in dataset, default config
    python train.py compare_with=[mlp,xlogreg]        # with baselines scored on the same split
    python train.py model.encoder.pooling=mean trainer.max_epochs=3 data.path=/x.parquet
    python train.py -m model.labels.label_init=name,random     # Hydra multirun
    python train.py model=logreg                      # one baseline alone

Writes results/train/metrics.json (output_dir=...) and models/shared-<time>/ (models_dir=...).
"""

import warnings

import hydra
from omegaconf import DictConfig

from tagger.schema import register

warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a deprecation inside Lightning itself

register()  # the schema of conf/, before Hydra composes it


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from tagger.training import run

    run(cfg)


if __name__ == "__main__":
    main()
