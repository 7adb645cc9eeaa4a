"""Score a ticket parquet file: the predictions as the API gives them, file to file.

    python predict.py                                       # built-in data, the promoted model of registry/
    python predict.py export_dir=DIR                        # an export with the labels it was made with
    python predict.py data.path=/x/tickets.parquet out=/x/predictions.parquet
    python predict.py engine=ray ray.workers=2              # Ray Data, a local cluster
    python predict.py engine=ray ray.address=auto           # join a running Ray cluster

Writes out (ticket_id, account_id, label, confidence, answer_level, top_labels, top_scores, abstained,
fallback, model_version, predicted_at, request_id: the API's prediction log's columns),
<out stem>.quarantine.parquet (the rows refused, as the ingest names them) and <out stem>.json (the
summary). Settings: conf/predict.yaml.
"""

import hydra
from omegaconf import DictConfig

from tagger.schema import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from tagger.batch.run import format_summary, predict_file
    from tagger.data.validation import SchemaError
    from tagger.manifest import ArtifactError

    try:
        summary = predict_file(cfg)
    except (SchemaError, FileNotFoundError, ValueError, ArtifactError) as err:  # one line, not a traceback
        raise SystemExit(f"predict.py: {err}") from None
    print(format_summary(summary))


if __name__ == "__main__":
    main()
