"""`make bench` (short) or `python -m benchmarks --full`: one run measures raw
TensorFlow, the hand-built single-deployment peer, a naive Ray Serve
deployment, KServe's ModelServer and this server (over each protocol and the
Python handle, coalescing on and off, with and without Serve's fast-path
switches) on the same model, machine and client; a near-free GPU stand-in
model against Ray's own floor and the ingress's in-process decode rate; a
text encoder on sequences of mixed lengths against raw TensorFlow on the same
mix; the example pipeline (locator → crop → digits) against its stages in
process, and where its time goes; plus the zero-copy handoff, autoscaling
under a step load and replica memory over a long run. Writes
benchmarks/results/<timestamp>.json and .png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ray import serve

from benchmarks import bodies, pipeline, sequence
from benchmarks.cluster_probes import ReplicaCounter
from benchmarks.decode_rate import decode_rate
from benchmarks.floor import floor_app
from benchmarks.handoff import measure_handoff
from benchmarks.kserve_peer import KServePeer
from benchmarks.load import run_load, run_phases, single_request_ms
from benchmarks.naive import NaiveModel
from benchmarks.payload_log import measure_payload_log
from benchmarks.peer import HandBuiltPeer
from benchmarks.plot import plot_results
from benchmarks.profile import profile_runs
from benchmarks.raw_tf import measure_raw, measure_raw_beside
from benchmarks.report import DIRECT, HANDLE, OURS, PEER, RAW, ratios, report
from benchmarks.sequence import mix, raw_rates, served_rate
from benchmarks.server import APP, MODEL, ROOT, Server, bench_config
from deployments.envfile import read_env_file
from harness.cluster import replica_pids, running_replicas, wait_until
from harness.probes import object_store_mb, rss_mb
from models.build_benchmark import (
    DEFAULT_OUT,
    SEQUENCE_OUT,
    STANDIN_OUT,
    VOCABULARY,
    build,
    build_sequence,
    build_standin,
)

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = [1, 2, 4, 8, 16, 32]
SECTIONS = ["systems", "coalescing", "standin", "profile", "sequence", "pipeline", "plain",
            "kserve", "handoff", "memory", "autoscaling", "payload_log"]
STANDIN_APP = "standin"
INTERLEAVED_CLIENTS = 16  # the issue's bar: native JPEG against the hand-built peer
SHAPE = (1, 224, 224, 3)
DIRECT_FLAGS = ("--model", MODEL, "--direct")  # benchmarks.handle_load's, for DIRECT


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "processor": platform.processor()}


def by_concurrency(url: str, body: bodies.Body, levels: list[int], seconds: float,
                   label: str) -> dict[str, dict]:
    return {str(c): run_load(url, lambda: body, 1, c, seconds, label=f"{label}, {c} clients")
            for c in levels}


def interleaved(systems: dict[str, Callable[[str], float]], rounds: int = 3
                ) -> dict[str, list[float]]:
    """Each system's figure (``measure(label)``) in turn, ``rounds`` times
    over (A B C A B C): a drift of the machine's speed, which alone moves a
    rate by up to a third within minutes, falls on all alike."""
    figures: dict[str, list[float]] = {name: [] for name in systems}
    for round_ in range(rounds):
        for name, measure in systems.items():
            figures[name].append(measure(f"interleaved {round_ + 1}/{rounds}: {name}"))
    return figures


def http_load(url: str, body: bodies.Body, clients: int, seconds: float,
              figure: str = "images_per_s") -> Callable[[str], float]:
    return lambda label: run_load(url, lambda: body, 1, clients, seconds, label=label)[figure]


def handle_rate(server: Server, clients: int, seconds: float,
                *flags: str) -> Callable[[str], float]:
    """The second job's images/s through ``benchmarks.handle_load`` with ``flags``."""
    return lambda label: server.handle_load(clients, seconds, label, *flags)["images_per_s"]


