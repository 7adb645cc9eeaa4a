"""Where the pieces of a file are scored: ``local`` (this process; parquet decoding in a reader thread
overlaps the parsing and scoring) or ``ray`` (Ray Data: a pool of actors, each loading the export
once). Both yield the result tables of :mod:`tagger.batch.score` in file order.

The Ray engine hands out row groups, not ``ray.data.read_parquet`` blocks: the quarantine report
names each bad row by its row number in the file, as the ingest does, and Ray's reader does not
carry row numbers. Each actor reads its row groups itself (pyarrow, the same code as ``local``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow as pa

from tagger.batch.score import RESULT_SCHEMA, Piece, PieceScorer, Timings
from tagger.data.ingest import prefetched


def local_tables(pieces: list[Piece], scorer_args: dict) -> Iterator[pa.Table]:
    """Result tables of ``pieces`` scored in this process."""
    scorer = PieceScorer(**scorer_args)
    for table, first_row, read in prefetched(scorer.batches(pieces)):
        yield scorer.score(table, first_row, read)


class RayPieceScorer:
    """A Ray Data actor: the export loaded once, then one piece per call."""

    def __init__(self, scorer_args: dict):
        self.scorer = PieceScorer(**scorer_args)

    def __call__(self, items: dict) -> pa.Table:
        pieces = [Piece(int(g), int(r)) for g, r in zip(items["row_group"], items["first_row"], strict=True)]
        tables = [self.scorer.score(t, r, s) for t, r, s in self.scorer.batches(pieces)]
        return _concat(tables)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """One table, the pieces' step timings summed into its metadata."""
    timings = Timings()
    for table in tables:
        timings.add(table)
    bare = [t.replace_schema_metadata(None) for t in tables]
    out = pa.concat_tables(bare) if bare else RESULT_SCHEMA.empty_table()
    return out.replace_schema_metadata({"timings": timings.to_json()})


def ray_tables(
    pieces: list[Piece], scorer_args: dict, workers: int, address: str | None
) -> Iterator[pa.Table]:
    """Result tables of ``pieces`` scored by ``workers`` Ray actors; ``address`` joins an existing
    cluster (None: a local one started here and stopped at the end)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run notices; predict.py reports
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the output in file order, as local writes it
        context.enable_progress_bars = False  # predict.py draws its own, in tickets
        items = [{"row_group": p.row_group, "first_row": p.first_row} for p in pieces]
        dataset = ray.data.from_items(items, override_num_blocks=max(len(items), 1)).map_batches(
            RayPieceScorer,
            fn_constructor_kwargs={"scorer_args": scorer_args},
            batch_size=1,
            batch_format="pyarrow",
            concurrency=workers,
            num_cpus=1,
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        if started_here:
            ray.shutdown()
