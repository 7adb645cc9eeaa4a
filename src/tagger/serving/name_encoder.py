"""all-MiniLM-L6-v2 for label names in ONNX Runtime: the serving process embeds a new label's name
without torch. ``name_encoder.onnx`` is the BERT encoder with mean pooling and L2 normalisation
(exactly sentence-transformers' pipeline for this model); ``tokenizer.json`` its WordPiece
tokenizer for the ``tokenizers`` library.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

FILES = ("name_encoder.onnx", "tokenizer.json")
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


class NameEncoder:
    """Embeds texts to unit float32 ``[n, 384]`` vectors, as sentence-transformers does."""

    def __init__(self, directory: str | os.PathLike, threads: int = 1):
        from tokenizers import Tokenizer

        directory = Path(directory)
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(directory / "name_encoder.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """``[len(texts), 384]`` unit vectors."""
        out = []
        for start in range(0, len(texts), batch_size):
            encoded = self.tokenizer.encode_batch(list(texts[start : start + batch_size]))
            ids = np.array([e.ids for e in encoded], np.int64)
            mask = np.array([e.attention_mask for e in encoded], np.int64)
            out.append(self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)

    __call__ = embed


def build(out_dir: Path, opset: int = 17) -> None:
    """Write ``name_encoder.onnx`` and ``tokenizer.json`` for the bundled all-MiniLM-L6-v2 (needs torch)."""
    import torch

    from tagger.embed import load_encoder

    transformer = load_encoder()[0]

    class _Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            weights = attention_mask[..., None].to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    example = transformer.tokenizer(
        ["a label", "another, longer label name"], padding=True, return_tensors="pt"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        _Encoder(transformer.auto_model.eval()).eval(),
        (example["input_ids"], example["attention_mask"]),
        str(out_dir / "name_encoder.onnx"),
        dynamo=False,
        opset_version=opset,
        input_names=["input_ids", "attention_mask"],
        output_names=["embeddings"],
        dynamic_axes={
            "input_ids": {0: "n", 1: "tokens"},
            "attention_mask": {0: "n", 1: "tokens"},
            "embeddings": {0: "n"},
        },
    )
    transformer.tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))


def cached(cache_dir: Path, opset: int = 17) -> Path:
    """A directory holding the two files, built once per cache (they are the same for every export)."""
    from tagger.manifest import atomic_directory

    target = cache_dir / f"name_encoder-opset{opset}"
    if not all((target / f).exists() for f in FILES):
        with atomic_directory(target) as tmp:
            build(tmp, opset)
    return target
