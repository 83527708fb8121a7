"""``ray-tf-serve``'s flags and TF Serving's files, in process: TF Serving's
own test files (../shared/tfserving-testdata) parsed with its protos."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.serve.schema import ServeDeploySchema

from deployments.config import AppArgs
from deployments.tfserving_config import (
    APP_NAME,
    FLAGS,
    SERVED,
    FlagError,
    ModelEntry,
    docker_argv,
    load,
    model_entries,
    parse_flags,
    read_batching,
    read_model_config,
    read_monitoring,
    serve_config,
    shutdown_budget_s,
)
from tests.common import CONFIG, TFSERVING_TESTDATA

yaml = pytest.importorskip("yaml")
TEMPLATE = yaml.safe_load(CONFIG.read_text())
needs_testdata = pytest.mark.skipif(not TFSERVING_TESTDATA.is_dir(), reason="no ../shared")


def test_tf_serving_defaults_and_syntax():
    o = parse_flags(["--model_base_path=/models/m"])
    assert (o.port, o.rest_api_port, o.model_name) == (8500, 8501, "default")
    assert (o.enable_batching, o.enable_model_warmup, o.file_system_poll_wait_seconds) == (
        False, True, 1)
    assert o.model_config_file_poll_wait_seconds == 0 and o.rest_api_timeout_in_ms == 30000
    o = parse_flags(["--port=9", "--rest_api_port", "10", "--enable_batching",
                     "--enable_model_warmup=false", "--model_name=x", "--model_base_path=/m"])
    assert (o.port, o.rest_api_port, o.enable_batching, o.enable_model_warmup) == (
        9, 10, True, False)
    assert parse_flags(["--model_base_path=/m", "--port=1", "--port=2"]).port == 2


@pytest.mark.parametrize(("argv", "names"), [
    (["--model_base_pth=/m"], "unknown flag --model_base_pth (did you mean --model_base_path?)"),
    (["--model_base_path=/m", "--port=x"], "--port=x: not an integer"),
    (["--model_base_path=/m", "--enable_batching=maybe"], "true or false"),
    (["--model_base_path=/m", "--ssl_config_file=/c"], "--ssl_config_file is not supported"),
    (["--model_base_path=/m", "--rest_api_port=0"], "REST cannot be turned off"),
    (["--model_base_path=/m", "--rest_api_port=8500"], "must differ from --port"),
    (["--model_base_path=/m", "--batching_parameters_file=/b"], "without --enable_batching"),
    ([], "give --model_base_path"),
    (["stray"], "unexpected argument"),
])
def test_refused_flags_are_named(argv, names):
    with pytest.raises(FlagError, match=None) as e:
        parse_flags(argv)
    assert names in str(e.value)


# Every flag tensorflow_model_server 2.21 defines (model_servers/main.cc).
TF_SERVING_FLAGS = (
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support", "enable_batching",
    "allow_version_labels_for_unavailable_models", "batching_parameters_file",
    "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros",
    "file_system_poll_wait_seconds", "flush_filesystem_caches", "tensorflow_session_parallelism",
    "tensorflow_session_config_file", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "use_alts_credentials", "ssl_config_file",
    "platform_config_file", "per_process_gpu_memory_fraction", "saved_model_tags",
    "grpc_channel_arguments", "grpc_max_threads", "enable_model_warmup",
    "num_request_iterations_for_warmup", "version", "monitoring_config_file",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model", "num_tflite_pools",
    "num_tflite_interpreters_per_pool", "enable_signature_method_name_check",
    "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled", "enable_profiler",
    "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "enable_grpc_healthcheck_service", "enable_serialization_as_tensor_content",
)


def test_every_flag_of_tf_serving_is_known_each_mapped_ignored_or_refused_with_a_reason():
    """A deployment script's flag never stops the start as a typo would."""
    assert set(TF_SERVING_FLAGS) <= set(FLAGS)
    assert all(FLAGS[name].help for name in TF_SERVING_FLAGS)


def test_harmless_flags_are_named_as_ignored():
    o = parse_flags(["--model_base_path=/m", "--tensorflow_intra_op_parallelism=4",
                     "--saved_model_tags=serve"])
    assert o.warnings == ["--tensorflow_intra_op_parallelism is accepted and ignored: "
                          "TensorFlow's thread pools follow each replica's num_cpus"]


