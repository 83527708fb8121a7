"""The whole server's metrics as TF Serving's monitoring page shows them.

:func:`translate` takes the Prometheus text of every node's Ray metrics
port, keeps this app's ``ray_tfserve_*`` series (``deployments.metrics``),
and writes them out as they are, under TF Serving's metric names and labels
(summed over replicas and nodes where TF Serving's label set is smaller),
in the format of TF Serving's ``PrometheusExporter``
(``tensorflow_serving/util/prometheus_exporter.cc``: a ``# TYPE`` line, no
``# HELP``, counters as integers without ``_total``, ``/`` in names as ``:``,
times in microseconds). Pure: no Ray, text in and text out.

    :tensorflow:serving:request_count{model_name, status}    counter
        ← ray_tfserve_requests_total, requests about a model; an HTTP status
          becomes the code TF Serving answers it for (200 → OK, 400 →
          INVALID_ARGUMENT, 499 → CANCELLED, ...)
    :tensorflow:serving:request_latency{model_name, API, entrypoint}  histogram, µs
        ← ray_tfserve_request_seconds (TF Serving's buckets); API is our
          protocol, entrypoint REST, GRPC or HANDLE
    :tensorflow:serving:runtime_latency{model_name, API, runtime}  histogram, µs
        ← ray_tfserve_batch_seconds: one TensorFlow call (a batch), our
          buckets; API "" (a batch mixes APIs), runtime TF1 (TF Serving's name
          for TensorFlow's own runtime, as opposed to TFRT)
    :tensorflow:serving:batching_session:wrapped_run_count  counter
        ← the number of TensorFlow calls (ray_tfserve_batch_seconds_count)
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "ray_tfserve_"
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
RUNTIME_LATENCY = ":tensorflow:serving:runtime_latency"
WRAPPED_RUNS = ":tensorflow:serving:batching_session:wrapped_run_count"

# TF Serving's request_latency buckets: 10 µs × 1.8^i, 33 of them (~20 min),
# in seconds (``monitoring::Buckets::Exponential(10, 1.8, 33)``).
REQUEST_LATENCY_BUCKETS_S = tuple(1e-5 * 1.8 ** i for i in range(33))

# An HTTP status as the TF Serving code answered with it
# (``http_server.cc`` ``ToHTTPStatusCode``, inverted; 413 and 415 as our gRPC
# services answer them). Others: UNKNOWN.
HTTP_CODES = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED",
              403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ABORTED",
              413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
              499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
              504: "DEADLINE_EXCEEDED"}

GRPC_PROTOCOLS = frozenset({"tfserving-grpc", "v2-grpc"})

# Labels Ray adds to every series that tell its processes apart, not ours
# (``replica`` and ``NodeAddress`` do): left out of the page.
_BOOKKEEPING = re.compile(
    r'\b(?:Component|SessionName|Version|WorkerId|otel_scope_\w+)="(?:[^"\\]|\\.)*",?')

Labels = tuple[tuple[str, str], ...]


def status_code(status: str) -> str:
    """A ``status`` label of ours (an HTTP status or a gRPC code name) as TF
    Serving's ``status`` label (a code name)."""
    if status.isdigit():
        return HTTP_CODES.get(int(status), "UNKNOWN")
    return status


def entrypoint(protocol: str) -> str:
    if protocol in GRPC_PROTOCOLS:
        return "GRPC"
    return "HANDLE" if protocol == "handle" else "REST"


