"""A corpus of over 300 bad requests across every route and protocol: each gets
a 4xx JSON error naming the problem, none a 5xx, nothing internal leaks, and
good requests still get correct answers afterwards. (The cluster tier sends a
sample of it through Serve's proxy and checks no replica is lost.)"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import zlib
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.common import ROOT, SAMPLES, sample_label, top_label

PNG = SAMPLES[0].read_bytes()  # a valid digit, for corrupting
IMAGE_MODEL, TENSOR_MODEL = "digits", "digits_linear"


@dataclass
class Bad:
    what: str
    method: str
    path: str
    status: int
    phrase: str  # part of the error message that names the problem
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def animated_gif() -> bytes:
    frames = [Image.new("L", (28, 28), c) for c in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def huge_png_header() -> bytes:
    """A valid PNG whose header is patched to 100000 x 100000 pixels (a bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    png = bytearray(buffer.getvalue())
    png[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))  # IHDR's CRC
    return bytes(png)


BAD_IMAGES = {  # blob → (status, phrase)
    "empty": (b"", 400, "empty"),
    "text": (b"hello, not an image", 400, "cannot decode image"),
    "truncated PNG": (PNG[:60], 400, "cannot decode image"),
    "wrong magic": (b"\x00\x00\x00\x00" + PNG[4:], 400, "cannot decode image"),
    "random bytes": (np.random.default_rng(1).bytes(2000), 400, "cannot decode image"),
    "PostScript": (b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\n", 400, "cannot decode image"),
    "animated GIF": (animated_gif(), 400, "animated (2 frames)"),
    "bomb header": (huge_png_header(), 413, "too many pixels"),
    "BMP header only": (b"BM" + b"\x00" * 40, 400, "cannot decode image"),
    "half a JPEG": (SAMPLES[1].read_bytes()[:200], 400, "cannot decode image"),
    "TIFF header only": (b"II*\x00" + b"\x00" * 12, 400, "cannot decode image"),
    "GIF header only": (b"GIF89a\x1c\x00\x1c\x00", 400, "cannot decode image"),
}

BAD_TENSORS = {  # JSON value for 1 instance of the tensor model → (status, phrase)
    "short row": ([[0.0] * 63], 400, "63"),
    "long row": ([[0.0] * 65], 400, "65"),
    "ragged": ([[0.0] * 64, [0.0] * 3], 400, "ragged"),
    "strings": ([["a"] * 64], 400, "number"),
    "nested too deep": ([[[0.0] * 64]], 400, "shape"),
    "overflow": ([[1e39] * 64], 400, "infinite"),
    "objects": ([[{"x": 1}] * 64], 400, ""),
    "nulls": ([[None] * 64], 400, ""),
    "too many rows": ([[0.0] * 64] * 257, 413, "limit is 256"),
    "scalar rows": ([1.0, 2.0], 400, "shape"),
}

MALFORMED_JSON = {
    "truncated": (b'{"instances": [[1, 2', "malformed JSON"),
    "trailing garbage": (b'{"instances": []} xyz', "malformed JSON"),
    "not UTF-8": (b'{"instances": ["\xff\xfe"]}', "UTF-8"),
    "empty body": (b"", "empty request body"),
    "NaN token": (b'{"instances": [[NaN]]}', "NaN"),
    "Infinity token": (b'{"instances": [[Infinity]]}', "Infinity"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "single quotes": (b"{'instances': []}", "malformed JSON"),
}


def json_body(document: object) -> bytes:
    return json.dumps(document).encode()


def image_cases() -> list[Bad]:
    cases = []
    for name, (blob, status, phrase) in BAD_IMAGES.items():
        cases.append(Bad(f"raw {name}", "POST", "/predict", status, phrase, blob,
                         {"Content-Type": "image/png"}))
        cases.append(Bad(f"octet-stream {name}", "POST", f"/models/{IMAGE_MODEL}/predict",
                         status, phrase, blob, {"Content-Type": "application/octet-stream"}))
        form = httpx.Request("POST", "/", files=[("a", ("ok.png", PNG, "image/png")),
                                                 ("b", ("bad.png", blob, "image/png"))])
        cases.append(Bad(f"multipart {name}", "POST", "/predict", status,
                         phrase if status == 413 else "image 1", form.read(),
                         dict(form.headers)))
        cases.append(Bad(f"versioned raw {name}", "POST",
                         f"/models/{IMAGE_MODEL}/versions/1/predict", status, phrase, blob,
                         {"Content-Type": "image/jpeg"}))
        encoded = {"b64": base64.b64encode(blob).decode()}
        cases.append(Bad(f"TF Serving b64 {name}", "POST", f"/v1/models/{IMAGE_MODEL}:predict",
                         status, phrase, json_body({"instances": [encoded]}),
                         {"Content-Type": "application/json"}))
        cases.append(Bad(f"TF Serving columnar b64 {name}", "POST",
                         f"/v1/models/{IMAGE_MODEL}/versions/1:predict", status, phrase,
                         json_body({"inputs": {"image": [encoded]}})))
        cases.append(Bad(f"TF Serving named b64 {name}", "POST",
                         f"/v1/models/{IMAGE_MODEL}:predict", status, phrase,
                         json_body({"instances": [{"image": encoded}]})))
        raw = struct.pack("<I", len(blob)) + blob
        header = json_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                        "parameters": {"binary_data_size": len(raw)}}]})
        cases.append(Bad(f"V2 BYTES {name}", "POST", f"/v2/models/{IMAGE_MODEL}/infer",
                         status, phrase, header + raw,
                         {"Inference-Header-Content-Length": str(len(header))}))
    return cases


