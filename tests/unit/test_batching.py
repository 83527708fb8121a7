import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

import deployments.replica.served as served_module
from deployments.errors import BadRequest, ModelFailed
from deployments.replica.batching import (
    PATH_COST_PER_CALL_S,
    BatchSizing,
    bucket_for,
    bucket_sizes,
    chunk_rows,
    concat_outputs,
    gains,
    merge_rows,
    rows_of,
    split_rows,
)
from deployments.replica.served import BatchSettings, ServedVersion, answer_each
from deployments.signature import ModelMetadata, TensorSpec


def test_buckets_are_powers_of_two_and_the_max():
    assert bucket_sizes(32) == [1, 2, 4, 8, 16, 32]
    assert bucket_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert bucket_sizes(1) == [1]
    with pytest.raises(ValueError, match="max_batch_size"):
        bucket_sizes(0)


def test_bucket_for_picks_the_smallest_that_fits():
    buckets = bucket_sizes(24)
    assert [bucket_for(n, buckets) for n in (1, 3, 9, 17, 24)] == [1, 4, 16, 24, 24]
    with pytest.raises(ValueError):
        bucket_for(25, buckets)


def test_a_full_single_request_passes_through_uncopied():
    array = np.ones((4, 2), np.float32)
    array.flags.writeable = False
    inputs = {"x": array}
    assert merge_rows([inputs], 4) is inputs


def test_merge_pads_each_input_and_keeps_order():
    a = {"x": np.full((1, 2), 1.0), "s": np.array([b"a"], dtype=object)}
    b = {"x": np.full((2, 2), 2.0), "s": np.array([b"b", b"c"], dtype=object)}
    merged = merge_rows([a, b], 4)
    np.testing.assert_array_equal(merged["x"][:, 0], [1, 2, 2, 0])
    assert merged["s"].tolist() == [b"a", b"b", b"c", b""]  # strings padded empty


def test_split_gives_each_request_its_rows():
    outputs = {"p": np.arange(8).reshape(4, 2), "q": np.arange(4)}
    first, second = split_rows(outputs, [1, 2])
    np.testing.assert_array_equal(first["q"], [0])
    np.testing.assert_array_equal(second["p"], [[2, 3], [4, 5]])


def test_chunking_and_reassembly_round_trip():
    array = np.arange(10).reshape(10, 1)
    chunks = chunk_rows({"x": array, "z": -array}, 4)
    assert [rows_of(c) for c in chunks] == [4, 4, 2]
    assert all(np.shares_memory(c["x"], array) for c in chunks)
    rebuilt = concat_outputs([{"y": c["x"] * 2} for c in chunks])
    np.testing.assert_array_equal(rebuilt["y"], array * 2)


def test_auto_sizing_takes_the_smallest_size_near_the_best_throughput():
    rates = {1: 40.0, 2: 60.0, 4: 78.0, 8: 83.0, 16: 84.0, 32: 70.0}
    sizing = BatchSizing.pick(rates)
    assert sizing.picked == 8  # 83 is within 5% of 84; 4 (78) is not
    described = sizing.describe()
    assert described["picked"] == 8 and "84.0 rows/s at 16" in described["why"]


def test_auto_sizing_that_cannot_measure_takes_the_default():
    described = BatchSizing.unmeasured().describe()
    assert described["picked"] == 32 and "not measured" in described["why"]


def test_auto_sizing_stops_growing_once_two_sizes_gain_nothing():
    assert gains({1: 40.0, 2: 60.0})
    assert gains({1: 40.0, 2: 60.0, 4: 80.0})
    assert gains({1: 40.0, 2: 60.0, 4: 61.0, 8: 70.0})  # 8 still gains on 2
    assert not gains({1: 40.0, 2: 60.0, 4: 61.0, 8: 62.0})


class FlatModel:
    """A model whose TensorFlow time is the same per row at every batch size
    (a one-CPU replica of MobileNetV2: 13 ms a row), on a clock it advances."""

    ROW_S = 0.013

    def __init__(self) -> None:
        spec = TensorSpec("x", "float32", (None, 2))
        self.metadata = ModelMetadata("m", 1, "serving_default", (spec,), (spec,), "x", ())
        self.now = 0.0  # the wall clock
        self.cpu = 0.0  # the process's CPU time

    def clock(self) -> float:
        return self.now

    def cpu_clock(self) -> float:
        return self.cpu

    def run(self, batch: dict[str, np.ndarray], signature: str | None = None) -> dict:
        self.now += self.ROW_S * len(batch["x"])
        self.cpu += self.ROW_S * len(batch["x"])
        return {"x": batch["x"]}

    def clocks(self) -> SimpleNamespace:
        return SimpleNamespace(perf_counter=self.clock, process_time=self.cpu_clock)