def raw_tf_beside(model_dir: Path, batch: int, seconds: float, runs: list[dict]
                  ) -> Callable[[str], float]:
    """Raw TensorFlow's images/s in this process, the cluster idle beside it,
    scaled up to the whole machine by the cores the cluster took meanwhile
    (each run's figures appended to ``runs``)."""
    def measure(label: str) -> float:
        runs.append(measure_raw_beside(model_dir / "1", batch, seconds, label))
        return float(runs[-1]["whole_machine_images_per_s"])
    return measure


def measure_server(server: Server, model_dir: Path, levels: list[int], seconds: float,
                   jpeg: bytes, naive_replicas: int, raw_best_batch: int) -> dict:
    """This server over each path, then the hand-built peer and the naive
    baseline beside it (each deployed as its own app while it is measured)."""
    pixels = bodies.pixels(jpeg)
    base = server.url
    paths = {
        "native image": (f"{base}/predict?top_k=1", bodies.native_image(jpeg)),
        "TF Serving b64": (f"{base}/v1/models/{MODEL}:predict", bodies.tfserving_b64(jpeg)),
        "V2 binary": (f"{base}/v2/models/{MODEL}/infer", bodies.v2(pixels, binary=True)),
    }
    app: dict = {"first_request_ms": single_request_ms(paths["native image"][0],
                                                       *paths["native image"][1])}
    systems: dict = {}
    for name, (url, body) in paths.items():
        systems[f"this server: {name}"] = by_concurrency(url, body, levels, seconds, name)
    handles = {"Python handle": (), "Python handle, ObjectRef by name": ("--by-ref",),
               "model handle": ("--model", MODEL),  # these skip the Preprocessor
               DIRECT.removeprefix("this server: "): DIRECT_FLAGS}
    for name, flags in handles.items():
        systems[f"this server: {name}"] = {
            str(c): server.handle_load(c, seconds, f"{name}, {c} clients", *flags)
            for c in levels}
    app["batch32_requests"] = run_load(  # twice as long: few, big requests
        f"{base}/predict?top_k=1", lambda: (bodies.native_multipart([jpeg] * 32), {}), 32, 2,
        2 * seconds, label="2 clients, 32 images")
    app["model_stats"] = server.model_stats()
    app["ingress_stats"] = server.ingress_stats()

    peer = server.run_app(HandBuiltPeer.bind(str(model_dir / "1"), SHAPE), "peer")
    # The issue's bars, measured in turn: at 16 clients raw TensorFlow's best
    # batch, the peer, native JPEG and the handle; at one client raw
    # TensorFlow's batch of 1 (unscaled: one call's latency, not a rate)
    # and native JPEG's median.
    clients = app["interleaved_clients"] = INTERLEAVED_CLIENTS
    app["interleaved"] = interleaved({
        RAW: raw_tf_beside(model_dir, raw_best_batch, seconds / 2,
                           app.setdefault("interleaved_raw_beside", [])),
        PEER: http_load(peer, bodies.raw_float32(pixels), clients, seconds),
        OURS: http_load(*paths["native image"], clients, seconds),
        HANDLE: handle_rate(server, clients, seconds),
        DIRECT: handle_rate(server, clients, seconds, *DIRECT_FLAGS),
    })
    app["interleaved_one_client_ms"] = interleaved({
        RAW: lambda label: measure_raw(model_dir / "1", [1], seconds / 2, label)[1]["ms_per_call"],
        OURS: http_load(*paths["native image"], 1, seconds, "p50_ms"),
    })
    systems[PEER] = by_concurrency(peer, bodies.raw_float32(pixels), levels, seconds,
                                   "hand-built peer")
    serve.delete("peer")
    naive = server.run_app(NaiveModel.options(num_replicas=naive_replicas).bind(
        str(model_dir / "1")), "naive")
    systems["naive Ray Serve (JSON)"] = by_concurrency(
        naive, bodies.json_instances(pixels), levels, seconds, "naive")
    serve.delete("naive")
    return {"app": app, "systems": systems}


