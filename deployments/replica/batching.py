"""Row arithmetic for dynamic batching (pure numpy).

Requests carry different numbers of rows. Serve's batcher groups requests; the
model replica merges their rows, input by input, into arrays padded to a
bucket size, runs the model once and hands each caller its own rows back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deployments.types import Inputs, Outputs, rows_of

# The largest max_batch_size a model deployment takes (and ``auto`` tries).
MAX_BATCH_SIZE = 1024
# ``max_batch_size: auto`` counts batch sizes this close to the best
# throughput as good as the best, and takes the smallest of them.
SIZING_TOLERANCE = 0.05
# What ``auto`` falls back to when nothing can be measured (BatchSettings' default).
UNMEASURED_BATCH_SIZE = 32
# What one model call costs the serving path besides TensorFlow (the ingress's
# put and handle call, Serve's handling of the call in the model replica, the
# answer's return), counted by ``auto`` beside TensorFlow's own time: timed on
# TensorFlow alone, a model whose throughput is flat across batch sizes would
# get batches of one row, each paying this once. Measured on ``make bench``'s
# two-core machine (MobileNetV2, 16 clients, calls of 2, 4 and 8 rows, the CPU
# time of every process per image): 11-13 ms a call, of which 3.5-4.5 ms in the
# ingress, 6-7 ms in the model replicas (~5 ms of it outside TensorFlow's
# threads) and 1 ms in the raylet (a repeat run was within noise). At 3 ms,
# a replica's 2 rows and 4 rows came out within the 5% tolerance of each other
# and the pick followed noise: two replicas of one deployment took 2 and 4,
# and the 2-row calls served 10-15% less. Counted in full it would pick larger
# batches than a few clients fill: 10 ms made one noisy warm-up pick 32, whose
# calls the replicas' queues merged, leaving the other replica idle (calls of 4
# and 8 rows served alike at 16 clients).
PATH_COST_PER_CALL_S = 0.006


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to ``max_batch_size``, and ``max_batch_size`` itself.

    Warm-up runs each of these; under XLA every batch is padded to one of
    them, so it compiles a bounded set of shapes however the requests arrive.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return [*sizes, max_batch_size]


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``rows``."""
    for size in buckets:
        if rows <= size:
            return size
    raise ValueError(f"{rows} rows exceed the largest bucket {buckets[-1]}")


def chunk_rows(inputs: Inputs, max_rows: int) -> list[Inputs]:
    """Split a request bigger than a batch into views of at most ``max_rows``."""
    return [{name: a[i : i + max_rows] for name, a in inputs.items()}
            for i in range(0, rows_of(inputs), max_rows)]


def merge_rows(parts: Sequence[Inputs], padded_rows: int) -> Inputs:
    """Stack requests' rows, input by input, into arrays of ``padded_rows`` rows.

    A single request that already fills its bucket is passed through as is, so
    the read-only views from the object store reach TensorFlow uncopied.
    Otherwise the rows are written once into new arrays whose tail is zeros
    (empty strings for string inputs).
    """
    rows = sum(rows_of(p) for p in parts)
    if len(parts) == 1 and rows == padded_rows:
        return parts[0]
    merged = {}
    for name, first in parts[0].items():
        array = np.empty((padded_rows, *first.shape[1:]), dtype=first.dtype)
        start = 0
        for part in parts:
            array[start : start + len(part[name])] = part[name]
            start += len(part[name])
        array[start:] = b"" if first.dtype == object else 0
        merged[name] = array
    return merged


def split_rows(outputs: Outputs, counts: Sequence[int]) -> list[Outputs]:
    """Give each request its rows of every output, in order (padding dropped)."""
    results = []
    start = 0
    for n in counts:
        results.append({name: value[start : start + n] for name, value in outputs.items()})
        start += n
    return results


def concat_outputs(parts: Sequence[Outputs]) -> Outputs:
    """Reassemble the outputs of a request that was run in chunks."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def throughputs(seconds_per_call: dict[int, float]) -> dict[int, float]:
    """Rows per second by batch size, each call's :data:`PATH_COST_PER_CALL_S`
    counted beside its TensorFlow time."""
    return {size: size / (seconds + PATH_COST_PER_CALL_S)
            for size, seconds in seconds_per_call.items()}


def gains(rates: dict[int, float]) -> bool:
    """Whether a larger batch size is still worth timing: one of the last two
    sizes beat every smaller one by more than the tolerance."""
    sizes = sorted(rates)
    if len(sizes) < 3:
        return True
    before = max(rates[s] for s in sizes[:-2])
    return max(rates[sizes[-2]], rates[sizes[-1]]) > before * (1 + SIZING_TOLERANCE)


@dataclass(frozen=True)
class BatchSizing:
    """``max_batch_size: auto``: the throughput per batch size (rows/s, each
    call's TensorFlow time plus :data:`PATH_COST_PER_CALL_S`) and the size
    picked from it."""

    rates: dict[int, float]
    picked: int

    @classmethod
    def pick(cls, rates: dict[int, float]) -> BatchSizing:
        """The smallest size within the tolerance of the best: as fast, less waiting."""
        best = max(rates.values())
        return cls(dict(rates), min(s for s, r in rates.items()
                                    if r >= (1 - SIZING_TOLERANCE) * best))

    @classmethod
    def unmeasured(cls) -> BatchSizing:
        """No measurement possible (the model refuses made-up inputs): the
        default size."""
        return cls({}, UNMEASURED_BATCH_SIZE)

    def describe(self) -> dict[str, object]:
        if not self.rates:
            return {"picked": self.picked, "rows_per_s": {},
                    "why": "not measured (the model refuses zero-valued inputs): the default"}
        best = max(self.rates, key=self.rates.__getitem__)
        return {
            "picked": self.picked,
            "rows_per_s": {size: round(rate, 1) for size, rate in sorted(self.rates.items())},
            "why": f"the smallest batch size within {SIZING_TOLERANCE:.0%} of the best "
                   f"throughput measured here ({self.rates[best]:.1f} rows/s at {best}, "
                   f"each call's TensorFlow time and {PATH_COST_PER_CALL_S * 1e3:g} ms of the "
                   "serving path's)",
        }
