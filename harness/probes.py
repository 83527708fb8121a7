"""What the tests and the benchmark read off a local cluster's processes:
memory, the object store's use, and whether an array lives in shared memory.

Replicas call :func:`in_object_store` from code shipped by value: register
this module by value too (``cloudpickle.register_pickle_by_value``), since
replicas cannot import the harness.
"""

from __future__ import annotations

import re
from pathlib import Path

import ray
from ray._private.internal_api import memory_summary


def rss_mb(pid: int) -> float:
    """Resident memory of a local process (this machine's replicas)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def object_store_mb() -> float:
    """The object store's used memory across the cluster, in MiB."""
    summary = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    match = re.search(r"Plasma memory usage (\d+) MiB", summary)
    return float(match.group(1)) if match else 0.0


def in_object_store(address: int) -> bool:
    """Whether ``address`` lies in this process's mapping of Ray's shared-memory
    object store (a zero-copy view, not a private copy)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)  # the path may end in " (deleted)"
            if len(fields) == 6 and "plasma" in fields[5]:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end:
                    return True
    return False