def tensor_cases() -> list[Bad]:
    cases = []
    for name, (rows, status, phrase) in BAD_TENSORS.items():
        for model in (TENSOR_MODEL, IMAGE_MODEL):
            # The image model refuses every one of these rows for its shape, but
            # rows are counted before any is read.
            first = model == TENSOR_MODEL or status == 413
            wanted_status = status if first else 400
            wanted_phrase = phrase if first else ""
            cases += [
                Bad(f"native JSON {name} → {model}", "POST", f"/models/{model}/predict",
                    wanted_status, wanted_phrase, json_body({"instances": rows}),
                    {"Content-Type": "application/json"}),
                Bad(f"TF Serving rows {name} → {model}", "POST", f"/v1/models/{model}:predict",
                    wanted_status, wanted_phrase, json_body({"instances": rows})),
                Bad(f"TF Serving columns {name} → {model}", "POST",
                    f"/v1/models/{model}/versions/1:predict", wanted_status, wanted_phrase,
                    json_body({"inputs": rows})),
            ]
        if name != "nested too deep":  # V2 data may be nested any way: that one is fine
            cases.append(Bad(f"V2 JSON {name}", "POST", f"/v2/models/{TENSOR_MODEL}/infer",
                             status, "", json_body({"inputs": [{
                                 "name": "pixels", "datatype": "FP32",
                                 "shape": [len(rows), 64], "data": rows}]})))
    return cases


def malformed_json_cases() -> list[Bad]:
    cases = []
    for name, (body, phrase) in MALFORMED_JSON.items():
        for path in ("/predict", f"/models/{TENSOR_MODEL}/predict",
                     f"/v1/models/{TENSOR_MODEL}:predict", f"/v1/models/{IMAGE_MODEL}:predict",
                     f"/v2/models/{TENSOR_MODEL}/infer", f"/v2/models/{IMAGE_MODEL}/infer",
                     f"/models/{IMAGE_MODEL}/versions/1/predict"):
            cases.append(Bad(f"{name} → {path}", "POST", path, 400, phrase, body,
                             {"Content-Type": "application/json"}))
    return cases


