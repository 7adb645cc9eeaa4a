"""Manifests: a directory is complete and unaltered when every file matches its SHA-256 in
``manifest.json``, which is written last. No torch needed (the ONNX serving path uses it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ArtifactError(RuntimeError):
    """A model or export directory that is missing, incomplete or altered."""


def sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_manifest(directory: Path, files: tuple[str, ...], **extra) -> dict:
    """Write ``manifest.json``: the creation time and the SHA-256 of each of ``files``."""
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {name: sha256(directory / name) for name in files},
        **extra,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def verify(directory: str | os.PathLike, files: tuple[str, ...]) -> dict:
    """The manifest of a complete, unaltered directory; :class:`ArtifactError` otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such directory")
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        raise ArtifactError(f"{directory}: no manifest.json: not a complete model directory")
    manifest = json.loads(manifest_path.read_text())
    for name in files:
        path = directory / name
        if not path.exists():
            raise ArtifactError(f"{directory}: missing {name}")
        if sha256(path) != manifest["files"].get(name):
            raise ArtifactError(f"{directory}: {name} does not match its checksum in manifest.json")
    return manifest


@contextmanager
def atomic_directory(
    out_dir: str | os.PathLike, replace: bool = True, keep_existing: bool = False
) -> Iterator[Path]:
    """Yield a scratch directory beside ``out_dir``, moved into place only if the block succeeds
    (a failure leaves nothing behind). ``replace=False``: refuse to overwrite an existing ``out_dir``;
    ``keep_existing=True``: an ``out_dir`` another writer finished first wins and the scratch copy
    is dropped (a cache entry two processes build at once)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield tmp
        fsync_tree(tmp)  # the files and their directories on disk before the name points at them
        if out_dir.exists():
            if keep_existing:
                return
            if not replace:
                raise ArtifactError(f"{out_dir} already exists")
            shutil.rmtree(out_dir)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another writer's directory appeared in between
            if not (keep_existing and out_dir.exists()):
                raise
        fsync_dir(out_dir.parent)  # the rename itself
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """Flush every file under ``root`` and every directory holding them to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(folder)
