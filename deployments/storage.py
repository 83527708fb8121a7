"""Where a model's versions come from: a local directory, or object storage
(``s3://``, ``gs://``) fetched into a node-local cache.

A source lists the numbered versions present (``path/1``, ``path/2``, each a
SavedModel) with a fingerprint of each one's files: a version whose files
are still being written changes fingerprint between polls, so the watcher
(``deployments.replica.lifecycle``) takes a version only once two polls agree.

Version directories are named as TF Serving reads them (:func:`version_of`):
ASCII digits within an int64, leading zeros allowed (``path/00000123`` is
version 123, read from that directory). Any other name is ignored, and said
so once in the log. Two directories naming one version (``7`` and ``007``)
list it, but loading it fails with :class:`AmbiguousVersion`.

A remote version is downloaded once per node into :class:`Cache` (replicas
on one node share the copy), checked against the listing it was taken from,
checked again each time it is reused, and kept until the cache needs room
for another one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import posixpath
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import fsspec
import fsspec.asyn

from deployments.codecs.numbers import MAX_VERSION, version_number
from deployments.config import SCHEMES, is_url
from deployments.shipping import (
    build_once,
    last_used,
    local_root,
    mark_used,
    private_dir,
    remove_copy,
)

# An object's listing entry, as its fsspec filesystem reports it.
Info = dict[str, Any]

# In each cached copy: its files as downloaded and checked (size, change mark, SHA-256).
MANIFEST = ".ray-tf-serve-manifest.json"

logger = logging.getLogger("ray.serve")


def version_of(name: str) -> int | None:
    """The version a directory ``name`` holds, as TF Serving reads it: ASCII
    digits, leading zeros allowed (``"00000123"`` is 123), from 0 to 2**63-1;
    ``None`` for any other name (``"-1"``, ``"1a"``, fullwidth ``"８"``, 20 digits)."""
    return version_number(name)


class AmbiguousVersion(ValueError):
    """Two (or more) directories name one version (``7`` and ``007``): which
    one to load is the owner's choice, not ours."""

    def __init__(self, version: int, names: Iterable[str], base: str) -> None:
        *rest, last = sorted(names)
        super().__init__(f"version {version} is in {len(rest) + 1} directories under {base}: "
                         f"{', '.join(rest)} and {last}; remove all but one")


class VersionSource(Protocol):
    """A model's base path, listed and read."""

    def versions(self) -> set[int]:
        """The versions the base path names (its version directories'
        names only, not their files)."""
        ...

    def fingerprints(self, versions: Iterable[int]) -> dict[int, str]:
        """Those of ``versions`` holding a ``saved_model.pb``, by version: a
        fingerprint of all its files (names, sizes and change marks)."""
        ...

    def listing(self) -> dict[int, str]:
        """:meth:`fingerprints` of every version there is."""
        ...

    def local_dir(self, version: int) -> Path:
        """A local directory holding ``version``'s SavedModel."""
        ...

    def why_empty(self) -> str:
        """Why the listing is empty, for the error that says so."""
        ...


