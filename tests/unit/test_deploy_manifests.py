"""The KubeRay manifests and the Dockerfile agree with the configs they come from."""

import re
import tomllib
from dataclasses import dataclass

import pytest
import yaml

from deploy.rayservice import (
    OPERATOR_NAMESPACE,
    ROOT,
    TARGETS,
    WORKDIR,
    Target,
    manifest_text,
    worker_pods,
)
from deployments.config import AppArgs
from deployments.envfile import read_env_file

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
    assert re.search(r"ENV RAY_SERVE_HAPROXY_BINARY_PATH=\S+/ray-tf-serve-haproxy\n"
                     r'RUN test -x "\$RAY_SERVE_HAPROXY_BINARY_PATH"', dockerfile)
    assert "from deployments.cli import docker_main" in dockerfile  # TF Serving's conventions


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.manifest.name)
def test_from_outside_only_the_serving_ports_are_open(target: Target):
    _, policy = yaml.safe_load_all(target.manifest.read_text())
    config = yaml.safe_load(target.config.read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    open_to_all = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
    assert [{p["port"] for p in rule["ports"]} for rule in open_to_all] == [
        {config["http_options"]["port"], config["grpc_options"]["port"]}]
    for rule in policy["spec"]["ingress"]:
        for source in rule.get("from", []):  # every other rule names who may come in
            assert source.get("podSelector") is not None


# The NetworkPolicy evaluated as Kubernetes evaluates it, on pods labelled as
# KubeRay labels them.

def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes' LabelSelector: every matchLabels pair and every
    matchExpressions requirement holds ({} selects everything)."""
    def holds(req: dict) -> bool:
        key, values = req["key"], req.get("values", [])
        return {"In": key in labels and labels[key] in values,
                "NotIn": labels.get(key) not in values,
                "Exists": key in labels,
                "DoesNotExist": key not in labels}[req["operator"]]

    return (all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
            and all(holds(r) for r in selector.get("matchExpressions", [])))


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: str


APP_NAMESPACE = "serving"
PROBED_PORTS = {6379, 8000, 8080, 8265, 9000, 10002}  # GCS, serving, metrics, dashboard, a worker


def namespace_labels(name: str) -> dict[str, str]:
    """What Kubernetes (1.22+) labels every namespace with."""
    return {"kubernetes.io/metadata.name": name}


def admits(peer: dict, source: Pod) -> bool:
    """A NetworkPolicyPeer: a podSelector alone means the policy's namespace."""
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], namespace_labels(source.namespace))
    else:
        in_namespace = source.namespace == APP_NAMESPACE
    return in_namespace and selects(peer.get("podSelector", {}), source.labels)


def open_ports(policy: dict, to: Pod, source: Pod) -> set[int]:
    """The probed ports of ``to`` that ``source`` reaches under ``policy``."""
    spec = policy["spec"]
    if not selects(spec["podSelector"], to.labels):
        return PROBED_PORTS
    reached: set[int] = set()
    for rule in spec.get("ingress", []):
        if "from" not in rule or any(admits(peer, source) for peer in rule["from"]):
            reached |= {p["port"] for p in rule["ports"]} if "ports" in rule else PROBED_PORTS
    return reached


def kuberay_pod(cluster: str, node_type: str, group: str, template: dict,
                namespace: str = APP_NAMESPACE) -> Pod:
    """A Ray pod's labels as KubeRay's labelPod sets them
    (ray-operator/controllers/ray/common/pod.go): its own, the template's over
    them, except the cluster, node type and group, which it keeps."""
    own = {"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster, "ray.io/node-type": node_type,
           "ray.io/group": group, "ray.io/identifier": f"{cluster}-{node_type}",
           "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    kept = {k: own[k] for k in ("ray.io/cluster", "ray.io/node-type", "ray.io/group")}
    return Pod({**own, **template.get("metadata", {}).get("labels", {}), **kept}, namespace)


def rayservice_pods(service: dict) -> list[Pod]:
    """A RayService's head and worker pods, in two generations: KubeRay names
    its RayCluster ``<name>-<5 random characters>`` and makes a new one at a
    zero-downtime upgrade."""
    cluster = service["spec"]["rayClusterConfig"]
    pods = []
    for suffix in ("x7k2p", "q9m4d"):
        name = f"{service['metadata']['name']}-{suffix}"
        pods.append(kuberay_pod(name, "head", "headgroup",
                                cluster["headGroupSpec"]["template"]))
        pods += [kuberay_pod(name, "worker", group["groupName"], group["template"])
                 for group in cluster["workerGroupSpecs"]]
    return pods


# KubeRay's operator pods, as its Helm chart and its kustomization label them.
HELM_OPERATOR = {"app.kubernetes.io/name": "kuberay-operator",
                 "app.kubernetes.io/instance": "kuberay-operator",
                 "app.kubernetes.io/component": "kuberay-operator"}
KUSTOMIZE_OPERATOR = {"app.kubernetes.io/name": "kuberay",
                      "app.kubernetes.io/component": "kuberay-operator"}


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.manifest.name)
def test_the_network_policy_isolates_the_rayservices_pods_as_kuberay_labels_them(
        target: Target):
    service, policy = yaml.safe_load_all(target.manifest.read_text())
    ours = rayservice_pods(service)
    assert {p.labels["ray.io/node-type"] for p in ours} == {"head", "worker"}
    other_service = next(t for t in TARGETS if t is not target)
    others = [*rayservice_pods(next(yaml.safe_load_all(other_service.manifest.read_text()))),
              kuberay_pod("raycluster-sample", "head", "headgroup", {}),
              Pod({"app": "web"}, APP_NAMESPACE)]
    serving = {8000, 9000}

    for pod in ours:
        assert selects(policy["spec"]["podSelector"], pod.labels), pod
        for peer in ours:  # the cluster's own pods, either generation: every port
            assert open_ports(policy, pod, peer) == PROBED_PORTS
        for other in others:  # the namespace's other pods: serving and metrics
            assert open_ports(policy, pod, other) == serving | {8080}, other
        for operator in (HELM_OPERATOR, KUSTOMIZE_OPERATOR):
            assert open_ports(policy, pod, Pod(operator, OPERATOR_NAMESPACE)) == serving | {
                8265, 6379}
            assert open_ports(policy, pod, Pod(operator, "tenant")) == serving  # a lookalike
        assert open_ports(policy, pod, Pod({}, OPERATOR_NAMESPACE)) == serving
        assert open_ports(policy, pod, Pod(ours[0].labels, "tenant")) == serving
    for other in others:
        assert not selects(policy["spec"]["podSelector"], other.labels), other


def test_label_selectors_follow_kubernetes():
    labels = {"a": "1", "b": "2"}
    assert selects({}, labels) and selects({"matchLabels": {"a": "1"}}, labels)
    assert not selects({"matchLabels": {"a": "1", "c": "3"}}, labels)
    expressions = [({"key": "a", "operator": "In", "values": ["1", "9"]}, True),
                   ({"key": "a", "operator": "NotIn", "values": ["1"]}, False),
                   ({"key": "c", "operator": "NotIn", "values": ["1"]}, True),
                   ({"key": "b", "operator": "Exists"}, True),
                   ({"key": "b", "operator": "DoesNotExist"}, False)]
    for expression, expected in expressions:
        assert selects({"matchExpressions": [expression]}, labels) is expected, expression
