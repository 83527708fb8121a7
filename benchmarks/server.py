"""This server under test: configs/config.yaml pointed at a benchmark model,
deployed with `serve run` like a user does, on a cluster the bench owns; the
peers (naive, hand-built, Ray's floor) are deployed beside it as other apps."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import ray
import yaml
from ray import cloudpickle, serve

import benchmarks.floor
import benchmarks.naive
import benchmarks.peer
from harness.cluster import (
    driver_env,
    keep_routing_of,
    serve_run,
    start_cluster,
    wait_app_running,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[1]
APP = "ray-tf-serve"
MODEL = "mobilenet_v2"

# Replicas cannot import the benchmarks package: ship the peers by value.
for _module in (benchmarks.naive, benchmarks.peer, benchmarks.floor):
    cloudpickle.register_pickle_by_value(_module)


def bench_config(model_dir: Path, port: int, model_overrides: dict,
                 ingress_overrides: dict | None = None, app: str = APP,
                 route_prefix: str = "/", entry: dict | None = None) -> dict:
    """configs/config.yaml serving one benchmark model only (``entry``, by
    default the image model ``MODEL``), with the given settings of its
    deployment and of the Preprocessor (a fixed ``num_replicas`` drops
    autoscaling)."""
    config = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config.pop("grpc_options", None)
    (application,) = config["applications"]
    application.update(name=app, route_prefix=route_prefix)
    entry = entry or {"name": MODEL, "path": str(model_dir), "input": "image",
                      "labels_path": str(model_dir / "labels.txt")}
    application["args"]["models"] = [entry]
    deployments = {d["name"]: d for d in application["deployments"]}
    model = {**deployments["digits"], "name": entry["name"]}
    model.update(copy.deepcopy(model_overrides))
    if "num_replicas" in model_overrides:
        model.pop("autoscaling_config", None)
    ingress = deployments["Preprocessor"]
    keep_routing_of(ingress, [entry])
    ingress.update(copy.deepcopy(ingress_overrides or {}))
    application["deployments"] = [ingress, model]
    return config


class Server:
    """A local Ray cluster whose processes serve with ``env_file``."""

    def __init__(self, workdir: Path, env_file: Path | None, port: int) -> None:
        self.env_file = env_file
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def deploy(self, config: dict, app: str = APP) -> None:
        """`serve run` a config; returns when the app is ready."""
        path = self.workdir / "bench-config.yaml"
        path.write_text(yaml.safe_dump(config))
        serve_run(path, cwd=ROOT, quiet=True)
        wait_app_running(app)
        prefix = next(a["route_prefix"] for a in config["applications"] if a["name"] == app)
        wait_ready(self.url + prefix.rstrip("/"))

    def run_app(self, app: serve.Application, name: str) -> str:
        """Deploy a peer as its own app at ``/name``; its URL."""
        serve.run(app, name=name, route_prefix=f"/{name}")
        return f"{self.url}/{name}"

    def __enter__(self) -> Server:
        # Logical CPUs beyond the machine's: every system stays deployed while
        # one at a time is measured; replicas' threads follow their num_cpus.
        start_cluster(self.env_file, drain_s=1, logging_level="ERROR", num_cpus=16)
        return self

    def model_stats(self, model: str = MODEL, app: str = APP) -> dict:
        return serve.get_deployment_handle(model, app).stats.remote().result()

    def ingress_stats(self, app: str = APP) -> dict:
        return serve.get_app_handle(app).stats.remote().result()

    def handle_load(self, clients: int, seconds: float, label: str, *flags: str) -> dict:
        """Load from a second Ray job through a Python handle (``flags``: those
        of ``benchmarks.handle_load``)."""
        print(f"{label} ...", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.handle_load", "--app", APP, *flags,
             "--clients", str(clients), "--seconds", str(seconds)],
            cwd=ROOT, env=driver_env(), capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"handle load failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def __exit__(self, *exc: object) -> None:
        serve.shutdown()
        ray.shutdown()