class LocalSource:
    """A directory on this node (or a volume mounted on every node); one that
    is itself a SavedModel is version 1."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._ignored: set[str] = set()  # names logged as no version

    def __str__(self) -> str:
        return str(self.base)

    def versions(self) -> set[int]:
        if (self.base / "saved_model.pb").is_file():
            return {1}
        return set(self._version_dirs())

    def fingerprints(self, versions: Iterable[int]) -> dict[int, str]:
        if (self.base / "saved_model.pb").is_file():
            return {1: _fingerprint(self.base)} if 1 in versions else {}
        present = self._version_dirs()
        return {version: _combined({d.name: _fingerprint(d) for d in dirs})
                for version in versions if (dirs := present.get(version))
                and any((d / "saved_model.pb").is_file() for d in dirs)}

    def listing(self) -> dict[int, str]:
        return self.fingerprints(self.versions())

    def local_dir(self, version: int) -> Path:
        if (self.base / "saved_model.pb").is_file():
            return self.base
        dirs = self._version_dirs().get(version)
        if not dirs:
            raise FileNotFoundError(f"no version {version} directory in {self.base}")
        if len(dirs) > 1:
            raise AmbiguousVersion(version, (d.name for d in dirs), str(self.base))
        return dirs[0]

    def _version_dirs(self) -> dict[int, list[Path]]:
        """The directories in ``base`` by the version their name holds."""
        if not self.base.is_dir():
            return {}
        names = _by_version((d.name for d in self.base.iterdir() if d.is_dir()), self._ignored,
                            str(self.base))
        return {version: [self.base / name for name in names[version]] for version in names}

    def why_empty(self) -> str:
        if not self.base.exists():
            return "no such directory"
        return "no saved_model.pb in it, nor in a numbered version directory"


class CacheTooSmall(ValueError):
    """A download larger than the whole cache may hold."""


class DownloadError(RuntimeError):
    """A downloaded file differs from the store's listing of it (cut short,
    or the object changed meanwhile): the copy is dropped."""


@dataclass(frozen=True)
class Cache:
    """Where this node keeps downloaded objects: one directory per version
    (or file) and fingerprint, shared by every process on the node.

    ``max_bytes`` bounds the copies kept: before a download, the copies used
    least recently are removed until it fits. A copy being loaded elsewhere
    on the node may go too if the cache is too small for every version in
    use; size it above them. ``verify_md5`` checks each file against the MD5
    its store reports (an S3 ETag that is a plain MD5, a GCS ``md5Hash``, or
    an S3 multipart ETag: the MD5 of its parts' MD5s, the part size read from
    the store); turn it off for S3 buckets encrypted with SSE-KMS or SSE-C,
    whose ETags are no MD5.

    Each copy keeps a manifest of its files as checked (size, change mark,
    SHA-256): a copy is reused only if it holds exactly those files, as the
    listing still shows them, with those sizes and SHA-256s; else (cut
    short, changed on disk, made by an older release) it is fetched again.
    ``root`` must be this user's alone (:func:`private_dir`).
    """

    root: Path = field(default_factory=lambda: local_root() / "remote")
    max_bytes: int = 20 * 2**30
    verify_md5: bool = True

    def fetch(self, fs: fsspec.AbstractFileSystem, files: dict[str, Info], name: str,
              url: str) -> Path:
        """``files`` of ``url`` (relative name → its listing) downloaded into
        ``root/name`` once per node, each checked against its listing; a
        copy there is reused only once checked against its manifest."""
        private_dir(self.root)
        mark_used(self.root, name)  # first, so no other process's eviction takes it
        target = self.root / name
        if target.is_dir():
            if (why := _unlike(target, files)) is None:
                return target
            logger.warning("cached copy %s of %s %s: fetching it again", target, url, why)
            shutil.rmtree(target, ignore_errors=True)
        self._make_room(name, sum(info["size"] for info in files.values()), url)

        def download(staging: Path) -> None:
            names = sorted(files)
            fs.get([files[n]["name"] for n in names], [str(staging / n) for n in names])
            manifest = {n: {"size": files[n]["size"], "mark": _mark(files[n]),
                            "sha256": self._check(fs, staging / n, files[n])} for n in names}
            (staging / MANIFEST).write_text(json.dumps(manifest))

        return build_once(target, download)

    def _make_room(self, name: str, size: int, url: str) -> None:
        """Remove the copies used least recently (never ``name``) until
        ``size`` more bytes fit within ``max_bytes``."""
        if size > self.max_bytes:
            raise CacheTooSmall(f"{url} is {size} bytes, more than the whole cache holds "
                                f"(max_bytes={self.max_bytes} at {self.root})")
        used = last_used(self.root)
        copies = {p.name: _size(p) for p in self.root.iterdir()
                  if not p.name.startswith(".") and p.name != name}  # not marks, not staging
        total = sum(copies.values())
        for old in sorted(copies, key=lambda n: used.get(n, 0.0)):  # unmarked: leftovers
            if total + size <= self.max_bytes:
                break
            remove_copy(self.root, old)
            total -= copies[old]

    def _check(self, fs: fsspec.AbstractFileSystem, path: Path, info: Info) -> str:
        """A downloaded file checked against its listing: its SHA-256."""
        size = path.stat().st_size
        if size != info["size"]:
            raise DownloadError(f"{info['name']}: {size} bytes downloaded, "
                                f"the store lists {info['size']}")
        md5 = _md5(info) if self.verify_md5 else None
        multipart = _multipart(info) if self.verify_md5 else None
        part_sizes = _part_sizes(fs, info, multipart[1]) if multipart else []
        if multipart and not part_sizes:
            logger.warning("%s: no part sizes for its multipart ETag: its MD5 is not checked "
                           "(its size is)", info["name"])
        if part_sizes and sum(part_sizes) != size:
            raise DownloadError(f"{info['name']}: its parts add up to {sum(part_sizes)} bytes, "
                                f"the store lists {size}")
        sha256, got_md5, got_multipart = _hashes(path, md5 is not None, part_sizes)
        if md5 is not None and got_md5 != md5:
            raise DownloadError(f"{info['name']}: MD5 {got_md5} downloaded, "
                                f"the store lists {md5}")
        if multipart and part_sizes and got_multipart != "-".join(map(str, multipart)):
            raise DownloadError(f"{info['name']}: multipart ETag {got_multipart} downloaded, "
                                f"the store lists {'-'.join(map(str, multipart))}")
        return sha256


class RemoteSource:
    """Numbered versions under ``s3://bucket/prefix`` or ``gs://bucket/prefix``.

    Every listing asks the store, never fsspec's listings cache, so a
    version uploaded since shows up on the next poll: :meth:`versions` lists
    the version directories' names only (one shallow listing),
    :meth:`fingerprints` each version asked for recursively.
    :meth:`local_dir` downloads a version as its last fingerprint showed it.
    """

    def __init__(self, url: str, cache: Cache | None = None) -> None:
        self.url = url.rstrip("/")
        self.fs, self._path = _filesystem(self.url)
        self.cache = cache or Cache()
        self._names: dict[int, list[str]] = {}  # the last names listed, by version
        # Each version last fingerprinted: its directories (their names), each one's files.
        self._versions: dict[int, dict[str, dict[str, Info]]] = {}
        self._ignored: set[str] = set()  # names logged as no version

    def __str__(self) -> str:
        return self.url

    def versions(self) -> set[int]:
        try:
            entries = self.fs.ls(self._path, detail=True)
        except FileNotFoundError:
            entries = []
        names = (posixpath.basename(e["name"].rstrip("/")) for e in entries
                 if e["type"] == "directory")  # objects beside the versions (a labels file)
        self._names = _by_version(names, self._ignored, self.url)
        return set(self._names)

    def fingerprints(self, versions: Iterable[int]) -> dict[int, str]:
        """Of the versions the last :meth:`versions` named: one recursive
        listing of each one's directories."""
        found = {}
        for version in versions:
            dirs = {name: self._files(name) for name in self._names.get(version, [])}
            if any("saved_model.pb" in files for files in dirs.values()):
                self._versions[version] = dirs
                found[version] = _combined({name: _remote_fingerprint(files)
                                            for name, files in dirs.items()})
            else:
                self._versions.pop(version, None)
        return found

    def listing(self) -> dict[int, str]:
        return self.fingerprints(self.versions())

    def _files(self, name: str) -> dict[str, Info]:
        """The files under directory ``name``, by their name relative to it."""
        base = f"{self._path}/{name}"
        files = {}
        for key, info in self.fs.find(base, detail=True).items():
            relative = key.removeprefix(f"{base}/")
            parts = relative.split("/")  # "" in folder marks ("1/variables/"), ".." out of it
            if key.startswith(f"{base}/") and not {"", ".", ".."} & set(parts):
                files[relative] = info
        return files

    def why_empty(self) -> str:
        return "no numbered version with a saved_model.pb under it"

    def local_dir(self, version: int) -> Path:
        """``version`` as the last listing showed it (listed now if it did not
        show it), downloaded once per node."""
        if version not in self._versions:
            self.versions()
            self.fingerprints([version])
        dirs = self._versions.get(version)
        if dirs is None:
            raise FileNotFoundError(f"no version {version} with a saved_model.pb at {self.url}")
        if len(dirs) > 1:
            raise AmbiguousVersion(version, dirs, self.url)
        ((directory, files),) = dirs.items()
        name = f"{_url_key(self.url)}-{version}-{_remote_fingerprint(files)[:16]}"
        return self.cache.fetch(self.fs, files, name, f"{self.url}/{directory}")


