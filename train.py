"""Train the shared contact-reason model: ``python train.py [hydra overrides]``.

The model itself lands with issue 3; until then this prepares and describes the data.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from tagger.data.dataset import load_dataset
    from tagger.data.describe import describe, format_description

    tickets = load_dataset(cfg.data)
    print(format_description(describe(tickets), title=f"dataset: {cfg.data.path}"))
    print("\nmodel training is not built yet (issue 3: the shared model); the data is ready.")


if __name__ == "__main__":
    main()
