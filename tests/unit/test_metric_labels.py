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


def test_a_successful_request_about_a_model_is_timed_once_from_its_arrival():
    from deployments.metrics import IngressMetrics, arrival

    metrics = IngressMetrics(["digits", "digits_linear"])
    timed: list[tuple[float, dict]] = []
    metrics._latency = SimpleNamespace(  # type: ignore[assignment]
        observe=lambda seconds, tags: timed.append((seconds, tags)))
    metrics.count("digits", "native", 200)  # no arrival marked: not timed
    with arrival():
        pass
    metrics.count(None, "native", 200)  # the default model
    metrics.count("digits", "native", 200)  # the same request's time counts once
    for name, status in (("digits_linear", 404), ("digits", "INVALID_ARGUMENT"), ("", 200)):
        with arrival():
            pass
        metrics.count(name, "tfserving-grpc", status)
    with arrival():
        pass
    metrics.count("digits_linear", "v2-grpc", "OK")
    assert [tags for _, tags in timed] == [{"model": "digits", "protocol": "native"},
                                           {"model": "digits_linear", "protocol": "v2-grpc"}]
    assert all(0 <= seconds < 1 for seconds, _ in timed)
