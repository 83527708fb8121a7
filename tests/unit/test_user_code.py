"""Import paths of a model's own code: checked when the config is parsed,
imported when the ingress starts, with messages that name model and path."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from deployments.config import ModelArgs
from deployments.user_code import (
    CodePaths,
    Processors,
    UserCodeFailed,
    code_paths,
    load_processors,
)

CODE = "tests.app.user_code"


@pytest.mark.parametrize("path", ["my_pkg.pre", "my_pkg.pre:", ":normalize", "a:b:c",
                                  "my pkg:f", "1pkg:f", "pkg.:f", "pkg:f.", "pkg:f()"])
def test_a_malformed_path_fails_the_config(path: str):
    form = "not an import path of the form 'module.path:attribute'"
    with pytest.raises(ValidationError, match=re.escape(form)):
        ModelArgs(name="m", path="models/digits", preprocess=path)


def test_well_formed_paths_are_taken():
    model = ModelArgs(name="m", path="x", preprocess="my_pkg.pre:normalize",
                      postprocess="my_pkg.post:Calibrator.apply")
    assert code_paths([model, ModelArgs(name="none", path="x")]) == {
        "m": CodePaths("my_pkg.pre:normalize", "my_pkg.post:Calibrator.apply")}


@pytest.fixture
def broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "broken_user_module.py").write_text("raise RuntimeError('no config file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "broken_user_module"
    sys.modules.pop("broken_user_module", None)


@pytest.mark.parametrize(("path", "cause"), [
    ("no_such_pkg.pre:f", "cannot import module 'no_such_pkg.pre': ModuleNotFoundError: "
                          "No module named 'no_such_pkg'"),
    (f"{CODE}:missing", f"module '{CODE}' has no attribute 'missing'"),
    (f"{CODE}:NOT_CALLABLE", "'NOT_CALLABLE' is not callable (of type int)"),
])
def test_an_import_failure_names_the_model_and_path(path: str, cause: str):
    with pytest.raises(RuntimeError) as failed:
        load_processors({"digits": CodePaths(postprocess=path)})
    assert str(failed.value) == f"model 'digits': postprocess {path!r} cannot be loaded: {cause}"


def test_a_module_that_raises_on_import_names_its_error(broken_module: str):
    with pytest.raises(RuntimeError, match="model 'digits': preprocess 'broken_user_module:f' "
                                           "cannot be loaded: cannot import module "
                                           "'broken_user_module': RuntimeError: no config file"):
        Processors.load("digits", CodePaths(preprocess=f"{broken_module}:f"))



def test_an_attribute_error_as_a_module_imports_is_no_missing_attribute(tmp_path, monkeypatch):
    (tmp_path / "attr_broken_module.py").write_text("import os\nos.no_such_thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="cannot import module 'attr_broken_module': "
                                           "AttributeError: module 'os' has no attribute"):
        Processors.load("digits", CodePaths(preprocess="attr_broken_module:f"))
    assert "attr_broken_module" not in sys.modules

def test_loaded_callables_run_sync_and_async():
    processors = Processors.load("m", CodePaths(f"{CODE}:to_counts_async", f"{CODE}:with_digit"))
    assert processors.pre is not None and processors.post is not None
    ones = {"pixels": np.ones((1, 64), np.float32)}
    assert asyncio.run(processors.pre(ones))["pixels"].max() == 16
    scores = {"probabilities": np.eye(10, dtype=np.float32)[[3]]}
    assert asyncio.run(processors.post(scores))["digit"].tolist() == [3]


@pytest.mark.parametrize(("name", "expected"), [("async_doubler", 2.0), ("hidden_async", 2.0)])
def test_async_callables_are_awaited_however_they_are_wrapped(name: str, expected: float):
    processors = Processors.load("m", CodePaths(preprocess=f"{CODE}:{name}"))
    assert processors.pre is not None
    ones = {"pixels": np.ones((1, 64), np.float32)}
    assert asyncio.run(processors.pre(ones))["pixels"].max() == expected


def test_a_failing_callable_logs_its_traceback_once_a_minute(caplog: pytest.LogCaptureFixture):
    (processors,) = load_processors({"m": CodePaths(preprocess=f"{CODE}:fragile")}).values()
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        for _ in range(3):
            with pytest.raises(UserCodeFailed, match="raised ValueError"):
                asyncio.run(processors.pre({"pixels": np.full((1, 64), 101.0)}))
    (record,) = [r for r in caplog.records if r.exc_info]
    assert "secret internal detail" in str(record.exc_info[1])
