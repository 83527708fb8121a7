import pytest

from deployments.metrics import UNKNOWN_MODEL, model_label, protocol_of


@pytest.mark.parametrize(("route", "protocol"), [
    ("/predict", "native"), ("/models", "native"), ("/models/{name}/predict", "native"),
    ("/v1/models/{name}:predict", "tfserving"), ("/v2/models/{name}/infer", "v2"),
    ("/v2", "v2"), ("/healthz", "other"), (None, "none"),
])
def test_protocol_of_route(route, protocol):
    assert protocol_of(route) == protocol


def test_model_label_is_bounded_to_served_names():
    served = ["digits", "digits_linear"]
    assert model_label("digits_linear", served) == "digits_linear"
    assert model_label("../../etc/passwd", served) == UNKNOWN_MODEL
    assert model_label("", served) == ""
    assert model_label(None, served) == ""
