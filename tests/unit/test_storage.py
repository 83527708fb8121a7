"""Version sources: a local directory, and S3 against moto's standalone
server, a real S3-compatible endpoint on 127.0.0.1 reached the way a deployment
reaches one (credentials and ``AWS_ENDPOINT_URL`` from the environment)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from deployments.codecs.numbers import decimal_count, version_number
from deployments.shipping import MODEL_DIR_ENV, UnsafeDirectory
from deployments.storage import (
    MANIFEST,
    AmbiguousVersion,
    Cache,
    CacheTooSmall,
    DownloadError,
    LocalSource,
    RemoteSource,
    _md5,
    fetch_file,
    open_source,
    version_of,
)
from tests.common import ROOT

DIGITS = ROOT / "models" / "digits"

INT64_MAX = 2**63 - 1

# Directory names TF Serving takes for no version: other scripts' digits
# (fullwidth 8, Arabic-Indic 7, Devanagari 3), a sign, a letter, spaces, and
# a number past int64.
NO_VERSIONS = ("\uff18", "\u0667", "\u0969", "-1", "+1", "1a", " 1", "1 ",
               "99999999999999999999", "9223372036854775808")

Put = Callable[[str, bytes], None]


@pytest.fixture(scope="module")
def s3() -> Iterator[s3fs.S3FileSystem]:
    """moto's server on a free port, and the environment pointing at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
            env.setenv(name, value)
        yield s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)
        s3fs.S3FileSystem.clear_instance_cache()  # no client of this endpoint outlives it
    server.stop()


@pytest.fixture
def bucket(s3: s3fs.S3FileSystem) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    return name


@pytest.fixture
def put(s3: s3fs.S3FileSystem, bucket: str) -> Put:
    return lambda key, data: s3.pipe(f"{bucket}/{key}", data)


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(root=tmp_path / "cache")


def put_digits(put: Put, version: int) -> None:
    for file in (DIGITS / "1").rglob("*"):
        if file.is_file():
            put(f"m/{version}/{file.relative_to(DIGITS / '1')}", file.read_bytes())


def files(path: Path) -> dict[str, bytes]:
    """A copy's files (not its manifest)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*")
            if p.is_file() and p.name != MANIFEST}


def copies(cache: Cache) -> list[str]:
    """The cache's copies (not its marks, nor any staging left behind)."""
    return sorted(p.name for p in cache.root.iterdir() if p.name != ".used")


def test_listing_takes_numbered_versions_holding_a_saved_model(bucket, put, cache):
    put("m/1/saved_model.pb", b"graph")
    put("m/1/variables/variables.index", b"index")
    put("m/2/variables/variables.index", b"no graph yet")
    put("m/3/saved_model.pb", b"graph")
    put("m/tmp/saved_model.pb", b"not a version")
    put("m/README", b"not a version")
    put("m/4/", b"")  # a console's folder mark
    put("m/3/variables/", b"")
    put("m/3/../../escaped", b"a key is no path")
    put("m10/1/saved_model.pb", b"a sibling prefix")
    source = RemoteSource(f"s3://{bucket}/m/", cache)
    assert source.listing().keys() == {1, 3}
    assert files(source.local_dir(3)) == {"saved_model.pb": b"graph"}
    assert [p.name for p in cache.root.parent.iterdir()] == ["cache"]
    assert RemoteSource(f"s3://{bucket}/nothing", cache).listing() == {}


def test_a_fingerprint_changes_with_any_file_of_its_version_only(bucket, put, cache):
    put("m/1/saved_model.pb", b"graph")
    put("m/1/variables/variables.index", b"index")
    put("m/2/saved_model.pb", b"graph")
    source = RemoteSource(f"s3://{bucket}/m", cache)
    first = source.listing()
    assert source.listing() == first  # stable while nothing changes
    put("m/1/variables/variables.index", b"INDEX")  # same size, new content (ETag)
    second = source.listing()
    assert second[1] != first[1] and second[2] == first[2]
    put("m/1/variables/variables.data-00000-of-00001", b"weights")
    assert source.listing()[1] != second[1]


def test_a_new_version_shows_up_on_the_next_poll(bucket, put, cache):
    put("m/1/saved_model.pb", b"graph")
    source = RemoteSource(f"s3://{bucket}/m", cache)
    assert source.listing().keys() == {1}
    put("m/2/variables/variables.index", b"index")  # still uploading: no graph yet
    assert source.listing().keys() == {1}
    put("m/2/saved_model.pb", b"graph")
    growing = source.listing()
    assert growing.keys() == {1, 2}
    put("m/2/variables/variables.data-00000-of-00001", b"weights")
    assert source.listing()[2] != growing[2]  # the watcher waits for two polls that agree