def v2_binary_cases() -> list[Bad]:
    rows = np.zeros((1, 64), np.float32)

    def binary(size: int, blob: bytes, length: str | None = None,
               datatype: str = "FP32", shape: tuple = (1, 64)) -> tuple[bytes, dict]:
        header = json_body({"inputs": [{"name": "pixels", "datatype": datatype,
                                        "shape": list(shape),
                                        "parameters": {"binary_data_size": size}}]})
        return header + blob, {"Inference-Header-Content-Length": length or str(len(header))}

    variants = {
        "size past the end": (binary(256, rows.tobytes()[:100]), "runs past the end"),
        "bytes left over": (binary(256, rows.tobytes() + b"\0" * 8), "add up to 256"),
        "size not matching shape": (binary(100, rows.tobytes()[:100]), "needs 256"),
        "header length text": (binary(256, rows.tobytes(), "abc"), "byte count"),
        "header length negative": (binary(256, rows.tobytes(), "-5"), "byte count"),
        "header length too big": (binary(256, rows.tobytes(), "999999"), "has only"),
        "header length too small": (binary(256, rows.tobytes(), "7"), "malformed JSON"),
        "negative size": (binary(-1, b""), "binary_data_size must not be negative"),
        "unknown datatype": (binary(256, rows.tobytes(), datatype="FP8"), "unsupported"),
        "BF16 wrong size": (binary(100, b"\0" * 100, datatype="BF16"), "needs 128"),
        "BYTES to a tensor model": (binary(8, struct.pack("<I", 4) + b"abcd",
                                           datatype="BYTES", shape=(1,)), "takes tensors"),
        "FP64 wrong size": (binary(256, rows.tobytes(), datatype="FP64"), "needs 512"),
    }
    return [Bad(f"V2 binary {name}", "POST", f"/v2/models/{TENSOR_MODEL}/infer", 400, phrase,
                body, headers) for name, ((body, headers), phrase) in variants.items()]


def v2_json_structure_cases() -> list[Bad]:
    good = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    variants = {
        "no inputs": ({}, "inputs is required"),
        "inputs not a list": ({"inputs": {}}, "inputs must be a list"),
        "input not an object": ({"inputs": [1]}, "must be a JSON object"),
        "no name": ({"inputs": [{**good, "name": ""}]}, "name must not be empty"),
        "wrong name": ({"inputs": [{**good, "name": "x"}]}, "missing 'pixels'; unknown 'x'"),
        "two inputs": ({"inputs": [good, good]}, "the request has 2 input tensors"),
        "bad shape": ({"inputs": [{**good, "shape": [1, -64]}]}, "must not be negative"),
        "shape as string": ({"inputs": [{**good, "shape": "1,64"}]}, "shape must be"),
        "no data": ({"inputs": [{k: v for k, v in good.items() if k != "data"}]},
                    'neither "data"'),
        "unknown output": ({"inputs": [good], "outputs": [{"name": "nope"}]},
                           "has no output 'nope'"),
        "classification of nothing": ({"inputs": [good], "outputs": [
            {"name": "probabilities", "parameters": {"classification": -1}}]},
            "classification must not be negative"),
        "binary flag as string": ({"inputs": [good], "parameters": {
            "binary_data_output": "yes"}}, "true or false"),
        "id as number": ({"inputs": [good], "id": 5}, "id must be a string"),
        "ints as floats": ({"inputs": [{**good, "datatype": "INT32",
                                        "data": [0.5] * 64}]}, "must be integers"),
        "NaN in FP32": ({"inputs": [{**good, "data": [1e39] * 64}]}, "out of range"),
        "INT8 out of range": ({"inputs": [{**good, "datatype": "INT8",
                                           "data": [300] * 64}]}, "out of range for INT8"),
    }
    return [Bad(f"V2 JSON {name}", "POST", f"/v2/models/{TENSOR_MODEL}/infer", 400, phrase,
                json_body(document)) for name, (document, phrase) in variants.items()]


