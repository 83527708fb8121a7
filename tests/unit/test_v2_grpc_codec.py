import pickle
from functools import partial

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

import deployments.ingress.protocols.v2_grpc  # noqa: F401  (installs the aliases pickle needs)
from deployments.codecs.v2_grpc import encode_infer_response, parse_infer_request
from deployments.codecs.v2_tensor import OutputTensor
from deployments.errors import BadRequest
from deployments.signature import ModelMetadata, TensorSpec

# Limits far above what these tests send.
parse = partial(parse_infer_request, max_rows=256, max_elements=2**26)

META = ModelMetadata("m", 1, "serving_default", (TensorSpec("x", "float32", (None, 2)),),
                     (TensorSpec("y", "float32", (None, 2)),), "y", ("a", "b"))
Tensor = pb.ModelInferRequest.InferInputTensor


def test_raw_contents_are_views():
    array = np.arange(4, dtype="<f4").reshape(2, 2)
    message = pb.ModelInferRequest(inputs=[Tensor(name="x", datatype="FP32", shape=[2, 2])],
                                   raw_input_contents=[array.tobytes()], id="q")
    request = parse(message)
    (inp,) = request.inputs
    assert np.array_equal(inp.data, array) and not inp.data.flags.owndata
    assert request.id == "q"


def test_typed_contents():
    tensor = Tensor(name="x", datatype="INT32", shape=[3],
                    contents=pb.InferTensorContents(int_contents=[1, -2, 3]))
    (inp,) = parse(pb.ModelInferRequest(inputs=[tensor])).inputs
    assert inp.data.dtype == np.int32 and inp.data.tolist() == [1, -2, 3]


def test_classification_parameter():
    out = pb.ModelInferRequest.InferRequestedOutputTensor(name="y")
    out.parameters["classification"].int64_param = 2
    message = pb.ModelInferRequest(
        inputs=[Tensor(name="x", datatype="FP32", shape=[1, 2],
                       contents=pb.InferTensorContents(fp32_contents=[1, 2]))], outputs=[out])
    assert parse(message).outputs[0].classification == 2


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (pb.ModelInferRequest(), "no inputs"),
        (pb.ModelInferRequest(inputs=[Tensor(name="x", datatype="FP32", shape=[2])],
                              raw_input_contents=[b"\0" * 4]), "4 bytes of data"),
        (pb.ModelInferRequest(inputs=[Tensor(name="x", datatype="FP32", shape=[2])],
                              raw_input_contents=[b"", b""]), "2 raw_input_contents for 1"),
        (pb.ModelInferRequest(inputs=[Tensor(name="x", datatype="FP16", shape=[1])]),
         "must come in raw_input_contents"),
        (pb.ModelInferRequest(inputs=[Tensor(
            name="x", datatype="UINT8", shape=[1],
            contents=pb.InferTensorContents(uint_contents=[300]))]), "out of range"),
    ],
)
def test_bad_messages(message, error):
    with pytest.raises(BadRequest, match=error):
        parse(message)


def test_response_uses_raw_output_contents():
    data = np.array([[0.25, 0.75]], np.float32)
    response = encode_infer_response(META, "q", [OutputTensor("y", "FP32", (1, 2), data)])
    assert response.model_version == "1" and response.id == "q"
    assert response.outputs[0].shape == [1, 2]
    assert np.array_equal(np.frombuffer(response.raw_output_contents[0], "<f4"), data.ravel())


def test_messages_survive_plain_pickle_as_serve_proxy_sends_them():
    """Serve's gRPC proxy sends each request to the replica with ``pickle``;
    the generated classes' module names are not importable without our alias."""
    request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[b"\x00" * 8])
    response = pb.ModelInferResponse(model_name="digits", id="r-1")
    for message in (request, response):
        assert pickle.loads(pickle.dumps(message)) == message
