"""The supervisor of `make serve` and the image's entrypoint (deployments/run.py),
on fake process trees: children that ignore signals, orphans re-parented in a
session of their own (as Serve's HAProxy outlives the actor that started it)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from deployments import run
from harness.cluster import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for `serve run`: a child in its process group and an orphan in a
# session of its own, both deaf to SIGINT and SIGTERM; it notes every pid.
FAKE_SERVE = textwrap.dedent("""
    import os, signal, sys, time
    pids, behaviour = sys.argv[1], sys.argv[2]

    def note():
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\\n")

    def spawn(orphan):
        if os.fork() == 0:
            if orphan:
                os.setsid()
                if os.fork():
                    os._exit(0)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            note()
            while True:
                time.sleep(1)

    spawn(orphan=False)
    spawn(orphan=True)
    if behaviour == "ignores-sigint":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    note()
    while len(open(pids).read().split()) < 3:  # each child noted before any exit
        time.sleep(0.05)
    if behaviour == "exits":
        sys.exit(3)
    while True:
        time.sleep(1)
""")


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv(run.RUNS, str(root))
    return root


def pids_of(path: Path, count: int) -> set[int]:
    wait_until(lambda: path.is_file() and len(path.read_text().split()) == count, 20,
               f"{count} pids in {path}")
    return {int(p) for p in path.read_text().split()}


def running(pids: set[int]) -> set[int]:
    return pids & {p.pid for p in run.processes()}


def start_supervisor(tmp_path: Path, behaviour: str, stop_timeout_s: float
                     ) -> tuple[subprocess.Popen, Path]:
    """The supervisor of a fake `serve run`, leading a process group as `make`
    does in a terminal."""
    (tmp_path / "fake_serve.py").write_text(FAKE_SERVE)
    pids = tmp_path / "pids"
    code = ("import sys; from deployments.run import supervise; sys.exit(supervise("
            f"[sys.executable, {str(tmp_path / 'fake_serve.py')!r}, {str(pids)!r}, "
            f"{behaviour!r}], stop_timeout_s={stop_timeout_s}, kill_after_s=1))")
    supervisor = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                                  start_new_session=True)
    return supervisor, pids


def test_a_child_deaf_to_sigint_is_stopped_with_its_tree_after_the_timeout(tmp_path, runs):
    supervisor, pids = start_supervisor(tmp_path, "ignores-sigint", stop_timeout_s=1)
    tree = pids_of(pids, 3)
    os.killpg(supervisor.pid, signal.SIGINT)  # Ctrl-C
    assert supervisor.wait(timeout=20) == 128 + signal.SIGTERM
    assert running(tree) == set()
    assert list(runs.iterdir()) == []  # the run's directory goes too


def test_sigint_then_sigterm_to_the_group_stops_everything_at_once(tmp_path, runs):
    supervisor, pids = start_supervisor(tmp_path, "ignores-sigint", stop_timeout_s=600)
    tree = pids_of(pids, 3)
    started = time.monotonic()
    os.killpg(supervisor.pid, signal.SIGINT)
    os.killpg(supervisor.pid, signal.SIGTERM)
    supervisor.wait(timeout=20)
    assert time.monotonic() - started < 20 and running(tree) == set()


@pytest.mark.parametrize("behaviour", ["stops-on-sigint", "exits"])
def test_what_serve_run_leaves_behind_is_stopped(tmp_path, runs, behaviour):
    supervisor, pids = start_supervisor(tmp_path, behaviour, stop_timeout_s=600)
    tree = pids_of(pids, 3)
    if behaviour == "stops-on-sigint":
        os.killpg(supervisor.pid, signal.SIGTERM)  # docker stop, systemd
    assert supervisor.wait(timeout=20) == (0 if behaviour == "stops-on-sigint" else 3)
    assert running(tree) == set()


def marked_sleeper(mark: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                            env={**os.environ, run.MARK: str(mark)}, start_new_session=True)


def test_processes_of_a_run_whose_supervisor_is_gone_are_stopped_at_start(runs):
    dead, live = runs / "run-dead", runs / "run-live"
    for directory in (dead, live):
        directory.mkdir(parents=True)
        (directory / "lock").touch()
    with open(live / "lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # its supervisor runs
        orphan, kept, other = marked_sleeper(dead), marked_sleeper(live), marked_sleeper(
            runs.parent / "elsewhere" / "run-x")
        try:
            wait_until(lambda: {p.mark for p in run.processes()} >= {
                str(dead), str(live)}, 20, "marked processes")
            stale = run.reap_stale(runs, kill_after_s=1)
            assert [p.pid for p in stale] == [orphan.pid]
            assert orphan.wait(timeout=5) == -signal.SIGTERM
            assert kept.poll() is None and other.poll() is None
            assert sorted(p.name for p in runs.iterdir()) == ["run-live"]
        finally:
            for process in (orphan, kept, other):
                process.kill()
                process.wait()


def test_a_taken_port_is_named_with_the_process_holding_it(tmp_path, runs):
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys, time; s = socket.socket(); "
         "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print(flush=True); "
         "time.sleep(600)", str(port), "haproxy-lookalike"], stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()  # listening
        (problem,) = run.taken_ports([port])
        assert f"port {port} is taken by {holder.pid} " in problem and "HAProxy" in problem
        config = tmp_path / "config.yaml"
        config.write_text(f"http_options: {{port: {port}}}\n")
        assert run.main([str(config)]) == 1  # refused before anything starts
    finally:
        holder.kill()
        holder.wait()
    wait_until(lambda: run.port_is_free(port), 10, f"port {port} to be free")
    assert run.taken_ports([port]) == []


def test_the_ports_a_config_binds_come_from_it(tmp_path):
    assert {8000, 9000} <= set(run.serving_ports(ROOT / "configs" / "config.yaml"))
    config = tmp_path / "config.yaml"
    config.write_text("http_options: {port: 8123}\n")  # no gRPC servicers: no gRPC port
    assert 8123 in run.serving_ports(config) and 9000 not in run.serving_ports(config)
