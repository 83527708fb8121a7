import gzip
import json
import zlib

import pytest

from deployments.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from deployments.ingress.protocols.http import PortableJSON, _decompress


@pytest.mark.parametrize(("encoding", "pack"), [("gzip", gzip.compress),
                                                ("deflate", zlib.compress),
                                                ("identity", lambda b: b), (None, lambda b: b)])
def test_bodies_are_inflated(encoding, pack):
    assert _decompress(pack(b'{"a": 1}'), encoding, 100) == b'{"a": 1}'


def test_a_small_bomb_is_refused_at_the_limit():
    bomb = gzip.compress(b"\0" * 10_000_000)
    assert len(bomb) < 20_000
    with pytest.raises(PayloadTooLarge, match="decompressed body exceeds the limit of 1000"):
        _decompress(bomb, "gzip", 1000)


@pytest.mark.parametrize(
    ("body", "encoding", "error", "message"),
    [(b"not gzip", "gzip", BadRequest, "cannot gzip-decode"),
     (gzip.compress(b"abcdef", mtime=0)[:-12], "gzip", BadRequest, "truncated"),
     (b"x", "br", UnsupportedMediaType, "'br' is not supported")],
)
def test_bad_encodings(body, encoding, error, message):
    with pytest.raises(error, match=message):
        _decompress(body, encoding, 100)


def test_non_finite_outputs_become_null_not_a_500():
    content = {"outputs": {"y": [[1.5, float("nan")], [float("inf"), -float("inf")]]}, "v": 1}
    assert json.loads(PortableJSON(content).body) == {"outputs": {"y": [[1.5, None],
                                                                      [None, None]]}, "v": 1}
    assert PortableJSON({"p": [0.25]}).body == b'{"p":[0.25]}'
