"""Two Ray nodes on this machine, started as on a real cluster (``ray start
--head`` and ``ray start --address``): the app from the YAML with its ingress
on the head and its model replicas pinned to the second node by a custom
resource. Requests enter through either node's proxy or a handle from a third
driver, and each input crosses between the nodes once, in the object store.

This cluster is its own, beside the session's: it is driven only through
subprocesses and HTTP. It runs Serve's own proxies, not configs/server.env's
HAProxy: with both nodes on one host, each node's HAProxy, fallback proxy and
replica ports would need ranges of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from deployments.envfile import read_env_file
from harness.cluster import free_port, wait_ready, wait_until
from tests.app.conftest import build_app, config_args
from tests.common import APP_NAME, CONFIG, ROOT, SAMPLES

BIN = Path(sys.executable).parent

# A driver that reports where the cluster's nodes and live actors are.
PLACEMENT = """
import json, ray
from ray._private.state import actors
ray.init(log_to_driver=False, logging_level="ERROR")
print(json.dumps({
    "nodes": {n["NodeID"]: {"resources": n["Resources"], "metrics": n["MetricsExportPort"]}
              for n in ray.nodes() if n["Alive"]},
    "actors": {a["Name"]: a["Address"]["NodeID"] for a in actors().values()
               if a["State"] == "ALIVE" and a["Name"]},
}))
"""


@dataclass
class TwoNodes:
    address: str
    env: dict[str, str]
    head_url: str
    worker_url: str

    def driver(self, *args: str) -> str:
        """The last line a driver process on this cluster prints."""
        done = subprocess.run([sys.executable, *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    def placement(self) -> dict:
        return json.loads(self.driver("-c", PLACEMENT))


# How often the two nodes export their metrics (Ray's default: every 10 s).
METRICS_INTERVAL_MS = 1000


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``ray start --block`` in a session of its own, so it can be stopped whole."""
    with log.open("w") as out:
        command = [str(BIN / "ray"), "start", *args, "--disable-usage-stats", "--block"]
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_node(node: subprocess.Popen) -> None:
    """The node's processes, all of them (``ray stop`` would stop every
    cluster on the machine, the session's too)."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        pids = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True,
                              text=True).stdout.split()
        members = [int(p) for p, s in zip(pids[::2], pids[1::2], strict=True)
                   if int(s) == node.pid]
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            node.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue


STORE = "--object-store-memory=300000000"


def start_head(env: dict[str, str], logs: Path) -> tuple[subprocess.Popen, int]:
    """The head node, started, and its GCS port. Ray gives a starting node a
    fixed 30 s to register with its GCS (ray/_private/node.py); beside make
    test's other clusters a head once missed it and gave up, so one that gives
    up is started once more."""
    for attempt in range(2):
        port, log = free_port(), logs / f"head{attempt}.log"
        head = start_node(["--head", f"--port={port}", "--num-cpus=1",
                           '--resources={"ingress": 1}', "--include-dashboard=false", STORE],
                          env, log)

        def settled(head: subprocess.Popen = head, log: Path = log) -> bool:
            return "ray start --address" in log.read_text() or head.poll() is not None

        wait_until(settled, 120, "the head node")
        if head.poll() is None:
            return head, port
        stop_node(head)
        forget_cluster(port)
    raise RuntimeError(f"the head node gave up twice (see {log})")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Iterator[TwoNodes]:
    logs = tmp_path_factory.mktemp("two-nodes")
    http, grpc, worker_http = free_port(), free_port(), free_port()
    # Serve's own proxies: configs/server.env's switches (which this driver's
    # environment may hold from the session's cluster) would replace them by
    # HAProxy, or run direct ingress with a proxy on the head only.
    env = {k: v for k, v in os.environ.items()
           if k not in read_env_file(ROOT / "configs" / "server.env") and k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_metrics_report_interval_ms"] = str(METRICS_INTERVAL_MS)  # counters settle sooner
    head, port = start_head(env, logs)
    # The second node's proxy needs its own ports only because it shares this host.
    worker_env = {**env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_http),
                  "RAY_SERVE_WORKER_PROXY_GRPC_PORT": str(free_port())}
    address = f"127.0.0.1:{port}"
    worker = None
    try:
        worker = start_node([f"--address={address}", "--num-cpus=3",
                             '--resources={"models": 4}', STORE], worker_env,
                            logs / "worker.log")
        nodes = TwoNodes(address, {**env, "RAY_ADDRESS": address},
                         f"http://127.0.0.1:{http}", f"http://127.0.0.1:{worker_http}")
        wait_until(lambda: len(nodes.placement()["nodes"]) == 2, 60, "two nodes")
        config = multinode_config(http, grpc)
        path = logs / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run([str(BIN / "serve"), "run", "--non-blocking", str(path)],
                              cwd=ROOT, env=nodes.env, timeout=300, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        wait_ready(nodes.head_url, 240)
        wait_ready(nodes.worker_url, 60)  # the second node's proxy may start later
        yield nodes
    finally:
        for node in (worker, head):
            if node is not None:
                stop_node(node)
        forget_cluster(port)


def forget_cluster(port: int) -> None:
    """``ray start --head`` records its address for later drivers and `serve
    run` to join by default; left behind, it would send them to this cluster,
    now gone, instead of starting their own."""
    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if record.is_file() and record.read_text().strip().endswith(f":{port}"):
        record.unlink()


def multinode_config(http: int, grpc: int) -> dict:
    """configs/config.yaml with the ingress on the head and the models on the
    node that offers the ``models`` resource."""
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = http
    config["grpc_options"]["port"] = grpc
    assert config["proxy_location"] == "EveryNode"
    for deployment in config["applications"][0]["deployments"]:
        options = deployment.setdefault("ray_actor_options", {})
        ingress = deployment["name"] == "Preprocessor"
        options["resources"] = {"ingress": 0.5} if ingress else {"models": 1}
    return config


FILES = [("f", (p.name, p.read_bytes(), "image/png")) for p in SAMPLES]


def top_labels(response: httpx.Response) -> list[list[str]]:
    assert response.status_code == 200, response.text
    return [[c["label"] for c in row["top_k"]] for row in response.json()["predictions"]]


def predict(url: str) -> list[list[str]]:
    return top_labels(httpx.post(f"{url}/predict", files=FILES, timeout=60))


@pytest.fixture(scope="module")
def one_node() -> list[list[str]]:
    """What one node answers: the shipped config's app with its models in
    this process (the app tier's harness; no cluster needed beside these two)."""
    with TestClient(build_app(config_args())) as http:
        return top_labels(http.post("/predict", files=FILES))


def pulls_served(metrics_port: int) -> float:
    """How many object-store pulls a node's raylet has served to other nodes."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ray_grpc_server_req_process_time_ms_count{")
               and 'Method="ObjectManagerService.grpc_server.Pull"' in line)


def test_replicas_run_where_the_config_pins_them(two_nodes: TwoNodes):
    placement = two_nodes.placement()
    head = next(n for n, info in placement["nodes"].items() if "ingress" in info["resources"])
    worker = next(n for n in placement["nodes"] if n != head)
    by_deployment = {name.split("#")[1]: node for name, node in placement["actors"].items()
                     if name.startswith(f"SERVE_REPLICA::{APP_NAME}#")}
    assert by_deployment == {"Preprocessor": head, "digits": worker, "digits_linear": worker}
    proxies = {node for name, node in placement["actors"].items()
               if name.startswith("SERVE_PROXY_ACTOR")}
    assert proxies == {head, worker}  # proxy_location: EveryNode


def test_both_proxies_and_a_third_driver_answer_as_one_node_does(two_nodes, one_node):
    single_node = one_node
    assert predict(two_nodes.head_url) == single_node
    assert predict(two_nodes.worker_url) == single_node
    answers = json.loads(two_nodes.driver("examples/handle_client.py", *map(str, SAMPLES)))
    for answer in (answers["from_array"], answers["from_object_ref"]):
        assert [[c["label"] for c in row["top_k"]] for row in answer["predictions"]] == (
            single_node)


def settled(read: Callable[[], tuple[float, ...]], quiet_s: float = 4) -> tuple[float, ...]:
    """Counters once they have not changed for ``quiet_s`` (four of the nodes'
    metrics exports): a single reading may be behind."""
    value, since = read(), time.monotonic()
    deadline = since + 120
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the counters never settled"
        time.sleep(METRICS_INTERVAL_MS / 1000)
        if (now := read()) != value:
            value, since = now, time.monotonic()
    return value


def test_each_input_crosses_to_the_model_node_once(two_nodes: TwoNodes):
    nodes = two_nodes.placement()["nodes"]
    head = next(info["metrics"] for info in nodes.values() if "ingress" in info["resources"])
    worker = next(info["metrics"] for info in nodes.values() if "models" in info["resources"])

    def pulls() -> tuple[float, ...]:
        return pulls_served(head), pulls_served(worker)

    before = settled(pulls)
    requests = 8
    for _ in range(requests):
        predict(two_nodes.head_url)
    # One pull from the head's store per request (the ingress's ray.put), and
    # nothing back: answers are small and return inline.
    assert settled(pulls) == (before[0] + requests, before[1])