def fetch_file(url: str, cache: Cache | None = None) -> Path:
    """One object (a labels file) downloaded once per node, as :class:`Cache`
    keeps versions; a new copy once the object changes."""
    fs, path = _filesystem(url)
    base = posixpath.basename(path)
    files = {base: fs.info(path)}
    name = f"{_url_key(url)}-{_remote_fingerprint(files)[:16]}"
    return (cache or Cache()).fetch(fs, files, name, url) / base


def open_source(path: str | Path, cache: Cache | None = None) -> VersionSource:
    """The source for a model ``path``: a URL (``s3://``, ``gs://``; ``cache``
    is where it is downloaded), or a local directory."""
    if is_url(path):
        return RemoteSource(str(path), cache)
    return LocalSource(Path(path))


def open_filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of an ``s3://`` or ``gs://`` URL and the path in it (as
    :func:`_filesystem`; for writers such as the payload log)."""
    return _filesystem(url)


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of ``url`` and the path in it, with listings never cached.

    Credentials and endpoint come from the environment as each client reads
    it: botocore ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` (S3-compatible servers);
    google-auth ``GOOGLE_APPLICATION_CREDENTIALS``.
    """
    scheme = url.partition("://")[0]
    if scheme not in SCHEMES:
        raise ValueError(f"{url!r}: object storage URLs are s3://bucket/prefix or "
                         f"gs://bucket/prefix, not {scheme}://")
    return fsspec.core.url_to_fs(url, use_listings_cache=False)


