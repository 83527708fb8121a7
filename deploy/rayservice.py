"""KubeRay ``RayService`` manifests generated from the Serve configs.

    python -m deploy.rayservice           # `make kuberay`: write deploy/kuberay/*.yaml
    python -m deploy.rayservice --check   # exit 1 if a manifest is out of date
    python -m deploy.rayservice --operator-namespace kuberay-system  # where KubeRay runs

``serveConfigV2`` is each config file verbatim, so the YAML a user runs with
``serve run`` is the one the cluster runs: edit ``configs/``, never the
manifests. The image is the repository's ``Dockerfile``.

- ``rayservice.yaml``: ``configs/config.yaml`` on a CPU head and CPU workers.
- ``rayservice-gpu.yaml``: ``configs/gpu.yaml`` on a CPU head and GPU workers,
  sized from that config's model replicas (``num_gpus`` × ``max_replicas``).

Each file also holds a ``NetworkPolicy``: from outside the cluster's pods, only
the serving ports are reachable; Ray's own (GCS, dashboard) are for the
cluster and the KubeRay operator in its namespace, and require Ray's token
besides.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from deployments.envfile import read_env_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "deploy" / "kuberay"
IMAGE = "ray-tf-serve:0.1.0"  # `docker build -t ray-tf-serve:0.1.0 .`
WORKDIR = "/home/ray/app"  # the Dockerfile's; the configs' relative paths start here
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 9000, 8080
# Where the KubeRay operator runs: its Helm chart's and kustomization's default.
OPERATOR_NAMESPACE = "default"
# The operator's pods: the label both KubeRay's Helm chart and its kustomization
# give them (their app.kubernetes.io/name differs: kuberay-operator, kuberay).
OPERATOR_POD = {"app.kubernetes.io/component": "kuberay-operator"}


@dataclass(frozen=True)
class Workers:
    """One worker group: what each pod offers Ray."""

    group: str
    cpus: int
    memory: str
    gpus: int = 0


@dataclass(frozen=True)
class Target:
    config: Path
    manifest: Path
    name: str
    image: str
    workers: Workers


TARGETS = (
    Target(ROOT / "configs" / "config.yaml", OUT / "rayservice.yaml", "ray-tf-serve", IMAGE,
           Workers("cpu-workers", cpus=2, memory="6Gi")),
    Target(ROOT / "configs" / "gpu.yaml", OUT / "rayservice-gpu.yaml", "ray-tf-serve-gpu",
           f"{IMAGE}-gpu", Workers("gpu-workers", cpus=4, memory="16Gi", gpus=1)),
)


def _model_deployments(serve_config: dict) -> list[dict]:
    app = serve_config["applications"][0]
    models = {m["name"] for m in app["args"]["models"]}
    return [d for d in app["deployments"] if d["name"] in models]


def worker_pods(serve_config: dict, workers: Workers) -> int:
    """Worker pods that fit every model deployment at its largest: GPUs when
    the workers have them, else CPUs."""
    needed = 0.0
    for deployment in _model_deployments(serve_config):
        replicas = deployment.get("autoscaling_config", {}).get(
            "max_replicas", deployment.get("num_replicas", 1))
        options = deployment.get("ray_actor_options", {})
        per_replica = options.get("num_gpus", 0) if workers.gpus else options.get("num_cpus", 1)
        needed += replicas * per_replica
    return max(1, math.ceil(needed / (workers.gpus or workers.cpus)))


def _container(name: str, image: str, env: dict[str, str], cpus: int, memory: str,
               gpus: int = 0) -> dict:
    limits: dict[str, Any] = {"cpu": cpus, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    return {
        "name": name,
        "image": image,
        "workingDir": WORKDIR,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "resources": {"requests": dict(limits), "limits": limits},
        "ports": [
            {"containerPort": 6379, "name": "gcs"},
            {"containerPort": 8265, "name": "dashboard"},
            {"containerPort": HTTP_PORT, "name": "serve"},
            {"containerPort": GRPC_PORT, "name": "grpc"},
            {"containerPort": METRICS_PORT, "name": "metrics"},
        ],
    }


def _ready_when_the_app_answers() -> dict:
    """The pod takes traffic once its proxy reaches the app's ingress
    (``/healthz``). Not ``/readyz``: that needs every model up, so one model
    down (or scaled to zero) would take every pod out of service at once and
    the healthy models with it. ``/readyz`` is for external checks."""
    return {"httpGet": {"path": "/healthz", "port": HTTP_PORT}, "periodSeconds": 5,
            "timeoutSeconds": 3, "failureThreshold": 3}


def pod_labels(target: Target) -> dict[str, str]:
    """The labels of this RayService's pods that its pod templates set (KubeRay
    copies a template's labels onto its pods, beside its own)."""
    return {"app.kubernetes.io/instance": target.name}


