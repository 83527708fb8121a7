"""``tensorflow_model_server``'s flags and files, read as TF Serving reads them
and turned into our typed arguments and a Serve config. Pure: no Ray.

Flags take TF Serving's names, defaults and syntax (``--port=8500``, a bare
``--enable_batching`` or ``--enable_batching=true``); ``--name value`` works
too. A TF Serving flag that changes nothing here is accepted and named as
ignored; one whose effect we cannot give is refused, naming why; anything
else is a typo and refused. The files are parsed with TF Serving's own
message definitions: ``ModelServerConfig`` from ``tensorflow-serving-api``;
``BatchingParameters`` and ``MonitoringConfig``, which that package does not
ship, declared here field for field as TF Serving's ``.proto`` files declare
them (text format reads fields by name).
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

from deployments.config import CLI_APP as APP_NAME
from deployments.config import model_app
from deployments.envfile import read_env_file

# The Preprocessor's user_config key listing the served models in order
# (``IngressSettings.served``).
SERVED = "served"


class FlagError(ValueError):
    """A flag or flag file refused at start; the message names it."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: type  # int, float, bool or str
    default: Any
    help: str
    # "ours": mapped onto this server; "ignored": accepted, changes nothing here;
    # "refused": refused unless left at its default (``help`` says why).
    use: str = "ours"


