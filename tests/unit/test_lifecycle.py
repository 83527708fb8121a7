"""A replica's versions following its base path: loads after two steady polls,
availability first, draining before unloading, broken versions reported."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from deployments.config import All, Latest, Specific
from deployments.errors import NotFound
from deployments.replica.lifecycle import NoVersions, VersionManager
from deployments.storage import LocalSource


def add_version(base: Path, version: int, content: str = "ok") -> Path:
    path = base / str(version)
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_text(content)
    return path


def load(version: int, path: Path) -> str:
    """Stands for loading a SavedModel: a file saying "broken" fails."""
    if (path / "saved_model.pb").read_text() == "broken":
        raise ValueError(f"version {version} is broken")
    return f"model {version}"


def manager(base: Path, policy=None, loader: Callable[[int, Path], str] = load,
            source: LocalSource | None = None) -> VersionManager[str]:
    return VersionManager("m", source or LocalSource(base), policy or Latest(), loader,
                          poll_s=0, settle_s=0.01)


def states(versions: VersionManager) -> dict[int, str]:
    return {s.version: s.state for s in versions.statuses()}


def in_flight(versions: VersionManager, version: int) -> int:
    """The requests ``version`` runs, whichever load of it they hold."""
    return sum(n for (v, _), n in versions._in_flight.items() if v == version)


async def until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def test_start_loads_what_the_policy_picks_or_fails_clearly(tmp_path):
    for v in (1, 2, 3):
        add_version(tmp_path, v)
    versions = manager(tmp_path, Latest(latest=2))
    versions.start()
    assert sorted(versions.served) == [2, 3] and states(versions) == {3: "AVAILABLE",
                                                                      2: "AVAILABLE"}
    with pytest.raises(NoVersions, match="no such directory"):
        manager(tmp_path / "empty").start()
    with pytest.raises(NoVersions, match=r"the policy picks none of versions \[1, 2, 3\]"):
        manager(tmp_path, Specific(specific=(7,))).start()
    add_version(tmp_path / "broken", 1, "broken")
    with pytest.raises(NoVersions, match="version 1: ValueError: version 1 is broken"):
        manager(tmp_path / "broken").start()
    add_version(tmp_path, 4, "broken")  # a broken newest version: a new replica still starts
    fallback = manager(tmp_path)
    fallback.start()
    assert sorted(fallback.served) == [3] and states(fallback) == {4: "END", 3: "AVAILABLE"}


def test_what_loading_needs_is_prepared_once_and_only_with_a_version_to_load(tmp_path):
    prepared: list[str] = []
    loaded: list[int] = []

    def prepare() -> None:  # stands for TensorFlow's import and device plan
        prepared.append("plan")

    def tracked(version: int, path: Path) -> str:
        assert prepared, "loaded before the device was set up"
        loaded.append(version)
        return load(version, path)

    empty = VersionManager("m", LocalSource(tmp_path / "none"), Latest(), tracked, poll_s=0,
                           settle_s=0.01, prepare=prepare)
    with pytest.raises(NoVersions, match="no such directory"):
        empty.start()
    assert prepared == []  # nothing to load: nothing imported
    for v in (1, 2):
        add_version(tmp_path, v)
    VersionManager("m", LocalSource(tmp_path), All(), tracked, poll_s=0, settle_s=0.01,
                   prepare=prepare).start()
    assert prepared == ["plan"] and sorted(loaded) == [1, 2]

    def no_gpu() -> None:
        raise RuntimeError("Ray assigned a GPU, but TensorFlow sees none")

    failing = VersionManager("m", LocalSource(tmp_path), All(), tracked, poll_s=0,
                             settle_s=0.01, prepare=no_gpu)
    with pytest.raises(RuntimeError, match="TensorFlow sees none"):  # the replica's, as is
        failing.start()


def test_a_new_version_is_loaded_once_steady_then_the_old_one_unloads(tmp_path):
    async def scenario():
        add_version(tmp_path, 1)
        versions = manager(tmp_path)
        versions.start()
        add_version(tmp_path, 2)
        await versions.poll()  # seen once: it may still be being written
        assert sorted(versions.served) == [1]
        (tmp_path / "2" / "variables").mkdir()  # still being written
        (tmp_path / "2" / "variables" / "data").write_text("weights")
        await versions.poll()
        assert sorted(versions.served) == [1]
        await versions.poll()  # unchanged since the last poll: loaded, then 1 goes
        assert sorted(versions.served) == [2]
        await until(lambda: states(versions) == {2: "AVAILABLE", 1: "END"})

    asyncio.run(scenario())


def test_a_broken_version_is_reported_and_the_served_one_stays(tmp_path):
    async def scenario():
        add_version(tmp_path, 1)
        versions = manager(tmp_path)
        versions.start()
        add_version(tmp_path, 2, "broken")
        for _ in range(3):
            await versions.poll()
        assert sorted(versions.served) == [1]
        (status,) = [s for s in versions.statuses() if s.version == 2]
        assert status.state == "END" and "version 2 is broken" in status.error
        assert versions._failed[2].attempts == 1  # tried again only after retry_s
        versions._failed[2].retry_at = 0  # as if retry_s had passed, each time
        versions._retry_s = 0
        for _ in range(6):
            await versions.poll()
        assert versions._failed[2].attempts == VersionManager.MAX_LOAD_ATTEMPTS  # then no more
        (tmp_path / "2" / "saved_model.pb").write_text("fixed")  # new files: tried at once
        await versions.poll()
        await versions.poll()
        assert sorted(versions.served) == [2] and states(versions)[2] == "AVAILABLE"

    asyncio.run(scenario())


async def holding(versions: VersionManager, version: int, held: asyncio.Event | None = None
                  ) -> tuple[asyncio.Event, asyncio.Task[str]]:
    """A request on ``version`` that runs until ``held`` (default: a new
    event) is set, once it holds the version."""
    held = held or asyncio.Event()
    before = in_flight(versions, version)

    async def request() -> str:
        async with versions.using(version) as model:
            await held.wait()
            return model

    running = asyncio.create_task(request())
    await until(lambda: in_flight(versions, version) == before + 1)
    return held, running


def test_a_version_leaving_finishes_its_requests_first_and_takes_no_new_ones(tmp_path):
    async def scenario():
        for v in (1, 2):
            add_version(tmp_path, v)
        versions = manager(tmp_path, All())
        versions.start()
        held, running = await holding(versions, 2)
        shutil.rmtree(tmp_path / "2")
        await versions.poll()  # returns at once: the drain goes on by itself
        assert states(versions)[2] == "UNLOADING"
        with pytest.raises(NotFound, match="version 2 is not served"):
            async with versions.using(2):
                pass
        async with versions.using(None) as model:  # no version named: the highest left
            assert model == "model 1"
        assert states(versions)[2] == "UNLOADING"  # still running its request
        held.set()
        assert await running == "model 2"
        await until(lambda: states(versions) == {2: "END", 1: "AVAILABLE"})

    asyncio.run(scenario())


def test_a_specific_policy_ignores_other_versions_and_all_files_gone_keep_serving(tmp_path):
    async def scenario():
        for v in (1, 2):
            add_version(tmp_path, v)
        versions = manager(tmp_path, Specific(specific=(1,)))
        versions.start()
        add_version(tmp_path, 3)
        await versions.poll()
        await versions.poll()
        assert sorted(versions.served) == [1]
        shutil.rmtree(tmp_path)  # the volume vanished: better stale than nothing
        await versions.poll()
        assert sorted(versions.served) == [1]

    asyncio.run(scenario())


class Copying(LocalSource):
    """A base path with version 2 being copied in: its data file grows between
    any two listings; the listings' times are kept."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.times: list[float] = []

    def listing(self) -> dict[int, str]:
        self.times.append(time.monotonic())
        with (self.base / "2" / "variables.data").open("a") as data:
            data.write("more weights")
        return super().listing()


