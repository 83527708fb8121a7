"""Where each request's CPU goes (`make bench BENCH_ARGS="--only profile"`).

The near-free stand-in model (a GPU's pace: the serving path sets it) is served
by the shipped config with one ingress replica and one model replica, loaded
with native JPEG requests by 1 and by 64 clients, while py-spy samples both
replicas without pausing them. Each process's CPU time over the run (from
/proc), divided by the requests answered, is its CPU per request; the
ingress's and the replica's are split into stages by where their samples
were: the innermost frame that belongs to a stage names it. HAProxy's and the
load generator's CPU per request are counted beside them; what each process
spends idle (measured just before) is taken out. Each run's flame
graphs (SVG) are written next to the results.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks import bodies
from benchmarks.load import run_load

PY_SPY = Path(sys.executable).parent / "py-spy"
RATE_HZ = 97  # py-spy's samples per second (not a divisor of timer ticks)
IDLE_S = 4.0  # how long each process's idle CPU is measured before a load

# A stage by frame: py-spy writes each as "function (file:line)", methods as
# "Class.method", files relative to their package ("PIL/Image.py"). The
# innermost frame matching any of these names the sample's stage; a sample
# none matches is the event loop's and Serve's own work.
Stages = Sequence[tuple[str, str]]
_M = r"^(\w+\.)*"  # a function's class, if any
INGRESS_STAGES: Stages = (
    ("decode", r"codecs/image\.py|(^|[ (/])PIL/|simplejpeg"),
    ("put", _M + r"put(_object)? \(.*(model_client|ray/_private/worker)\.py"),
    ("model call and return", r"model_client\.py|ray/serve/handle\.py"
                              r"|ray/serve/_private/(router|request_router|replica_result)"),
    ("coalescing", r"ingress/(coalescing|dispatch)\.py"),
    ("checks", r"deployments/(signature|bounds)\.py|ingress/(budget|deadline)\.py"),
    ("encode", _M + r"(render|_finite|answer\w*|encode\w*|predictions\w*) \("
               r"|codecs/predictions|starlette/responses\.py|orjson"),
    ("parse", r"ingress/protocols/|deployments/codecs/|multipart|ingress/request\.py"),
    ("HTTP in and out", r"uvicorn|(^|[ (/])h11/|httptools|starlette/|ingress/asgi\.py"
                        r"|ray/serve/_private/(http_util|proxy)"),
    ("data plane", r"ingress/(dataplane|catalog|registry)\.py"),
)
REPLICA_STAGES: Stages = (
    ("TensorFlow", r"tensorflow/|replica/runner\.py"),
    ("object store (inputs in, outputs out)",
     r"deployments/objects\.py|ray/_private/serialization"),
    ("batching", r"replica/(batching|served)\.py"),
)
OTHER = "event loop and Serve"


def classify(stack: str, stages: Stages) -> str:
    """The stage of one collapsed stack (frames root first, ';'-separated)."""
    frames = stack.split(";")
    for frame in reversed(frames):
        for stage, pattern in stages:
            if re.search(pattern, frame):
                return stage
    return OTHER


def stage_shares(raw: Path, stages: Stages) -> dict[str, float]:
    """Each stage's share of a py-spy raw file's samples."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[classify(stack, stages)] += int(count)
    total = sum(counts.values()) or 1
    return {stage: n / total for stage, n in counts.most_common()}


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def haproxy_pids() -> list[int]:
    """The HAProxy processes of this machine (the bench's cluster is its only
    one; a reload during a run would end them: the run then fails)."""
    found = subprocess.run(["pgrep", "-x", "haproxy"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU seconds per second while no request arrives."""
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    time.sleep(seconds)
    return {role: (cpu_seconds(pid) - before[role]) / seconds for role, pid in pids.items()}


def _record(pid: int, out: Path, seconds: float, fmt: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--nonblocking", "--rate", str(RATE_HZ),
         "--duration", str(round(seconds)), "--format", fmt, "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_load(url: str, pids: dict[str, int], clients: int, seconds: float,
                 out_dir: Path, label: str) -> dict:
    """One load of ``clients`` on ``url`` while py-spy samples ``pids`` (by
    role: "ingress", "model"); CPU ms per request by process and stage."""
    jpeg = bodies.sample_jpeg()
    watched = {**pids, **{f"haproxy {p}": p for p in haproxy_pids()},
               "load generator": os.getpid()}
    idle = idle_cpu(watched, IDLE_S)
    warmup_s = 2.0
    run_load(url, lambda: bodies.native_image(jpeg), 1, clients, warmup_s,
             warmup_s=0, label=f"{label} (warm-up)")
    samplers = []
    for role, pid in pids.items():
        stem = out_dir / f"{label}-{role}"
        samplers.append(_record(pid, stem.with_suffix(".raw"), seconds, "raw"))
        samplers.append(_record(pid, stem.with_suffix(".svg"), seconds, "flamegraph"))
    before = {role: cpu_seconds(pid) for role, pid in watched.items()}
    summary = run_load(url, lambda: bodies.native_image(jpeg), 1, clients, seconds,
                       warmup_s=0, label=label)
    after = {role: cpu_seconds(pid) for role, pid in watched.items()}
    for sampler in samplers:
        _, err = sampler.communicate(timeout=60)
        if sampler.returncode != 0:  # e.g. no ptrace rights: say so, not empty tables
            raise RuntimeError(f"py-spy failed ({sampler.returncode}): {err.decode()[-500:]}")
    requests = max(summary["requests"], 1)
    # What each process spends idle (health checks, metrics) is not the requests'.
    per_request = {role: 1000 * (after[role] - before[role] - idle[role] * seconds) / requests
                   for role in watched}
    processes = {
        "ingress": per_request["ingress"],
        "model replica": per_request["model"],
        "HAProxy": sum(v for role, v in per_request.items() if role.startswith("haproxy")),
        "load generator": per_request["load generator"],
    }
    stages = {}
    for role, table in (("ingress", INGRESS_STAGES), ("model", REPLICA_STAGES)):
        shares = stage_shares((out_dir / f"{label}-{role}").with_suffix(".raw"), table)
        stages[role] = {stage: share * per_request[role] for stage, share in shares.items()}
    return {"clients": clients, **summary, "cpu_ms_per_request": processes,
            "idle_cpu_ms_per_s": {role: 1000 * v for role, v in idle.items()},
            "stages_cpu_ms_per_request": stages}


def profile_runs(url: str, pids: dict[str, int], levels: Sequence[int], seconds: float,
                 out_dir: Path) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [profile_load(url, pids, clients, seconds, out_dir, f"profile-{clients}-clients")
            for clients in levels]