@needs_testdata
def test_tf_serving_model_config_files():
    models = read_model_config(TFSERVING_TESTDATA / "good_model_config.txt")
    assert [(m.name, m.base_path, m.version_policy) for m in models] == [
        ("half_plus_two", "${TEST_HALF_PLUS_TWO_DIR}", {"latest": 1}),
        ("half_plus_three", "${TEST_HALF_PLUS_THREE_DIR}", {"latest": 1})]
    bad = TFSERVING_TESTDATA / "bad_model_config.txt"
    with pytest.raises(FlagError, match=rf"^{bad}:1:1: not a valid text ModelServerConfig"):
        read_model_config(bad)


def test_a_reload_rpcs_config_is_checked_as_a_files_naming_the_rpc():
    from tensorflow_serving.config import model_server_config_pb2 as pb

    rpc = "HandleReloadConfigRequest"
    with pytest.raises(FlagError, match=f"^{rpc}: only model_config_list is supported"):
        model_entries(pb.ModelServerConfig(), rpc)  # TF Serving: INVALID_ARGUMENT too
    with pytest.raises(FlagError, match=f"^{rpc}: model_config_list names no model"):
        model_entries(pb.ModelServerConfig(model_config_list={}), rpc)
    config = pb.ModelServerConfig(model_config_list={"config": [
        {"name": "a", "base_path": "/a", "version_labels": {"stable": 2}}]})
    assert model_entries(config, rpc) == [ModelEntry("a", "/a", {"latest": 1}, {"stable": 2})]


def test_policies_labels_and_refusals(tmp_path: Path):
    f = tmp_path / "models.config"
    f.write_text('model_config_list { config { name: "a" base_path: "/a" '
                 'model_version_policy { specific { versions: 2 versions: 1 } } '
                 'version_labels { key: "stable" value: 1 } } '
                 'config { name: "b" base_path: "/b" model_version_policy { all {} } } '
                 'config { name: "c" base_path: "/c" model_version_policy { latest { '
                 'num_versions: 3 } } } }')
    a, b, c = read_model_config(f)
    assert a == ModelEntry("a", "/a", {"specific": [1, 2]}, {"stable": 1})
    assert (b.version_policy, c.version_policy) == ({"all": {}}, {"latest": 3})
    f.write_text('model_config_list {\n config { name: "a" base_path: "/a"\n'
                 '  model_platform: "pytorch" } }')
    with pytest.raises(FlagError, match="only \"tensorflow\" is served"):
        read_model_config(f)
    f.write_text('model_config_list {\n config { name: "a"\n  base_pth: "/a" } }')
    with pytest.raises(FlagError, match=rf"^{f}:3:3: "):
        read_model_config(f)


@needs_testdata
def test_tf_serving_batching_and_monitoring_files():
    path = TFSERVING_TESTDATA / "batching_config.txt"
    settings, warnings = read_batching(path)
    assert settings == {"user_config": {"max_batch_size": 128, "batch_wait_timeout_s": 0.0},
                        "max_queued_requests": 1000000}
    assert warnings == [f"{path}: num_batch_threads has no equivalent here and is ignored: "
                        "each replica runs one batch at a time; scale with num_replicas or "
                        "autoscaling"]
    monitoring = read_monitoring(TFSERVING_TESTDATA / "monitoring_config.txt")
    assert monitoring == {"prometheus": {"enable": True,
                                         "path": "/monitoring/prometheus/metrics"}}
    AppArgs.model_validate({"models": [{"name": "m", "path": "x"}], "monitoring": monitoring})


def test_serve_config_keeps_the_ingress_args_and_each_model_apart(tmp_path: Path):
    f = tmp_path / "models.config"
    f.write_text('model_config_list { config { name: "a" base_path: "/a" version_labels '
                 '{ key: "stable" value: 1 } } config { name: "b" base_path: "/b" } }')
    o = parse_flags([f"--model_config_file={f}", "--rest_api_timeout_in_ms=5000",
                     "--port=7000", "--rest_api_port=7001"])
    plan = load(o, TEMPLATE)
    config = serve_config(plan)
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["port"] == 7001 and config["grpc_options"]["port"] == 7000
    assert config["grpc_options"]["grpc_servicer_functions"] == TEMPLATE["grpc_options"][
        "grpc_servicer_functions"]
    ingress, app_a, _ = config["applications"]
    assert ingress["name"] == APP_NAME and ingress["args"]["limits"]["request_timeout_s"] == 5
    user_config = ingress["deployments"][0]["user_config"]
    assert user_config[SERVED] == ["a", "b"] and user_config["models"] == {
        "a": {"labels": {"stable": 1}}}
    assert (app_a["route_prefix"], app_a["deployments"][0]["name"]) == (None, "a")
    # b removed, c added: the ingress's args and a's application are unchanged.
    c = ModelEntry("c", "/c", {"latest": 1}, {})
    after = serve_config(plan, [plan.models[0], c])
    assert after["applications"][0]["args"] == ingress["args"]
    assert after["applications"][1] == app_a
    assert after["applications"][0]["deployments"][0]["user_config"][SERVED] == ["a", "c"]