def measure_coalescing_off(server: Server, config: dict, jpeg: bytes, clients: int,
                           seconds: float) -> dict:
    """Native JPEG with every request its own model call, then coalescing back on."""
    ingress = config["applications"][0]["deployments"][0]
    on = ingress["user_config"]
    ingress["user_config"] = {"coalesce": {"enabled": False}}
    server.deploy(config)
    off = run_load(f"{server.url}/predict?top_k=1", lambda: bodies.native_image(jpeg), 1,
                   clients, seconds, label=f"coalescing off, {clients} clients")
    ingress["user_config"] = on
    server.deploy(config)
    return {str(clients): off}


def deploy_standin(server: Server, main_config: dict, model_replicas: int,
                   ingress_replicas: int, coalesce: bool) -> str:
    """The stand-in model as its own app beside the main one; its URL."""
    if not (STANDIN_OUT / "1" / "saved_model.pb").exists():
        build_standin(STANDIN_OUT)
    standin = bench_config(
        STANDIN_OUT, server.port,
        {"num_replicas": model_replicas, "user_config": {"max_batch_size": 64}},
        {"num_replicas": ingress_replicas, "user_config": {"coalesce": {"enabled": coalesce}}},
        app=STANDIN_APP, route_prefix=f"/{STANDIN_APP}")
    # A config lists every app: the main one stays as it is.
    server.deploy({**main_config, "applications": [*main_config["applications"],
                                                   *standin["applications"]]}, STANDIN_APP)
    return f"{server.url}/{STANDIN_APP}"


def measure_standin(server: Server, main_config: dict, jpeg: bytes, levels: list[int],
                    seconds: float) -> dict:
    """The near-free model served by the same config: JPEG and V2 binary, 1
    and 2 ingress replicas, coalescing on and off; a bare ``GET /healthz`` on
    the same path, Ray's floor (two trivial chained deployments) and the
    in-process decode rate beside them."""
    pixels = bodies.pixels(jpeg)
    base = f"{server.url}/{STANDIN_APP}"
    paths = {"JPEG": (f"{base}/predict?top_k=1", bodies.native_image(jpeg)),
             "V2 binary": (f"{base}/v2/models/{MODEL}/infer", bodies.v2(pixels, binary=True))}
    runs = []
    healthz = {}
    for replicas in (1, 2):
        for coalesce in (True, False):
            deploy_standin(server, main_config, 2, replicas, coalesce)
            if coalesce:
                healthz[str(replicas)] = run_load(
                    f"{base}/healthz", lambda: (b"", {}), 1, max(levels), seconds,
                    label=f"GET /healthz, {replicas} ingress, {max(levels)} clients",
                    method="GET")
            for protocol, (url, body) in paths.items():
                for clients in levels:
                    label = (f"stand-in {protocol}, {replicas} ingress, coalescing "
                             f"{'on' if coalesce else 'off'}, {clients} clients")
                    summary = run_load(url, lambda b=body: b, 1, clients, seconds, label=label)
                    runs.append({"protocol": protocol, "clients": clients,
                                 "ingress_replicas": replicas, "coalesce": coalesce,
                                 **summary})
            runs[-1]["ingress_stats"] = server.ingress_stats(STANDIN_APP)
    server.deploy(main_config)  # the stand-in's app leaves
    floor_url = server.run_app(floor_app(), "floor")
    floor = by_concurrency(floor_url, bodies.raw_float32(pixels), levels, seconds,
                           "Ray's floor: two chained deployments")
    serve.delete("floor")
    return {"runs": runs, "healthz": healthz, "floor": floor,
            "decode_rate": decode_rate(jpeg, seconds / 2)}