_FLAGS = (
    Flag("port", int, 8500, "gRPC port (TF Serving's PredictionService and ModelService, "
                            "and KServe V2 gRPC)"),
    Flag("rest_api_port", int, 8501, "HTTP/REST port (TF Serving's REST API, KServe V2, ours). "
                                     "TF Serving's own default, 0, turns REST off, which "
                                     "Serve cannot: 0 is refused"),
    Flag("rest_api_host", str, "0.0.0.0", "(ours) address the HTTP port binds"),
    Flag("rest_api_timeout_in_ms", int, 30000, "a request's time limit: limits.request_timeout_s"),
    Flag("rest_api_enable_cors_support", bool, False, "CORS headers for any origin: "
                                                      "cors.allow_origins [*]"),
    Flag("model_name", str, "default", "the model's name (ignored with --model_config_file)"),
    Flag("model_base_path", str, "", "the model's base path, numbered versions inside "
                                     "(ignored with --model_config_file)"),
    Flag("model_config_file", str, "", "a text ModelServerConfig: several models, version "
                                       "policies, labels"),
    Flag("model_config_file_poll_wait_seconds", int, 0, "re-read --model_config_file this "
         "often (0: only at start); models added, removed or changed apply live, the others "
         "keep serving"),
    Flag("file_system_poll_wait_seconds", int, 1, "how often replicas look for new versions "
                                                  "(poll_interval_s; 0: only at start)"),
    Flag("enable_batching", bool, False, "batch with --batching_parameters_file's settings "
         "(without it the replicas still batch, with configs/config.yaml's settings: answers "
         "are the same row by row)"),
    Flag("batching_parameters_file", str, "", "a text BatchingParameters (needs "
                                              "--enable_batching, as in TF Serving)"),
    Flag("monitoring_config_file", str, "", "a text MonitoringConfig: monitoring.prometheus"),
    Flag("enable_model_warmup", bool, True, "replay assets.extra/tf_serving_warmup_requests "
                                            "(warmup)"),
    Flag("address", str, "", "(ours) join this Ray cluster (ray start's address) instead of "
                             "starting one on 127.0.0.1"),
    Flag("serve_config", str, "", "(ours) the Serve config whose deployment settings, gRPC "
         "services and limits the app takes (default: configs/config.yaml)"),
    Flag("stop_timeout_s", float, 30.0, "(ours) how long a stop may take before the run's "
                                        "processes are killed"),
    Flag("version", bool, False, "print the version and exit"),
    # Accepted, changing nothing here.
    Flag("rest_api_num_threads", int, 0, "the HTTP proxy sizes itself", "ignored"),
    Flag("num_load_threads", int, 0, "each model loads in its own replicas", "ignored"),
    Flag("num_unload_threads", int, 0, "each model unloads in its own replicas", "ignored"),
    Flag("max_num_load_retries", int, 5, "Serve restarts a replica that fails", "ignored"),
    Flag("load_retry_interval_micros", int, 60_000_000, "Serve restarts a replica that fails",
         "ignored"),
    Flag("flush_filesystem_caches", bool, True, "no filesystem cache is kept", "ignored"),
    Flag("tensorflow_session_parallelism", int, 0, "TensorFlow's thread pools follow each "
         "replica's num_cpus", "ignored"),
    Flag("tensorflow_intra_op_parallelism", int, 0, "TensorFlow's thread pools follow each "
         "replica's num_cpus", "ignored"),
    Flag("tensorflow_inter_op_parallelism", int, 0, "TensorFlow's thread pools follow each "
         "replica's num_cpus", "ignored"),
    Flag("grpc_max_threads", int, 0, "Serve's gRPC proxy sizes itself", "ignored"),
    Flag("num_request_iterations_for_warmup", int, 0, "each warm-up record runs once",
         "ignored"),
    Flag("allow_version_labels_for_unavailable_models", bool, False, "labels are read live "
         "from the config", "ignored"),
    Flag("remove_unused_fields_from_bundle_metagraph", bool, False, "a memory saving only",
         "ignored"),
    Flag("enable_signature_method_name_check", bool, False, "method names are not checked",
         "ignored"),
    Flag("xla_cpu_compilation_enabled", bool, False, "XLA is per model (jit_compile in a YAML)",
         "ignored"),
    Flag("xla_gpu_compilation_enabled", bool, False, "XLA is per model (jit_compile in a YAML)",
         "ignored"),
    Flag("mixed_precision", str, "", "models run in the precision they were saved in",
         "ignored"),
    Flag("skip_initialize_tpu", bool, False, "no TPU is used", "ignored"),
    Flag("enable_grpc_healthcheck_service", bool, False, "grpc.health.v1 is always on, on "
         "--port (ModelService, PredictionService and \"\" are SERVING while it runs)",
         "ignored"),
    Flag("enable_serialization_as_tensor_content", bool, False, "Predict answers keep typed "
         "fields (float_val, ...), which tf.make_ndarray and every stub read as they read "
         "tensor_content", "ignored"),
    Flag("enable_profiler", bool, False, "no TensorFlow profiler service", "ignored"),
    Flag("num_tflite_pools", int, 0, "TF Lite is not served", "ignored"),
    Flag("num_tflite_interpreters_per_pool", int, 0, "TF Lite is not served", "ignored"),
    # Refused unless left at their defaults.
    Flag("grpc_socket_path", str, "", "Serve's gRPC proxy listens on a TCP port only",
         "refused"),
    Flag("grpc_channel_arguments", str, "", "Serve's gRPC server options are not exposed",
         "refused"),
    Flag("ssl_config_file", str, "", "no TLS here: terminate it in front (a load balancer, "
                                     "an ingress)", "refused"),
    Flag("use_alts_credentials", bool, False, "no ALTS here", "refused"),
    Flag("platform_config_file", str, "", "only the TensorFlow platform is served", "refused"),
    Flag("tensorflow_session_config_file", str, "", "a session ConfigProto is not applied; "
         "replicas size TensorFlow from num_cpus", "refused"),
    Flag("per_process_gpu_memory_fraction", float, 0.0, "use device.gpu_memory: limit with "
         "gpu_total_memory_mb in a YAML", "refused"),
    Flag("saved_model_tags", str, "serve", "only the serve tag set is loaded", "refused"),
    Flag("enable_per_model_batching_parameters", bool, False, "batching_params.pbtxt in "
         "SavedModels is not read; set batching per model deployment in a YAML", "refused"),
    Flag("prefer_tflite_model", bool, False, "TF Lite models are not served", "refused"),
    Flag("thread_pool_factory_config_file", str, "", "custom thread pools are not supported",
         "refused"),
)
FLAGS = {f.name: f for f in _FLAGS}


def _value(flag: Flag, text: str) -> Any:
    if flag.kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise FlagError(f"--{flag.name}={text}: true or false")
    try:
        return flag.kind(text)
    except ValueError:
        what = "an integer" if flag.kind is int else "a number"
        raise FlagError(f"--{flag.name}={text}: not {what}") from None


@dataclass
class Options:
    """The flags as given (each a value of its flag's kind) and what they warn of."""

    values: dict[str, Any]
    given: set[str]
    warnings: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None