def test_docker_entrypoint_flags():
    assert docker_argv({}, []) == ["--port=8500", "--rest_api_port=8501", "--model_name=model",
                                   "--model_base_path=/models/model"]
    argv = docker_argv({"MODEL_NAME": "half_plus_two", "MODEL_BASE_PATH": "/srv"},
                       ["--rest_api_timeout_in_ms=1000"])
    o = parse_flags(argv)
    assert (o.model_name, o.model_base_path, o.rest_api_timeout_in_ms) == (
        "half_plus_two", "/srv/half_plus_two", 1000)


def test_yaml_names_a_model_config_file():
    args = AppArgs.model_validate({"model_config_file": "/m.config"})
    assert args.models == () and args.model_config_file == "/m.config"
    for bad in ({}, {"model_config_file": "/m", "models": [{"name": "m", "path": "x"}]}):
        with pytest.raises(ValueError, match="models or model_config_file"):
            AppArgs.model_validate(bad)


def test_the_ingress_user_config_is_the_preprocessors_and_stops_fit_the_budget(tmp_path: Path):
    from deployments.ingress.deployment import IngressSettings

    m = tmp_path / "monitoring.config"
    m.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    o = parse_flags(["--model_name=a", "--model_base_path=/a", f"--monitoring_config_file={m}",
                     "--stop_timeout_s=12"])
    config = serve_config(load(o, TEMPLATE))
    ingress, app_a = config["applications"]
    assert AppArgs.model_validate(ingress["args"]).monitoring.prometheus.enable
    settings = IngressSettings.model_validate(ingress["deployments"][0]["user_config"])
    assert settings.served == ["a"]
    # Serve floors the ingress's drain at RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S
    # (the server sets it to the same budget) plus 5 s: all within --stop_timeout_s.
    assert shutdown_budget_s(o) == 2.0
    for app in (ingress, app_a):
        assert app["deployments"][0]["graceful_shutdown_timeout_s"] == 2.0
    with pytest.raises(ValueError):
        IngressSettings.model_validate({"served": []})


class _FakeServer:
    """``tfserving_server.Server`` without Ray: records what each deploy
    serves and deploys; ``failing`` apps never run."""

    def __init__(self, plan, failing=()):
        self.plan, self.failing = plan, set(failing)
        self.models = self.deployed = list(plan.models)
        self.steps = []

    def deploy(self, config):
        ingress, *models = config["applications"]
        self.steps.append((ingress["deployments"][0]["user_config"][SERVED],
                           [m["deployments"][0]["name"] for m in models]))

    def wait_running(self, apps):
        return {a for a in apps if a in self.failing}


def test_a_reload_stops_routing_to_a_removed_model_before_its_app_goes(tmp_path: Path):
    from deployments.tfserving_server import apply

    f = tmp_path / "models.config"
    f.write_text('model_config_list { config { name: "a" base_path: "/a" } '
                 'config { name: "b" base_path: "/b" } }')
    plan = load(parse_flags([f"--model_config_file={f}"]), TEMPLATE)
    server = _FakeServer(plan)
    a, c = plan.models[0], ModelEntry("c", "/c", {"latest": 1}, {})
    apply(server, [a, c])  # type: ignore[arg-type]
    assert server.steps == [(["a"], ["a", "b"]),  # b no longer routed to (404)
                            (["a"], ["a", "c"]),  # b's app goes, c's deploys
                            (["a", "c"], ["a", "c"])]  # c running: routed to
    assert server.models == server.deployed == [a, c]
    # A model that fails to deploy is not routed to; the ingress keeps serving one at least.
    server = _FakeServer(plan, failing={"ray-tf-serve.c"})
    apply(server, [c])  # type: ignore[arg-type]
    assert server.steps == [(["a", "b"], ["c"]), (["a", "b"], ["c"])]
