"""The V2 wire format without a server: requests as tritonclient writes them, binary and JSON, and the responses;
the client's side (bench's requests, the answers it reads) with the same codec."""
import json

import numpy as np
import pytest
import tritonclient.http as triton

from vaedeploy.serve.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    parse_request,
    parse_response,
    write_request,
    write_response,
)


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
    (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}', None,
     "shape: expected an integer from 0 to 2**63 - 1, got -1"),
    # a product of dims past 4300 digits, which no message may print whole
    (b'{"inputs": [{"name": "x", "shape": [' + b",".join([b"9" * 1000] * 5) + b'], "datatype": "FP32", "data": []}]}',
     None, "shape: expected an integer from 0 to 2**63 - 1, got an integer of 1000 digits"),
    # issue 25: JSON numbers checked against the datatype before the cast, which truncates 1.9 and overflows 1e39
    (b'{"inputs": [{"name": "codes", "shape": [2], "datatype": "INT64", "data": [1.9, 2.9]}]}', None,
     "input 'codes'.data: expected integers from -2**63 to 2**63 - 1, got non-integral values such as 1.9"),
    (b'{"inputs": [{"name": "codes", "shape": [2], "datatype": "INT64", "data": [1, 10000000000000000000000]}]}',
     None, "input 'codes'.data: expected an integer from -2**63 to 2**63 - 1, got 1e+22"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1e39, 0]}]}', None,
     "expected finite numbers from -3.40282e+38 to 3.40282e+38, got values from 0 to 1e+39"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [NaN, 0]}]}', None, "got NaN or Inf"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [true, false]}]}', None, "got true"),
    (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [[1], [2, 3]]}]}', None, "uneven"),
    (b'{"parameters": {"seed": 1' + b"0" * 5000 + b'}}', None, "an integer of more than 4300 digits"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', None, "expected 'data' or"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]}', None,
     'expected a finite number from -3.40282e+38 to 3.40282e+38, got "a"'),
    (b'{"inputs": [], "outputs": [{"name": "z", "parameters": {"classification": 3}}]}', None, "classification"),
    (b'{"inputs": [], "parameters": {"binary_data_output": 1}}', None, "true or false"),
    (b'{"inputs": []}\x00\x01', None, "Inference-Header-Content-Length header"),
    (b'{"inputs": []}', "x", "Inference-Header-Content-Length"),
])
def test_malformed_requests_are_named(body, header, words):
    with pytest.raises(ProtocolError) as error:
        parse_request(body, header)
    assert error.value.status == 400 and words in str(error.value), str(error.value)


def test_integral_json_numbers_make_integer_tensors():
    request = parse_request(b'{"inputs": [{"name": "codes", "shape": [3], "datatype": "INT64", "data": [1, 2.0, 3]}]}',
                            None)
    assert request.inputs["codes"].dtype == np.int64 and request.inputs["codes"].tolist() == [1, 2, 3]


def test_a_response_is_strict_json_and_a_nan_raises_instead_of_writing_a_nan_token():
    request = parse_request(b'{"inputs": []}', None)
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_response("m", request, {"x": np.array([0.5, np.nan], np.float32)})
    body, _ = write_response("m", request, {"x": np.array([0.5, 1e38], np.float32)})
    assert json.loads(body, parse_constant=pytest.fail)["outputs"][0]["data"][1] == pytest.approx(1e38, rel=1e-6)


def test_requests_encode_and_decode_both_ways():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, headers = write_request({"x": x}, ["y"], {"seed": 3}, binary=True)
    assert headers["Content-Type"] == "application/octet-stream"
    length = int(headers["Inference-Header-Content-Length"])
    assert body[length:] == x.tobytes() and b'"binary_data_size":24' in body[:length]
    answer = b'{"outputs":[{"name":"y","datatype":"FP32","shape":[2,3],"parameters":{"binary_data_size":24}}]}'
    decoded = parse_response(answer + x.tobytes(), str(len(answer)))
    np.testing.assert_array_equal(decoded["y"], x)
    as_json = b'{"outputs":[{"name":"y","datatype":"INT64","shape":[2],"data":[4,5]}]}'
    np.testing.assert_array_equal(parse_response(as_json, None)["y"], [4, 5])


@pytest.mark.parametrize("binary", [True, False])
def test_a_request_the_client_writes_is_the_request_the_server_parses_and_back(binary):
    x, codes = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), np.arange(4, dtype=np.int64).reshape(2, 2)
    body, headers = write_request({"x": x, "codes": codes}, ["y"], {"seed": 3}, binary)
    request = parse_request(body, headers.get("Inference-Header-Content-Length"))
    assert request.parameters == {"seed": 3} and request.outputs == ["y"] and request.binary == {"y": binary}
    np.testing.assert_array_equal(request.inputs["x"], x)
    assert request.inputs["codes"].dtype == np.int64 and request.inputs["codes"].tolist() == codes.tolist()
    body, headers = write_response("m", request, {"y": x, "z": codes})
    assert list(parse_response(body, headers.get(HEADER_LENGTH))) == ["y"]
    np.testing.assert_array_equal(parse_response(body, headers.get(HEADER_LENGTH))["y"], x)


@pytest.mark.parametrize("body, header, words", [
    (b'{"outputs": "\xff"}', None, "the response's JSON header does not parse (UnicodeDecodeError"),
    (b"[]", None, "the response: expected a JSON object, got []"),
    (b'{"outputs": {}}', None, "outputs: expected a list of tensors, got {}"),
    (b'{"outputs": [{"name": "y", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}', None,
     "output 'y'.datatype: expected one of"),
    (b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1]}]}', None,
     "output 'y'.data: expected 2 values for shape [2], got 1"),
    (b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}',
     "89", "output 'y': expected 8 bytes of binary data, the body has 0 left"),
    (b'{"outputs": []}', "16", "Inference-Header-Content-Length: expected the JSON header's length in bytes"),
    (b'{"outputs": []}\x00', "15", "the body has 1 bytes after the JSON header that no output's binary_data_size"),
])
def test_malformed_responses_are_named(body, header, words):
    header = str(len(body)) if header == "89" else header
    with pytest.raises(ProtocolError) as error:
        parse_response(body, header)
    assert words in str(error.value), str(error.value)