def parse_flags(argv: Sequence[str]) -> Options:
    """``tensorflow_model_server``'s command line: the values (defaults
    filled in) or a :class:`FlagError` naming the flag."""
    values = {name: flag.default for name, flag in FLAGS.items()}
    given: set[str] = set()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"unexpected argument {arg!r}: flags are --name=value")
        name, eq, text = arg.lstrip("-").partition("=")
        flag = FLAGS.get(name)
        if flag is None:
            near = difflib.get_close_matches(name, FLAGS, n=1)
            raise FlagError(f"unknown flag --{name}" + (f" (did you mean --{near[0]}?)"
                                                       if near else "") + "; see --help")
        if not eq:
            if flag.kind is bool:
                text = "true"
            elif args:
                text = args.pop(0)
            else:
                raise FlagError(f"--{name} needs a value: --{name}=...")
        values[name] = _value(flag, text)
        given.add(name)
    options = Options(values, given)
    for name in sorted(given):
        flag = FLAGS[name]
        if flag.use == "ignored":
            options.warnings.append(f"--{name} is accepted and ignored: {flag.help}")
        elif flag.use == "refused" and values[name] != flag.default:
            raise FlagError(f"--{name} is not supported: {flag.help}")
    _check(options)
    return options


def _check(o: Options) -> None:
    if o.port <= 0 or o.port > 65535:
        raise FlagError(f"--port={o.port}: a TCP port (TF Serving also refuses 0)")
    if o.rest_api_port <= 0 or o.rest_api_port > 65535:
        raise FlagError(f"--rest_api_port={o.rest_api_port}: REST cannot be turned off here "
                        "(Serve always serves HTTP); give a TCP port")
    if o.rest_api_port == o.port:
        raise FlagError(f"--rest_api_port must differ from --port ({o.port})")
    if o.rest_api_timeout_in_ms <= 0:
        raise FlagError("--rest_api_timeout_in_ms: a positive number of milliseconds")
    if not o.model_config_file and not o.model_base_path and not o.version:
        raise FlagError("give --model_base_path (with --model_name) or --model_config_file "
                        "(TF Serving refuses both empty)")
    if o.batching_parameters_file and not o.enable_batching:
        raise FlagError("--batching_parameters_file is set without --enable_batching "
                        "(TF Serving refuses this too)")
    if o.file_system_poll_wait_seconds < 0 or o.model_config_file_poll_wait_seconds < 0:
        raise FlagError("poll intervals are 0 (once) or positive seconds")
    if o.model_config_file and {"model_name", "model_base_path"} & o.given:
        o.warnings.append("--model_name and --model_base_path are ignored with "
                          "--model_config_file (as in TF Serving)")


def usage() -> str:
    lines = ["usage: ray-tf-serve [--flag=value ...]", "",
             "tensorflow_model_server's flags, served on Ray Serve (docs/migrating.md).", ""]
    for use, title in (("ours", "Flags"), ("ignored", "Accepted and ignored"),
                       ("refused", "Refused unless left at the default")):
        lines.append(f"{title}:")
        for flag in (f for f in _FLAGS if f.use == use):
            kind = {bool: "bool", int: "int", float: "float", str: "string"}[flag.kind]
            lines.append(f"  --{flag.name}={flag.default!s:<8} ({kind})  {flag.help}")
        lines.append("")
    return "\n".join(lines)


