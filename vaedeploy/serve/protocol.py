"""The Open Inference Protocol's infer request and response (KServe V2, as Triton speaks it), with the binary tensor
extension: the one codec of the wire format, numpy only (no HTTP framework here). The server parses a request body
into numpy tensors and writes a response body from them (``parse_request``, ``write_response``); a client, `vaedeploy
bench --url`, writes a request and parses a response (``write_request``, ``parse_response``). Both directions read
and write tensors with the same two functions and one datatype map (``DATATYPES``).

A request body is JSON, or JSON followed by the raw bytes of some inputs when the ``Inference-Header-Content-Length``
header gives the JSON's length; such an input names its byte count in ``parameters.binary_data_size`` and its bytes
follow in input order, little-endian and row-major. An output is written as binary when the request asks for it
(``binary_data: true`` on the output, or ``binary_data_output: true`` on the request; tritonclient does so by
default), else as a flat JSON list. FP16 travels only as binary, as in Triton. Every malformed request, and every
malformed response a client reads, is a ``ProtocolError`` naming what was expected and what came.

Every number a request carries is checked by one function, ``check``, against a range of the runtime's one type for
them, ``runtime.operations.Parameter`` (integral or not, low, high, multiple): here a shape's dims, and the JSON data
of a tensor against its datatype's range before the cast (so ``1.9`` is not truncated into an INT64 and ``1e39``
does not overflow into an FP32 Inf); in ``models.py`` every request parameter against the operation table (a spatial
sample's ``height`` and ``width`` against the bundle's own range and multiple) and integer inputs against their range.
A response is strict JSON: it never holds a NaN or Inf token.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..runtime.operations import DATATYPES, DTYPE_NAMES, Parameter  # the wire's types: one map; ranges: one type

HEADER_LENGTH = "inference-header-content-length"
MAX_BODY_BYTES = 64 << 20  # the default largest request body (`vaedeploy serve --max-body-bytes`)
OFF_LOOP_BYTES = 1 << 20  # a server reads (or writes) larger requests (or responses) in a thread, off its event loop

INT64_MAX = int(np.iinfo(np.int64).max)  # Triton's shapes and integer parameters are int64


class ProtocolError(InputError):
    """A request the server cannot use; ``status`` is the HTTP status it answers with (400 unless said)."""

    def __init__(self, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def expected(limit: Parameter, plural: bool = False) -> str:
    """What a value checked against ``limit`` must be, as a message says it: integers (``integral``; an integral float
    such as ``2.0`` counts) or finite numbers, from ``low`` to ``high`` inclusive (infinite bounds: finite numbers,
    nothing more), and the server option that sets a bound, if one does."""
    kind = ("integers" if plural else "an integer") if limit.integral else \
        ("finite numbers" if plural else "a finite number")
    if limit.integral and limit.multiple > 1:
        kind = f"{'multiples' if plural else 'a multiple'} of {limit.multiple}"
    bounds = "" if math.isinf(limit.low) and math.isinf(limit.high) else \
        f" from {_number(limit.low)} to {_number(limit.high)}"
    return kind + bounds + (f" (the server's {limit.option})" if limit.option else "")


def bounds(name: str, integral: bool, low: float, high: float) -> Parameter:
    """A range a request value is checked against that is no request parameter of the table (a shape's dims, a
    datatype's numbers, a code's range): the table's ``Parameter``, without a default."""
    return Parameter(name, integral, low, high, None)


FINITE = bounds("finite", False, -math.inf, math.inf)
DIM = bounds("dim", True, 0, INT64_MAX)  # a shape's dims: Triton's are int64


def datatype_limit(dtype: np.dtype) -> Parameter:
    """The numbers a tensor of this datatype holds (its JSON data is checked against it before the cast)."""
    if dtype.kind == "f":
        return bounds(dtype.name, False, -float(np.finfo(dtype).max), float(np.finfo(dtype).max))
    return bounds(dtype.name, True, int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))