def measure_profile(server: Server, main_config: dict, seconds: float, out_dir: Path) -> dict:
    """The stand-in on one ingress and one model replica, sampled by py-spy
    under 1 and 64 clients (benchmarks/profile.py)."""
    url = deploy_standin(server, main_config, 1, 1, True)
    pids = {"ingress": server.ingress_stats(STANDIN_APP)["pid"],
            "model": server.model_stats(MODEL, STANDIN_APP)["pid"]}
    runs = profile_runs(f"{url}/predict?top_k=1", pids, [1, 64], seconds, out_dir)
    server.deploy(main_config)  # the stand-in's app leaves
    return {"runs": runs, "flame_graphs": str(out_dir)}


def measure_sequence(server: Server, main_config: dict, model_overrides: dict,
                     requests: list, seconds: float) -> dict:
    """The text encoder as its own app beside the main one (same replica
    settings), 16 clients sending the mix."""
    app = bench_config(SEQUENCE_OUT, server.port, model_overrides, app=sequence.APP,
                       route_prefix=f"/{sequence.APP}",
                       entry={"name": sequence.APP, "path": str(SEQUENCE_OUT)})
    server.deploy({**main_config, "applications": [*main_config["applications"],
                                                   *app["applications"]]}, sequence.APP)
    served = served_rate(f"{server.url}/{sequence.APP}", requests, 16, seconds)
    stats = server.model_stats(sequence.APP, sequence.APP)
    server.deploy(main_config)  # the sequence app leaves
    return {"lengths": list(sequence.LENGTHS), "served_16_clients": served,
            "batch_rows": stats["batch_rows"]}


def measure_plain(workdir: Path, server_env: Path, config: dict, model_dir: Path,
                  jpeg: bytes, clients: int, seconds: float) -> dict:
    """The config as users run it with a plain `serve run` (no server.env),
    and the hand-built peer with Serve's defaults too, on a fresh cluster."""
    for key in read_env_file(server_env):
        os.environ.pop(key, None)
    port = int(config["http_options"]["port"])
    with Server(workdir, None, port) as server:
        server.deploy(config)
        ours = run_load(f"{server.url}/predict?top_k=1", lambda: bodies.native_image(jpeg), 1,
                        clients, seconds, label=f"plain serve run, {clients} clients")
        peer = server.run_app(HandBuiltPeer.bind(str(model_dir / "1"), SHAPE), "peer")
        theirs = run_load(peer, lambda: bodies.raw_float32(bodies.pixels(jpeg)), 1, clients,
                          seconds, label=f"hand-built peer, Serve's defaults, {clients} clients")
    return {"clients": clients, "this server": ours, "hand-built peer": theirs}


def settled_object_store_mb(timeout_s: float = 10.0) -> tuple[float, float]:
    """The object store's use right now, and once it stops falling: Ray frees
    a call's objects asynchronously, so read right after a burst it holds
    whatever was in flight (9-83 MB a burst, back to 4-5 MB within seconds)."""
    first = previous = object_store_mb()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = object_store_mb()
        if now >= previous:
            return first, now
        previous = now
    return first, previous


def measure_memory(server: Server, jpeg: bytes, requests: int, replicas: int) -> dict:
    """Replica RSS and object-store use, sampled between bursts of 16 clients
    (the object store once its frees have landed)."""
    pids = replica_pids(APP, MODEL, replicas)
    body = bodies.native_image(jpeg)
    samples, sent = [], 0
    while sent < requests:
        burst = run_load(f"{server.url}/predict?top_k=1", lambda: body, 1, 16, 5.0,
                         warmup_s=0, label=f"memory: {sent}/{requests} requests")
        sent += burst["requests"] + sum(burst["errors"].values())
        right_after, settled = settled_object_store_mb()
        samples.append({"requests": sent, "rss_mb": {str(p): rss_mb(p) for p in pids},
                        "object_store_mb": settled,
                        "object_store_mb_right_after_the_burst": right_after,
                        "errors": burst["errors"]})
    return {"pids": pids, "samples": samples}


