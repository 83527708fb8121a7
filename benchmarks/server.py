"""This server under test: configs/config.yaml pointed at the benchmark model,
deployed with `serve run` like a user does, on a cluster the bench owns."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ray
import yaml
from ray import serve

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
APP = "ray-tf-serve"


def bench_config(model_dir: Path, port: int, model_overrides: dict) -> dict:
    """configs/config.yaml with the benchmark model and the given Model settings."""
    config = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = config["applications"]
    app["args"]["model"] = {"name": "mobilenet_v2", "path": str(model_dir / "1"),
                            "labels_path": str(model_dir / "labels.txt")}
    model = next(d for d in app["deployments"] if d["name"] == "Model")
    model.update(model_overrides)
    if "num_replicas" in model_overrides:
        model.pop("autoscaling_config", None)
    return config


class Server:
    """A local Ray cluster with the app deployed; stopped on exit."""

    def __init__(self, config: dict, workdir: Path, env: dict[str, str]) -> None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Set after this driver imported Serve: they reach the cluster's
        # processes (started below) while this driver keeps Serve's defaults.
        os.environ.update(env)
        self.config = config
        self.path = workdir / "bench-config.yaml"
        self.path.write_text(yaml.safe_dump(config))
        port = config["http_options"]["port"]
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Server:
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        subprocess.run([str(BIN / "serve"), "run", "--non-blocking", str(self.path)],
                       cwd=ROOT, env=env, check=True, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError("the benchmark app did not become ready")

    def model_stats(self) -> dict:
        return serve.get_deployment_handle("Model", APP).stats.remote().result()

    def __exit__(self, *exc: object) -> None:
        serve.shutdown()
        ray.shutdown()