def _number(value) -> str:
    """A number as a message shows it: int64's and uint64's edges by name, an integer past float64 by its size."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    value = int(value)
    for bits in (63, 64):
        if value in (2**bits - 1, -2**bits):
            return f"2**{bits} - 1" if value > 0 else f"-2**{bits}"
    if abs(value) > sys.float_info.max:  # str() of an int past 4300 digits raises
        digits = int(value.bit_length() * math.log10(2)) + 1  # or one more than it has
        return f"an integer of {digits - (abs(value) < 10 ** (digits - 1))} digits"
    return str(value) if abs(value) < 10**20 else f"{float(value):.6g}"


def finite(array: np.ndarray) -> bool:
    """Whether a float array holds no NaN or Inf (one BLAS pass when it does not, which is nearly always)."""
    return bool(np.isfinite(np.vdot(array, array))) or bool(np.isfinite(array).all())


def check(where: str, value, limit: Parameter):
    """``value`` (a number from JSON, or a numpy array) if every number in it is what ``limit`` allows, as an ``int``
    where integral, a ``float`` otherwise, an array as it came; else a ``ProtocolError`` naming ``where``, what was
    expected and what came."""
    if isinstance(value, np.ndarray):
        return _check_array(where, value, limit)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and _allowed(value, limit):
        return int(value) if limit.integral else float(value)
    raise ProtocolError(f"{where}: expected {expected(limit)}, got {_number(value) if is_number else _show(value)}")


def _allowed(value: int | float, limit: Parameter) -> bool:
    if isinstance(value, float) and not (math.isfinite(value) and (value.is_integer() or not limit.integral)):
        return False
    # Python compares an int with a float exactly, so an integer of 400 digits is compared, never converted
    return limit.low <= value <= limit.high and (limit.integral or abs(value) <= sys.float_info.max) and \
        (not limit.integral or int(value) % limit.multiple == 0)


def _check_array(where: str, array: np.ndarray, limit: Parameter) -> np.ndarray:
    floats = array.dtype.kind == "f"
    if floats and not finite(array):
        raise ProtocolError(f"{where}: expected {expected(limit, plural=True)}, got NaN or Inf")
    if limit.integral and floats and (fraction := array != np.trunc(array)).any():
        raise ProtocolError(f"{where}: expected {expected(limit, plural=True)}, got non-integral values such as "
                            f"{_number(array[fraction][0])}")
    if array.size and not (math.isinf(limit.low) and math.isinf(limit.high)):
        low, high = array.min().item(), array.max().item()  # Python numbers: compared with the bounds exactly
        if low < limit.low or high > limit.high:
            raise ProtocolError(f"{where}: expected {expected(limit, plural=True)}, got values from {_number(low)} "
                                f"to {_number(high)}")
    return array


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
    if not isinstance(value, list):
        raise ProtocolError(f"{where}.shape: expected a list of non-negative integers, got {_show(value)}")
    return tuple(check(f"{where}.shape", dim, DIM) for dim in value)


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
    return values_tensor(data, dtype, shape, f"{where}.data")


def values_tensor(data: list, dtype: np.dtype, shape: tuple, where: str) -> np.ndarray:
    """A tensor of ``dtype`` and ``shape`` from a flat list of numbers (a request's JSON data, or gRPC's typed
    contents), every number checked against the datatype's range before the cast, which would truncate 1.9 into an
    integer and overflow 1e39 into an FP32 Inf."""
    try:
        values = np.asarray(data)
    except ValueError:
        raise ProtocolError(f"{where}: expected a flat list of {math.prod(shape)} values, got lists of uneven "
                            "lengths") from None
    if values.size != math.prod(shape):
        raise ProtocolError(f"{where}: expected {math.prod(shape)} values for shape {list(shape)}, got {values.size}")
    if dtype.kind == "b":
        if values.size and values.dtype.kind != "b":
            raise ProtocolError(f"{where}: expected true or false for BOOL, got values that are not")
        return values.astype(dtype, copy=False).reshape(shape)
    limit = datatype_limit(dtype)
    if values.dtype.kind not in "iuf":  # strings, nulls, booleans, integers past int64: the first is named
        for value in values.ravel().tolist():
            check(where, value, limit)
        values = values.astype(np.float64)
    check(where, values, limit)
    return values.astype(dtype, copy=False).reshape(shape)


def _split(body: bytes, header_length: str | None, what: str) -> tuple[dict, memoryview | bytes]:
    """A body's JSON header, parsed into an object, and the binary data after it (``what``: the request or the
    response, for the message)."""
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
    except (ValueError, RecursionError) as e:
        if type(e) is ValueError:  # not a JSONDecodeError: Python's int() refused a literal of too many digits
            raise ProtocolError(f"{what}'s JSON holds an integer of more than {sys.get_int_max_str_digits()} "
                                "digits; expected numbers within their parameter's or datatype's range") from None
        trailing = isinstance(e, UnicodeDecodeError) or getattr(e, "msg", "") == "Extra data"
        hint = " (binary data needs the Inference-Header-Content-Length header)" if header_length is None and \
            trailing else ""
        raise ProtocolError(f"{what}'s JSON header does not parse ({type(e).__name__}: {e}){hint}") from None
    return _object(doc, what), blob


def _read_tensors(specs, blob, side: str) -> dict[str, np.ndarray]:
    """``{name: array}`` of the tensors a request's inputs or a response's outputs describe (``side``: ``input`` or
    ``output``), as JSON data or as binary data read from ``blob`` in order."""
    if not isinstance(specs, list):
        raise ProtocolError(f"{side}s: expected a list of tensors, got {_show(specs)}")
    tensors, cursor = {}, 0
    for i, spec in enumerate(specs):
        where = f"{side}s[{i}]"
        spec = _object(spec, where)
        name, datatype = spec.get("name"), spec.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}.name: expected a tensor name, got {_show(name)}")
        where = f"{side} {name!r}"
        if name in tensors:
            raise ProtocolError(f"{where}: given twice; expected each {side} once")
        if datatype not in DATATYPES:
            raise ProtocolError(f"{where}.datatype: expected one of {sorted(DATATYPES)}, got {_show(datatype)}")
        dtype, shape = DATATYPES[datatype], _shape(spec.get("shape"), where)
        size = _object(spec.get("parameters", {}), f"{where}.parameters").get("binary_data_size")
        if size is None:
            if "data" not in spec:
                raise ProtocolError(f"{where}: expected 'data' or parameters.binary_data_size, got neither")
            tensors[name] = _json_tensor(spec["data"], dtype, shape, where)
            continue
        expected = math.prod(shape) * dtype.itemsize
        if isinstance(size, bool) or not isinstance(size, int) or size != expected:
            raise ProtocolError(f"{where}: binary_data_size: expected {expected} bytes for {datatype} "
                                f"{list(shape)}, got {_show(size)}")
        if cursor + size > len(blob):
            raise ProtocolError(f"{where}: expected {size} bytes of binary data, the body has {len(blob) - cursor} "
                                "left")
        tensors[name] = np.frombuffer(blob[cursor:cursor + size], dtype=dtype).reshape(shape)
        cursor += size
    if cursor != len(blob):
        raise ProtocolError(f"the body has {len(blob) - cursor} bytes after the JSON header that no {side}'s "
                            "binary_data_size claims")
    return tensors


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """An ``InferRequest`` from a request body and its ``Inference-Header-Content-Length`` header (None: JSON only)."""
    doc, blob = _split(body, header_length, "the request")
    parameters = _object(doc.get("parameters", {}), "parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id: expected a string, got {_show(request_id)}")
    inputs = _read_tensors(doc.get("inputs", []), blob, "input")
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


def _write_tensor(name: str, array: np.ndarray, binary: bool, blobs: list) -> dict:
    """A tensor's entry in a body's JSON header: its data inline as a flat JSON list, or, ``binary``, its
    little-endian bytes appended to ``blobs`` and their count in ``parameters.binary_data_size``."""
    tensor = {"name": name, "datatype": DTYPE_NAMES[array.dtype], "shape": list(array.shape)}
    if binary:
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).data.cast("B")
        tensor["parameters"] = {"binary_data_size": len(data)}
        blobs.append(data)
    else:
        tensor["data"] = array.reshape(-1).tolist()
    return tensor


def _write_body(doc: dict, blobs: list) -> tuple[bytes, dict]:
    """The body and headers of a JSON header followed by binary data (none: plain JSON)."""
    # strict JSON, which every parser reads: a NaN here raises (a fault, answered as a 500), never writes a NaN token
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"content-type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(header))}


def write_response(model: str, request: InferRequest, outputs: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The response body and headers for ``outputs`` (name → array, in the model's order), as the request asked."""
    blobs: list = []
    tensors = [_write_tensor(name, outputs[name], request.binary.get(name, request.binary_default), blobs)
               for name in (request.outputs if request.outputs is not None else outputs)]
    doc = {"model_name": model, "model_version": "1", "outputs": tensors}
    if request.id is not None:
        doc["id"] = request.id
    return _write_body(doc, blobs)


# ---- the client's side: `vaedeploy bench --url` ------------------------------------------------------------------

def write_request(inputs: dict[str, np.ndarray], outputs: list[str], parameters: dict, binary: bool) \
        -> tuple[bytes, dict]:
    """The body and headers (``Content-Type``, ``Inference-Header-Content-Length``) of an infer request for
    ``inputs`` (name → array) asking for ``outputs``, every tensor as binary (the binary tensor extension) or, not
    ``binary``, as JSON."""
    blobs: list = []
    doc: dict = {"inputs": [_write_tensor(name, array, binary, blobs) for name, array in inputs.items()],
                 "outputs": [{"name": name, "parameters": {"binary_data": binary}} for name in outputs]}
    if parameters:
        doc["parameters"] = parameters
    body, headers = _write_body(doc, blobs)
    return body, {name.title(): value for name, value in headers.items()}  # as tritonclient spells them


def parse_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """``{output name: array}`` of an infer response body and its ``Inference-Header-Content-Length`` header (None:
    JSON only), checked as a request is: every malformed answer is a ``ProtocolError`` naming what came."""
    doc, blob = _split(body, header_length, "the response")
    return _read_tensors(doc.get("outputs", []), blob, "output")