def routing_cases() -> list[Bad]:
    cases = []
    for model, version, phrase in (("nope", None, "no model named 'nope'"),
                                   (TENSOR_MODEL, "9", "has no version '9'"),
                                   (TENSOR_MODEL, "x", "has no version 'x'"),
                                   (TENSOR_MODEL, "01x", "has no version '01x'"),
                                   (TENSOR_MODEL, "%C2%B2", "has no version '²'")):
        suffix = "" if version is None else f"/versions/{version}"
        for method, path in (
            ("POST", f"/models/{model}{suffix}/predict"),
            ("GET", f"/v1/models/{model}{suffix}"),
            ("GET", f"/v1/models/{model}{suffix}/metadata"),
            ("POST", f"/v1/models/{model}{suffix}:predict"),
            ("GET", f"/v2/models/{model}{suffix}"),
            ("GET", f"/v2/models/{model}{suffix}/ready"),
            ("POST", f"/v2/models/{model}{suffix}/infer"),
        ):
            body = json_body({"instances": [[0.0] * 64]}) if method == "POST" else b""
            if path.endswith("/infer"):
                body = json_body({"inputs": [{"name": "pixels", "datatype": "FP32",
                                              "shape": [1, 64], "data": [0.0] * 64}]})
            cases.append(Bad(f"{method} {path}", method, path, 404, phrase, body,
                             {"Content-Type": "application/json"}))
    for method, path in (("GET", "/predict"), ("PUT", "/predict"), ("DELETE", "/models"),
                         ("GET", "/v2/models/digits/infer"), ("POST", "/v2/health/live"),
                         ("GET", f"/v1/models/{TENSOR_MODEL}:predict"), ("POST", "/readyz")):
        status = 404 if path.endswith(":predict") else 405
        phrase = "no model named" if status == 404 else "Method Not Allowed"
        cases.append(Bad(f"{method} {path}", method, path, status, phrase))
    for path in ("/nope", "/v3/models", "/v1/models", "/v2/models/", "/models/digits"):
        cases.append(Bad(f"GET {path}", "GET", path, 404, "Not Found"))
    # Models are looked up by configured name, never as a path on disk.
    for name in ("..%2F..%2Fetc%2Fpasswd", "%2Ftmp%2Fmodel", "digits%2F1"):
        cases.append(Bad(f"model path {name}", "GET", f"/v2/models/{name}", 404, "Not Found"))
    for name in ("~root", "digits..", ".hidden"):
        cases.append(Bad(f"model name {name}", "GET", f"/v1/models/{name}", 404,
                         "no model named"))
    return cases


def media_and_encoding_cases() -> list[Bad]:
    cases = []
    for media in ("text/plain", "application/xml", "", "video/mp4", "application/x-www-form"):
        for path in ("/predict", f"/models/{IMAGE_MODEL}/predict"):
            cases.append(Bad(f"{media or 'no media type'} → {path}", "POST", path, 415,
                             "unsupported Content-Type", PNG,
                             {"Content-Type": media} if media else {}))
    for path, body in (("/predict", PNG),
                       (f"/v1/models/{TENSOR_MODEL}:predict",
                        json_body({"instances": [[0.0] * 64]})),
                       (f"/v2/models/{TENSOR_MODEL}/infer", b'{"inputs": []}')):
        media = {"Content-Type": "image/png" if body is PNG else "application/json"}
        cases += [
            Bad(f"br → {path}", "POST", path, 415, "'br' is not supported", body,
                {**media, "Content-Encoding": "br"}),
            Bad(f"fake gzip → {path}", "POST", path, 400, "cannot gzip-decode", body,
                {**media, "Content-Encoding": "gzip"}),
            Bad(f"gzip bomb → {path}", "POST", path, 413, "decompressed body exceeds",
                gzip.compress(b"\0" * 20_000_000), {**media, "Content-Encoding": "gzip"}),
            Bad(f"too large → {path}", "POST", path, 413, "limit is 16777216",
                b"\0" * (16 * 2**20 + 1), media),
        ]
    return cases


def too_many_images_cases() -> list[Bad]:
    """Refused by count before any is decoded (the batch would be allocated first)."""
    blobs = [PNG] * 257
    raw = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    header = json_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [257],
                                    "parameters": {"binary_data_size": len(raw)}}]})
    encoded = [{"b64": base64.b64encode(b).decode()} for b in blobs]
    return [
        Bad("V2 BYTES 257 images", "POST", f"/v2/models/{IMAGE_MODEL}/infer", 413,
            "has 257 rows, the limit is 256", header + raw,
            {"Inference-Header-Content-Length": str(len(header))}),
        Bad("TF Serving 257 b64 images", "POST", f"/v1/models/{IMAGE_MODEL}:predict", 413,
            "has 257 rows, the limit is 256", json_body({"instances": encoded})),
    ]


