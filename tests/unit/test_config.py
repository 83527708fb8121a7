import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments import config, preprocessing
from deployments.config import AppArgs, ModelArgs
from deployments.model_files import locate, resolved, version_dirs
from deployments.versions import Routing

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["config.yaml", "gpu.yaml"])
def test_shipped_configs_parse_and_name_a_deployment_per_model(name):
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    (app,) = config["applications"]
    args = AppArgs.model_validate(app["args"])
    assert args.models[0].name == "digits" and args.models[0].input == "image"
    names = {d["name"] for d in app["deployments"]}
    assert names == {"Preprocessor", *(m.name for m in args.models)}


def test_gpu_config_shares_gpus_with_a_memory_limit():
    config = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
    (app,) = config["applications"]
    model = next(d for d in app["deployments"] if d["name"] == "digits")
    assert 0 < model["ray_actor_options"]["num_gpus"] < 1
    assert AppArgs.model_validate(app["args"]).device.gpu_memory == "limit"


def test_paths_are_resolved_for_replicas(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = AppArgs.model_validate({"models": [{"name": "m", "path": "models/m"}]})
    assert resolved(args.models[0]).path == str(tmp_path / "models" / "m")
    url = ModelArgs(name="m", path="s3://bucket/models/m")
    assert resolved(url).path == "s3://bucket/models/m"


def savedmodel(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")
    return path


def test_versions_follow_tf_servings_layout(tmp_path):
    for v in ("1", "2", "10"):
        savedmodel(tmp_path / v)
    (tmp_path / "3").mkdir()  # no SavedModel in it: not a version
    model = ModelArgs(name="m", path=tmp_path)
    assert version_dirs(model) == {10: tmp_path / "10"}  # the highest, numerically
    pinned = ModelArgs(name="m", path=tmp_path, versions=(2, 1))
    assert version_dirs(pinned) == {1: tmp_path / "1", 2: tmp_path / "2"}
    policies = {"all": [1, 2, 10], "latest: 2": [2, 10], "specific: [1, 3]": [1]}
    for policy, versions in policies.items():
        model = ModelArgs(name="m", path=tmp_path, version_policy=yaml.safe_load(policy))
        assert list(version_dirs(model)) == versions, policy


def test_a_savedmodel_directory_is_version_1(tmp_path):
    assert version_dirs(ModelArgs(name="m", path=savedmodel(tmp_path / "m"))) == {
        1: tmp_path / "m"}
    assert version_dirs(ModelArgs(name="m", path=tmp_path / "nope")) == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"models": [{"name": "m", "path": "x"}], "top_k": 0},
        {"models": [{"name": "m", "path": "x"}], "unknown": 1},
        {"models": [{"name": "bad name", "path": "x"}]},
        {"models": [{"name": "a:b", "path": "x"}]},
        {"models": [{"name": "m", "path": "x"}, {"name": "m", "path": "y"}]},
        {"models": [{"name": "Preprocessor", "path": "x"}]},
        {"models": [{"name": "m", "path": "x", "input": "audio"}]},
        {"models": [{"name": "m", "path": "x", "versions": [0]}]},
        {"models": [{"name": "m", "path": "x", "version_policy": "newest"}]},
        {"models": [{"name": "m", "path": "x", "version_policy": {"latest": 0}}]},
        {"models": [{"name": "m", "path": "x", "poll_interval_s": -1}]},
        {"models": []},
        {"models": [{"name": "m", "path": "x"}], "device": {"gpu_memory": "limit"}},
    ],
)
def test_bad_args_are_refused(bad):
    with pytest.raises(ValidationError):
        AppArgs.model_validate(bad)


def _model(fields: str, image: bool = False) -> str:
    kind = ", input: image" if image else ""
    return f"models: [{{name: m, path: x{kind}, {fields}}}]"


def _app(fields: str) -> str:
    return f"models: [{{name: m, path: x}}]\n{fields}"


def _pipeline(fields: str) -> str:
    return _app(f"pipelines: [{{name: p, {fields}}}]")


