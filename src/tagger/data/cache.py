"""A parse cache keyed by the ticket file's content: the second load memory-maps the result.

Layout of one entry, ``<cache_dir>/<sha256 of the file>-v<PARSER_VERSION>/``: the files
:func:`tagger.data.ingest.parse_file` writes, then ``manifest.json`` last. An entry is
built in a temporary directory and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tagger.data.embeddings_json import EMBEDDING_DIM
from tagger.data.ingest import parse_file
from tagger.data.tickets import Tickets
from tagger.data.validation import RowProblem, ValidationReport
from tagger.manifest import atomic_directory, sha256
from tagger.paths import data_path

PARSER_VERSION = 2  # 2: JSON only (a Python dict repr is quarantined, issue 27)


def load_tickets(
    path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    require_labels: bool = True,
    progress: bool = True,
) -> Tickets:
    """Load a ticket parquet file, parsing it only if no cache entry for its content exists.

    ``cache_dir`` defaults to ``$TAGGER_CACHE_DIR``, else conf/data's ``cache_dir``.
    With ``use_cache=False`` the file is parsed into a temporary directory and read into RAM.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ticket file not found: {path}")
    digest = sha256(path)
    if not use_cache:
        with tempfile.TemporaryDirectory() as tmp:
            parse_file(path, Path(tmp), require_labels, progress)
            return _open(Path(tmp), digest, in_memory=True)
    root = Path(cache_dir or os.environ.get("TAGGER_CACHE_DIR") or data_path("cache_dir"))
    entry = root / f"{digest}-v{PARSER_VERSION}{'' if require_labels else '-unlabelled'}"
    if not (entry / "manifest.json").exists():
        with atomic_directory(entry, keep_existing=True) as tmp:
            counts = parse_file(path, tmp, require_labels, progress)
            manifest = {
                "source": str(path.resolve()),
                "sha256": digest,
                "parser_version": PARSER_VERSION,
                "n_tickets": counts["n_tickets"],
                "n_sentences": counts["n_sentences"],
                "dim": counts["dim"],
                "report": counts["report"].to_dict(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return _open(entry, digest)


def _open(entry: Path, digest: str, in_memory: bool = False) -> Tickets:
    offsets = np.load(entry / "offsets.npy")
    n_sentences = int(offsets[-1])
    if n_sentences:
        embeddings = np.memmap(
            entry / "embeddings.f32", dtype=np.float32, mode="r", shape=(n_sentences, EMBEDDING_DIM)
        )
        if in_memory:
            embeddings = np.array(embeddings)
    else:
        embeddings = np.empty((0, EMBEDDING_DIM), np.float32)
    meta = pd.read_parquet(entry / "meta.parquet")
    quarantine = pd.read_parquet(entry / "quarantine.parquet")
    n_rows = len(meta) + len(quarantine)
    report = ValidationReport(
        n_rows=n_rows,
        n_kept=len(meta),
        n_no_embeddings=int((~meta["has_embeddings"]).sum()),
        quarantined=[RowProblem(**r) for r in quarantine.to_dict("records")],
    )
    return Tickets(
        meta=meta,
        embeddings=embeddings,
        offsets=offsets,
        sentence_ids=np.load(entry / "sentence_ids.npy", mmap_mode=None if in_memory else "r"),
        sentence_vocab=np.load(entry / "sentence_vocab.npy"),
        report=report,
        digest=digest,
    )
