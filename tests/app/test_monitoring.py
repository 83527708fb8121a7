"""TF Serving's monitoring page in process: the route answers what the
translation makes of every node's page (read by a stand-in for Ray's metrics
ports), reads them at most once a second however often it is scraped, counts
the nodes that did not answer, and sits behind the auth gate like the API."""

from __future__ import annotations

import gzip
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from deployments.config import AuthArgs
from deployments.ingress.asgi import build_asgi
from deployments.ingress.auth import Gate
from deployments.ingress.protocols.monitoring import MonitoringPage, Pages
from deployments.metrics import IngressMetrics
from harness.inprocess import in_process_plane
from tests.app.conftest import config_args

NODE = gzip.decompress((Path(__file__).parents[1] / "unit" / "data" /
                        "ray_node_metrics.txt.gz").read_bytes()).decode()
PATH = "/monitoring/prometheus/metrics"
TOKEN = "token-0123456789abcdef0123"


class Nodes:
    """Two nodes' pages, one of them unreachable, and a clock the test moves."""

    def __init__(self) -> None:
        self.reads = 0
        self.now = 100.0

    async def read(self) -> Pages:
        self.reads += 1
        return [NODE], 1

    def clock(self) -> float:
        return self.now


def app(nodes: Nodes, auth: AuthArgs | None = None) -> TestClient:
    args = config_args()
    metrics = IngressMetrics([m.name for m in args.models])
    page = MonitoringPage(PATH, nodes.read, "default", clock=nodes.clock)
    asgi = build_asgi(in_process_plane(args, metrics), args.limits, metrics, args.top_k,
                      Gate(auth or AuthArgs(), {"TOKENS": TOKEN}), monitoring=page)
    return TestClient(asgi, base_url="http://app", raise_server_exceptions=False)


def test_the_page_holds_tf_servings_metrics_and_ours_read_once_a_second():
    nodes = Nodes()
    with app(nodes) as client:
        answer = client.get(PATH)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        names = [f.name for f in text_string_to_metric_families(answer.text)]
        assert names[:4] == [":tensorflow:serving:request_count",
                             ":tensorflow:serving:request_latency",
                             ":tensorflow:serving:runtime_latency",
                             ":tensorflow:serving:batching_session:wrapped_run_count"]
        assert {"ray_tfserve_requests", "ray_tfserve_monitoring_nodes"} <= set(names)
        assert 'ray_tfserve_monitoring_nodes{state="answered"} 1' in answer.text
        assert 'ray_tfserve_monitoring_nodes{state="unreachable"} 1' in answer.text
        for _ in range(20):
            assert client.get(PATH).text == answer.text
        assert nodes.reads == 1
        nodes.now += 1.0
        client.get(PATH)
        assert nodes.reads == 2
        # Only GET, and not in the OpenAPI document (nor is TF Serving's).
        assert client.post(PATH).status_code == 405
        assert PATH not in client.get("/openapi.json").json()["paths"]


def test_off_unless_enabled(client):
    assert client.get(PATH).status_code == 404


def test_the_page_needs_a_token_unless_exempted():
    auth = AuthArgs(tokens_env="TOKENS")
    with app(Nodes(), auth) as client:
        assert client.get(PATH).status_code == 401
        assert client.get(PATH, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    with app(Nodes(), auth.model_copy(update={"exempt": (PATH,)})) as client:
        assert client.get(PATH).status_code == 200
