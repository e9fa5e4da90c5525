"""The V2 wire format without a server: requests as tritonclient writes them, binary and JSON, and the responses."""
import json

import numpy as np
import pytest
import tritonclient.http as triton

from vaedeploy.serve.protocol import HEADER_LENGTH, ProtocolError, parse_request, write_response


def tritonclient_body(arrays: dict, binary: bool, outputs=None, parameters=None) -> tuple[bytes, str | None]:
    """The body tritonclient.http sends for these inputs (its own request writer)."""
    from tritonclient.http._utils import _get_inference_request

    types = {"float32": "FP32", "float16": "FP16", "int64": "INT64"}
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), types[str(array.dtype)])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, json_size = _get_inference_request(inputs=inputs, request_id="", outputs=outputs, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                             custom_parameters=parameters)
    return (body.encode() if isinstance(body, str) else body), (None if json_size is None else str(json_size))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclients_requests_parse_to_the_same_arrays(binary):
    x = np.random.default_rng(0).random((2, 1, 3, 3), dtype=np.float32)
    codes = np.arange(6, dtype=np.int64).reshape(2, 3)
    body, header = tritonclient_body({"x": x, "codes": codes}, binary, parameters={"seed": 4})
    request = parse_request(body, header)
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["codes"], codes)
    assert request.parameters == {"seed": 4} and request.outputs is None
    assert request.binary_default  # tritonclient asks for binary outputs unless told otherwise


def test_binary_and_json_outputs_as_asked():
    body, header = tritonclient_body({"x": np.zeros((1, 2), np.float32)}, True,
                                     outputs=[triton.InferRequestedOutput("b", binary_data=True),
                                              triton.InferRequestedOutput("a", binary_data=False)])
    request = parse_request(body, header)
    a, b = np.arange(4, dtype=np.float32).reshape(2, 2), np.arange(3, dtype=np.int64)
    payload, headers = write_response("m", request, {"a": a, "b": b})
    length = int(headers[HEADER_LENGTH])
    doc = json.loads(payload[:length])
    assert [o["name"] for o in doc["outputs"]] == ["b", "a"]
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 24} and doc["outputs"][1]["data"] == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.frombuffer(payload[length:], np.int64), b)
    plain, headers = write_response("m", parse_request(b'{"inputs": []}', None), {"a": a})
    assert headers == {"content-type": "application/json"} and json.loads(plain)["outputs"][0]["shape"] == [2, 2]


@pytest.mark.parametrize("body, header, words", [
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}', None, "datatype"),
    (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}', None, "non-negative"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', None, "expected 'data' or"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', None, "FP32 numbers"),
    (b'{"inputs": [], "outputs": [{"name": "z", "parameters": {"classification": 3}}]}', None, "classification"),
    (b'{"inputs": [], "parameters": {"binary_data_output": 1}}', None, "true or false"),
    (b'{"inputs": []}\x00\x01', None, "Inference-Header-Content-Length header"),
    (b'{"inputs": []}', "x", "Inference-Header-Content-Length"),
])
def test_malformed_requests_are_named(body, header, words):
    with pytest.raises(ProtocolError, match=words.replace("(", r"\(")) as error:
        parse_request(body, header)
    assert error.value.status == 400
