from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from deployments.config import AppArgs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["config.yaml", "gpu.yaml"])
def test_shipped_configs_parse(name):
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    (app,) = config["applications"]
    args = AppArgs.model_validate(app["args"])
    assert args.model.name == "digits"
    names = {d["name"] for d in app["deployments"]}
    assert names == {"Preprocessor", "Model"}


def test_gpu_config_shares_gpus_with_a_memory_limit():
    config = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
    (app,) = config["applications"]
    model = next(d for d in app["deployments"] if d["name"] == "Model")
    assert 0 < model["ray_actor_options"]["num_gpus"] < 1
    assert AppArgs.model_validate(app["args"]).device.gpu_memory == "limit"


def test_paths_are_resolved_for_replicas(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = AppArgs.model_validate({"model": {"name": "m", "path": "models/m/1"}})
    assert args.model.resolved().path == tmp_path / "models" / "m" / "1"


@pytest.mark.parametrize(
    "bad",
    [
        {"model": {"name": "m", "path": "x"}, "top_k": 0},
        {"model": {"name": "m", "path": "x"}, "unknown": 1},
        {"model": {"name": "bad name", "path": "x"}},
        {"model": {"name": "m", "path": "x"}, "device": {"gpu_memory": "limit"}},
    ],
)
def test_bad_args_are_refused(bad):
    with pytest.raises(ValidationError):
        AppArgs.model_validate(bad)
