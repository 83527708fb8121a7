from types import SimpleNamespace

from deployments.metrics import UNKNOWN_MODEL, model_label, protocol_of


def test_protocol_is_read_off_the_matched_route():
    assert protocol_of(SimpleNamespace(protocol="v2")) == "v2"
    assert protocol_of(SimpleNamespace(path="/ui")) == "other"  # the demo page's files
    assert protocol_of(None) == "none"  # no route matched


def test_model_label_is_bounded_to_served_names():
    served = ["digits", "digits_linear"]
    assert model_label("digits_linear", served) == "digits_linear"
    assert model_label("../../etc/passwd", served) == UNKNOWN_MODEL
    assert model_label("", served) == ""
    assert model_label(None, served) == ""
