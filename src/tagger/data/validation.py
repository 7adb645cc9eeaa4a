"""The validation report: what was wrong with which rows, and how many. Nothing is dropped silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


class SchemaError(ValueError):
    """The file cannot be read as tickets at all (a missing or unusable column)."""


@dataclass(frozen=True)
class RowProblem:
    """One quarantined row: its position in the file, its ticket id, the field, the kind of
    problem (a short fixed phrase, counted) and the detail for this row."""

    row: int
    ticket_id: str
    field: str
    problem: str
    detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.field}: {self.problem}"


@dataclass
class ValidationReport:
    """Counts of rows read, kept and quarantined, with every quarantined row named."""

    n_rows: int = 0
    n_kept: int = 0
    n_no_embeddings: int = 0
    quarantined: list[RowProblem] = field(default_factory=list)

    @property
    def n_quarantined(self) -> int:
        return len(self.quarantined)

    def counts(self) -> dict[str, int]:
        """Quarantined rows per ``field: kind of problem``."""
        return dict(Counter(p.key for p in self.quarantined))

    def to_dict(self, max_ids: int = 20) -> dict:
        """JSON-ready summary; the first ``max_ids`` ticket ids of each problem are listed."""
        examples: dict[str, list[str]] = {}
        for p in self.quarantined:
            ids = examples.setdefault(p.key, [])
            if len(ids) < max_ids:
                ids.append(p.ticket_id)
        return {
            "rows": self.n_rows,
            "kept": self.n_kept,
            "no_embeddings": self.n_no_embeddings,
            "quarantined": self.n_quarantined,
            "problems": {key: {"count": n, "ticket_ids": examples[key]} for key, n in self.counts().items()},
        }

    def rows(self) -> list[dict]:
        """Every quarantined row as a dict (for a CSV or parquet quarantine file)."""
        return [asdict(p) for p in self.quarantined]

    def summary(self) -> str:
        """Human-readable lines."""
        lines = [
            f"rows read {self.n_rows:,}; kept {self.n_kept:,} "
            f"({self.n_no_embeddings:,} flagged no embeddings); quarantined {self.n_quarantined:,}"
        ]
        for key, info in self.to_dict(max_ids=5)["problems"].items():
            more = " ..." if info["count"] > len(info["ticket_ids"]) else ""
            lines.append(f"  {key}: {info['count']:,} (ticket_ids {', '.join(info['ticket_ids'])}{more})")
        return "\n".join(lines)
