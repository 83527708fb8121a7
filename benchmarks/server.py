"""This server under test: configs/config.yaml pointed at the benchmark model,
deployed with `serve run` like a user does, on a cluster the bench owns."""

from __future__ import annotations

from pathlib import Path

import ray
import yaml
from ray import serve

from deployments.local import serve_run, start_cluster, wait_ready

ROOT = Path(__file__).resolve().parents[1]
APP = "ray-tf-serve"
MODEL = "mobilenet_v2"


def bench_config(model_dir: Path, port: int, model_overrides: dict) -> dict:
    """configs/config.yaml with the benchmark model and the given Model settings."""
    config = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = config["applications"]
    app["args"]["models"] = [{"name": MODEL, "path": str(model_dir), "input": "image",
                              "labels_path": str(model_dir / "labels.txt")}]
    app["deployments"] = [d for d in app["deployments"] if d["name"] != "digits_linear"]
    model = next(d for d in app["deployments"] if d["name"] == "digits")
    model["name"] = MODEL
    model.update(model_overrides)
    if "num_replicas" in model_overrides:
        model.pop("autoscaling_config", None)
    return config


class Server:
    """A local Ray cluster with the app deployed; stopped on exit."""

    def __init__(self, config: dict, workdir: Path, env_file: Path) -> None:
        self.env_file = env_file
        self.path = workdir / "bench-config.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{config['http_options']['port']}"

    def __enter__(self) -> Server:
        start_cluster(self.env_file, logging_level="ERROR")
        serve_run(self.path, cwd=ROOT, quiet=True)
        wait_ready(self.url)
        return self

    def model_stats(self) -> dict:
        return serve.get_deployment_handle(MODEL, APP).stats.remote().result()

    def __exit__(self, *exc: object) -> None:
        serve.shutdown()
        ray.shutdown()