def test_a_version_downloads_whole_and_loads(bucket, put, cache):
    put_digits(put, 1)
    source = open_source(f"s3://{bucket}/m", cache)
    assert isinstance(source, RemoteSource)
    source.listing()
    local = source.local_dir(1)
    assert local.parent == cache.root
    assert files(local) == files(DIGITS / "1")
    import tensorflow as tf

    infer = tf.saved_model.load(str(local)).signatures["serving_default"]
    (scores,) = infer(image=tf.zeros([1, 28, 28, 1])).values()
    np.testing.assert_allclose(scores.numpy().sum(), 1.0, rtol=1e-5)


def test_a_cached_copy_is_used_without_asking_the_store(s3, bucket, put, cache):
    put("m/1/saved_model.pb", b"graph")
    replicas = [RemoteSource(f"s3://{bucket}/m", cache) for _ in range(2)]
    for replica in replicas:
        replica.listing()
    local = replicas[0].local_dir(1)
    s3.rm(f"{bucket}/m", recursive=True)  # a download now would fail
    assert replicas[0].local_dir(1) == replicas[1].local_dir(1) == local
    assert files(local) == {"saved_model.pb": b"graph"}
    with pytest.raises(FileNotFoundError, match=r"no version 2 with a saved_model\.pb at s3://"):
        replicas[0].local_dir(2)


def test_a_version_not_listed_yet_is_listed_first(bucket, put, cache):
    put("m/5/saved_model.pb", b"graph")
    assert files(RemoteSource(f"s3://{bucket}/m", cache).local_dir(5)) == {
        "saved_model.pb": b"graph"}


@pytest.mark.parametrize(("changed", "error"), [
    (b"short", r"m/1/variables/variables\.index: 5 bytes downloaded, the store lists 9"),
    (b"INDEX 123", r"m/1/variables/variables\.index: MD5 [0-9a-f]{32} downloaded, "
                   r"the store lists [0-9a-f]{32}"),
])
def test_a_download_unlike_its_listing_is_refused(bucket, put, cache, changed, error):
    """The object changed after the listing the watcher trusted: nothing is kept."""
    put("m/1/saved_model.pb", b"graph")
    put("m/1/variables/variables.index", b"index 123")
    source = RemoteSource(f"s3://{bucket}/m", cache)
    source.listing()
    put("m/1/variables/variables.index", changed)
    with pytest.raises(DownloadError, match=error):
        source.local_dir(1)
    assert copies(cache) == []  # no copy, no staging left behind
    source.listing()
    assert files(source.local_dir(1))["variables/variables.index"] == changed


def test_md5_checks_can_be_off_for_etags_that_are_no_md5(bucket, put, tmp_path):
    """SSE-KMS and SSE-C buckets: sizes are still checked."""
    put("m/1/saved_model.pb", b"graph")
    source = RemoteSource(f"s3://{bucket}/m", Cache(tmp_path, verify_md5=False))
    source.listing()
    put("m/1/saved_model.pb", b"GRAPH")
    assert files(source.local_dir(1)) == {"saved_model.pb": b"GRAPH"}


def test_the_md5_a_store_reports():
    md5 = hashlib.md5(b"weights").hexdigest()
    assert _md5({"ETag": f'"{md5}"'}) == md5
    assert _md5({"ETag": f'"{md5}-3"'}) is None  # multipart: no MD5 of the bytes
    assert _md5({"md5Hash": base64.b64encode(bytes.fromhex(md5)).decode()}) == md5  # GCS
    assert _md5({"generation": "17"}) is None


def test_the_least_recently_used_copies_make_room(bucket, put, tmp_path):
    for version in (1, 2, 3):
        put(f"m/{version}/saved_model.pb", bytes(1000))
    cache = Cache(tmp_path, max_bytes=2500)
    source = RemoteSource(f"s3://{bucket}/m", cache)
    source.listing()
    one, two = source.local_dir(1), source.local_dir(2)
    os.utime(cache.root / ".used" / two.name, (1, 1))  # 2 used long ago, 1 since
    three = source.local_dir(3)
    assert copies(cache) == sorted([one.name, three.name])
    assert sorted(p.name for p in (cache.root / ".used").iterdir()) == copies(cache)
    put("m/4/saved_model.pb", bytes(2600))
    source.listing()
    with pytest.raises(CacheTooSmall, match=rf"s3://{bucket}/m/4 is 2600 bytes, more than the "
                                            r"whole cache holds \(max_bytes=2500 at "):
        source.local_dir(4)
    assert copies(cache) == sorted([one.name, three.name])  # nothing evicted for it


