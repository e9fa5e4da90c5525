"""Server mode: any Open Inference Protocol (KServe V2) endpoint, `vaedeploy serve` or Triton, driven like
perf_analyzer drives one: the same windows, stability rule and statistics as in-process cases.

The client is the standard library's ``http.client``, one keep-alive connection per caller. It reads the model's
metadata (``GET /v2/models/{m}``: inputs with -1 for the batch axis, and for a spatial bundle's axes of any size, which
take the test images' size and, where a local bundle is given, its latent's at the reference size) and, where the server
has Triton's model-configuration extension, the request parameters it reads (``GET /v2/models/{m}/config``). Each
request carries ``batch`` rows of real inputs (test images for an image-shaped FP32 input, N(0, I) otherwise, integers
in [0, ``int_high``] for integer inputs); a model with no input tensors (``NAME.sample``) gets ``n = batch``; ``seed``
changes on every request where the model reads one. Tensors go as the binary tensor extension when the server advertises
``binary_tensor_data`` (what perf_analyzer and tritonclient send), else as JSON; ``--json-data`` asks for JSON. Requests
are written and answers read by the server's own V2 codec (``serve/protocol.py``: numpy only). Every answer is checked:
HTTP 200, an infer response as the protocol has it, and every output with ``batch`` rows, else the call counts as an
error with the server's message or what was wrong with the answer.
"""
from __future__ import annotations

import http.client
import json
import threading
import urllib.parse

import numpy as np

from ..errors import ConfigError
from ..serve.protocol import DATATYPES, HEADER_LENGTH, ProtocolError, parse_response, write_request
from .loop import Case, host_timed

POOL = 8  # distinct requests per case, rotated


class ServerError(Exception):
    """A request the server answered with an error, or an answer that is not what was asked for."""


class Client:
    """An Open Inference Protocol server at ``url`` (http://host:port), with one connection per thread."""

    def __init__(self, url: str, timeout_s: float = 60.0):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"--url: expected http://HOST:PORT, got {url!r}")
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.host, self.port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        self.base = parsed.path.rstrip("/")
        self._connection_class = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = self._connection_class(self.host, self.port, timeout=self.timeout_s)
        return self._local.connection

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body) of one request on this thread's connection, reconnecting once if the server
        closed it."""
        for attempt in (0, 1):
            connection = self._connection()
            try:
                connection.request(method, self.base + path, body=body, headers=headers or {})
                response = connection.getresponse()
                return response.status, response.headers, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise

    def get_json(self, path: str) -> tuple[int, dict]:
        try:
            status, _, body = self.request("GET", path)
        except OSError as e:
            raise ConfigError(f"--url {self.url}: cannot reach the server ({e.strerror or e}); is it running?") \
                from None
        try:
            doc = json.loads(body.decode("utf-8")) if body else {}
        except (ValueError, RecursionError):  # not JSON, not UTF-8 (UnicodeDecodeError), or nested too deep
            doc = None
        if not isinstance(doc, dict):
            raise ConfigError(f"{self.url}{path}: expected a JSON object in UTF-8, got {body[:80]!r}")
        return status, doc


def _error(status: int, body: bytes) -> str:
    try:
        return f"HTTP {status}: {json.loads(body).get('error', body[:200].decode(errors='replace'))}"
    except (ValueError, RecursionError, AttributeError):  # not JSON, not UTF-8, too deep, or not an object
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"


def model_spec(client: Client, model: str) -> dict:
    """The model's inputs, outputs and request parameters, from its metadata (and its config where served)."""
    path = f"/v2/models/{urllib.parse.quote(model)}"
    status, metadata = client.get_json(path)
    if status != 200:
        raise ConfigError(f"--model {model}: the server answered {status} for {path}: {metadata.get('error', '')} "
                          f"(expected one of its models)")
    status, config = client.get_json(path + "/config")
    parameters = []
    if status == 200:  # Triton's model-configuration extension; `vaedeploy serve` lists what a model reads
        text = config.get("parameters", {}).get("request_parameters", {}).get("string_value", "")
        parameters = [p for p in text.split(",") if p]
    return {"inputs": metadata.get("inputs", []), "outputs": metadata.get("outputs", []), "parameters": parameters}


def server_metadata(client: Client) -> dict:
    status, doc = client.get_json("/v2")
    if status != 200:
        raise ConfigError(f"--url {client.url}: GET /v2 answered {status}; expected an Open Inference Protocol "
                          "server")
    ready, _ = client.get_json("/v2/health/ready")
    if ready != 200:
        raise ConfigError(f"--url {client.url}: the server is not ready (GET /v2/health/ready answered {ready})")
    return {"name": doc.get("name"), "version": doc.get("version"), "extensions": doc.get("extensions", [])}


