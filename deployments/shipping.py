"""Shipping a SavedModel to replicas through the object store (``ship: true``).

On a cluster the model directory often exists only where the app is built.
The app builder packs each version once into the object store; every model
replica unpacks it into a directory of its own node and loads from there, so
nodes need neither a shared filesystem nor the model baked into their image.

The packed model is owned by a small detached actor on the node where the
app is built (Serve's build task, normally beside its controller on the
head), named after the model's digest: the build task exits right after the
build, and replicas started later (autoscaling, restarts) must still find
it. The same model redeployed reuses its actor; ``ray.kill`` it to free the
memory once no app ships that model any more (``ray list actors`` shows them
as ``ray-tf-serve-model-<first 24 hex digits of the digest>``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

# Where replicas unpack shipped models on their node, one directory per digest.
MODEL_DIR_ENV = "RAY_TF_SERVE_MODEL_DIR"

# The namespace of the actors that hold shipped models, and their names.
NAMESPACE = "ray-tf-serve"
STORE_PREFIX = "ray-tf-serve-model-"

# Unpacked copies not used for this long are removed when another is unpacked.
MODEL_TTL_DAYS = float(os.environ.get("RAY_TF_SERVE_MODEL_TTL_DAYS", "7"))

logger = logging.getLogger("ray.serve")


def local_root() -> Path:
    """``$RAY_TF_SERVE_MODEL_DIR``, else ``<tmp>/ray-tf-serve-<uid>/models``
    (made and checked by :func:`private_dir` where it is used)."""
    default = Path(tempfile.gettempdir()) / f"ray-tf-serve-{os.geteuid()}" / "models"
    return Path(os.environ.get(MODEL_DIR_ENV) or default)


class UnsafeDirectory(PermissionError):
    """A directory of model copies that another user could write to."""


def private_dir(path: Path) -> Path:
    """``path``, a directory only this user can change: what is missing of it
    is made 0700; refused if it is not this user's or others may write to it,
    or if a directory above it lets another user swap it (one not this user's
    or root's, or writable by others without the sticky bit, as ``/tmp`` has).

    Replicas load what is under it: in a shared temp dir anyone could
    otherwise plant a directory there first and have their files served.
    """
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        missing.mkdir(mode=0o700, exist_ok=True)
    real = path.resolve()
    for directory in (real, *real.parents):
        info = directory.stat()
        others_write = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if directory == real:
            bad = (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
                   or others_write)
        else:
            bad = info.st_uid not in (0, os.geteuid()) or (
                others_write and not info.st_mode & stat.S_ISVTX)
        if bad:
            raise UnsafeDirectory(
                f"{directory} (owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}) "
                f"lets another user change the model copies in {path}: make it this user's "
                f"(uid {os.geteuid()}) and not writable by others, or set {MODEL_DIR_ENV} to "
                "such a directory")
    return path


@dataclass(frozen=True)
class ShippedModel:
    """A SavedModel directory packed into the object store."""

    store: str  # the name of the actor that owns the packed model
    digest: str  # sha256 of the tar: names the unpacked copy
    source: str  # where it was packed from, for messages


@ray.remote(num_cpus=0)
class ModelStore:
    """Packs one model from its node's disk and owns it in the object store,
    for as long as it lives."""

    def __init__(self, base: str, members: list[str], digest: str) -> None:
        blob = pack(Path(base), [Path(m) for m in members])
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ValueError(f"the model at {base} changed while it was being shipped")
        self._ref = ray.put(np.frombuffer(blob, dtype=np.uint8))

    def ref(self) -> list[ray.ObjectRef]:
        """The packed model's reference (in a list, so Ray passes it as is)."""
        return [self._ref]


class _Sha256Writer:
    """A write-only file that hashes what is written to it."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def _write_tar(base: Path, members: Iterable[Path], out: BinaryIO | _Sha256Writer) -> None:
    """The files of ``members`` (directories or files inside ``base``) as an
    uncompressed tar, named relative to ``base``, symlinks followed.

    Deterministic (sorted, no times or owners), so the same model gives the
    same digest and replicas on a node share one unpacked copy.
    """
    files: set[Path] = set()
    for member in members:
        if not member.exists():
            raise FileNotFoundError(f"nothing to ship at {member}")
        files.update(p for p in [member, *member.rglob("*")] if p.is_file())

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o644  # as unpacking leaves them, so an unpacked copy repacks the same
        return info

    # typeshed's fileobj protocol asks for read, seek and tell, which the stream
    # mode "w|" never calls: it only writes.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      dereference=True) as tar:
        for file in sorted(files):
            tar.add(file, arcname=str(file.relative_to(base)), filter=clean)


def pack(base: Path, members: Iterable[Path]) -> bytes:
    """``members`` of ``base`` as tar bytes (see :func:`_write_tar`)."""
    buffer = io.BytesIO()
    _write_tar(base, members, buffer)
    return buffer.getvalue()


def digest(base: Path, members: Iterable[Path]) -> str:
    """The sha256 of :func:`pack`'s bytes, without holding them."""
    writer = _Sha256Writer()
    _write_tar(base, members, writer)
    return writer.hash.hexdigest()


def build_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """``target``, made once per node: ``fill`` writes it into a staging
    directory beside it that is renamed into place, so a directory at
    ``target`` is always complete and is reused as it is; concurrent makers
    race to the atomic rename and the losers' copies are dropped."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name[:12]}-", dir=target.parent))
    try:
        fill(staging)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():  # not just another maker that renamed first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def unpack(blob: memoryview | bytes, digest: str, root: Path | None = None) -> Path:
    """The tar unpacked at ``root/digest``, once per node (:func:`build_once`)."""

    def extract(staging: Path) -> None:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, links out, devices

    return build_once((root or local_root()) / digest, extract)


def ship(base: Path, members: Iterable[Path]) -> ShippedModel:
    """Pack ``members`` of ``base`` into the object store, in a store actor on
    this node (where the files are) that outlives this process."""
    members = list(members)
    sha = digest(base, members)
    name = f"{STORE_PREFIX}{sha[:24]}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # mypy does not apply class decorators: it sees the class, not the ray.remote
    # ActorClass (whose typed handles would not know the methods' .remote either).
    store = ModelStore.options(  # type: ignore[attr-defined]
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        scheduling_strategy=here,
    ).remote(str(base), [str(m) for m in members], sha)
    ray.get(store.ref.remote())  # packed, or the build fails with the reason
    return ShippedModel(name, sha, str(base))


def receive(shipped: ShippedModel) -> Path:
    """The shipped model's local directory on this node: a copy already there
    is used only if its files still give the shipped digest (else it is
    fetched and unpacked again). Copies unused for ``MODEL_TTL_DAYS`` are
    removed on the way."""
    root = private_dir(local_root())
    target = root / shipped.digest
    _mark_used(root, shipped.digest)  # first, so no other replica's sweep takes it meanwhile
    if target.is_dir() and digest(target, [target]) != shipped.digest:
        logger.warning("unpacked model %s does not match its digest: fetching it again", target)
        shutil.rmtree(target, ignore_errors=True)
    if not target.is_dir():
        store = ray.get_actor(shipped.store, namespace=NAMESPACE)
        ref: ray.ObjectRef
        (ref,) = ray.get(store.ref.remote())
        array = ray.get(ref)  # a read-only view of this node's object store
        if hashlib.sha256(array.data).hexdigest() != shipped.digest:
            raise ValueError(f"model shipped from {shipped.source} arrived damaged")
        unpack(array.data, shipped.digest, root)
    return target


def mark_used(root: Path, name: str) -> None:
    """Note that the copy ``root/name`` is in use now: before using it, so no
    other process's sweep takes it meanwhile."""
    marks = root / ".used"
    marks.mkdir(parents=True, exist_ok=True)
    (marks / name).touch()


def last_used(root: Path) -> dict[str, float]:
    """When each marked copy under ``root`` was last used (epoch seconds)."""
    used = {}
    for mark in (root / ".used").iterdir():
        try:  # processes on this node sweep at once: a mark may go under our feet
            used[mark.name] = mark.stat().st_mtime
        except FileNotFoundError:
            continue
    return used


def remove_copy(root: Path, name: str) -> None:
    """Remove the copy ``root/name``: its mark first, so a process starting
    to use it meanwhile re-marks it (and makes it again if need be)."""
    (root / ".used" / name).unlink(missing_ok=True)
    shutil.rmtree(root / name, ignore_errors=True)


def _mark_used(root: Path, sha: str) -> None:
    """Note that ``sha``'s copy is in use now; remove copies not used lately
    (a replica that needs one again fetches it from its store)."""
    mark_used(root, sha)
    stale = time.time() - MODEL_TTL_DAYS * 86400
    for name, used in last_used(root).items():
        if name != sha and used < stale:
            remove_copy(root, name)


def store_names() -> list[str]:
    """The store actors of the running cluster (``ray.init`` first)."""
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(STORE_PREFIX))


