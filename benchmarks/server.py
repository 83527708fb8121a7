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
        return serve.get_deployment_handle("Model", APP).stats.remote().result()

    def __exit__(self, *exc: object) -> None:
        serve.shutdown()
        ray.shutdown()
