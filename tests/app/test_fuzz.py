"""Property-based fuzzing, in process: every HTTP operation in the served OpenAPI
document (schemathesis), one test case per operation; then the values
schemathesis cannot generate (over-long integers, lone surrogates, deep
nesting) in every slot of every protocol's requests. No 5xx on anything, and
good requests still answered correctly afterwards."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import get_client
from starlette.applications import Starlette

from deployments.config import InputLimits
from deployments.ingress.asgi import api_routes
from deployments.ingress.openapi import openapi_document
from tests.app.conftest import build_app, config_args
from tests.common import SAMPLES, sample_label, top_label

STATUSES: list[int] = []  # every operation's, for the test at the end

OPERATIONS = [(method.upper(), path)
              for path, item in openapi_document(api_routes(None, InputLimits(), 3),
                                                 ["digits", "digits_linear"])["paths"].items()
              for method in item]


@pytest.fixture(scope="module")
def app() -> Starlette:
    """Its own app: schemathesis runs requests on an event loop of its own."""
    return build_app(config_args())


@pytest.fixture(scope="module")
def schema(app: Starlette) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_every_operation_is_fuzzed():
    assert len(OPERATIONS) >= 21


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_generated_request_gets_a_server_error(schema, method: str, path: str):
    statuses: list[int] = []

    @given(case=schema[path][method].as_strategy())
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        statuses.append(case.call_and_validate(checks=[not_a_server_error]).status_code)

    fuzz()
    assert statuses and max(statuses) < 500
    STATUSES.extend(statuses)


def test_the_app_is_whole_after_fuzzing(app: Starlette, schema):
    # The fuzzing reached the models (200s) and was turned away (4xx), never a 5xx.
    assert 200 in STATUSES and any(400 <= s < 500 for s in STATUSES)
    sample = SAMPLES[5]
    with get_client(app) as client:  # on schemathesis' event loop, like the fuzzing
        r = client.post("/predict", data=sample.read_bytes(),
                        headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    assert top_label(r.json()["predictions"][0]) == sample_label(sample)


# What schemathesis does not generate: numbers past the digits Python converts,
# text that is not valid Unicode, nesting deeper than any tensor, huge floats.
HOSTILE = st.one_of(
    st.builds(lambda sign, digits: sign + digits, st.sampled_from(["", "-"]),  # integers
              st.integers(4301, 6000).map(lambda n: "9" * n)),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)  # lone surrogates
    .map(lambda t: json.dumps(t)),
    st.integers(65, 500).map(lambda d: "[" * d + "0" + "]" * d),       # nesting
    st.sampled_from(["1e999999", "-1e999999", '"\\u0000"', '""', "null", "{}", "true"]),
)
SLOT = '"__slot__"'
V2_INFER = ('{"id": "r", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], '
            '"data": [' + ", ".join(["0"] * 64) + ']}], "outputs": [{"name": "probabilities"}]}')
TEMPLATES = [  # (method, path, body); each "__slot__" (quoted or not) takes a hostile value
    *(("POST", "/v2/models/digits_linear/infer", V2_INFER.replace(old, new, 1)) for old, new in [
        ('"pixels"', SLOT), ('"FP32"', SLOT), ("[1, 64]", f"[1, {SLOT}]"),
        ('"data": [0', f'"data": [{SLOT}'), ('"r"', SLOT), ('"probabilities"', SLOT),
        ('"shape"', f'"parameters": {{"binary_data_size": {SLOT}}}, "shape"')]),
    ("POST", "/v1/models/digits_linear:predict", f'{{"instances": [[{SLOT}]]}}'),
    ("POST", "/v1/models/digits_linear:predict", f'{{"inputs": {{"pixels": {SLOT}}}}}'),
    ("POST", "/v1/models/digits_linear:predict",
     f'{{"signature_name": {SLOT}, "instances": [[0]]}}'),
    ("POST", "/v1/models/digits:predict", f'{{"instances": [{{"b64": {SLOT}}}]}}'),
    ("POST", "/v1/models/digits:predict", f'{{"instances": [{{{SLOT}: 0}}]}}'),
    ("POST", "/models/digits_linear/predict", f'{{"instances": {SLOT}}}'),
    ("POST", "/predict?top_k=__slot__", ""),
    ("GET", "/v2/models/digits/versions/__slot__", ""),
    ("GET", "/v1/models/__slot__/versions/1", ""),
]


@given(template=st.sampled_from(TEMPLATES), value=HOSTILE)
@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_hostile_values_anywhere_get_no_server_error(client, template, value: str):
    method, path, body = template
    if "__slot__" in path:  # in the URL the value goes percent-encoded, as a client sends it
        path = path.replace("__slot__", quote(value.strip('"'), safe=""))
    content = body.replace(SLOT, value).replace('"__slot__"', value).encode(
        "utf-8", "surrogatepass")
    headers = {"Content-Type": "application/json" if body else "image/png"}
    response = client.request(method, path, content=content or b"x", headers=headers)
    assert response.status_code < 500, (path, content[:200], response.text[:300])
    if response.status_code >= 400:  # an echoed request id, say, is fine as it is
        assert "error" in response.json()
