"""Ticket data: ingest of the ticket parquet, label normalisation, validation, statistics."""

from tagger.data.cache import load_tickets
from tagger.data.tickets import Tickets
from tagger.data.validation import RowProblem, SchemaError, ValidationReport

__all__ = ["RowProblem", "SchemaError", "Tickets", "ValidationReport", "load_tickets"]