def _number(value: float) -> str:
    """A double as TF Serving writes it (``absl::StrCat``: six significant digits)."""
    return f"{value:.6g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _braced(labels: Labels) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class _Histogram:
    """Buckets, sum and count per label set, summed over the series that map to it."""

    def __init__(self) -> None:
        self.buckets: dict[Labels, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        self.sums: dict[Labels, float] = defaultdict(float)
        self.counts: dict[Labels, float] = defaultdict(float)

    def add(self, suffix: str, labels: Labels, le: str | None, value: float,
            scale: float) -> None:
        if suffix == "_bucket" and le is not None:
            self.buckets[labels][float(le) * scale] += value
        elif suffix == "_sum":
            self.sums[labels] += value * scale
        elif suffix == "_count":
            self.counts[labels] += value

    def lines(self, name: str) -> list[str]:
        lines = [f"# TYPE {name} histogram"]
        for labels in sorted(self.counts):
            prefix = f"{name}_bucket{{" + "".join(f'{k}="{_escape(v)}",' for k, v in labels)
            for le, count in sorted(self.buckets[labels].items()):
                bound = "+Inf" if math.isinf(le) else _number(le)
                lines.append(f'{prefix}le="{bound}"}} {round(count)}')
            lines.append(f"{name}_sum{_braced(labels)} {_number(self.sums[labels])}")
            lines.append(f"{name}_count{_braced(labels)} {round(self.counts[labels])}")
        return lines


def _counter_lines(name: str, values: dict[Labels, float]) -> list[str]:
    return [f"# TYPE {name} counter",
            *(f"{name}{_braced(labels)} {round(value)}"
              for labels, value in sorted(values.items()))]


def ours(texts: Iterable[str], app: str | None) -> dict[str, Metric]:
    """The ``ray_tfserve_*`` families in ``texts`` (each a node's page), their
    samples from every node in one family, only application ``app``'s
    (``None``: every application's)."""
    families: dict[str, Metric] = {}
    for text in texts:
        # Ours alone parsed (a node's page is mostly Ray's own series), without
        # Ray's bookkeeping labels: the parser's time grows with the labels.
        lines = "\n".join(line for line in text.splitlines() if PREFIX in line)
        for family in text_string_to_metric_families(_BOOKKEEPING.sub("", lines)):
            if not family.name.startswith(PREFIX):
                continue
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type))
            merged.samples.extend(s for s in family.samples
                                  if app is None or s.labels.get("application") == app)
    return families


def tfserving(families: dict[str, Metric]) -> str:
    """TF Serving's metrics, from ours (:func:`ours`), as its page writes them."""
    requests: dict[Labels, float] = defaultdict(float)
    request_latency, runtime_latency = _Histogram(), _Histogram()
    runs: dict[Labels, float] = defaultdict(float)
    for family in families.values():
        for sample in family.samples:
            tags = sample.labels
            model = tags.get("model", "")
            if sample.name == f"{PREFIX}requests_total":
                if model:  # not requests about no model (health, the metrics page)
                    requests[(("model_name", model),
                              ("status", status_code(tags.get("status", ""))))] += sample.value
            elif family.name == f"{PREFIX}request_seconds":
                protocol = tags.get("protocol", "")
                labels = (("model_name", model), ("API", protocol),
                          ("entrypoint", entrypoint(protocol)))
                request_latency.add(sample.name[len(family.name):], labels, tags.get("le"),
                                    sample.value, 1e6)
            elif family.name == f"{PREFIX}batch_seconds":
                labels = (("model_name", model), ("API", ""), ("runtime", "TF1"))
                suffix = sample.name[len(family.name):]
                runtime_latency.add(suffix, labels, tags.get("le"), sample.value, 1e6)
                if suffix == "_count":
                    runs[()] += sample.value
    lines = [*_counter_lines(REQUEST_COUNT, requests),
             *request_latency.lines(REQUEST_LATENCY),
             *runtime_latency.lines(RUNTIME_LATENCY),
             *_counter_lines(WRAPPED_RUNS, runs)]
    return "\n".join(lines) + "\n"


class _Families:
    """What ``generate_latest`` asks of a registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def translate(texts: Iterable[str], app: str | None = None) -> str:
    """The monitoring page: TF Serving's metrics, then ours as Ray exported
    them (every replica's series, with Serve's labels and the node's address,
    without Ray's bookkeeping labels)."""
    families = ours(texts, app)
    page = tfserving(families)
    kept = [f for _, f in sorted(families.items()) if f.samples]
    return page + generate_latest(_Families(kept)).decode()