HUGE = "9" * 5000  # past the 4,300 digits Python converts to an int
SURROGATE = '"\\ud800"'  # a JSON string holding a lone surrogate: not valid Unicode


def nested(depth: int, leaf: str) -> str:
    return "[" * depth + leaf + "]" * depth


def v2_document(name: str = '"pixels"', datatype: str = "FP32", shape: str = "[1, 64]",
                data: str = json.dumps([0.0] * 64), extra: str = "") -> bytes:
    return (f'{{"inputs": [{{"name": {name}, "datatype": "{datatype}", "shape": {shape}, '
            f'"data": {data}}}]{extra}}}').encode()


def hostile_text_cases() -> list[Bad]:
    """Numbers too long for Python to convert, text that is not valid Unicode,
    and nesting deeper than any tensor, wherever a request can carry them."""
    image, document = ({"Content-Type": "image/png"}, PNG), ({}, v2_document('"image"'))
    routes = {  # each with a body that reaches the version lookup
        ("POST", "/models/digits/versions/{}/predict"): image,
        ("GET", "/v1/models/digits/versions/{}"): ({}, b""),
        ("GET", "/v1/models/digits/versions/{}/metadata"): ({}, b""),
        ("POST", "/v1/models/digits/versions/{}:predict"): ({}, b'{"instances": [[0]]}'),
        ("GET", "/v2/models/digits/versions/{}"): ({}, b""),
        ("GET", "/v2/models/digits/versions/{}/ready"): ({}, b""),
        ("POST", "/v2/models/digits/versions/{}/infer"): document,
    }
    cases = [Bad(f"{method} version of 5000 digits → {path}", method, path.format(HUGE), 404,
                 "has no version", body, headers)
             for (method, path), (headers, body) in routes.items()]
    cases += [
        Bad("Content-Length of 5000 digits", "POST", "/predict", 413, "the limit is", PNG,
            {"Content-Type": "image/png", "Content-Length": HUGE}),
        Bad("Inference-Header-Content-Length of 5000 digits", "POST",
            f"/v2/models/{TENSOR_MODEL}/infer", 400, "must be a byte count", v2_document(),
            {"Inference-Header-Content-Length": HUGE}),
        Bad("V2 integer literal of 5000 digits", "POST", f"/v2/models/{TENSOR_MODEL}/infer", 400,
            "malformed JSON", v2_document(data=f"[{HUGE}]")),
        Bad("V2 shape dimension of 5000 digits", "POST", f"/v2/models/{TENSOR_MODEL}/infer",
            400, "malformed JSON", v2_document(shape=f"[1, {HUGE}]")),
        Bad("top_k of 5000 digits", "POST", f"/predict?top_k={HUGE}", 400, "top_k must be",
            PNG, {"Content-Type": "image/png"}),
    ]
    unicode = {
        "V2 BYTES data": (f"/v2/models/{IMAGE_MODEL}/infer", v2_document(
            '"image"', "BYTES", "[1]", f"[{SURROGATE}]"), "valid Unicode"),
        "V2 input name": (f"/v2/models/{TENSOR_MODEL}/infer", v2_document(SURROGATE),
                          "valid Unicode"),
        "V2 output name": (f"/v2/models/{TENSOR_MODEL}/infer", v2_document(
            extra=f', "outputs": [{{"name": {SURROGATE}}}]'), "valid Unicode"),
        "TF Serving input name": (f"/v1/models/{TENSOR_MODEL}:predict",
                                  f'{{"instances": [{{{SURROGATE}: [0]}}]}}'.encode(),
                                  "names inputs"),
        "TF Serving signature": (f"/v1/models/{TENSOR_MODEL}:predict",
                                 f'{{"signature_name": {SURROGATE}, "instances": [[0]]}}'
                                 .encode(), "not found"),
        "TF Serving b64": (f"/v1/models/{IMAGE_MODEL}:predict",
                           f'{{"instances": [{{"b64": {SURROGATE}}}]}}'.encode(),
                           "not valid base64"),
        "native instances": (f"/models/{TENSOR_MODEL}/predict",
                             f'{{"instances": [{SURROGATE}]}}'.encode(), "number"),
    }
    cases += [Bad(f"lone surrogate in {name}", "POST", path, 400, phrase, body,
                  {"Content-Type": "application/json"})
              for name, (path, body, phrase) in unicode.items()]
    deep = {
        "V2 BYTES data": (f"/v2/models/{IMAGE_MODEL}/infer", v2_document(
            '"image"', "BYTES", "[1]", nested(200, '"a"')), "nested deeper"),
        "V2 FP32 data": (f"/v2/models/{TENSOR_MODEL}/infer",
                         v2_document(data=nested(200, "0")), "nested too deeply"),
        "TF Serving instances": (f"/v1/models/{TENSOR_MODEL}:predict",
                                 f'{{"instances": {nested(200, "0")}}}'.encode(), ""),
        "native instances": (f"/models/{TENSOR_MODEL}/predict",
                             f'{{"instances": {nested(200, "0")}}}'.encode(), ""),
    }
    cases += [Bad(f"{name} nested 200 deep", "POST", path, 400, phrase, body,
                  {"Content-Type": "application/json"})
              for name, (path, body, phrase) in deep.items()]
    return cases


