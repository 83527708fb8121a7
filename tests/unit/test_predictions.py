import numpy as np
import pytest

from deployments.codecs.predictions import (
    parse_flag,
    parse_top_k,
    top_k_indices,
    top_k_predictions,
)
from deployments.errors import BadRequest

LABELS = ("zero", "one", "two", "three")


def test_top_k_best_first_with_labels():
    scores = np.array([[0.1, 0.6, 0.05, 0.25], [0.7, 0.1, 0.1, 0.1]], dtype=np.float32)
    result = top_k_predictions(scores, LABELS, 2, include_scores=False)
    assert [p["label"] for p in result[0]["top_k"]] == ["one", "three"]
    assert result[0]["top_k"][0] == {"label": "one", "index": 1,
                                     "probability": pytest.approx(0.6)}
    assert result[1]["top_k"][0]["label"] == "zero"
    assert "scores" not in result[0]


def test_full_scores_on_request():
    scores = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    result = top_k_predictions(scores, LABELS, 1, include_scores=True)
    assert result[0]["scores"] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_top_k_default_is_capped_by_class_count():
    assert parse_top_k(None, default=5, classes=4) == 4
    assert parse_top_k("2", default=5, classes=4) == 2


@pytest.mark.parametrize(("value", "message"), [("x", "integer"), ("0", "between 1 and 4"),
                                                ("5", "between 1 and 4")])
def test_bad_top_k(value, message):
    with pytest.raises(BadRequest, match=message):
        parse_top_k(value, default=3, classes=4)


def test_flags():
    assert parse_flag("true", "scores") and parse_flag("1", "scores")
    assert not parse_flag(None, "scores") and not parse_flag("false", "scores")
    assert parse_flag(1, "scores") and not parse_flag(0, "scores")
    for bad in ("maybe", 2.5, [1]):
        with pytest.raises(BadRequest, match="scores must be true or false"):
            parse_flag(bad, "scores")


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("seed", range(2))
def test_top_k_by_partition_ranks_as_a_full_stable_sort(seed, dtype):
    """Ties in class order, NaN last, -0.0 equal to 0.0: every row as argsort ranks it."""
    rng = np.random.default_rng(seed)
    values = [0.0, -0.0, 0.5, 1.0, np.inf, -np.inf, np.nan]
    for _ in range(500):
        classes = int(rng.integers(1, 80))
        scores = rng.choice(values, (int(rng.integers(1, 4)), classes)).astype(dtype)
        k = int(rng.integers(1, classes + 1))
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(top_k_indices(scores, k), expected)


def test_top_k_of_other_dtypes_ranks_their_values():
    """bfloat16 (numpy sorts its NaN first), unsigned and small ints (negating wraps)."""
    import ml_dtypes

    scores = np.array([[np.nan, 0.5, 2.0] + [0.0] * 9], ml_dtypes.bfloat16)
    np.testing.assert_array_equal(top_k_indices(scores, 3), [[2, 1, 3]])
    np.testing.assert_array_equal(top_k_indices(np.array([[0, 3, 200, 1]], np.uint8), 2),
                                  [[2, 1]])
    np.testing.assert_array_equal(top_k_indices(np.array([[-128, 5, 127]], np.int8), 1), [[2]])
