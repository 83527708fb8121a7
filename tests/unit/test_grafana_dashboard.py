"""The Grafana dashboard charts the metrics the app exports, by their real names."""

import json
import re
from pathlib import Path

from deployments import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ray-tf-serve.json"

# The exported series of our metrics, as listed in deployments/metrics.py.
OURS = set(re.findall(r"^\s+(ray_tfserve_\w+)\{", metrics.__doc__, re.MULTILINE))
SERVE_OWN = {"ray_serve_deployment_replica_healthy"}


def queried_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs.append(board["templating"]["list"][1]["query"]["query"])
    names = set()
    for expr in exprs:
        names.update(re.sub(r"_(bucket|sum|count)$", "", n)
                     for n in re.findall(r"\b(ray_\w+)", expr))
    return names


def test_every_exported_metric_is_charted_and_nothing_else_is_queried():
    assert len(OURS) == 12
    assert queried_metrics() == OURS | SERVE_OWN


def test_the_source_defines_each_metric_the_docstring_lists():
    source = Path(metrics.__file__).read_text()
    defined = {f"ray_{n}" for n in re.findall(r'(?:Counter|Gauge|Histogram)\(\s*"(\w+)"', source)}
    assert {re.sub(r"_total$", "", n) for n in OURS} == defined


def test_panels_are_laid_out_without_overlap():
    board = json.loads(DASHBOARD.read_text())
    cells = set()
    for panel in board["panels"]:
        g = panel["gridPos"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        area = {(x, y) for x in xs for y in ys}
        assert not cells & area, panel["title"]
        assert g["x"] + g["w"] <= 24
        cells |= area