# An operator's mistakes as YAML reads them, and the field the error must name.
MISTAKES = [
    (_model("preprocessing: {range: [0, .inf]}", image=True), "models.0.preprocessing.range.1"),
    (_model("preprocessing: {scale: .inf}", image=True), "models.0.preprocessing.scale"),
    (_model("preprocessing: {scale: 1, offset: -.inf}", image=True),
     "models.0.preprocessing.offset"),
    (_model("preprocessing: {mean: .nan}", image=True), "models.0.preprocessing.mean.0"),
    (_model("preprocessing: {std: [1, .nan, 1]}", image=True), "models.0.preprocessing.std.1"),
    (_model("preprocessing: {range: [-1.0e+300, 1.0e+300]}", image=True),
     "models.0.preprocessing"),
    (_model("preprocessing: {std: 1.0e-300}", image=True), "models.0.preprocessing"),
    (_model(f"preprocessing: {{resize: {{shorter_side: {10**400}}}}}", image=True),
     "models.0.preprocessing.resize.ShorterSide.shorter_side"),
    (_model("poll_interval_s: .inf"), "models.0.poll_interval_s"),
    (_model("poll_interval_s: 1.0e+300"), "models.0.poll_interval_s"),
    (_model(f"versions: [{2**63}]"), "models.0.versions.0"),
    (_model(f"version_policy: {{latest: {10**400}}}"), "models.0.version_policy.Latest.latest"),
    (_model(f"storage: {{cache_max_bytes: {10**400}}}"), "models.0.storage.cache_max_bytes"),
    (_app("limits: {request_timeout_s: .inf}"), "limits.request_timeout_s"),
    (_app("limits: {request_timeout_s: .nan}"), "limits.request_timeout_s"),
    (_app("limits: {request_timeout_s: 1.0e+9}"), "limits.request_timeout_s"),
    (_app(f"limits: {{max_body_bytes: {10**400}}}"), "limits.max_body_bytes"),
    (_app(f"limits: {{max_rows: {2**31}}}"), "limits.max_rows"),
    (_app(f"limits: {{max_elements: {10**400}}}"), "limits.max_elements"),
    (_app("limits: {max_inflight_bytes: .inf}"), "limits.max_inflight_bytes"),
    (_app(f"device: {{gpu_total_memory_mb: {10**400}}}"), "device.gpu_total_memory_mb"),
    (_app(f"top_k: {10**400}"), "top_k"),
    (_pipeline(f"steps: [{{model: m, version: {2**63}}}]"), "pipelines.0.steps.0.version"),
    (_pipeline("steps: [{model: m, inputs: {t: request.t}}], "
               f"inputs: {{t: {{dtype: string, shape: [-1, {2**63}]}}}}"),
     "pipelines.0.inputs.t.shape.1"),
]


@pytest.mark.parametrize(("text", "field"), MISTAKES, ids=[field for _, field in MISTAKES])
def test_non_finite_and_absurd_numbers_are_refused_naming_the_field(text, field):
    with pytest.raises(ValidationError) as refused:
        AppArgs.model_validate(yaml.safe_load(text))
    assert field in {".".join(map(str, e["loc"])) for e in refused.value.errors()}
    assert f"\n{field}\n" in str(refused.value)  # as the operator reads it


def _numbers(schema: object, path: str = "") -> list[tuple[str, dict]]:
    """Every integer and number in a JSON schema, by where it is."""
    if isinstance(schema, list):
        return [n for i, s in enumerate(schema) for n in _numbers(s, f"{path}/{i}")]
    if not isinstance(schema, dict):
        return []
    own = [(path, schema)] if schema.get("type") in ("integer", "number") else []
    return own + [n for k, s in schema.items() for n in _numbers(s, f"{path}/{k}")]


def test_every_number_of_the_config_is_finite_and_bounded():
    schema = AppArgs.model_json_schema()
    for name in schema["$defs"]:  # .inf and .nan refused in every model's float fields
        model = getattr(config, name, None) or getattr(preprocessing, name)
        assert model.model_config.get("allow_inf_nan") is False, name
    # Preprocessing's floats are checked together: the map they fold into fits float32.
    numbers = [(path, node) for path, node in _numbers(schema)
               if not path.startswith("/$defs/ImagePreprocessing/properties/") or
               node["type"] == "integer"]
    assert len(numbers) > 20
    unbounded = [path for path, node in numbers if "maximum" not in node]
    assert unbounded == []


