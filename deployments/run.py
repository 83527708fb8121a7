"""``serve run`` under a supervisor: whatever stops it (Ctrl-C, ``docker stop``,
systemd, a supervisor signalling the whole group), nothing it started keeps
running or holds a port. ``make serve`` and the image's entrypoint run it.

    python -m deployments.run configs/config.yaml [--stop-timeout-s 30]

``serve run`` starts in a session of its own and carries a mark in its
environment (``RAY_TF_SERVE_RUN``: this run's directory) that every process it
starts inherits: Ray's, its workers', the HAProxy a Serve actor starts (which
outlives that actor, re-parented, when the actor is killed first). The first
SIGINT, SIGTERM or SIGHUP is passed on once to ``serve run`` as SIGINT (it shuts
Serve down in order); after ``--stop-timeout-s``, or at a second signal, or
when ``serve run`` exits on its own, every process of the session or with the
mark gets SIGTERM, then SIGKILL.

At start, processes of earlier runs whose supervisor is gone (it holds its
run's lock until it exits, however it exits) are stopped, and a serving port
already taken is named with the process that holds it, before anything starts.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import yaml

from deployments.haproxy import launcher_env

MARK = "RAY_TF_SERVE_RUN"
RUNS = "RAY_TF_SERVE_RUNS"  # where runs keep their directories; default: $TMPDIR/ray-tf-serve
_LOCK = "lock"
_POLL_S = 0.05


def runs_root() -> Path:
    return Path(os.environ.get(RUNS) or Path(tempfile.gettempdir()) / "ray-tf-serve")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or another user's
        return None


@dataclass(frozen=True)
class Process:
    pid: int
    session: int
    command: str
    mark: str | None  # its MARK, if it has one


def _stat(pid: int | str) -> tuple[bool, int] | None:
    """Whether the process runs (a zombie has stopped: only its exit status is
    left) and its session; None once it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    state, _ppid, _pgrp, session = stat[stat.rfind(b")") + 2:].split()[:4]
    return state not in (b"Z", b"X"), int(session)


def processes() -> list[Process]:
    """The processes running now, each with its session and its run's mark
    when this user may read it."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        stat = _stat(entry)
        if stat is None or not stat[0]:
            continue
        session = stat[1]
        command = (_read(f"/proc/{entry}/cmdline") or b"").replace(b"\0", b" ").strip()
        variables = (_read(f"/proc/{entry}/environ") or b"").split(b"\0")
        mark = next((v.partition(b"=")[2].decode() for v in variables
                     if v.startswith(MARK.encode() + b"=")), None)
        found.append(Process(int(entry), session, command.decode(errors="replace"), mark))
    return found


def run_is_live(run: str) -> bool:
    """Whether the supervisor of ``run`` still runs: it holds the run's lock
    until it exits (the kernel releases it however it exits)."""
    try:
        fd = os.open(os.path.join(run, _LOCK), os.O_RDONLY)
    except OSError:  # a run being made has no lock yet; a finished one no directory
        return os.path.isdir(run)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _still_there(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (_stat(pid) or (False,))[0]}


def _signal(pids: Iterable[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):  # gone already
            os.kill(pid, signum)


def _wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while (left := _still_there(pids)) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    return left


def stop(pids: Iterable[int], kill_after_s: float) -> set[int]:
    """SIGTERM to each process, SIGKILL to those still there ``kill_after_s``
    later; those that outlive even that (none should)."""
    pids = set(pids)
    _signal(pids, signal.SIGTERM)
    left = _wait_gone(pids, kill_after_s)
    _signal(left, signal.SIGKILL)
    return _wait_gone(left, kill_after_s)


def _say(message: str) -> None:
    print(f"deployments.run: {message}", file=sys.stderr, flush=True)


def _describe(found: Iterable[Process]) -> str:
    return "; ".join(f"{p.pid} {p.command[:120]}" for p in found)


def reap_stale(root: Path, kill_after_s: float) -> list[Process]:
    """Stops the processes of earlier runs under ``root`` whose supervisor is
    gone (killed with SIGKILL, say); those it stopped."""
    stale = [p for p in processes() if p.mark and Path(p.mark).parent == root
             and not run_is_live(p.mark)]
    if stale:
        _say(f"stopping {len(stale)} processes left by an earlier run: {_describe(stale)}")
        stop((p.pid for p in stale), kill_after_s)
    for run in root.glob("run-*"):
        if (run / _LOCK).exists() and not run_is_live(str(run)):
            shutil.rmtree(run, ignore_errors=True)
    return stale


def port_holders(port: int) -> list[Process]:
    """The processes listening on TCP ``port`` (those this user may inspect)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in (_read(table) or b"").decode().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    holders = []
    for process in processes():
        try:
            fds = os.listdir(f"/proc/{process.pid}/fd")
            if any(os.readlink(f"/proc/{process.pid}/fd/{fd}") in inodes for fd in fds):
                holders.append(process)
        except OSError:
            continue
    return holders


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def taken_ports(ports: Iterable[int]) -> list[str]:
    """For each port already taken: which process holds it, in words."""
    problems = []
    for port in sorted(set(ports)):
        if not port_is_free(port):
            holders = port_holders(port)
            who = _describe(holders) if holders else "a process of another user"
            hint = (" (an HAProxy left by an earlier `serve run`: stop it)"
                    if any("haproxy" in p.command for p in holders) else "")
            problems.append(f"port {port} is taken by {who}{hint}")
    return problems


