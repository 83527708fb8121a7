"""This server under test: configs/config.yaml pointed at the benchmark model,
deployed with `serve run` like a user does, on a cluster the bench owns, with
the naive baseline deployed beside it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import ray
import yaml
from ray import cloudpickle, serve

import benchmarks.naive
from benchmarks.naive import NaiveModel
from deployments.local import (
    driver_env,
    serve_run,
    start_cluster,
    wait_app_running,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[1]
APP = "ray-tf-serve"
MODEL = "mobilenet_v2"
NAIVE_APP = "naive"

# Replicas cannot import the benchmarks package: ship the naive class by value.
cloudpickle.register_pickle_by_value(benchmarks.naive)


def bench_config(model_dir: Path, port: int, model_overrides: dict) -> dict:
    """configs/config.yaml serving the benchmark model only, with the given
    settings of its deployment (a fixed ``num_replicas`` drops autoscaling)."""
    config = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config.pop("grpc_options", None)
    (app,) = config["applications"]
    app["args"]["models"] = [{"name": MODEL, "path": str(model_dir), "input": "image",
                              "labels_path": str(model_dir / "labels.txt")}]
    deployments = {d["name"]: d for d in app["deployments"]}
    model = {**deployments["digits"], "name": MODEL}
    model.update(copy.deepcopy(model_overrides))
    if "num_replicas" in model_overrides:
        model.pop("autoscaling_config", None)
    app["deployments"] = [deployments["Preprocessor"], model]
    return config


class Server:
    """A local Ray cluster with the app (and the naive baseline) deployed."""

    def __init__(self, config: dict, workdir: Path, env_file: Path, model_dir: Path,
                 naive_replicas: int) -> None:
        self.env_file = env_file
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{config['http_options']['port']}"
        self._config = config
        self._model_dir = model_dir
        self._naive_replicas = naive_replicas

    def deploy(self, config: dict) -> None:
        """`serve run` a config; returns when the app is ready."""
        path = self.workdir / "bench-config.yaml"
        path.write_text(yaml.safe_dump(config))
        serve_run(path, cwd=ROOT, quiet=True)
        wait_app_running(APP)
        wait_ready(self.url)

    def __enter__(self) -> Server:
        # Logical CPUs beyond the machine's: every system stays deployed while
        # one at a time is measured; replicas' threads follow their num_cpus.
        start_cluster(self.env_file, drain_s=1, logging_level="ERROR", num_cpus=16)
        self.deploy(self._config)
        naive = NaiveModel.options(num_replicas=self._naive_replicas)
        serve.run(naive.bind(str(self._model_dir / "1")), name=NAIVE_APP,
                  route_prefix=f"/{NAIVE_APP}")
        return self

    def model_stats(self) -> dict:
        return serve.get_deployment_handle(MODEL, APP).stats.remote().result()

    def handle_load(self, clients: int, seconds: float, label: str,
                    model: str | None = None) -> dict:
        """Load from a second Ray job through the app's Python handle, or
        through ``model``'s own deployment handle."""
        print(f"{label} ...", flush=True)
        target = ["--model", model] if model else []
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.handle_load", "--app", APP, *target,
             "--clients", str(clients), "--seconds", str(seconds)],
            cwd=ROOT, env=driver_env(), capture_output=True, text=True, timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"handle load failed: {done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def __exit__(self, *exc: object) -> None:
        serve.shutdown()
        ray.shutdown()