class CannotTell(RuntimeError):
    """Which shipped models are in use is not known for sure: nothing is removed."""


def digests_in_use() -> set[str]:
    """The shipped digests the running Serve apps' model replicas loaded.

    Fails closed: an app that is not RUNNING (deploying, recovering) or a
    deployment whose ``stats`` fails for any reason but not having one raises
    :class:`CannotTell`, since its replicas may use a store we cannot see.
    """
    from ray import serve
    from ray.serve.exceptions import RayServeException

    used = set()
    for app, status in serve.status().applications.items():
        if status.status != "RUNNING":
            raise CannotTell(f"app {app!r} is {status.status}: try again once every app runs")
        for deployment in status.deployments:
            try:
                stats = serve.get_deployment_handle(deployment, app).stats.remote().result(
                    timeout_s=30)
            except RayServeException as exc:
                if "that does not exist" in str(exc):  # not one of ours: it ships nothing
                    continue
                raise CannotTell(f"deployment {deployment!r} of app {app!r}: {exc}") from exc
            except Exception as exc:
                raise CannotTell(f"deployment {deployment!r} of app {app!r} did not answer: "
                                 f"{type(exc).__name__}") from exc
            if isinstance(stats, dict) and stats.get("shipped"):
                used.add(stats["shipped"])
    return used


def stale_stores() -> list[str]:
    """The store actors no running app's replicas use (``ray.init`` first)."""
    used = {d[:24] for d in digests_in_use()}
    return [n for n in store_names() if n.removeprefix(STORE_PREFIX) not in used]


def clean() -> list[str]:
    """Kill the store actors no running app's replicas use; their names."""
    stale = stale_stores()
    for name in stale:
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Kill the actors holding shipped models that no running app uses "
                    "(unpacked copies on the nodes go after MODEL_TTL_DAYS unused). "
                    "Removes nothing unless every app is RUNNING and answers.")
    parser.add_argument("--address", default="auto", help="the Ray cluster")
    parser.add_argument("--dry-run", action="store_true", help="only list them")
    args = parser.parse_args()
    # (ray.init annotates logging_level as int; it takes a level's name, as logging does)
    ray.init(address=args.address, namespace=NAMESPACE,
             logging_level="ERROR")  # type: ignore[arg-type]
    try:
        stale = stale_stores() if args.dry_run else clean()
    except CannotTell as exc:
        raise SystemExit(f"nothing removed: {exc}") from None
    print("\n".join(stale) or "no stale model stores")


if __name__ == "__main__":
    main()