def _by_version(names: Iterable[str], ignored: set[str], base: str) -> dict[int, list[str]]:
    """Directory ``names`` by the version each holds (sorted); a name that
    holds none is logged, once: ``ignored`` keeps the names logged."""
    versions: dict[int, list[str]] = {}
    for name in names:
        version = version_of(name)
        if version is not None:
            versions.setdefault(version, []).append(name)
        elif name not in ignored:
            ignored.add(name)
            logger.warning("%s: ignoring directory %r: a version directory is named with "
                           "ASCII digits, 0 to %d", base, name, MAX_VERSION)
    return {version: sorted(dirs) for version, dirs in versions.items()}


def _combined(fingerprints: dict[str, str]) -> str:
    """One version's fingerprint from its directories' (by name): the
    directory's own if it has one, else one that changes with any of them."""
    if len(fingerprints) == 1:
        return next(iter(fingerprints.values()))
    return _digest((name, 0, fingerprint) for name, fingerprint in fingerprints.items())


def _digest(entries: Iterable[tuple[str, int, object]]) -> str:
    """A fingerprint of files: sha256 of (relative name, size, change mark)."""
    digest = hashlib.sha256()
    for name, size, mark in sorted(entries):
        digest.update(f"{name}\0{size}\0{mark}\n".encode())
    return digest.hexdigest()


def _fingerprint(directory: Path) -> str:
    files = (p for p in directory.rglob("*") if p.is_file())
    return _digest((str(p.relative_to(directory)), (s := p.stat()).st_size, s.st_mtime_ns)
                   for p in files)


def _mark(info: Info) -> object:
    """What the store changes on every write of an object: S3's ETag, GCS's generation."""
    return info.get("ETag") or info.get("generation")


def _remote_fingerprint(files: dict[str, Info]) -> str:
    return _digest((name, info["size"], _mark(info)) for name, info in files.items())


