"""`make bench` section ``payload_log``: native JPEG throughput with every
request logged (rate 1.0, shapes only: the default) to a local directory,
against logging off, in the same run (target: at most 5% lower); then with
the sink down (an HTTP collector nobody listens on): no request may fail,
and every record not written is counted as dropped."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

from benchmarks import bodies
from benchmarks.load import run_load
from benchmarks.server import MODEL, Server

DEAD_COLLECTOR = "http://127.0.0.1:9/events"  # the discard port: nothing listens


def _deploy(server: Server, config: dict, logging: dict) -> None:
    changed = copy.deepcopy(config)
    ingress = changed["applications"][0]["deployments"][0]
    ingress["user_config"] = {**ingress.get("user_config", {}), "payload_logging": logging}
    server.deploy(changed)


def _counts(server: Server) -> dict:
    """The ingress's payload log counts for the model, once its queue is drained."""
    counts: dict = {}
    for _ in range(50):
        counts = server.ingress_stats().get("payload_log", {}).get(MODEL, {})
        if counts and counts["offered"] == counts["written"] + sum(counts["dropped"].values()):
            break
        time.sleep(0.2)
    return counts


def measure_payload_log(server: Server, config: dict, jpeg: bytes, clients: int,
                        seconds: float) -> dict:
    def load(label: str) -> dict:
        return run_load(f"{server.url}/predict?top_k=1", lambda: bodies.native_image(jpeg), 1,
                        clients, seconds, label=label)

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        rounds: dict[str, list[dict]] = {"off": [], "directory": []}
        for _ in range(2):  # interleaved: drift on the machine hits both alike
            _deploy(server, config, {})
            rounds["off"].append(load("payload log off"))
            _deploy(server, config, {MODEL: {"sample_rate": 1.0, "sink": {"url": tmp}}})
            rounds["directory"].append(load("payload log → directory, rate 1.0"))
        written = _counts(server)
        lines = sum(len(f.read_text().splitlines()) for f in Path(tmp).rglob("*.jsonl"))
        off = sum(r["images_per_s"] for r in rounds["off"]) / 2
        on = sum(r["images_per_s"] for r in rounds["directory"]) / 2
        results["directory"] = {"off": rounds["off"], "on": rounds["directory"],
                                "images_per_s_off": off, "images_per_s_on": on,
                                "slowdown": 1 - on / off, "counts": written,
                                "lines_in_files": lines}
    _deploy(server, config, {MODEL: {"sample_rate": 1.0, "queue_records": 64,
                                     "sink": {"url": DEAD_COLLECTOR}}})
    down = load("payload log → a dead collector")
    counts = _counts(server)
    results["sink_down"] = {
        "load": down, "failed_requests": sum(down["errors"].values()) if isinstance(
            down["errors"], dict) else down["errors"],
        "counts": counts,
        "dropped_equals_not_written": counts.get("offered", 0) - counts.get("written", 0)
        == sum(counts.get("dropped", {}).values())}
    _deploy(server, config, {})
    print(f"payload log: {off:.1f} img/s off, {on:.1f} on ({100 * (1 - on / off):+.1f}% "
          f"slower); sink down: {results['sink_down']['failed_requests']} failed, "
          f"{counts}")
    return results
