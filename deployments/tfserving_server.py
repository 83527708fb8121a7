"""The process ``ray-tf-serve`` supervises (``deployments.cli``): starts Ray
(on 127.0.0.1, or joins ``--address``) and Serve, deploys the Serve config
the flags make (as ``serve run`` deploys a YAML: ``serve_start`` and
``deploy_apps``), re-reads ``--model_config_file`` every
``--model_config_file_poll_wait_seconds`` and applies what changed, and on
SIGINT or SIGTERM shuts Serve down.

``ModelService.HandleReloadConfigRequest`` reaches it from the ingress
(``deployments.reloads``) and is applied the same way, in turn with the
file's changes; as in TF Serving, a polled file that differs from a
reloaded config replaces it at the next poll.

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
from typing import TYPE_CHECKING, Any

import yaml

from deployments.cli import say, template_of
from deployments.config import model_app
from deployments.run import MARK
from deployments.tfserving_config import (
    APP_NAME,
    DRAIN_ENV,
    FlagError,
    ModelEntry,
    Plan,
    load,
    model_entries,
    parse_flags,
    read_model_config,
    serve_config,
    shutdown_budget_s,
)

if TYPE_CHECKING:
    from deployments.reloads import Status

logger = logging.getLogger("ray-tf-serve")


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_APPLY_TIMEOUT_S = 300.0


class Server:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.models = list(plan.models)  # the file's models as last applied
        self.deployed = list(plan.models)  # those with an application
        self.stopping = threading.Event()
        self._client: Any = None
        self._applying = threading.Lock()  # (change)
        self._reloads: threading.Thread | None = None

    def start(self) -> None:
        import ray
        from ray.serve._private import api as serve_api  # what `serve run` calls
        from ray.serve.config import gRPCOptions
        from ray.serve.schema import ServeDeploySchema

        from deployments.reloads import NAME, NAMESPACE, Reloads

        address = self.plan.options.address
        init: dict[str, Any] = {"namespace": "serve"}
        if address:
            ray.init(address=address, **init)
        else:  # a cluster of this process's own, its traffic on loopback
            # Its ingress drains within the stop's budget (Serve's default, 30 s,
            # would outlast --stop_timeout_s); no load balancer but Serve's own
            # HAProxy, which learns of a stopping replica at once, waits on it.
            os.environ.setdefault(DRAIN_ENV, f"{shutdown_budget_s(self.plan.options):g}")
            ray.init(address="local", _node_ip_address="127.0.0.1", **init)
        config = ServeDeploySchema.model_validate(serve_config(self.plan))
        self._client = serve_api.serve_start(
            http_options=config.http_options.model_dump(),
            proxy_location=config.proxy_location,
            grpc_options=gRPCOptions(**config.grpc_options.model_dump()))
        self.deploy(serve_config(self.plan))
        reloads = Reloads.options(  # type: ignore[attr-defined]
            name=NAME, namespace=NAMESPACE).remote()
        self._reloads = threading.Thread(target=self.serve_reloads, args=(reloads,),
                                         name="reloads", daemon=True)
        self._reloads.start()

    def deploy(self, config: dict[str, Any]) -> None:
        from ray.serve.schema import ServeDeploySchema

        run_dir = os.environ.get(MARK)
        if run_dir:  # the Serve config as deployed, for `serve run` and for the curious
            Path(run_dir, "serve_config.yaml").write_text(
                yaml.dump(config, Dumper=_NoAliases, sort_keys=False))
        self._client.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)

    def wait_running(self, apps: Sequence[str]) -> set[str]:
        """Waits until ``apps`` run or failed (at most ``_APPLY_TIMEOUT_S``);
        those that did not run, each named."""
        from ray import serve
        from ray.serve.schema import ApplicationStatus

        deadline = time.monotonic() + _APPLY_TIMEOUT_S
        states: dict[str, Any] = {}
        while not self.stopping.is_set() and time.monotonic() < deadline:
            statuses = serve.status().applications
            states = {a: statuses[a].status if a in statuses else None for a in apps}
            if all(s in (ApplicationStatus.RUNNING, ApplicationStatus.DEPLOY_FAILED)
                   for s in states.values()):
                break
            time.sleep(0.5)
        failed = {a for a in apps if states.get(a) != ApplicationStatus.RUNNING}
        for app in sorted(failed):
            say(f"{app} is {states.get(app) or 'not deployed'}: see `serve status`")
        return failed

    def reload(self) -> bool:
        """Re-reads the model config file; applies a change. Whether it changed."""
        try:
            models = read_model_config(self.plan.options.model_config_file)
        except FlagError as e:
            say(f"keeping the running config: {e}")
            return False
        return self.change(models) is not None

    def change(self, models: list[ModelEntry]) -> list[str] | None:
        """Applies ``models`` (a file's or a reload RPC's) one change at a
        time: None if they are the ones served, else those that did not run."""
        with self._applying:
            return None if models == self.models else apply(self, models)

    def reload_config(self, config: bytes) -> Status:
        """Applies a reload RPC's serialized ``ModelServerConfig``; its status
        as TF Serving gives it: ``INVALID_ARGUMENT`` for a config refused,
        ``UNKNOWN`` naming the models that did not become available."""
        from tensorflow_serving.config import model_server_config_pb2

        try:
            models = model_entries(model_server_config_pb2.ModelServerConfig.FromString(config),
                                   "HandleReloadConfigRequest")
        except FlagError as e:
            return "INVALID_ARGUMENT", str(e)
        say(f"HandleReloadConfigRequest: {[m.name for m in models]}")
        failed = self.change(models)
        if failed:
            return "UNKNOWN", (f"{len(failed)} model(s) did not become available: "
                               f"{{{', '.join(failed)}}}; see `serve status`")
        return "OK", ""

    def serve_reloads(self, reloads: Any) -> None:
        """Takes the ingress's reload requests in turn until the server stops;
        each is answered, whatever applying it raised (a caller may wait
        without a deadline)."""
        import ray

        while not self.stopping.is_set():
            try:
                taken = ray.get(reloads.next.remote(1.0))
            except ray.exceptions.RayActorError:  # gone with the cluster: nobody to answer
                if not self.stopping.is_set():
                    logger.exception("HandleReloadConfigRequest: the reloads actor died")
                return
            if taken is None:
                continue
            key, config = taken
            try:
                status = self.reload_config(config)
            except Exception as e:  # Serve's controller restarting, say
                logger.exception("HandleReloadConfigRequest failed")
                status = "INTERNAL", f"applying the config failed: {type(e).__name__}: {e}"
            reloads.answer.remote(key, status)

    def serve_forever(self) -> None:
        poll_s = self.plan.options.model_config_file_poll_wait_seconds
        while not self.stopping.wait(poll_s if poll_s > 0 and
                                     self.plan.options.model_config_file else 3600):
            if poll_s > 0 and self.plan.options.model_config_file:
                self.reload()

    def shutdown(self) -> None:
        import ray
        from ray import serve

        if self._reloads is not None:
            self._reloads.join(timeout=5)
        serve.shutdown()
        ray.shutdown()


def apply(server: Server, models: list[ModelEntry]) -> list[str]:
    """Applies the file's new ``models``, the applications' set changing
    only while no request is routed to what goes, so every step is safe:

    1. the ingress stops routing to the removed models (they answer 404
       from now on) and takes the kept ones' new labels;
    2. the removed models' applications go (Serve drains their replicas:
       requests in flight finish) and the added or changed ones deploy; the
       removed go first in effect, so the added fit where they were (a
       model's replica takes a CPU);
    3. once those run (or failed: named, not routed to), the ingress routes
       to the added models too (the ingress serves one model at least: with
       none kept, or none running, it keeps the list it had).

    The added or changed models that did not run, by name."""
    plan = server.plan
    old = {m.name: m for m in server.models}
    new = {m.name: m for m in models}
    started = [m for m in models if m.name not in old or
               (old[m.name].base_path, old[m.name].version_policy)
               != (m.base_path, m.version_policy)]
    removed = sorted(set(old) - set(new))
    kept = [m for m in models if m.name in old]
    say(f"model config changed: adding or changing {[m.name for m in started]}, "
         f"removing {removed}")
    if kept:  # (a config with none kept routes to the old ones until step 3)
        server.deploy(serve_config(plan, server.deployed, served=kept))
        server.wait_running([APP_NAME])
    served = kept or server.models
    failed: set[str] = set()
    if started or removed:
        server.deploy(serve_config(plan, models, served=served))
        server.deployed = list(models)
        failed = server.wait_running([model_app(m.name) for m in started])
        served = [m for m in models if model_app(m.name) not in failed] or served
        server.deploy(serve_config(plan, models, served=served))
        server.wait_running([APP_NAME])  # the ingress routes to them: a reload can answer
    server.models = list(models)
    return [m.name for m in started if model_app(m.name) in failed]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = parse_flags(sys.argv[1:] if argv is None else argv)

        plan = load(options, template_of(options))
    except FlagError as e:
        say(str(e))
        return 2
    server = Server(plan)

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        server.start()
        say(f"serving {[m.name for m in plan.models]}: REST on port "
             f"{options.rest_api_port}, gRPC on port {options.port}")
        server.serve_forever()
    finally:
        say("stopping")
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
