"""What the API accepts and how much it takes on at once (conf/serve.yaml ``limits``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Request caps (413 above them), the time a body may take to arrive (408), the request timeout
    (503), and admission control: at most
    ``max_in_flight`` requests in a worker at once, a request past it refused at once with 503 and
    ``Retry-After: retry_after_s``."""

    max_sentences: int = 256
    max_batch: int = 256
    max_body_bytes: int = 8_000_000
    max_label_name: int = 200
    max_label_changes: int = 256
    request_timeout_s: float = 10.0
    body_timeout_s: float = 5.0
    max_in_flight: int = 32
    retry_after_s: int = 1
    top_k: int = 3
    precision_target: str = "0.95"

    @classmethod
    def from_config(cls, cfg) -> Limits:
        """From a mapping such as conf/serve.yaml's ``limits`` (unknown keys are an error)."""
        values = dict(cfg or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown serving limits: {sorted(unknown)}")
        return cls(**{k: (str(v) if k == "precision_target" else v) for k, v in values.items()})