def test_start_loads_only_versions_whose_files_agree_on_two_listings(tmp_path):
    for v in (1, 2):
        add_version(tmp_path, v)
    source = Copying(tmp_path)
    versions = VersionManager("m", source, Latest(), load, poll_s=0, settle_s=0.05)
    versions.start()  # an autoscaled replica starting while 2 is copied in
    assert sorted(versions.served) == [1] and states(versions) == {1: "AVAILABLE"}
    assert len(source.times) == 2 and source.times[1] - source.times[0] >= 0.05
    shutil.rmtree(tmp_path / "1")
    with pytest.raises(NoVersions, match=r"the files of versions \[2\] changed within 0\.01 s"):
        manager(tmp_path, source=Copying(tmp_path)).start()
    # By default the listings are poll_interval_s apart, at most a second (also when 0).
    assert [VersionManager("m", source, Latest(), load, poll_s=p)._settle_s
            for p in (0, 0.2, 30)] == [1.0, 0.2, 1.0]


def test_a_version_picked_again_while_its_old_load_drains_is_not_reported_ended(tmp_path):
    async def scenario():
        for v in (1, 2):
            add_version(tmp_path, v)
        versions = manager(tmp_path, All())
        versions.start()
        held, old = await holding(versions, 2)
        shutil.rmtree(tmp_path / "2")
        await versions.poll()
        assert states(versions)[2] == "UNLOADING"
        add_version(tmp_path, 2)  # back, while the old load still runs its request
        await versions.poll()
        await versions.poll()
        assert sorted(versions.served) == [1, 2]
        _, new = await holding(versions, 2, held)  # on the new load
        held.set()
        assert await old == await new == "model 2"
        await until(lambda: not versions._drains)
        assert states(versions)[2] == "AVAILABLE" and versions._in_flight == {}

    asyncio.run(scenario())


