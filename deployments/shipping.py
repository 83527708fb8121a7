"""Shipping a SavedModel to replicas through the object store (``ship: true``).

On a cluster the model directory often exists only where the app is built.
The app builder packs each version once into the object store; every model
replica unpacks it into a directory of its own node and loads from there, so
nodes need neither a shared filesystem nor the model baked into their image.

The packed model is owned by a small detached actor, named after the
model's digest: the build task that packs it exits right after the build,
and replicas started later (autoscaling, restarts) must still find it. The
same model redeployed reuses its actor; ``ray.kill`` it to free the memory
once no app ships that model any more (``ray list actors`` shows them as
``ray-tf-serve-model-<digest>``).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

# Where replicas unpack shipped models on their node, one directory per digest.
LOCAL_ROOT = Path(tempfile.gettempdir()) / "ray-tf-serve" / "models"


# The namespace of the actors that hold shipped models.
NAMESPACE = "ray-tf-serve"


@dataclass(frozen=True)
class ShippedModel:
    """A SavedModel directory packed into the object store."""

    store: str  # the name of the actor that owns the packed model
    digest: str  # sha256 of the tar: names the unpacked copy
    source: str  # where it was packed from, for messages


@ray.remote(num_cpus=0)
class ModelStore:
    """Owns one packed model in the object store, for as long as it lives."""

    def __init__(self, packed: np.ndarray) -> None:
        self._ref = ray.put(packed)  # its own copy: the sender's goes with it

    def ref(self) -> list[ray.ObjectRef]:
        """The packed model's reference (in a list, so Ray passes it as is)."""
        return [self._ref]


def pack(base: Path, members: Iterable[Path]) -> bytes:
    """The files of ``members`` (directories or files inside ``base``) as an
    uncompressed tar, named relative to ``base``.

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
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in sorted(files):
            tar.add(file, arcname=str(file.relative_to(base)), filter=clean)
    return buffer.getvalue()


def unpack(blob: memoryview | bytes, digest: str, root: Path = LOCAL_ROOT) -> Path:
    """The tar unpacked at ``root/digest``, once per node: a replica that finds
    it complete reuses it; concurrent replicas race to an atomic rename."""
    target = root / digest
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root))
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, links out, devices
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():  # not just another replica that renamed first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def ship(base: Path, members: Iterable[Path]) -> ShippedModel:
    """Pack ``members`` of ``base`` into the object store, in a store actor
    that outlives this process."""
    blob = pack(base, members)
    digest = hashlib.sha256(blob).hexdigest()
    name = f"ray-tf-serve-model-{digest[:24]}"
    store = ModelStore.options(name=name, namespace=NAMESPACE, lifetime="detached",
                               get_if_exists=True).remote(np.frombuffer(blob, dtype=np.uint8))
    ray.get(store.ref.remote())  # stored before this (short-lived) builder exits
    return ShippedModel(name, digest, str(base))


def receive(shipped: ShippedModel, root: Path = LOCAL_ROOT) -> Path:
    """The shipped model's local directory on this node, fetched if needed."""
    target = root / shipped.digest
    if target.is_dir():
        return target
    store = ray.get_actor(shipped.store, namespace=NAMESPACE)
    (ref,) = ray.get(store.ref.remote())
    array = ray.get(ref)  # a read-only view of this node's object store
    if hashlib.sha256(array.data).hexdigest() != shipped.digest:
        raise ValueError(f"model shipped from {shipped.source} arrived damaged")
    return unpack(array.data, shipped.digest, root)
