"""The launcher Serve starts as HAProxy (deployments/haproxy.py): Serve's
template still has the line it changes, and the real HAProxy binary accepts the
config it writes. test_hostile's ingress kill shows what the change buys."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE

from deployments import haproxy

SCRIPT = Path(sys.executable).parent / haproxy.SCRIPT

CONFIG = textwrap.dedent("""\
    global
        maxconn 64
    defaults
        mode http
        timeout connect 5s
        timeout client 5s
        timeout server 5s
        option splice-request
        option splice-response
    frontend fe
        bind 127.0.0.1:18080
        default_backend be
    backend be
        server s1 127.0.0.1:1
    """)


def test_serves_template_still_has_the_line_the_launcher_changes():
    """Fails on a Ray upgrade that drops it: then see whether Serve buffers
    bodies itself before deleting the launcher."""
    assert HAPROXY_CONFIG_TEMPLATE.count(haproxy.SERVES_LINE) == 1


def test_buffered_swaps_splicing_request_bodies_for_buffering_them():
    config = haproxy.buffered(CONFIG)
    assert "option http-buffer-request" in config
    assert "option splice-request" not in config
    assert "option splice-response" in config
    assert len(config.splitlines()) == len(CONFIG.splitlines())


def test_a_config_without_the_line_starts_unchanged(capsys):
    assert haproxy.buffered("defaults\n    mode http\n") == "defaults\n    mode http\n"
    assert "not in HAProxy's config" in capsys.readouterr().err


def test_the_launcher_execs_haproxy_on_the_buffered_config(tmp_path: Path):
    """As Serve runs it, ``-f`` among other arguments; ``-c`` asks HAProxy to
    check the config and exit."""
    rendered = tmp_path / "haproxy.cfg"
    rendered.write_text(CONFIG)
    env = {**os.environ, haproxy.BINARY_VARIABLE: str(SCRIPT)}
    done = subprocess.run([str(SCRIPT), "-c", "-f", str(rendered)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "Configuration file is valid" in done.stdout + done.stderr
    assert rendered.read_text() == CONFIG  # Serve's own file is left as Serve wrote it
    assert haproxy.OURS_LINE in (tmp_path / "haproxy.cfg.buffered").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg", "haproxy.cfg.buffered"]


def test_launcher_env_names_the_script_unless_the_operator_set_a_binary(monkeypatch):
    monkeypatch.delenv(haproxy.BINARY_VARIABLE, raising=False)
    assert haproxy.launcher_env() == {haproxy.BINARY_VARIABLE: str(SCRIPT)}
    monkeypatch.setenv(haproxy.BINARY_VARIABLE, "/usr/sbin/haproxy")
    assert haproxy.launcher_env() == {}