def test_a_served_version_whose_files_change_is_reloaded_and_swapped_in(tmp_path):
    began, go = threading.Event(), threading.Event()

    def contents(version: int, path: Path) -> str:
        """What the version's file says: a new load of it waits for ``go``."""
        text = (path / "saved_model.pb").read_text()
        if text == "broken":
            raise ValueError("a truncated vocab file")
        if text == "new":
            began.set()
            go.wait(5)
        return text

    async def scenario():
        add_version(tmp_path, 1, "old")
        versions = manager(tmp_path, loader=contents)
        versions.start()
        held, running = await holding(versions, 1)
        (tmp_path / "1" / "saved_model.pb").write_text("new")
        await versions.poll()  # changed since: not steady yet
        assert versions.served[1] == "old"
        reload = asyncio.create_task(versions.poll())
        await until(began.is_set)
        async with versions.using(1) as model:  # still served while its new load runs
            assert model == "old" and states(versions) == {1: "AVAILABLE"}
        go.set()
        await reload
        assert versions.served[1] == "new" and states(versions) == {1: "AVAILABLE"}
        held.set()
        assert await running == "old"  # the old load finished its request
        await until(lambda: not versions._drains)
        assert states(versions) == {1: "AVAILABLE"}
        (tmp_path / "1" / "saved_model.pb").write_text("broken")
        await versions.poll()
        await versions.poll()  # a new load that fails: the one loaded serves on
        assert versions.served[1] == "new"
        (status,) = versions.statuses()
        assert status.state == "AVAILABLE" and "a truncated vocab file" in status.error

    asyncio.run(scenario())


class Counting(LocalSource):
    """A base path whose versions' files are looked at: which, each time."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.looked: list[set[int]] = []

    def fingerprints(self, versions):
        self.looked.append(set(versions))
        return super().fingerprints(versions)


def test_a_poll_looks_only_at_the_files_of_versions_the_policy_could_pick(tmp_path):
    async def scenario():
        for v in range(1, 6):
            add_version(tmp_path, v)
        source = Counting(tmp_path)
        versions = manager(tmp_path, source=source)
        versions.start()
        source.looked.clear()
        await versions.poll()
        assert source.looked == [{5}]  # served and steady: versions 1 to 4 are not listed
        add_version(tmp_path, 6)
        source.looked.clear()
        await versions.poll()  # 6 seen once, not steady: 5 still counts
        assert source.looked == [{6}, {5}] and sorted(versions.served) == [5]
        (tmp_path / "7").mkdir()  # no saved_model.pb yet: no version
        source.looked.clear()
        await versions.poll()
        assert source.looked == [{7}, {6}] and sorted(versions.served) == [6]
        shutil.rmtree(tmp_path / "6")  # rolled back: 5 is looked at again, loaded once steady
        shutil.rmtree(tmp_path / "7")
        for _ in range(2):
            await versions.poll()
        assert sorted(versions.served) == [5]
        await until(lambda: states(versions) == {6: "END", 5: "AVAILABLE"})

    asyncio.run(scenario())