def serving_ports(config: Path) -> list[int]:
    """The ports a Serve config's cluster binds on this node: HTTP, gRPC and,
    with HAProxy, its stats and metrics ports and the fallback proxy's."""
    from ray.serve._private import constants  # the environment's values, as Serve reads them

    serve = yaml.safe_load(config.read_text()) or {}
    ports = [serve.get("http_options", {}).get("port", constants.DEFAULT_HTTP_PORT)]
    grpc = serve.get("grpc_options", {})
    if grpc.get("grpc_servicer_functions"):
        ports.append(grpc.get("port", constants.DEFAULT_GRPC_PORT))
    if constants.RAY_SERVE_ENABLE_HA_PROXY:
        ports += [constants.RAY_SERVE_HAPROXY_STATS_PORT, constants.RAY_SERVE_HAPROXY_METRICS_PORT,
                  constants.RAY_SERVE_FALLBACK_PROXY_HTTP_PORT]
        if grpc.get("grpc_servicer_functions"):
            ports.append(constants.RAY_SERVE_FALLBACK_PROXY_GRPC_PORT)
    return ports


class _Signals:
    """Counts SIGINT, SIGTERM and SIGHUP while installed."""

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.count = 0
        self._previous = {s: signal.signal(s, self._received) for s in self.HANDLED}

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _collect_orphans(keep: int) -> None:
    """Collects the exit status of orphans re-parented to this process (it is
    PID 1 as a container's entrypoint), leaving ``keep``'s to ``Popen``."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == keep:
            return
        os.waitpid(info.si_pid, 0)


def supervise(command: Sequence[str], stop_timeout_s: float = 30.0,
              kill_after_s: float = 5.0) -> int:
    """Runs ``command`` in a session of its own, marked, until it exits or a
    signal stops it; then stops every process of the run. Its exit status
    (128 + the signal's number when a signal ended it)."""
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    run = tempfile.mkdtemp(prefix="run-", dir=root)
    lock = os.open(os.path.join(run, "lock.new"), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.rename(os.path.join(run, "lock.new"), os.path.join(run, _LOCK))  # seen locked
    signals = _Signals()
    try:
        child = subprocess.Popen(command, env={**os.environ, MARK: run}, start_new_session=True)
        deadline = float("inf")
        while child.poll() is None and signals.count < 2 and time.monotonic() < deadline:
            if signals.count and deadline == float("inf"):
                _say(f"stopping: SIGINT to {command[0]} (pid {child.pid}), up to "
                     f"{stop_timeout_s:g} s; a second signal stops everything at once")
                child.send_signal(signal.SIGINT)
                deadline = time.monotonic() + stop_timeout_s
            try:
                child.wait(timeout=_POLL_S)
            except subprocess.TimeoutExpired:
                _collect_orphans(keep=child.pid)
        left = [p for p in processes() if p.mark == run or p.session == child.pid]
        if left:
            _say(f"stopping {len(left)} processes of the run: {_describe(left)}")
        if outlived := stop((p.pid for p in left), kill_after_s):
            _say(f"could not stop {sorted(outlived)}")
        child.wait()
        return child.returncode if child.returncode >= 0 else 128 - child.returncode
    finally:
        signals.restore()
        shutil.rmtree(run, ignore_errors=True)
        os.close(lock)


def serve_command(config: Path, serve_args: Sequence[str]) -> list[str]:
    """``serve run`` of this Python's environment."""
    return [str(Path(sys.executable).parent / "serve"), "run", str(config), *serve_args]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the Serve config to run")
    parser.add_argument("--stop-timeout-s", type=float, default=30.0,
                        help="how long `serve run` may take to shut Serve down once "
                             "signalled before the run's processes are killed")
    parser.add_argument("serve_args", nargs="*", help="more `serve run` options, after --")
    args = parser.parse_args(argv)
    reap_stale(runs_root(), kill_after_s=5.0)
    os.environ.update(launcher_env())
    if taken := taken_ports(serving_ports(args.config)):
        for problem in taken:
            _say(problem)
        return 1
    return supervise(serve_command(args.config, args.serve_args), args.stop_timeout_s)


if __name__ == "__main__":
    sys.exit(main())