# TF Serving's protos: ModelServerConfig ships with tensorflow-serving-api.
def _proto_classes() -> tuple[type, type]:
    """``BatchingParameters`` (session_bundle_config.proto) and
    ``MonitoringConfig`` (monitoring_config.proto), declared as TF Serving
    declares them."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="ray_tf_serve/tfserving_files.proto", package="tensorflow.serving",
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def msg(name: str, fields: list[tuple[str, int, int, str, int]]) -> None:
        m = file.message_type.add(name=name)
        for fname, number, ftype, type_name, label in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    int64v, strv, boolv = (".google.protobuf.Int64Value", ".google.protobuf.StringValue",
                           ".google.protobuf.BoolValue")
    msg_t = F.TYPE_MESSAGE
    msg("BatchingParameters", [
        ("max_batch_size", 1, msg_t, int64v, optional),
        ("batch_timeout_micros", 2, msg_t, int64v, optional),
        ("max_enqueued_batches", 3, msg_t, int64v, optional),
        ("num_batch_threads", 4, msg_t, int64v, optional),
        ("thread_pool_name", 5, msg_t, strv, optional),
        ("allowed_batch_sizes", 6, F.TYPE_INT64, "", repeated),
        ("pad_variable_length_inputs", 7, F.TYPE_BOOL, "", optional),
        ("max_execution_batch_size", 8, msg_t, int64v, optional),
        ("enable_large_batch_splitting", 9, msg_t, boolv, optional),
    ])
    msg("PrometheusConfig", [("enable", 1, F.TYPE_BOOL, "", optional),
                             ("path", 2, F.TYPE_STRING, "", optional)])
    msg("MonitoringConfig", [("prometheus_config", 1, msg_t, ".tensorflow.serving.PrometheusConfig",
                              optional)])
    pool.Add(file)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
            get(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")))


BatchingParameters, MonitoringConfig = _proto_classes()


def read_text_proto(path: str | Path, message: Any) -> Any:
    """``message`` filled from a text-format file, or a :class:`FlagError`
    naming the file and, for a parse error, its line and column."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise FlagError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        where = f"{path}:{e.GetLine()}:{e.GetColumn()}" if e.GetLine() else str(path)
        raise FlagError(f"{where}: not a valid text {message.DESCRIPTOR.name}: {e}") from None
    return message


@dataclass(frozen=True)
class ModelEntry:
    """One model of a ModelServerConfig, as ModelArgs fields plus its labels."""

    name: str
    base_path: str
    version_policy: dict[str, Any]
    labels: dict[str, int]


def read_model_config(path: str | Path) -> list[ModelEntry]:
    """A ``--model_config_file``'s models, checked as TF Serving checks them
    (a :class:`FlagError` naming the file, line and what is wrong)."""
    from tensorflow_serving.config import model_server_config_pb2

    return model_entries(read_text_proto(path, model_server_config_pb2.ModelServerConfig()),
                         str(path))


def model_entries(config: Any, source: str) -> list[ModelEntry]:
    """A ``ModelServerConfig``'s models (from a file or a reload RPC), checked
    as TF Serving checks them; a :class:`FlagError` names ``source``, the
    entry and what is wrong."""
    if config.WhichOneof("config") != "model_config_list":
        raise FlagError(f"{source}: only model_config_list is supported (custom_model_config "
                        "is not)")
    entries, seen = [], set()
    for i, model in enumerate(config.model_config_list.config):
        where = f"{source}: config {i + 1} ({model.name or 'no name'})"
        if not model.name:
            raise FlagError(f"{where}: name is empty")
        if model.name in seen:
            raise FlagError(f"{where}: the name {model.name!r} is used twice")
        seen.add(model.name)
        if not model.base_path:
            raise FlagError(f"{where}: base_path is empty")
        if model.model_platform not in ("", "tensorflow"):
            raise FlagError(f"{where}: model_platform {model.model_platform!r}: only "
                            "\"tensorflow\" is served")
        if model.HasField("logging_config"):
            raise FlagError(f"{where}: logging_config (request logging) is not supported")
        entries.append(ModelEntry(model.name, model.base_path, _policy(model, where),
                                  dict(sorted(model.version_labels.items()))))
    if not entries:
        raise FlagError(f"{source}: model_config_list names no model")
    return entries


def _policy(model: Any, where: str) -> dict[str, Any]:
    policy = model.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "specific":
        if not policy.specific.versions:
            raise FlagError(f"{where}: model_version_policy specific lists no versions")
        return {"specific": sorted(set(policy.specific.versions))}
    if which == "all":
        return {"all": {}}
    num = policy.latest.num_versions if which == "latest" else 0
    return {"latest": num or 1}  # unset or 0: TF Serving serves 1


def model_args(entry: ModelEntry, options: Options | None = None) -> dict[str, Any]:
    """A ``ModelArgs`` dict for one model of the file (or of the flags)."""
    args: dict[str, Any] = {"name": entry.name, "path": entry.base_path,
                            "version_policy": entry.version_policy}
    if options is not None:
        args.update(poll_interval_s=options.file_system_poll_wait_seconds,
                    warmup=options.enable_model_warmup)
    return args