def decoded_size_cases() -> list[Bad]:
    """Sixteen small PNGs (~50 KB each) that would decode to 3 GiB: refused from
    their headers, before any is decoded, on every route that takes several."""
    buffer = io.BytesIO()
    Image.new("RGBA", (4096, 4096)).save(buffer, format="PNG")
    blobs = [buffer.getvalue()] * 16
    form = httpx.Request("POST", "/", files=[(f"f{i}", ("big.png", b, "image/png"))
                                             for i, b in enumerate(blobs)])
    raw = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    header = json_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [16],
                                    "parameters": {"binary_data_size": len(raw)}}]})
    encoded = [{"b64": base64.b64encode(b).decode()} for b in blobs]
    phrase = "16 images would decode to"
    return [
        Bad("multipart of 16 small 16 MP PNGs", "POST", "/predict", 413, phrase, form.read(),
            dict(form.headers)),
        Bad("V2 BYTES of 16 small 16 MP PNGs", "POST", f"/v2/models/{IMAGE_MODEL}/infer", 413,
            phrase, header + raw, {"Inference-Header-Content-Length": str(len(header))}),
        Bad("TF Serving b64 of 16 small 16 MP PNGs", "POST",
            f"/v1/models/{IMAGE_MODEL}:predict", 413, phrase, json_body({"instances": encoded})),
    ]


def corpus() -> list[Bad]:
    return (image_cases() + tensor_cases() + malformed_json_cases() + v2_binary_cases()
            + v2_json_structure_cases() + routing_cases() + media_and_encoding_cases()
            + too_many_images_cases() + hostile_text_cases() + decoded_size_cases())


CORPUS = corpus()
# What a real HTTP client can send (httpx refuses a Content-Length it did not count).
OVER_THE_WIRE = [bad for bad in CORPUS if "Content-Length" not in bad.headers]


def test_the_corpus_is_large():
    assert len(CORPUS) >= 300


def check(bad: Bad, response: httpx.Response) -> str | None:
    """What is wrong with the answer to ``bad`` (``None``: nothing)."""
    try:
        error = response.json().get("error", "")
    except ValueError:
        error = None
    if response.status_code != bad.status or not error or bad.phrase not in error:
        return f"{bad.what}: {response.status_code} {response.text[:200]!r}"
    if str(ROOT) in error or "Traceback" in error:
        return f"{bad.what}: internal detail in {error!r}"
    return None


@pytest.mark.parametrize("bad", CORPUS, ids=[bad.what for bad in CORPUS])
def test_a_bad_request_gets_a_clear_4xx(client: httpx.Client, bad: Bad):
    response = client.request(bad.method, bad.path, content=bad.content, headers=bad.headers)
    assert check(bad, response) is None


def test_good_requests_are_answered_after_the_corpus(client: httpx.Client):
    for sample in SAMPLES:
        r = client.post("/predict", content=sample.read_bytes(),
                        headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and top_label(r.json()["predictions"][0]) == \
            sample_label(sample)
