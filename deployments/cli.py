"""``ray-tf-serve``: ``tensorflow_model_server``'s command line on Ray Serve.

    ray-tf-serve --port=8500 --rest_api_port=8501 \\
        --model_name=half_plus_two --model_base_path=/models/half_plus_two
    ray-tf-serve --model_config_file=models.config \\
        --model_config_file_poll_wait_seconds=60

Flags and files are read here first (``deployments.tfserving_config``: a
refused one stops the start with a message naming it); then
``deployments.tfserving_server`` runs under ``deployments.run``'s supervisor:
Ctrl-C or SIGTERM leaves no process and no port behind. ``--help`` lists
the flags; docs/migrating.md compares them with TF Serving's.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deployments import run
from deployments.haproxy import launcher_env
from deployments.tfserving_config import (
    FlagError,
    Options,
    default_template,
    docker_argv,
    load,
    parse_flags,
    serve_config,
    server_env,
    usage,
)


def say(message: str) -> None:
    """A line to the operator, on stderr, named as the command."""
    print(f"ray-tf-serve: {message}", file=sys.stderr, flush=True)


def template_path(options: Options) -> Path:
    path = Path(options.serve_config) if options.serve_config else default_template()
    if path is None or not path.is_file():
        raise FlagError(f"--serve_config: no Serve config at {path or 'configs/config.yaml'}")
    return path


def template_of(options: Options) -> dict[str, Any]:
    path = template_path(options)
    try:
        template = yaml.safe_load(path.read_text())
        template["applications"][0]
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as e:
        raise FlagError(f"--serve_config={path}: not a Serve config with an application "
                        f"({e})") from None
    return template


def _move_fallback_ports(options: Options) -> None:
    """Serve's HAProxy fallback proxy listens on 8500 (HTTP) and 9500 (gRPC)
    by default: TF Serving's gRPC port. Another free port where they collide."""
    for name, default in (("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", 8500),
                          ("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", 9500)):
        port = int(os.environ.get(name) or default)
        if port in (options.port, options.rest_api_port):
            with socket.socket() as s:
                s.bind(("", 0))
                os.environ[name] = str(s.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in args):
        print(usage())
        return 0
    try:
        options = parse_flags(args)
        if options.version:
            from importlib.metadata import version

            print(f"ray-tf-serve {version('ray-tf-serve')} (TensorFlow ModelServer flags)")
            return 0
        template = template_of(options)
        plan = load(options, template)
    except FlagError as e:
        say(str(e))
        return 2
    for warning in options.warnings:
        say(f"warning: {warning}")
    os.environ.update(server_env(template_path(options)) | launcher_env())
    _move_fallback_ports(options)
    run.reap_stale(run.runs_root(), kill_after_s=5.0)
    probe = Path(run.runs_root(), f"ports-{os.getpid()}.yaml")
    probe.parent.mkdir(parents=True, exist_ok=True)
    try:
        probe.write_text(yaml.safe_dump(serve_config(plan)))
        taken = run.taken_ports(run.serving_ports(probe))
    finally:
        probe.unlink(missing_ok=True)
    if taken:
        for problem in taken:
            say(problem)
        return 1
    command = [sys.executable, "-m", "deployments.tfserving_server", *args]
    return run.supervise(command, options.stop_timeout_s)


def docker_main() -> int:
    """The image's entrypoint: TF Serving's image's flags from ``MODEL_NAME``
    and ``MODEL_BASE_PATH``, then the container's arguments."""
    return main(docker_argv(os.environ, sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
