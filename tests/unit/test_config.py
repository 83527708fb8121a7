from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import AppArgs, ModelArgs

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
    assert args.models[0].resolved().path == tmp_path / "models" / "m"


def savedmodel(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"")
    return path


def test_versions_follow_tf_servings_layout(tmp_path):
    for v in ("1", "2", "10"):
        savedmodel(tmp_path / v)
    (tmp_path / "3").mkdir()  # no SavedModel in it: not a version
    model = ModelArgs(name="m", path=tmp_path)
    assert model.version_dirs() == {10: tmp_path / "10"}  # the highest, numerically
    pinned = model.model_copy(update={"versions": (2, 1)})
    assert pinned.version_dirs() == {1: tmp_path / "1", 2: tmp_path / "2"}


def test_a_savedmodel_directory_is_version_1(tmp_path):
    assert ModelArgs(name="m", path=savedmodel(tmp_path / "m")).version_dirs() == {
        1: tmp_path / "m"}
    # Missing paths are passed on: the replica reports them with the cause.
    assert ModelArgs(name="m", path=tmp_path / "nope").version_dirs() == {1: tmp_path / "nope"}


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
        {"models": []},
        {"models": [{"name": "m", "path": "x"}], "device": {"gpu_memory": "limit"}},
    ],
)
def test_bad_args_are_refused(bad):
    with pytest.raises(ValidationError):
        AppArgs.model_validate(bad)


def test_resolved_pins_the_versions_found_when_the_app_is_built(tmp_path):
    savedmodel(tmp_path / "m" / "3")
    resolved = ModelArgs(name="m", path=tmp_path / "m").resolved()
    assert resolved.versions == (3,)
    savedmodel(tmp_path / "m" / "4")  # appears later: replicas still serve 3
    assert resolved.version_dirs() == {3: tmp_path / "m" / "3"}
    bare = ModelArgs(name="m", path=tmp_path / "nope").resolved()
    assert bare.versions is None and bare.version_dirs() == {1: tmp_path / "nope"}
