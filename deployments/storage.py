"""Where a model's versions come from: a local directory, or object storage
(``s3://``, ``gs://``) fetched into a node-local cache.

A source lists the numbered versions present (``path/1``, ``path/2``, each a
SavedModel) with a fingerprint of each one's files: a version whose files
are still being written changes fingerprint between polls, so the watcher
(``deployments.lifecycle``) takes a version only once two polls agree.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol


class VersionSource(Protocol):
    """A model's base path, listed and read."""

    def listing(self) -> dict[int, str]:
        """Each numbered version holding a ``saved_model.pb``, by version: a
        fingerprint of its files (names, sizes and change marks)."""
        ...

    def local_dir(self, version: int) -> Path:
        """A local directory holding ``version``'s SavedModel."""
        ...


class LocalSource:
    """A directory on this node (or a volume mounted on every node); one that
    is itself a SavedModel is version 1."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def __str__(self) -> str:
        return str(self.base)

    def listing(self) -> dict[int, str]:
        if (self.base / "saved_model.pb").is_file():
            return {1: _fingerprint(self.base)}
        if not self.base.is_dir():
            return {}
        return {int(d.name): _fingerprint(d) for d in self.base.iterdir()
                if d.name.isdecimal() and (d / "saved_model.pb").is_file()}

    def local_dir(self, version: int) -> Path:
        if (self.base / "saved_model.pb").is_file():
            return self.base
        return self.base / str(version)


def _fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(directory)}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def is_url(path: str | Path) -> bool:
    """``s3://...``, ``gs://...``: a path with a scheme, not a local one."""
    return "://" in str(path)


def open_source(path: str | Path) -> VersionSource:
    """The source for a model ``path``: a local directory, or a URL."""
    return LocalSource(Path(path))