def test_auto_sizing_counts_what_a_call_costs_the_serving_path(
        monkeypatch: pytest.MonkeyPatch):
    """Timed on TensorFlow alone, a flat model would get batches of one row,
    each paying the path's cost per call; counted, larger batches win."""
    model = FlatModel()
    monkeypatch.setattr(served_module, "time", model.clocks())
    version = ServedVersion(cast(Any, model), ThreadPoolExecutor(1), BatchSettings())
    sizing = version.measure_batch_sizes()
    per_call = {size: size / rate - model.ROW_S * size for size, rate in sizing.rates.items()}
    assert all(abs(cost - PATH_COST_PER_CALL_S) < 1e-9 for cost in per_call.values())
    assert sizing.picked > 1
    assert "ms of the serving path's" in sizing.describe()["why"]


def test_each_part_is_answered_alone_and_a_part_that_is_an_error_is_its_answer():
    spec = TensorSpec("x", "float32", (None, 2))
    meta = ModelMetadata("m", 1, "serving_default", (spec,), (spec,), "x", None)
    lost = BadRequest("an input object is no longer available")

    async def double(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if part["x"][0, 0] < 0:
            raise RuntimeError("boom")
        return {"x": part["x"] * 2}

    good = {"x": np.ones((1, 2), np.float32)}
    broken = {"x": -np.ones((1, 2), np.float32)}
    answers = asyncio.run(answer_each([good, lost, broken, {"y": good["x"]}], meta, double))
    np.testing.assert_array_equal(answers[0]["x"], [[2, 2]])
    assert answers[1] is lost
    assert isinstance(answers[2], ModelFailed) and "RuntimeError" in str(answers[2])
    assert isinstance(answers[3], BadRequest)


def test_parts_checked_upstream_run_as_they_are_unless_laid_out_otherwise():
    """A part the data plane checked is not scanned again; one laid out for
    another signature (a version redeployed with a new one) is checked in full."""
    spec = TensorSpec("x", "float32", (None, 2))
    meta = ModelMetadata("m", 1, "serving_default", (spec,), (spec,), "x", None)
    seen: list[np.ndarray] = []

    async def keep(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(part["x"])
        return part

    nan = np.full((1, 2), np.nan, np.float32)  # what only a value scan would catch
    stale = {"x": np.full((1, 2), np.nan, np.float64)}  # another dtype: checked again
    answers = asyncio.run(answer_each([{"x": nan}, stale, {"y": nan}], meta, keep, checked=True))
    assert len(seen) == 1 and seen[0] is nan  # run as it is, not copied
    assert isinstance(answers[1], BadRequest) and "NaN" in answers[1].message
    assert isinstance(answers[2], BadRequest)


def test_auto_sizing_keeps_each_sizes_best_of_two_timings(monkeypatch: pytest.MonkeyPatch):
    """A timing slowed by a neighbour (replicas warm up together on shared
    cores) does not decide the pick: here the first timing of 8 rows ran at
    half speed, which alone would have made 16 the pick."""
    model = FlatModel()
    slowed = {"calls": 0}

    def run(batch: dict[str, np.ndarray], signature: str | None = None) -> dict:
        rows = len(batch["x"])
        if rows == 8 and slowed["calls"] < 4:  # its set-up call, then the first timing's
            slowed["calls"] += 1
            model.now += model.ROW_S * rows
        return FlatModel.run(model, batch, signature)

    monkeypatch.setattr(model, "run", run)
    monkeypatch.setattr(served_module, "time", model.clocks())
    version = ServedVersion(cast(Any, model), ThreadPoolExecutor(1), BatchSettings())
    sizing = version.measure_batch_sizes()
    assert slowed["calls"] == 4
    assert sizing.rates[8] == pytest.approx(8 / (8 * model.ROW_S + PATH_COST_PER_CALL_S))
    assert sizing.picked == 8


def test_on_the_cpu_auto_sizing_times_cpu_time_not_the_clock(monkeypatch: pytest.MonkeyPatch):
    """Another replica timing at once on the same cores stretches this one's
    calls on the clock, not in CPU time: here every call of 4 rows or more
    waited as long again for a core, which by the clock would pick 2."""
    model = FlatModel()

    def run(batch: dict[str, np.ndarray], signature: str | None = None) -> dict:
        if len(batch["x"]) >= 4:
            model.now += model.ROW_S * len(batch["x"])  # waiting for a core
        return FlatModel.run(model, batch, signature)

    monkeypatch.setattr(model, "run", run)
    monkeypatch.setattr(served_module, "time", model.clocks())
    by_clock = ServedVersion(cast(Any, model), ThreadPoolExecutor(1), BatchSettings())
    assert by_clock.measure_batch_sizes().picked == 2
    on_cpu = ServedVersion(cast(Any, model), ThreadPoolExecutor(1), BatchSettings(), cpu_threads=1)
    sizing = on_cpu.measure_batch_sizes()
    assert sizing.rates[8] == pytest.approx(8 / (8 * model.ROW_S + PATH_COST_PER_CALL_S))
    assert sizing.picked == 8