def test_concurrent_replicas_make_one_copy(bucket, put, cache):
    put_digits(put, 1)
    replicas = [RemoteSource(f"s3://{bucket}/m", cache) for _ in range(6)]
    for replica in replicas:
        replica.listing()
    results: list[Path] = []
    start = threading.Barrier(len(replicas))

    def load(replica: RemoteSource) -> None:
        start.wait()
        results.append(replica.local_dir(1))

    threads = [threading.Thread(target=load, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == len(replicas) and len(set(results)) == 1
    assert copies(cache) == [results[0].name]
    assert files(results[0]) == files(DIGITS / "1")


def test_a_remote_file_is_fetched_once_until_it_changes(bucket, put, cache):
    put("m/labels.txt", b"zero\none\n")
    url = f"s3://{bucket}/m/labels.txt"
    labels = fetch_file(url, cache)
    assert labels.name == "labels.txt" and labels.read_bytes() == b"zero\none\n"
    made = labels.stat()
    again = fetch_file(url, cache)
    assert again == labels and (again.stat().st_ino, again.stat().st_mtime_ns) == (
        made.st_ino, made.st_mtime_ns)  # not fetched again
    put("m/labels.txt", b"nought\none\n")
    changed = fetch_file(url, cache)
    assert changed != labels and changed.read_bytes() == b"nought\none\n"


def test_a_local_source_lists_numbered_saved_models(tmp_path):
    for version in ("1", "2", "3", "tmp"):
        (tmp_path / version).mkdir()
    for version in ("1", "3", "tmp"):
        (tmp_path / version / "saved_model.pb").write_bytes(b"graph")
    source = open_source(tmp_path)
    assert isinstance(source, LocalSource)
    first = source.listing()
    assert first.keys() == {1, 3} and source.listing() == first
    (tmp_path / "3" / "saved_model.pb").write_bytes(b"a new graph")
    assert source.listing()[3] != first[3] and source.listing()[1] == first[1]
    assert source.local_dir(1) == tmp_path / "1"
    assert LocalSource(tmp_path / "missing").listing() == {}


def test_other_url_schemes_are_refused():
    with pytest.raises(ValueError, match=r"'https://host/m': object storage URLs are "
                                         r"s3://bucket/prefix or gs://bucket/prefix"):
        open_source("https://host/m")


def graph(directory: Path, data: bytes = b"graph") -> Path:
    """A SavedModel's graph file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "saved_model.pb").write_bytes(data)
    return directory


def ignored(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The names logged as no version directory."""
    return [r.args[1] for r in caplog.records
            if r.name == "ray.serve" and "ignoring directory" in r.msg]


def test_a_version_number_is_an_int64_in_ascii_digits():
    assert version_number("0") == version_of("0") == 0  # TF Serving's safe_strto64 reads it
    assert version_number("00000123") == version_of("00000123") == 123
    assert version_number("9223372036854775807") == INT64_MAX
    assert version_number("0" * 5000 + "7") == 7  # leading zeros: no 4,300-digit error
    for name in (*NO_VERSIONS, "", "1" * 5000, "0x10", "1_000", "1.0"):
        assert version_number(name) is None and version_of(name) is None, repr(name)
    assert decimal_count("9223372036854775807") is None  # counts stay at 18 digits


def test_a_local_version_with_leading_zeros_loads_from_its_own_name(tmp_path):
    graph(tmp_path / "00000123")
    source = LocalSource(tmp_path)
    assert source.listing().keys() == {123}
    assert source.local_dir(123) == tmp_path / "00000123"
    with pytest.raises(FileNotFoundError, match=r"no version 124 directory in "):
        source.local_dir(124)


def test_two_local_directories_for_one_version_fail_to_load(tmp_path):
    graph(tmp_path / "7")
    graph(tmp_path / "07")
    graph(tmp_path / "8")
    source = LocalSource(tmp_path)
    first = source.listing()
    assert first.keys() == {7, 8}  # listed, so its failure is reported
    with pytest.raises(AmbiguousVersion, match=rf"^version 7 is in 2 directories under "
                                               rf"{tmp_path}: 07 and 7; remove all but one$"):
        source.local_dir(7)
    assert source.local_dir(8) == tmp_path / "8"
    graph(tmp_path / "07", b"a new graph")  # a change to either directory is seen
    second = source.listing()
    assert second[7] != first[7] and second[8] == first[8]
    graph(tmp_path / "7", b"another graph")
    assert source.listing()[7] != second[7]
    (tmp_path / "07" / "saved_model.pb").unlink()  # one left with no graph: still two
    (tmp_path / "007").mkdir()
    with pytest.raises(AmbiguousVersion, match=r": 007, 07 and 7; remove all but one$"):
        source.local_dir(7)
    for name in ("07", "007"):
        (tmp_path / name).rmdir()
    assert source.listing()[7] != second[7]
    assert source.local_dir(7) == tmp_path / "7"


def test_a_local_listing_ignores_names_that_are_no_version(tmp_path, caplog):
    for name in (*NO_VERSIONS, str(INT64_MAX)):
        graph(tmp_path / name)
    (tmp_path / "README").write_text("a file, not a directory")
    source = LocalSource(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert source.listing().keys() == {INT64_MAX}
        assert source.local_dir(INT64_MAX) == tmp_path / str(INT64_MAX)
        assert sorted(ignored(caplog)) == sorted(NO_VERSIONS)  # each once
        caplog.clear()
        source.listing()  # the next poll: nothing new to say
        assert ignored(caplog) == []
        LocalSource(tmp_path).listing()  # another source (replica) says it again
    assert sorted(ignored(caplog)) == sorted(NO_VERSIONS)


def test_a_remote_version_with_leading_zeros_downloads_from_its_own_name(bucket, put, tmp_path):
    put("m/00000123/saved_model.pb", b"graph")
    put("m/00000123/variables/variables.index", b"index")
    put("m/0124/saved_model.pb", bytes(2000))
    source = RemoteSource(f"s3://{bucket}/m", Cache(tmp_path, max_bytes=1000))
    assert source.listing().keys() == {123, 124}
    assert files(source.local_dir(123)) == {"saved_model.pb": b"graph",
                                            "variables/variables.index": b"index"}
    with pytest.raises(CacheTooSmall, match=rf"^s3://{bucket}/m/0124 is 2000 bytes"):
        source.local_dir(124)


def test_two_remote_directories_for_one_version_fail_to_load(s3, bucket, put, cache):
    put("m/7/saved_model.pb", b"graph")
    put("m/07/saved_model.pb", b"graph")
    put("m/8/saved_model.pb", b"graph")
    source = RemoteSource(f"s3://{bucket}/m", cache)
    first = source.listing()
    assert first.keys() == {7, 8}
    with pytest.raises(AmbiguousVersion, match=rf"^version 7 is in 2 directories under "
                                               rf"s3://{bucket}/m: 07 and 7; remove all but one$"):
        source.local_dir(7)
    assert not cache.root.exists()  # nothing downloaded
    put("m/07/variables/variables.index", b"index")  # a change to either directory is seen
    second = source.listing()
    assert second[7] != first[7] and second[8] == first[8]
    put("m/7/saved_model.pb", b"GRAPH")
    assert source.listing()[7] != second[7]
    s3.rm(f"{bucket}/m/07", recursive=True)
    assert source.listing()[7] != second[7]
    assert files(source.local_dir(7)) == {"saved_model.pb": b"GRAPH"}


def test_a_remote_listing_ignores_names_that_are_no_version(bucket, put, cache, caplog):
    for name in (*NO_VERSIONS, str(INT64_MAX)):
        put(f"m/{name}/saved_model.pb", b"graph")
    put("m/labels.txt", b"an object beside the versions, no directory")
    source = RemoteSource(f"s3://{bucket}/m", cache)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert source.listing().keys() == {INT64_MAX}
        assert files(source.local_dir(INT64_MAX)) == {"saved_model.pb": b"graph"}
        assert sorted(ignored(caplog)) == sorted(NO_VERSIONS)
        caplog.clear()
        source.listing()
        assert ignored(caplog) == []


@pytest.mark.parametrize("damage", ["truncated", "same size", "added", "removed"])
def test_a_cached_copy_is_checked_each_time_it_is_reused(bucket, put, cache, damage):
    """A copy cut short, changed or added to on disk is fetched again."""
    put("m/1/saved_model.pb", b"graph")
    put("m/1/variables/variables.index", b"index")
    source = RemoteSource(f"s3://{bucket}/m", cache)
    source.listing()
    local = source.local_dir(1)
    index = local / "variables" / "variables.index"
    if damage == "truncated":
        index.write_bytes(b"ind")
    elif damage == "same size":
        index.write_bytes(b"INDEX")
    elif damage == "added":  # a warm-up file the model was not uploaded with
        (local / "assets.extra").mkdir()
        (local / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"records")
    else:
        index.unlink()
    assert source.local_dir(1) == local
    assert files(local) == {"saved_model.pb": b"graph", "variables/variables.index": b"index"}


def test_a_copy_from_other_files_or_without_manifest_is_fetched_again(bucket, put, cache):
    put("m/1/saved_model.pb", b"graph")
    source = RemoteSource(f"s3://{bucket}/m", cache)
    source.listing()
    local = source.local_dir(1)
    manifest = local / MANIFEST
    entry = json.loads(manifest.read_text())
    entry["saved_model.pb"]["mark"] = '"another etag"'
    manifest.write_text(json.dumps(entry))
    (local / "saved_model.pb").write_bytes(b"GRAPH")
    assert files(source.local_dir(1)) == {"saved_model.pb": b"graph"}
    manifest.unlink()  # a copy an older release made
    (local / "saved_model.pb").write_bytes(b"GRAPH")
    assert files(source.local_dir(1)) == {"saved_model.pb": b"graph"}


def test_the_cache_root_is_this_users_alone(bucket, put, tmp_path, monkeypatch):
    put("m/1/saved_model.pb", b"graph")
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    source = RemoteSource(f"s3://{bucket}/m")  # the default cache
    source.listing()
    local = source.local_dir(1)
    user = tmp_path / f"ray-tf-serve-{os.geteuid()}"
    assert local.parent == user / "models" / "remote"
    for directory in (user, user / "models", user / "models" / "remote"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a directory anyone could have made first
    with pytest.raises(UnsafeDirectory, match=rf"{shared} \(owner uid \d+, mode drwxrwxrwx\) "
                                              rf"lets another user change the model copies"):
        RemoteSource(f"s3://{bucket}/m", Cache(shared)).local_dir(1)
    assert list(shared.iterdir()) == []
    shared.chmod(0o700)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)  # another user's
    with pytest.raises(UnsafeDirectory, match=rf"^{shared}/remote \(owner uid {os.getuid()}, "):
        RemoteSource(f"s3://{bucket}/m", Cache(shared / "remote")).local_dir(1)


def test_a_multipart_upload_is_checked_against_its_etag(s3, bucket, cache):
    """An S3 multipart ETag is the MD5 of its parts' MD5s: checked with each
    part's size as the store reports it (here 5 MiB, 5 MiB + 3000, 10 bytes)."""
    part = 5 * 2**20  # S3's smallest
    weights = np.random.default_rng(0).bytes(2 * part + 3010)

    def upload(data: bytes) -> None:
        with s3.open(f"{bucket}/m/1/variables/variables.data", "wb", block_size=part) as file:
            for start, end in ((0, part), (part, 2 * part + 3000), (2 * part + 3000, None)):
                file.write(data[start:end])
                file.flush()  # a part of what it holds

    s3.pipe(f"{bucket}/m/1/saved_model.pb", b"graph")
    upload(weights)
    source = RemoteSource(f"s3://{bucket}/m", cache)
    source.listing()
    assert str(source._versions[1]["1"]["variables/variables.data"]["ETag"]).endswith('-3"')
    assert files(source.local_dir(1))["variables/variables.data"] == weights
    upload(weights[::-1])  # the same size, changed after the listing
    source.listing()
    upload(weights)
    with pytest.raises(DownloadError, match=r"variables\.data: multipart ETag [0-9a-f]{32}-3 "
                                            r"downloaded, the store lists [0-9a-f]{32}-3"):
        source.local_dir(1)


def test_a_poll_lists_version_names_then_only_the_versions_asked_for(bucket, put, cache):
    for version in (1, 2, 3):
        put(f"m/{version}/saved_model.pb", b"graph")
        put(f"m/{version}/variables/variables.index", b"index")
    put("m/4/variables/variables.index", b"no graph yet")
    put("m/labels.txt", b"beside the versions")
    source = RemoteSource(f"s3://{bucket}/m", cache)
    found: list[str] = []
    find = source.fs.find

    def spy(path: str, **kwargs: object) -> dict:
        found.append(path)
        return find(path, **kwargs)

    source.fs.find = spy  # type: ignore[method-assign]
    assert source.versions() == {1, 2, 3, 4} and found == []  # names only: no recursion
    assert source.fingerprints([3, 4]).keys() == {3}
    assert found == [f"{bucket}/m/3", f"{bucket}/m/4"]
    assert source.fingerprints([3]) == {3: source.listing()[3]}
