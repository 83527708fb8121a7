"""The process ``ray-tf-serve`` supervises (``deployments.cli``): starts Ray
(on 127.0.0.1, or joins ``--address``) and Serve, deploys the Serve config
the flags make (as ``serve run`` deploys a YAML: ``serve_start`` and
``deploy_apps``), re-reads ``--model_config_file`` every
``--model_config_file_poll_wait_seconds`` and applies what changed, and on
SIGINT or SIGTERM shuts Serve down.

A change is applied in two steps: first the new and changed models'
applications beside the running ones (the ingress still routing as before),
then, once they run (or failed), the ingress routes to the new list and the
removed models' applications go (Serve drains their replicas). A file that
does not parse is logged and the running config kept, as TF Serving does.

    python -m deployments.tfserving_server --flag=value ...
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from deployments.tfserving_config import (
    FlagError,
    ModelEntry,
    Plan,
    load,
    model_app,
    parse_flags,
    read_model_config,
    serve_config,
)

logger = logging.getLogger("ray-tf-serve")


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True

_APPLY_TIMEOUT_S = 300.0


def _say(message: str) -> None:
    print(f"ray-tf-serve: {message}", file=sys.stderr, flush=True)


class Server:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.models = list(plan.models)
        self.stopping = threading.Event()
        self._client: Any = None

    def start(self) -> None:
        import ray
        from ray.serve._private import api as serve_api  # what `serve run` calls
        from ray.serve.config import gRPCOptions
        from ray.serve.schema import ServeDeploySchema

        address = self.plan.options.address
        init: dict[str, Any] = {"namespace": "serve"}
        if address:
            ray.init(address=address, **init)
        else:  # a cluster of this process's own, its traffic on loopback
            ray.init(address="local", _node_ip_address="127.0.0.1", **init)
        config = ServeDeploySchema.model_validate(serve_config(self.plan))
        self._client = serve_api.serve_start(
            http_options=config.http_options.model_dump(),
            proxy_location=config.proxy_location,
            grpc_options=gRPCOptions(**config.grpc_options.model_dump()))
        self._deploy(serve_config(self.plan))

    def _deploy(self, config: dict[str, Any]) -> None:
        from ray.serve.schema import ServeDeploySchema

        run = os.environ.get("RAY_TF_SERVE_RUN")
        if run:  # the Serve config as deployed, for `serve run` and for the curious
            Path(run, "serve_config.yaml").write_text(
                yaml.dump(config, Dumper=_NoAliases, sort_keys=False))
        self._client.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)

    def _wait_running(self, apps: Sequence[str]) -> None:
        from ray import serve
        from ray.serve.schema import ApplicationStatus

        deadline = time.monotonic() + _APPLY_TIMEOUT_S
        while not self.stopping.is_set() and time.monotonic() < deadline:
            statuses = serve.status().applications
            states = [statuses[a].status if a in statuses else None for a in apps]
            if all(s in (ApplicationStatus.RUNNING, ApplicationStatus.DEPLOY_FAILED)
                   for s in states):
                for app, state in zip(apps, states, strict=True):
                    if state == ApplicationStatus.DEPLOY_FAILED:
                        _say(f"{app} failed to deploy: see `serve status`")
                return
            time.sleep(0.5)

    def reload(self) -> bool:
        """Re-reads the model config file; applies a change. Whether it changed."""
        try:
            models = read_model_config(self.plan.options.model_config_file)
        except FlagError as e:
            _say(f"keeping the running config: {e}")
            return False
        if models == self.models:
            return False
        apply(self, models)
        return True

    def serve_forever(self) -> None:
        poll_s = self.plan.options.model_config_file_poll_wait_seconds
        while not self.stopping.wait(poll_s if poll_s > 0 and
                                     self.plan.options.model_config_file else 3600):
            if poll_s > 0 and self.plan.options.model_config_file:
                self.reload()

    def shutdown(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def apply(server: Server, models: list[ModelEntry]) -> None:
    old = {m.name: m for m in server.models}
    new = {m.name: m for m in models}
    started = [m for m in models if m.name not in old or
               (old[m.name].base_path, old[m.name].version_policy)
               != (m.base_path, m.version_policy)]
    removed = sorted(set(old) - set(new))
    _say(f"model config changed: adding or changing {[m.name for m in started]}, "
         f"removing {removed}")
    if started:  # step 1: their applications beside the running ones, routing unchanged
        both = [*models, *(old[n] for n in removed)]
        server._deploy(serve_config(server.plan, both, served=server.models))
        server._wait_running([model_app(m.name) for m in started])
    server._deploy(serve_config(server.plan, models))  # step 2: route, drop the removed
    server.models = list(models)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_flags(sys.argv[1:] if argv is None else argv)
        from deployments.cli import template_of

        plan = load(options, template_of(options))
    except FlagError as e:
        _say(str(e))
        return 2
    server = Server(plan)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        server.start()
        _say(f"serving {[m.name for m in plan.models]}: REST on port "
             f"{options.rest_api_port}, gRPC on port {options.port}")
        server.serve_forever()
    finally:
        _say("stopping")
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