def cluster_pods(target: Target) -> dict[str, str]:
    """A selector of this RayService's Ray pods, head and workers. Not
    ``ray.io/cluster`` alone: a RayService's RayCluster is named
    ``<name>-<5 random characters>``, renamed at each zero-downtime upgrade, so
    no manifest knows its value; ``ray.io/is-ray-node`` is KubeRay's own mark
    of a Ray pod, the instance label this RayService's templates give them."""
    return {"ray.io/is-ray-node": "yes", **pod_labels(target)}


def render(target: Target) -> dict:
    config_text = target.config.read_text()
    workers = target.workers
    pods = worker_pods(yaml.safe_load(config_text), workers)
    env = read_env_file(ROOT / "configs" / "server.env")
    head = _container("ray-head", target.image, env, cpus=2, memory="6Gi")
    # The head takes Serve's controller, proxy and the ingress (num_cpus: 0)
    # but no model replicas, so it stays responsive under load.
    head_params = {"num-cpus": "0", "dashboard-host": "0.0.0.0",
                   "metrics-export-port": str(METRICS_PORT)}
    worker = _container("ray-worker", target.image, env, workers.cpus, workers.memory,
                        workers.gpus)
    worker["readinessProbe"] = _ready_when_the_app_answers()
    worker_params = {"num-cpus": str(workers.cpus), "metrics-export-port": str(METRICS_PORT)}
    if workers.gpus:
        worker_params["num-gpus"] = str(workers.gpus)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": target.name},
        "spec": {
            "serveConfigV2": config_text,
            "rayClusterConfig": {
                "rayVersion": version("ray"),
                # KubeRay (v1.5.1+) makes a token Secret and gives every Ray
                # container RAY_AUTH_MODE=token with it: the dashboard, GCS and
                # jobs API refuse anyone without the token.
                "authOptions": {"mode": "token"},
                "enableInTreeAutoscaling": True,  # Serve's autoscaling asks; pods follow
                "headGroupSpec": {
                    "rayStartParams": head_params,
                    "template": {"metadata": {"labels": pod_labels(target)},
                                 "spec": {"containers": [head]}},
                },
                "workerGroupSpecs": [{
                    "groupName": workers.group,
                    "replicas": 1,
                    "minReplicas": 1,
                    "maxReplicas": pods,
                    "rayStartParams": worker_params,
                    "template": {"metadata": {"labels": pod_labels(target)},
                                 "spec": {"containers": [worker]}},
                }],
            },
        },
    }


def network_policy(target: Target, operator_namespace: str = OPERATOR_NAMESPACE) -> dict:
    """Only the serving ports from anywhere; Ray's own ports (GCS, dashboard,
    workers, object transfers, metrics) only from the same cluster's pods, the
    KubeRay operator in ``operator_namespace`` and the namespace's monitoring."""
    cluster = cluster_pods(target)
    # Kubernetes labels every namespace with its name; no one else can set it.
    operator_ns = {"kubernetes.io/metadata.name": operator_namespace}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{target.name}-ingress"},
        "spec": {
            "podSelector": {"matchLabels": cluster},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": HTTP_PORT, "protocol": "TCP"},
                           {"port": GRPC_PORT, "protocol": "TCP"}]},
                {"from": [{"podSelector": {"matchLabels": cluster}}]},
                {"from": [{"namespaceSelector": {"matchLabels": operator_ns},
                           "podSelector": {"matchLabels": OPERATOR_POD}}],
                 "ports": [{"port": 8265, "protocol": "TCP"}, {"port": 6379, "protocol": "TCP"}]},
                {"from": [{"podSelector": {}}],
                 "ports": [{"port": METRICS_PORT, "protocol": "TCP"}]},
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the embedded Serve config) as readable ``|`` blocks;
    repeated values written out, not as anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def manifest_text(target: Target, operator_namespace: str = OPERATOR_NAMESPACE) -> str:
    header = (f"# Generated by `make kuberay` from {target.config.relative_to(ROOT)}: "
              "edit that file, not this one.\n")
    return header + yaml.dump_all([render(target), network_policy(target, operator_namespace)],
                                  Dumper=_Dumper, sort_keys=False, width=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a manifest is stale")
    parser.add_argument("--operator-namespace", default=OPERATOR_NAMESPACE,
                        help="the namespace the KubeRay operator runs in (default: %(default)s)")
    args = parser.parse_args()
    check = args.check
    stale = []
    for target in TARGETS:
        text = manifest_text(target, args.operator_namespace)
        if check:
            if not target.manifest.is_file() or target.manifest.read_text() != text:
                stale.append(str(target.manifest.relative_to(ROOT)))
        else:
            target.manifest.parent.mkdir(parents=True, exist_ok=True)
            target.manifest.write_text(text)
    if stale:
        print(f"out of date (run `make kuberay`): {', '.join(stale)}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
