"""The one path into a model, with a fake model client (no Ray, no TensorFlow):
deadlines, a request that kills its replica, a redeploy that drops the version
a request would have used, and readiness probes that share one call."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from deployments.config import InputLimits
from deployments.errors import BadRequest, ModelFailed, NotFound, ServiceUnavailable
from deployments.ingress.coalescing import CoalesceSettings
from deployments.ingress.dataplane import DataPlane
from deployments.ingress.dispatch import ReplicaDied
from deployments.ingress.registry import ModelRegistry
from deployments.ingress.request import Target
from deployments.metrics import IngressMetrics
from deployments.signature import ModelMetadata, TensorSpec
from deployments.versions import Routing

POISON = 13.0  # a first value that "crashes the replica"


def meta(version: int) -> ModelMetadata:
    return ModelMetadata("m", version, "serving_default", (TensorSpec("x", "float32", (None, 2)),),
                         (TensorSpec("y", "float32", (None, 2)),), "y", ())


class FakeModel:
    """Answers ``2 * x``; dies holding any call with a poisoned part."""

    def __init__(self, versions: tuple[int, ...] = (1,)) -> None:
        self.versions = versions
        self.calls: list[int] = []  # parts per call
        self.isolated: list[bool] = []  # per call: run outside the batch queue
        self.metadata_calls = 0
        self.gate: asyncio.Event | None = None  # when set: calls wait for it

    async def metadata(self) -> dict[int, ModelMetadata]:
        self.metadata_calls += 1
        await asyncio.sleep(0.01)
        return {v: meta(v) for v in self.versions}

    async def call(self, version, local, forwarded, isolated=False, signature=None):
        self.calls.append(len(local))
        self.isolated.append(isolated)
        if self.gate is not None:
            await self.gate.wait()
        if version not in self.versions:
            raise NotFound(f"model version {version} is not served")
        if any(part["x"][0, 0] == POISON for part in local):
            raise ReplicaDied("the replica died")
        return [{"y": part["x"] * 2} for part in local]


M = Target("m")  # the model, its highest version


def data_plane(model: FakeModel, max_calls: int = 1, limits: InputLimits | None = None,
               routing: Routing | None = None) -> DataPlane:
    registry = ModelRegistry({"m": model}, IngressMetrics(["m"]),
                             {"m": routing} if routing else None)
    registry.retune(CoalesceSettings(max_calls_in_flight=max_calls))
    return DataPlane(registry, limits or InputLimits(request_timeout_s=5))


def rows(first: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[first, 1.0]], np.float32)}


def test_a_model_that_does_not_answer_is_a_503_within_the_deadline():
    async def scenario():
        model = FakeModel()
        model.gate = asyncio.Event()  # never set
        plane = data_plane(model)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match=r"did not answer within 0\.2 s"):
            await plane.infer(await plane.resolve(M), rows(1), timeout_s=0.2)
        assert time.monotonic() - started < 2

    asyncio.run(scenario())


def test_a_request_that_kills_its_replica_fails_alone_and_is_not_sent_again():
    async def scenario():
        model = FakeModel()
        plane = data_plane(model)
        version = await plane.resolve(M)
        model.gate = asyncio.Event()
        first = asyncio.create_task(plane.infer(version, rows(0)))  # holds the one slot
        await asyncio.sleep(0.05)
        batch = [asyncio.create_task(plane.infer(version, rows(v))) for v in (1, POISON, 2)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *batch, return_exceptions=True)
        assert model.calls == [1, 3, 1, 1, 1]  # the call of three died: each part alone
        assert model.isolated == [False, False, True, True, True]  # outside any batch
        assert [r.outputs["y"][0, 0] for r in (results[0], results[1], results[3])] == \
            [0, 2, 4]
        assert isinstance(results[2], ModelFailed) and "not sent again" in results[2].message

    asyncio.run(scenario())


def test_a_request_alone_in_a_call_that_died_is_sent_once_more_outside_any_batch():
    """On the replica it may have shared a batch with the request that crashed it."""
    async def scenario():
        model = FakeModel()
        plane = data_plane(model)
        version = await plane.resolve(M)
        dies_once = model.call

        async def call(version, local, forwarded, isolated=False, signature=None):
            if not isolated:  # another ingress's poisoned request in its batch
                model.calls.append(len(local))
                raise ReplicaDied("the replica died")
            return await dies_once(version, local, forwarded, isolated)

        model.call = call
        answer = await plane.infer(version, rows(1))
        assert answer.outputs["y"][0, 0] == 2 and model.calls == [1, 1]
        model.call = dies_once
        with pytest.raises(ModelFailed, match="died while running this request alone"):
            await plane.infer(version, rows(POISON))
        assert model.isolated[-2:] == [False, True]  # shared once, alone once: no more

    asyncio.run(scenario())


def test_a_request_that_named_no_version_follows_a_redeploy_that_dropped_it():
    async def scenario():
        model = FakeModel(versions=(2,))
        plane = data_plane(model)
        v2 = await plane.resolve(M)
        model.versions = (3,)  # redeployed: version 2 is gone
        answer = await plane.infer(v2, rows(1), pinned=False)
        assert answer.outputs["y"][0, 0] == 2 and answer.meta.version == 3
        assert (await plane.resolve(M)).version == 3
        with pytest.raises(NotFound):  # one that named version 2 hears it is gone
            await plane.infer(v2, rows(1), pinned=True)
        assert list(plane.registry.stats()["m"]["versions"]) == ["3"]  # 2's coalescer went with it

    asyncio.run(scenario())


def test_followers_of_a_dropped_version_share_fetches_until_no_replica_lists_it():
    async def scenario():
        model = FakeModel(versions=(2, 3))
        plane = data_plane(model, max_calls=8)
        v3 = await plane.resolve(M)
        model.versions = (2,)  # 3 is gone from the replicas that answer calls ...
        stale = 3  # ... but the next metadata answers still list it (old replicas)
        metadata = model.metadata

        async def draining() -> dict[int, ModelMetadata]:
            nonlocal stale
            stale -= 1
            return {**(await metadata()), **({3: meta(3)} if stale >= 0 else {})}

        model.metadata = draining
        before = model.metadata_calls
        values = [i + 0.5 for i in range(20)]  # (none the poison)
        answers = await asyncio.gather(*(plane.infer(v3, rows(v), pinned=False)
                                         for v in values))
        assert {a.meta.version for a in answers} == {2}
        assert [a.outputs["y"][0, 0] for a in answers] == [2 * v for v in values]
        assert model.metadata_calls - before <= 5  # shared: not one per request

    asyncio.run(scenario())


def test_a_flood_of_readiness_probes_costs_the_model_one_call():
    async def scenario():
        model = FakeModel()
        r = data_plane(model)
        await r.resolve(M)
        before = model.metadata_calls
        await asyncio.gather(*(r.ready() for _ in range(200)))
        assert model.metadata_calls == before + 1
        await asyncio.gather(*(r.ready() for _ in range(200)))  # still within a second
        assert model.metadata_calls == before + 1

    asyncio.run(scenario())


def test_a_request_that_named_no_version_moves_on_when_a_replica_lacks_it():
    """Replicas following their base path disagree for a moment: one lists
    version 3, the one the call reached has not loaded it yet."""
    async def scenario():
        model = FakeModel(versions=(2,))
        metadata = model.metadata

        async def one_replica_has_3() -> dict[int, ModelMetadata]:
            return {**(await metadata()), 3: meta(3)}

        model.metadata = one_replica_has_3
        plane = data_plane(model)
        latest = await plane.resolve(M)
        assert latest.version == 3
        answer = await plane.infer(latest, rows(1), pinned=False)
        assert answer.meta.version == 2 and answer.outputs["y"][0, 0] == 2

        async def load_3_soon() -> None:
            await asyncio.sleep(0.3)
            model.versions = (2, 3)

        loading = asyncio.create_task(load_3_soon())
        pinned = await plane.infer(latest, rows(1), pinned=True)  # sent again meanwhile
        assert pinned.meta.version == 3 and model.calls.count(1) > 3
        await loading
        model.versions, model.metadata = (2,), metadata  # version 3 is gone everywhere
        with pytest.raises(NotFound):
            await plane.infer(latest, rows(1), pinned=True)

    asyncio.run(scenario())


def test_labels_name_versions_and_unknown_ones_are_refused():
    async def scenario():
        model = FakeModel(versions=(1, 2))
        r = data_plane(model, limits=InputLimits(),
                       routing=Routing(labels={"stable": 1, "canary": 2}))
        assert (await r.resolve(Target("m", label="stable"))).version == 1
        assert (await r.resolve(Target("m", "canary"))).version == 2  # V2: a version string
        with pytest.raises(BadRequest, match=r"Unrecognized servable version label: beta "
                                             r"\(model 'm' has labels: canary=2, stable=1\)"):
            await r.resolve(Target("m", label="beta"))
        with pytest.raises(NotFound, match="no version 'beta'"):
            await r.resolve(Target("m", "beta"))

    asyncio.run(scenario())


def test_a_traffic_split_sends_requests_that_name_no_version_by_weight():
    async def scenario():
        model = FakeModel(versions=(1, 2))
        routing = Routing(labels={"stable": 1, "canary": 2}, traffic={"stable": 3, "canary": 1})
        plane = data_plane(model, limits=InputLimits(), routing=routing)
        latest = await plane.resolve(M)
        answers = [await plane.infer(latest, rows(1), pinned=False) for _ in range(400)]
        canary = sum(a.meta.version == 2 for a in answers)
        assert 60 < canary < 140  # ~100 of 400 (binomial: 5 sigma is ±43)
        pinned = [await plane.infer(latest, rows(1)) for _ in range(20)]
        assert {a.meta.version for a in pinned} == {2}  # a named version is not split

    asyncio.run(scenario())