def measure_autoscaling(server: Server, config: dict, jpeg: bytes, full: bool) -> dict:
    """A step load (1 → 16 → 1 clients) against the config's autoscaling."""
    server.deploy(config)
    autoscaling = config["applications"][0]["deployments"][-1]["autoscaling_config"]
    # Start from the floor: replicas left from before scale down first.
    wait_until(lambda: running_replicas(APP).get(MODEL) == autoscaling["min_replicas"], 180,
               "the model deployment to settle at min_replicas")
    phases = [(1, 20.0), (16, 60.0), (1, 90.0)] if full else [(1, 10.0), (16, 45.0),
                                                                (1, 60.0)]
    body = bodies.native_image(jpeg)
    with ReplicaCounter(APP, MODEL) as counter:
        result = run_phases(f"{server.url}/predict?top_k=1", lambda: body, phases,
                            "autoscaling: 1 → 16 → 1 clients")
    return {"phases": phases, "replicas": counter.samples, "done_at_s": result.done_at_s,
            "latencies_ms": result.latencies_ms, "errors": result.errors,
            "autoscaling_config": autoscaling}


def measure_kserve(model_dir: Path, port: int, levels: list[int], seconds: float,
                   pixels: np.ndarray) -> dict:
    systems = {}
    for workers in (1, 2):
        with KServePeer(model_dir / "1", port, workers) as peer:
            url = f"{peer.url}/v2/models/{MODEL}/infer"
            for kind, binary in (("V2 JSON", False), ("V2 binary", True)):
                name = f"KServe {workers} worker{'s' * (workers > 1)} ({kind})"
                systems[name] = by_concurrency(url, bodies.v2(pixels, binary), levels, seconds,
                                               name)
    return systems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="longer runs, steadier numbers")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--replicas", type=int, default=2, help="model replicas")
    parser.add_argument("--model-cpus", type=float, default=1, help="num_cpus per replica")
    parser.add_argument("--max-batch-size", default="auto",
                        help="the model deployment's max_batch_size: a number, or auto "
                             "(each replica times its batch sizes at warm-up)")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                        help="batch_wait_timeout_s while the model is idle, in ms")
    parser.add_argument("--server-env", type=Path, default=ROOT / "configs" / "server.env",
                        help="environment file of the cluster's processes")
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--skip", nargs="*", default=[], choices=SECTIONS,
                           help="sections to leave out")
    selection.add_argument("--only", nargs="+", choices=SECTIONS,
                           help="the sections to run (raw TF, the limit, always runs)")
    args = parser.parse_args()
    if args.only:
        args.skip = [s for s in SECTIONS if s not in args.only]
    seconds = 15.0 if args.full else 6.0
    levels = [1, 8, 16, 32] if args.full else [1, 16, 32]

    model_dir = DEFAULT_OUT
    if not (model_dir / "1" / "saved_model.pb").exists():
        print("building the benchmark model (MobileNetV2, weights=None) ...")
        build(model_dir)

    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("%Y%m%d-%H%M%S")
    results: dict = {"machine": machine(), "mode": "full" if args.full else "short",
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "levels": levels,
                     "skipped": args.skip}
    raw = measure_raw(model_dir / "1", BATCH_SIZES, seconds=seconds / 2, label="raw TF (before)")
    if "sequence" not in args.skip:  # raw TF on the mix, on the machine alone like the above
        if not (SEQUENCE_OUT / "1" / "saved_model.pb").exists():
            build_sequence(SEQUENCE_OUT)
        sequences = mix(256, VOCABULARY)
        sequence_raw = raw_rates(SEQUENCE_OUT / "1", sequences, 16, seconds / 2)
    if "pipeline" not in args.skip:  # its stages in process, on the machine alone too
        canvases, boxes = pipeline.canvases(64)
        stages = pipeline.in_process(canvases, [1, 8, 32], seconds / 2)
    best = max(raw, key=lambda b: raw[b]["images_per_s"])
    max_batch = args.max_batch_size if args.max_batch_size == "auto" else int(
        args.max_batch_size)
    overrides = {
        "num_replicas": args.replicas,
        "ray_actor_options": {"num_cpus": args.model_cpus},
        "user_config": {"max_batch_size": max_batch,
                        "batch_wait_timeout_s": args.batch_wait_ms / 1000},
    }
    config = bench_config(model_dir, args.port, overrides)
    results["config"] = {"model_deployment": overrides,
                         "ingress": config["applications"][0]["deployments"][0],
                         "server_env": read_env_file(args.server_env)}
    jpeg = bodies.sample_jpeg()
    with (tempfile.TemporaryDirectory() as tmp,
          Server(Path(tmp), args.server_env, args.port) as server):
        server.deploy(config)
        if "systems" not in args.skip:
            results.update(measure_server(server, model_dir, levels, seconds, jpeg,
                                          args.replicas, best))
        if "coalescing" not in args.skip:
            results.setdefault("systems", {})[f"{OURS}, coalescing off"] = \
                measure_coalescing_off(server, config, jpeg, 16, seconds)
        if "standin" not in args.skip:
            results["standin"] = measure_standin(server, config, jpeg, [16, 64], seconds)
        if "profile" not in args.skip:
            results["profile"] = measure_profile(server, config, 2 * seconds,
                                                 stem.with_name(f"{stem.name}-profile"))
        if "sequence" not in args.skip:
            results["sequence"] = {
                **measure_sequence(server, config, overrides, sequences, seconds),
                "raw_rows_per_s": sequence_raw}
        if "pipeline" not in args.skip:
            results["pipeline"] = {
                **pipeline.served(server, config, canvases, boxes, levels, seconds),
                "in_process": stages}
        if "handoff" not in args.skip:
            results["handoff"] = measure_handoff([1, 10, 100, 400], 5 if args.full else 3)
        if "memory" not in args.skip:
            results["memory"] = measure_memory(server, jpeg, 10_000 if args.full else 1_500,
                                               args.replicas)
        if "payload_log" not in args.skip:
            results["payload_log"] = measure_payload_log(server, config, jpeg, 16, seconds)
        if "autoscaling" not in args.skip:
            autoscaled = bench_config(model_dir, args.port, {
                "user_config": overrides["user_config"],
                "ray_actor_options": overrides["ray_actor_options"]})
            results["autoscaling"] = measure_autoscaling(server, autoscaled, jpeg, args.full)
    if "plain" not in args.skip:  # its own cluster, without the serving switches
        with tempfile.TemporaryDirectory() as tmp:
            results["plain"] = measure_plain(Path(tmp), args.server_env, config, model_dir,
                                             jpeg, 16, seconds)
    if "kserve" not in args.skip:  # after the clusters are gone: nothing else running
        peers = measure_kserve(model_dir, args.port + 1, levels, seconds, bodies.pixels(jpeg))
        results.setdefault("systems", {}).update(peers)

    # Raw TF again: the machine's speed drifts, so the limit is the mean of
    # the measurements before and after the servers', and their spread is kept.
    again = measure_raw(model_dir / "1", [1, best], seconds=seconds / 2, label="raw TF (after)")
    batch1 = [raw[1]["ms_per_call"], again[1]["ms_per_call"]]
    limit = [raw[best]["images_per_s"], again[best]["images_per_s"]]
    results["raw_tf"] = {"by_batch": raw, "after": again, "best_batch": best,
                         "best_images_per_s": float(np.mean(limit)),
                         "best_images_per_s_spread": [min(limit), max(limit)],
                         "batch1_ms": float(np.mean(batch1))}
    results["ratios"] = ratios(results)

    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot_results(results, stem.with_suffix(".png"))
    report(results)
    print(f"wrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