def models_of(options: Options) -> list[ModelEntry]:
    """The models the flags name: the config file's, else --model_name at --model_base_path."""
    if options.model_config_file:
        return read_model_config(options.model_config_file)
    return [ModelEntry(options.model_name, options.model_base_path, {"latest": 1}, {})]


# BatchingParameters → each model deployment's settings.
_BATCHING_MAPPED = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches")
_BATCHING_WHY = {
    "num_batch_threads": "each replica runs one batch at a time; scale with num_replicas "
                         "or autoscaling",
    "thread_pool_name": "no shared batch thread pool",
    "allowed_batch_sizes": "batches run at the size they form (jit_compile pads to buckets)",
    "pad_variable_length_inputs": "inputs of other lengths run in calls of their own, unpadded",
    "max_execution_batch_size": "batches are not split",
    "enable_large_batch_splitting": "batches are not split",
}


def read_batching(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """A ``--batching_parameters_file`` as model deployment settings
    (``user_config`` and ``max_queued_requests``) and a warning per field
    without an equivalent."""
    params = read_text_proto(path, BatchingParameters())
    user_config: dict[str, Any] = {}
    settings: dict[str, Any] = {"user_config": user_config}
    if params.HasField("max_batch_size"):
        size = params.max_batch_size.value
        if not 1 <= size <= 1024:
            raise FlagError(f"{path}: max_batch_size {size}: 1 to 1024 here")
        user_config["max_batch_size"] = size
    if params.HasField("batch_timeout_micros"):
        micros = params.batch_timeout_micros.value
        if not 0 <= micros <= 10_000_000:
            raise FlagError(f"{path}: batch_timeout_micros {micros}: 0 to 10 s here")
        user_config["batch_wait_timeout_s"] = micros / 1e6
    if params.HasField("max_enqueued_batches"):
        # A model call from the ingress is one coalesced batch: calls queued
        # at the deployment are batches waiting.
        settings["max_queued_requests"] = max(1, params.max_enqueued_batches.value)
    warnings = [f"{path}: {f.name} has no equivalent here and is ignored: "
                f"{_BATCHING_WHY[f.name]}"
                for f, _ in params.ListFields() if f.name not in _BATCHING_MAPPED]
    return settings, warnings


def read_monitoring(path: str | Path) -> dict[str, Any]:
    """A ``--monitoring_config_file`` as AppArgs' ``monitoring``."""
    config = read_text_proto(path, MonitoringConfig())
    prometheus: dict[str, Any] = {"enable": config.prometheus_config.enable}
    if config.prometheus_config.path:
        prometheus["path"] = config.prometheus_config.path
    return {"prometheus": prometheus}


def docker_argv(env: Mapping[str, str], extra: Sequence[str]) -> list[str]:
    """The image's command line, as TF Serving's image builds it:
    ``--port=8500 --rest_api_port=8501 --model_name=${MODEL_NAME}
    --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} "$@"`` (defaults:
    ``model``, ``/models``); later flags override earlier ones."""
    name = env.get("MODEL_NAME") or "model"
    base = env.get("MODEL_BASE_PATH") or "/models"
    return ["--port=8500", "--rest_api_port=8501", f"--model_name={name}",
            f"--model_base_path={base}/{name}", *extra]


@dataclass(frozen=True)
class Plan:
    """What the CLI deploys: the models and the settings every one shares."""

    models: tuple[ModelEntry, ...]
    options: Options
    template: dict[str, Any]
    batching: dict[str, Any] = field(default_factory=dict)
    monitoring: dict[str, Any] = field(default_factory=dict)


def load(options: Options, template: dict[str, Any]) -> Plan:
    """The flags' files read (a :class:`FlagError` naming a file refused)."""
    batching: dict[str, Any] = {}
    if options.batching_parameters_file:
        batching, warnings = read_batching(options.batching_parameters_file)
        options.warnings.extend(warnings)
    monitoring = (read_monitoring(options.monitoring_config_file)
                  if options.monitoring_config_file else {})
    return Plan(tuple(models_of(options)), options, template, batching, monitoring)


def _app_args(plan: Plan, models: Sequence[ModelEntry]) -> dict[str, Any]:
    template_args = plan.template["applications"][0].get("args", {})
    limits = {**template_args.get("limits", {}),
              "request_timeout_s": plan.options.rest_api_timeout_in_ms / 1000}
    args: dict[str, Any] = {"models": [model_args(m, plan.options) for m in models],
                            "limits": limits}
    if "top_k" in template_args:
        args["top_k"] = template_args["top_k"]
    if plan.options.rest_api_enable_cors_support:
        args["cors"] = {"allow_origins": ["*"]}
    if plan.monitoring:
        args["monitoring"] = plan.monitoring
    return args


# Serve holds a stopping ingress replica open at least this long (its default:
# 30 s) so that an external load balancer can deregister it, and raises the
# ingress's graceful_shutdown_timeout_s to it plus 5 s.
DRAIN_ENV = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def shutdown_budget_s(options: Options) -> float:
    """How long each deployment may take to drain when ``ray-tf-serve``
    stops (and the ingress's minimal drain on a cluster it starts): a
    sixth of ``--stop_timeout_s``, at most 5 s, so that the ingress's
    drain (plus Serve's 5 s) and Ray's own stop fit before the supervisor
    kills what is left (TF Serving itself stops at once)."""
    return max(1.0, min(5.0, options.stop_timeout_s / 6))


def serve_config(plan: Plan, models: Sequence[ModelEntry] | None = None,
                 served: Sequence[ModelEntry] | None = None) -> dict[str, Any]:
    """The Serve config (``serve run``'s YAML, as a dict) serving ``models``
    (default: the plan's), each model an application of its own, and the
    ingress application ``ray-tf-serve`` routing to ``served`` (default: the
    same). The ingress's ``args`` are always the plan's first models, so that
    redeploying with other models never restarts it: which models it serves,
    and their labels, are its ``user_config`` (applied live)."""
    models = list(plan.models if models is None else models)
    served = list(models if served is None else served)
    template = copy.deepcopy(plan.template)
    app = template["applications"][0]
    deployments = {d["name"]: d for d in app.get("deployments", [])}
    ingress_deployment = copy.deepcopy(deployments.get("Preprocessor", {"name": "Preprocessor"}))
    model_template: dict[str, Any] = next(
        (d for d in app.get("deployments", []) if d["name"] != "Preprocessor"), {})
    user_config = dict(ingress_deployment.get("user_config", {}))
    user_config["models"] = {m.name: {"labels": m.labels} for m in served if m.labels}
    user_config[SERVED] = [m.name for m in served]
    ingress_deployment["user_config"] = user_config
    budget_s = shutdown_budget_s(plan.options)
    ingress_deployment.setdefault("graceful_shutdown_timeout_s", budget_s)
    runtime_env = app.get("runtime_env", {})
    ingress = {"name": APP_NAME, "route_prefix": "/",
               "import_path": "deployments.tfserving_app:build_ingress",
               "runtime_env": runtime_env, "args": _app_args(plan, plan.models),
               "deployments": [ingress_deployment]}
    apps = [ingress]
    for model in models:
        deployment = {"graceful_shutdown_timeout_s": budget_s,
                      **copy.deepcopy(model_template), "name": model.name}
        deployment["user_config"] = {**deployment.get("user_config", {}),
                                     **plan.batching.get("user_config", {})}
        deployment.update({k: v for k, v in plan.batching.items() if k != "user_config"})
        apps.append({"name": model_app(model.name), "route_prefix": None,
                     "import_path": "deployments.tfserving_app:build_model",
                     "runtime_env": runtime_env, "args": _app_args(plan, [model]),
                     "deployments": [deployment]})
    grpc = dict(template.get("grpc_options", {}))
    grpc["port"] = plan.options.port
    config: dict[str, Any] = {key: template[key] for key in ("proxy_location", "logging_config")
              if key in template}
    config.update(http_options={**template.get("http_options", {}),
                                "host": plan.options.rest_api_host,
                                "port": plan.options.rest_api_port},
                  grpc_options=grpc, applications=apps)
    return config


def default_template() -> Path | None:
    """configs/config.yaml where the server runs, else beside the package."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "configs" / "config.yaml").is_file():
            return root / "configs" / "config.yaml"
    return None


def server_env(template: Path) -> dict[str, str]:
    """configs/server.env beside the template, for the variables not already set."""
    env_file = template.parent / "server.env"
    if not env_file.is_file():
        return {}
    return {k: v for k, v in read_env_file(env_file).items() if k not in os.environ}