def test_version_settings_must_agree():
    with pytest.raises(ValidationError, match="not both"):
        ModelArgs(name="m", path="x", versions=[1], version_policy={"latest": 1})
    with pytest.raises(ValidationError, match="ship: true packs local files"):
        ModelArgs(name="m", path="s3://bucket/m", ship=True)
    with pytest.raises(ValidationError, match="ship: true packs local files"):
        ModelArgs(name="m", path="x", labels_path="gs://bucket/labels.txt", ship=True)
    with pytest.raises(ValidationError, match="are s3://bucket/prefix or gs://"):
        ModelArgs(name="m", path="https://example.com/m")
    with pytest.raises(ValidationError, match=r"at least 0\.1 s"):
        ModelArgs(name="m", path="x", poll_interval_s=0.01)


def test_labels_are_names_and_traffic_names_labels():
    for labels in ({"no spaces": 1}, {"2": 1}, {"stable": 0}):
        with pytest.raises(ValidationError):
            Routing(labels=labels)
    with pytest.raises(ValidationError, match=r"labels that are not defined: \['beta'\]"):
        Routing(labels={"stable": 1}, traffic={"stable": 9, "beta": 1})
    routing = Routing(labels={"stable": 1, "canary": 2}, traffic={"stable": 9, "canary": 1})
    assert routing.split() in {1, 2} and Routing().split() is None


# A config naming paths that exist nowhere, validated in a fresh interpreter.
_VALIDATE_ONLY = """
import sys
from deployments.config import AppArgs
args = AppArgs.model_validate({"models": [
    {"name": "m", "path": "/nonexistent/base", "labels_path": "/nonexistent/labels.txt",
     "ship": True},
    {"name": "r", "path": "s3://bucket/nowhere", "labels_path": "gs://bucket/labels.txt"}]})
assert args.models[0].path == "/nonexistent/base"
print(sorted(m for m in ("ray", "fsspec", "tensorflow") if m in sys.modules))
"""


def test_validating_the_config_touches_no_file_system_nor_ray_fsspec_or_tensorflow(tmp_path):
    # Labels outside a shipped path are refused by what resolves paths, not by validation.
    ran = subprocess.run([sys.executable, "-c", _VALIDATE_ONLY], cwd=tmp_path, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True)
    assert ran.stdout.strip() == "[]", ran.stderr


def test_file_system_mistakes_are_refused_at_deploy_naming_the_model(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = AppArgs.model_validate({"models": [
        {"name": "ok", "path": "m"},
        {"name": "bad", "path": "m", "labels_path": "labels.txt", "ship": True}]})
    with pytest.raises(ValidationError) as refused:
        locate(args)
    assert str(refused.value).startswith(
        "1 validation error for AppArgs\nmodels.1\n  Value error, ship: true packs what lies "
        "under path (m); labels_path labels.txt lies outside it [type=value_error]\n")
    located = locate(AppArgs.model_validate({"models": [
        {"name": "m", "path": "m", "labels_path": "m/labels.txt", "ship": True}]}))
    assert (located.models[0].path, located.models[0].labels_path) == (
        str(tmp_path / "m"), str(tmp_path / "m" / "labels.txt"))


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/predict",
                                  "/models/digits/predict", "/v1/models/digits", "/v2",
                                  "/v2/health/live", "/ui/index.html"])
def test_the_monitoring_path_may_not_shadow_an_api_route(path):
    args = {"models": [{"name": "m", "path": "/models/m"}],
            "monitoring": {"prometheus": {"enable": True, "path": path}}}
    with pytest.raises(ValidationError, match=r"monitoring\.prometheus\.path"):
        AppArgs.model_validate(args)
    ok = AppArgs.model_validate({**args, "monitoring": {"prometheus": {"enable": True}}})
    assert ok.monitoring.prometheus.path == "/monitoring/prometheus/metrics"
    assert AppArgs.model_validate(
        {**args, "monitoring": {"prometheus": {"path": "/metrics"}}}).monitoring.prometheus.path \
        == "/metrics"