def _md5(info: Info) -> str | None:
    """The MD5 the store reports of an object's bytes, in hex, if any: an S3
    ETag of a single-part upload, or GCS's ``md5Hash`` (base64)."""
    etag = str(info.get("ETag", "")).strip('"').lower()
    if re.fullmatch(r"[0-9a-f]{32}", etag):  # multipart: "<md5 of the parts' md5s>-<parts>"
        return etag
    if md5 := info.get("md5Hash"):
        return base64.b64decode(md5).hex()
    return None


def _multipart(info: Info) -> tuple[str, int] | None:
    """An S3 multipart ETag, ``"<md5 of the parts' md5s>-<parts>"``, split."""
    etag = str(info.get("ETag", "")).strip('"').lower()
    if match := re.fullmatch(r"([0-9a-f]{32})-([1-9][0-9]{0,4})", etag):
        return match[1], int(match[2])
    return None


def _part_sizes(fs: fsspec.AbstractFileSystem, info: Info, parts: int) -> list[int]:
    """The sizes of the ``parts`` an S3 object was uploaded in, as the store
    reports each (clients choose them freely: s3fs uploads what it buffered),
    asked at once; ``[]`` off S3."""
    if not hasattr(fs, "_call_s3"):
        return []
    bucket, key, version = fs.split_path(info["name"])
    pinned = {"VersionId": version} if version else {}

    async def heads() -> list[dict[str, Any]]:
        return await asyncio.gather(*(
            fs._call_s3("head_object", Bucket=bucket, Key=key, PartNumber=n, **pinned)
            for n in range(1, parts + 1)))

    return [int(head["ContentLength"]) for head in fsspec.asyn.sync(fs.loop, heads)]


def _hashes(path: Path, md5: bool, part_sizes: list[int]) -> tuple[str, str, str]:
    """A file's SHA-256; its MD5 if ``md5``; its S3 multipart ETag for parts
    of ``part_sizes`` (adding up to its size) if any; ``""`` for those not
    asked for. One read."""
    sha256, whole, digests = hashlib.sha256(), hashlib.md5(), []
    with path.open("rb") as file:
        sizes: Sequence[float] = part_sizes or [math.inf]
        for size in sizes:
            part = hashlib.md5()
            while block := file.read(cast(int, min(2**20, size))):  # (an int: 2**20 < inf)
                sha256.update(block)
                if md5:
                    whole.update(block)
                if part_sizes:
                    part.update(block)
                size -= len(block)
            digests.append(part.digest())
    multipart = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
    return sha256.hexdigest(), whole.hexdigest() if md5 else "", multipart if part_sizes else ""


def _unlike(copy: Path, files: dict[str, Info]) -> str | None:
    """How a cached ``copy`` differs from ``files`` as listed, or ``None``:
    its manifest must list them as listed, and it must hold exactly those
    files with the manifest's sizes and SHA-256s."""
    try:
        manifest = json.loads((copy / MANIFEST).read_text())
    except (OSError, ValueError):
        return "has no manifest"
    made_from = {name: (entry["size"], entry["mark"]) for name, entry in manifest.items()}
    if made_from != {name: (info["size"], _mark(info)) for name, info in files.items()}:
        return "was made from other files"
    try:
        present = {str(p.relative_to(copy)) for p in copy.rglob("*") if not p.is_dir()}
        if extra := sorted(present - set(manifest) - {MANIFEST}):
            return f"holds files it was not made with ({', '.join(extra[:3])})"
        for name, entry in manifest.items():
            path = copy / name
            if path.is_symlink() or path.stat().st_size != entry["size"]:
                return f"has {name} cut short or replaced"
            with path.open("rb") as file:
                if hashlib.file_digest(file, "sha256").hexdigest() != entry["sha256"]:
                    return f"has {name} changed on disk"
    except FileNotFoundError as exc:
        return f"lost {exc.filename}"
    return None


def _url_key(url: str) -> str:
    """A short name for ``url`` in the cache."""
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def _size(copy: Path) -> int:
    """The bytes of a cached copy's files (0 if it goes meanwhile)."""
    with contextlib.suppress(FileNotFoundError):  # another process evicting it
        return sum(f.stat().st_size for f in copy.rglob("*") if f.is_file())
    return 0
