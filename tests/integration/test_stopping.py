"""`make serve` stopped by signals to its process group, as a terminal, `docker
stop`, systemd or a supervisor sends them: no process of the run is left, no
port held (deployments/run.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments import run
from harness.cluster import free_port, replica_ports, wait_ready
from tests.common import CONFIG, ROOT

HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT",
                 "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")
# The Makefile's `serve` recipe, with this interpreter and a config of free ports.
MAKE_SERVE = 'set -a && . ./configs/server.env && set +a && exec "$0" -m deployments.run "$1"'


def processes_of_runs_under(root: Path) -> list[run.Process]:
    return [p for p in run.processes() if p.mark and Path(p.mark).parent == root]


# The stop that once left HAProxy holding port 8000 (issue 26): Ctrl-C, then
# SIGTERM to the group before serve run finished. A lone SIGINT or SIGTERM
# takes the same path in the supervisor (tests/unit/test_run.py), ~50 s each here.
@pytest.mark.parametrize("signals", [(signal.SIGINT, signal.SIGTERM)],
                         ids=lambda signals: "-then-".join(s.name for s in signals))
def test_make_serve_stopped_through_its_group_leaves_no_process_and_no_port(tmp_path, signals):
    config = yaml.safe_load(CONFIG.read_text())
    ports = {"http": free_port(), "grpc": free_port()} | {name: free_port()
                                                         for name in HAPROXY_PORTS}
    config["http_options"] |= {"host": "127.0.0.1", "port": ports["http"]}
    config["grpc_options"]["port"] = ports["grpc"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own cluster
    env |= {run.RUNS: str(runs), "RAY_AUTH_MODE": "disabled", **replica_ports()}
    env |= {name: str(ports[name]) for name in HAPROXY_PORTS}
    # A group of its own, as a terminal's foreground job.
    shell = subprocess.Popen(["sh", "-c", MAKE_SERVE, sys.executable,
                              str(tmp_path / "config.yaml")],
                             cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{ports['http']}", timeout_s=300)
        started = processes_of_runs_under(runs)
        assert any("haproxy" in p.command for p in started), [p.command for p in started]

        for signum in signals:
            os.killpg(shell.pid, signum)
        shell.wait(timeout=120)

        assert processes_of_runs_under(runs) == []
        assert [name for name, port in ports.items() if not run.port_is_free(port)] == []
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
        run.stop((p.pid for p in processes_of_runs_under(runs)), kill_after_s=5)
