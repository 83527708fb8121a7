"""The data plane in a caller's own process (``deployments/ingress/direct.py``):
concurrent calls share model calls, each gets its own rows, a bad one fails alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from sklearn.datasets import load_digits

from deployments.config import ModelArgs
from deployments.errors import BadRequest
from deployments.ingress.direct import DirectClient
from harness.inprocess import InProcessModel
from tests.common import ROOT


@pytest.fixture(scope="module")
def model() -> InProcessModel:
    return InProcessModel(ModelArgs(name="digits_linear", path=str(ROOT / "models/digits_linear")))


def test_concurrent_predicts_share_model_calls_and_each_gets_its_own_rows(model):
    rows = load_digits().data[:8].astype(np.float32)
    alone = DirectClient({"digits_linear": model})
    expected = [asyncio.run(alone.predict({"pixels": r[None]}))["probabilities"] for r in rows]
    model.calls.clear()
    client = DirectClient({"digits_linear": model})

    async def together() -> list:
        return await asyncio.gather(*(client.predict({"pixels": r[None]}) for r in rows))

    answers = asyncio.run(together())
    for answer, own in zip(answers, expected, strict=True):
        np.testing.assert_allclose(answer["probabilities"], own, rtol=1e-6)
    assert sum(model.calls) == 8 and len(model.calls) < 8  # parts per model call


def test_a_bad_input_fails_alone_naming_the_problem(model):
    client = DirectClient({"digits_linear": model})
    good = load_digits().data[:1].astype(np.float32)

    async def both() -> list:
        return await asyncio.gather(client.predict({"pixels": good}),
                                    client.predict({"pixels": good[:, :63]}),
                                    return_exceptions=True)

    ok, bad = asyncio.run(both())
    assert ok["probabilities"].shape == (1, 10)
    assert isinstance(bad, BadRequest) and "shape [1, 63]" in bad.message
