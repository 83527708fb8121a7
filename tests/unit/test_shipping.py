import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from deployments.config import ModelArgs
from deployments.model_files import (
    check,
    labels_file,
    moved_to,
    resolved,
    shipped_files,
    version_dirs,
)
from deployments.shipping import MODEL_TTL_DAYS, _mark_used, digest, pack, unpack

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "models" / "digits"
MODEL = resolved(ModelArgs(name="digits", path=BASE, labels_path=BASE / "labels.txt"))


def packed() -> bytes:
    return pack(Path(MODEL.path), shipped_files(MODEL))


def files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_pack_is_deterministic_and_unpacks_to_the_same_files(tmp_path):
    blob = packed()
    assert packed() == blob  # same model, same digest, one copy per node
    assert digest(Path(MODEL.path), shipped_files(MODEL)) == hashlib.sha256(blob).hexdigest()
    local = unpack(blob, "abc", tmp_path)
    assert local == tmp_path / "abc"
    assert files(local) == {f"1/{name}": data for name, data in files(BASE / "1").items()} | {
        "labels.txt": (BASE / "labels.txt").read_bytes()}
    moved = moved_to(MODEL, local)  # as the replica sees it
    assert version_dirs(moved) == {1: local / "1"}
    assert labels_file(moved) == local / "labels.txt"


def test_a_complete_copy_is_reused(tmp_path):
    first = unpack(packed(), "abc", tmp_path)
    (first / "marker").write_text("kept")
    assert (unpack(packed(), "abc", tmp_path) / "marker").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["abc"]  # no staging left behind


def test_symlinked_files_travel_as_their_content(tmp_path):
    """Model files linked from a cache (DVC, git-annex) arrive as files."""
    store, model = tmp_path / "store", tmp_path / "model"
    store.mkdir()
    (store / "blob").write_bytes(b"weights")
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.data").symlink_to(store / "blob")
    local = unpack(pack(model, [model]), "linked", tmp_path / "root")
    copied = local / "variables" / "variables.data"
    assert copied.read_bytes() == b"weights" and not copied.is_symlink()


def test_a_missing_member_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing to ship at .*/7"):
        pack(tmp_path, [tmp_path / "7"])


def test_shipped_labels_must_lie_under_the_model_path(tmp_path):
    with pytest.raises(ValueError, match=r"labels_path .* lies outside it"):
        check(ModelArgs(name="m", path=tmp_path / "m", labels_path=tmp_path / "labels.txt",
                        ship=True))


def test_a_tar_escaping_its_directory_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        unpack(buffer.getvalue(), "evil", tmp_path / "root")
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path / "root" / "evil").exists()


def test_an_unpacked_copy_repacks_to_its_digest_until_a_file_changes(tmp_path):
    sha = digest(MODEL.path, shipped_files(MODEL))
    local = unpack(packed(), sha, tmp_path)
    assert digest(local, [local]) == sha  # what a replica checks before it loads a copy
    (local / "labels.txt").write_text("tampered\n")
    assert digest(local, [local]) != sha


def test_copies_unused_for_the_ttl_are_removed_when_another_is_used(tmp_path):
    old, new = unpack(packed(), "old", tmp_path), unpack(packed(), "new", tmp_path)
    _mark_used(tmp_path, "old")
    stale = time.time() - (MODEL_TTL_DAYS + 1) * 86400
    os.utime(tmp_path / ".used" / "old", (stale, stale))
    _mark_used(tmp_path, "new")
    assert not old.exists() and new.is_dir()
    assert sorted(p.name for p in (tmp_path / ".used").iterdir()) == ["new"]