def _shape(spec: dict, batch: int, sizes: list[tuple]) -> list[int]:
    """The shape of ``batch`` rows of an input: -1 after the batch (an axis of any size: a spatial bundle's H, W or
    h, w) takes the size of the first per-row shape in ``sizes`` of the same rank whose fixed dims agree."""
    dims = list(spec["shape"][1:])
    if any(d == -1 for d in dims):
        fits = [size for size in sizes if len(size) == len(dims) and all(d in (-1, s) for d, s in zip(dims, size))]
        if not fits:
            raise ConfigError(f"input {spec['name']!r} has shape {spec['shape']}: expected a local bundle (--bundle) "
                              "or test images of a matching shape to give its axes of any size (-1) a size")
        dims = list(fits[0])
    if any(d < 0 for d in dims):
        raise ConfigError(f"input {spec['name']!r} has shape {spec['shape']}: expected -1 or a size for each axis")
    return [batch, *dims]


def _tensor(spec: dict, batch: int, rng: np.random.Generator, images: np.ndarray | None, int_high: int,
            sizes: list[tuple] = ()):
    sizes = [*([tuple(images.shape[1:])] if images is not None else []), *sizes]
    shape = _shape(spec, batch, sizes)
    dtype = DATATYPES.get(spec["datatype"])
    if dtype is None:
        raise ConfigError(f"input {spec['name']!r}: datatype {spec['datatype']} is not one bench can send")
    if dtype.kind == "f":
        if images is not None and tuple(shape[1:]) == tuple(images.shape[1:]):
            return images[rng.integers(0, len(images), shape[0])].astype(dtype)
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, int_high + 1, shape).astype(dtype)


def server_call(client: Client, model: str, spec: dict, batch: int, binary: bool, extra: dict,
                images: np.ndarray | None, int_high: int = 1, seed: int = 0, sizes: list[tuple] = ()):
    """``call(i)``: one infer request of ``batch`` rows, the i-th of a pool of distinct ones; raises ServerError
    when the answer is an error or lacks the rows asked for. ``sizes``: per-row shapes that give an input's axes of
    any size (-1 after the batch) their size, after the test images' own."""
    rng = np.random.default_rng(seed)
    outputs = [o["name"] for o in spec["outputs"]]
    sampling = not spec["inputs"]
    bodies = []
    for k in range(POOL):
        parameters = dict(extra)
        if sampling:
            parameters["n"] = batch
        if sampling or "seed" in spec["parameters"]:
            parameters["seed"] = seed * POOL + k
        tensors = {s["name"]: _tensor(s, batch, rng, images, int_high, sizes) for s in spec["inputs"]}
        bodies.append(write_request(tensors, outputs, parameters, binary))
    path = f"/v2/models/{urllib.parse.quote(model)}/infer"

    def call(i: int) -> None:
        body, headers = bodies[i % POOL]
        status, answer_headers, answer = client.request("POST", path, body, headers)
        if status != 200:
            raise ServerError(_error(status, answer))
        try:
            arrays = parse_response(answer, answer_headers.get(HEADER_LENGTH))
        except ProtocolError as e:
            raise ServerError(f"the server's answer is not an infer response: {e}") from None
        if missing := [o for o in outputs if o not in arrays or arrays[o].shape[:1] != (batch,)]:
            raise ServerError(f"expected outputs {outputs} with {batch} rows; {missing} missing or of another size")

    return call


def server_cases(client: Client, models: list[str], batches: list[int], concurrencies: list[int], binary: bool,
                 extra: dict, images: np.ndarray | None, floors: dict | None = None, int_high: int = 1,
                 sizes: list[tuple] = ()) -> list[Case]:
    """One case per model × batch × concurrency. ``floors[(model, batch)]``: the floor where a local bundle gives
    the model's graphs; ``sizes``: its per-row shapes at the reference size (image, latent), for inputs with axes
    of any size."""
    cases = []
    for m, model in enumerate(models):
        spec = model_spec(client, model)
        for batch in batches:
            timed = host_timed(server_call(client, model, spec, batch, binary, extra, images, int_high,
                                           seed=m * 1000 + batch, sizes=sizes))
            for concurrency in concurrencies:
                key = {"url": client.url, "model": model, "batch": batch, "binary": binary,
                       "floor": (floors or {}).get((model, batch))}
                cases.append(Case(key, timed, batch, concurrency))
    return cases

