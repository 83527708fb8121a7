"""The KubeRay manifests and the Dockerfile agree with the configs they come from."""

import re
import tomllib

import pytest
import yaml

from deploy.rayservice import ROOT, TARGETS, WORKDIR, Target, manifest_text, worker_pods
from deployments.config import AppArgs
from harness.envfile import read_env_file

PINNED_RAY = next(re.search(r"==([\d.]+)", d).group(1)
                  for d in tomllib.loads((ROOT / "pyproject.toml").read_text())
                  ["project"]["dependencies"] if d.startswith("ray["))
SERVER_ENV = read_env_file(ROOT / "configs" / "server.env")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.manifest.name)
def test_the_committed_manifest_is_generated_from_its_config(target: Target):
    assert target.manifest.read_text() == manifest_text(target), "run `make kuberay`"


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.manifest.name)
def test_the_manifest_is_a_rayservice_serving_the_config(target: Target):
    manifest, _ = yaml.safe_load_all(target.manifest.read_text())
    config = yaml.safe_load(target.config.read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert manifest["metadata"]["name"]
    spec = manifest["spec"]
    assert isinstance(spec["serveConfigV2"], str)  # RayService takes it as a string
    assert yaml.safe_load(spec["serveConfigV2"]) == config
    AppArgs.model_validate(config["applications"][0]["args"])

    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == PINNED_RAY
    assert cluster["authOptions"] == {"mode": "token"}  # Ray's token on every container
    head = cluster["headGroupSpec"]
    groups = cluster["workerGroupSpecs"]
    assert isinstance(head["rayStartParams"], dict) and groups
    for group in groups:
        assert group["groupName"]
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] == worker_pods(config, target.workers)
        assert isinstance(group["rayStartParams"], dict)
        (container,) = group["template"]["spec"]["containers"]
        probe = container["readinessProbe"]["httpGet"]
        assert probe == {"path": "/healthz", "port": config["http_options"]["port"]}
    for pod in [head, *groups]:
        (container,) = pod["template"]["spec"]["containers"]
        assert container["image"] == target.image and container["workingDir"] == WORKDIR
        assert {e["name"]: e["value"] for e in container["env"]} == SERVER_ENV
        ports = {p["containerPort"] for p in container["ports"]}
        assert {config["http_options"]["port"], config["grpc_options"]["port"]} <= ports


def test_gpu_workers_offer_the_gpus_the_gpu_config_asks_for():
    target = next(t for t in TARGETS if t.workers.gpus)
    (group,) = next(yaml.safe_load_all(target.manifest.read_text()))["spec"]["rayClusterConfig"][
        "workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert group["rayStartParams"]["num-gpus"] == "1"
    # configs/gpu.yaml: up to 4 replicas at 0.5 GPU each → 2 one-GPU pods.
    assert group["maxReplicas"] == 2


def test_the_dockerfile_builds_on_the_pinned_ray_image_with_the_serving_env():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{PINNED_RAY}-py311\n" in dockerfile
    assert f"WORKDIR {WORKDIR}\n" in dockerfile
    for name, value in SERVER_ENV.items():
        assert re.search(rf'\b{name}="?{value}\b', dockerfile), name
    assert "COPY --chown=ray:users models ./models" in dockerfile


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.manifest.name)
def test_from_outside_only_the_serving_ports_are_open(target: Target):
    service, policy = yaml.safe_load_all(target.manifest.read_text())
    config = yaml.safe_load(target.config.read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    pods = {"ray.io/originated-from-cr-name": service["metadata"]["name"]}
    assert policy["spec"]["podSelector"] == {"matchLabels": pods}
    open_to_all = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert [{p["port"] for p in rule["ports"]} for rule in open_to_all] == [
        {config["http_options"]["port"], config["grpc_options"]["port"]}]
    for rule in policy["spec"]["ingress"]:
        for source in rule.get("from", []):  # every other rule names who may come in
            assert source.get("podSelector") is not None
