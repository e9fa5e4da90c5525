"""The Open Inference Protocol's infer request and response (KServe V2, as Triton speaks it), with the binary tensor
extension: parsing a request body into numpy tensors and writing a response body from them; no HTTP framework here.

A request body is JSON, or JSON followed by the raw bytes of some inputs when the ``Inference-Header-Content-Length``
header gives the JSON's length; such an input names its byte count in ``parameters.binary_data_size`` and its bytes
follow in input order, little-endian and row-major. An output is written as binary when the request asks for it
(``binary_data: true`` on the output, or ``binary_data_output: true`` on the request; tritonclient does so by
default), else as a flat JSON list. FP16 travels only as binary, as in Triton. Every malformed request is a
``ProtocolError`` naming what was expected and what came.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

HEADER_LENGTH = "inference-header-content-length"

# the wire's types, little-endian (on a little-endian host these are numpy's own dtype objects, which the runtime's
# fast path checks by identity)
DATATYPES = {name: np.dtype(code) for name, code in {
    "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1", "INT16": "<i2",
    "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}.items()}
DTYPE_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


class ProtocolError(InputError):
    """A request the server cannot use; ``status`` is the HTTP status it answers with (400 unless said)."""

    def __init__(self, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


@dataclass
class InferRequest:
    """A parsed infer request: its input tensors by name, its parameters, and how each output is to be written."""

    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict
    outputs: list[str] | None  # the names asked for, in order; None: every output
    binary: dict[str, bool] = field(default_factory=dict)  # output name → written as binary
    binary_default: bool = False


def _shape(value, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in value):
        raise ProtocolError(f"{where}.shape: expected a list of non-negative integers, got {_show(value)}")
    return tuple(value)


def _show(value) -> str:
    text = json.dumps(value) if not isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected a JSON object, got {_show(value)}")
    return value


def _json_tensor(data, dtype: np.dtype, shape: tuple, where: str) -> np.ndarray:
    if dtype == np.float16:
        raise ProtocolError(f"{where}: FP16 data must be sent as binary (the binary tensor extension); JSON carries "
                            "FP32 and the integer types")
    if not isinstance(data, list):
        raise ProtocolError(f"{where}.data: expected a list of {math.prod(shape)} values, got {_show(data)}")
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise ProtocolError(f"{where}.data: expected {DTYPE_NAMES[dtype]} numbers, got values that are not") from None
    if array.size != math.prod(shape):
        raise ProtocolError(f"{where}.data: expected {math.prod(shape)} values for shape {list(shape)}, got "
                            f"{array.size}")
    return array.reshape(shape)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An ``InferRequest`` from a request body and its ``Inference-Header-Content-Length`` header (None: JSON only)."""
    if header_length is None:
        header, blob = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise ProtocolError(f"Inference-Header-Content-Length: expected the JSON header's length in bytes, at "
                                f"most the body's {len(body)}, got {header_length!r}")
        header, blob = body[:length], memoryview(body)[length:]
    try:
        doc = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        trailing = isinstance(e, UnicodeDecodeError) or getattr(e, "msg", "") == "Extra data"
        hint = " (binary data needs the Inference-Header-Content-Length header)" if header_length is None and \
            trailing else ""
        raise ProtocolError(f"the request's JSON header does not parse ({type(e).__name__}: {e}){hint}") from None
    doc = _object(doc, "the request")
    parameters = _object(doc.get("parameters", {}), "parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id: expected a string, got {_show(request_id)}")
    inputs_doc = doc.get("inputs", [])
    if not isinstance(inputs_doc, list):
        raise ProtocolError(f"inputs: expected a list of tensors, got {_show(inputs_doc)}")
    inputs, cursor = {}, 0
    for i, spec in enumerate(inputs_doc):
        where = f"inputs[{i}]"
        spec = _object(spec, where)
        name, datatype = spec.get("name"), spec.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}.name: expected a tensor name, got {_show(name)}")
        where = f"input {name!r}"
        if name in inputs:
            raise ProtocolError(f"{where}: given twice; expected each input once")
        if datatype not in DATATYPES:
            raise ProtocolError(f"{where}.datatype: expected one of {sorted(DATATYPES)}, got {_show(datatype)}")
        dtype, shape = DATATYPES[datatype], _shape(spec.get("shape"), where)
        size = _object(spec.get("parameters", {}), f"{where}.parameters").get("binary_data_size")
        if size is None:
            if "data" not in spec:
                raise ProtocolError(f"{where}: expected 'data' or parameters.binary_data_size, got neither")
            inputs[name] = _json_tensor(spec["data"], dtype, shape, where)
            continue
        expected = math.prod(shape) * dtype.itemsize
        if isinstance(size, bool) or not isinstance(size, int) or size != expected:
            raise ProtocolError(f"{where}: binary_data_size: expected {expected} bytes for {datatype} "
                                f"{list(shape)}, got {_show(size)}")
        if cursor + size > len(blob):
            raise ProtocolError(f"{where}: expected {size} bytes of binary data, the body has {len(blob) - cursor} "
                                "left")
        inputs[name] = np.frombuffer(blob[cursor:cursor + size], dtype=dtype).reshape(shape)
        cursor += size
    if cursor != len(blob):
        raise ProtocolError(f"the body has {len(blob) - cursor} bytes after the JSON header that no input's "
                            "binary_data_size claims")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError(f"parameters.binary_data_output: expected true or false, got {_show(binary_default)}")
    outputs, binary = None, {}
    if "outputs" in doc:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError(f"outputs: expected a list of requested outputs, got {_show(doc['outputs'])}")
        outputs = []
        for i, spec in enumerate(doc["outputs"]):
            spec = _object(spec, f"outputs[{i}]")
            name = spec.get("name")
            if not isinstance(name, str) or not name:
                raise ProtocolError(f"outputs[{i}].name: expected an output name, got {_show(name)}")
            options = _object(spec.get("parameters", {}), f"output {name!r}.parameters")
            if "classification" in options:
                raise ProtocolError(f"output {name!r}: the classification extension is not supported; expected "
                                    "plain tensor outputs")
            flag = options.get("binary_data", binary_default)
            if not isinstance(flag, bool):
                raise ProtocolError(f"output {name!r}.parameters.binary_data: expected true or false, got "
                                    f"{_show(flag)}")
            outputs.append(name)
            binary[name] = flag
    rest = {k: v for k, v in parameters.items() if k != "binary_data_output"}
    return InferRequest(request_id, inputs, rest, outputs, binary, binary_default)


def write_response(model: str, request: InferRequest, outputs: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The response body and headers for ``outputs`` (name → array, in the model's order), as the request asked."""
    tensors, blobs = [], []
    for name in request.outputs if request.outputs is not None else outputs:
        array = outputs[name]
        tensor = {"name": name, "datatype": DTYPE_NAMES[array.dtype], "shape": list(array.shape)}
        if request.binary.get(name, request.binary_default):
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).data.cast("B")
            tensor["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    doc = {"model_name": model, "model_version": "1", "outputs": tensors}
    if request.id is not None:
        doc["id"] = request.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"content-type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(header))}
