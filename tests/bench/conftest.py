"""A tiny stand-in Open Inference Protocol (KServe V2) server, as Triton speaks it over HTTP, for server mode.

It serves ``toy.double`` (x FP32 [-1, 4] → y = 2x), ``toy.sample`` (no input tensor; parameters n and seed → x
FP32 [n, 1, 8, 8], as `vaedeploy serve`'s NAME.sample) and ``toy.short`` (answers one row too few), with the binary
tensor extension and Triton's model-configuration endpoint; it records every request it parsed. Loopback only;
it stops when the test ends.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

TYPES = {"FP32": np.float32, "INT64": np.int64}
MODELS = {
    "toy.double": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                   "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}], "parameters": []},
    "toy.sample": {"inputs": [], "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
                   "parameters": ["n", "seed", "temperature", "offset"]},
    "toy.short": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                  "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}], "parameters": []},
}


def parse_request(headers, body: bytes) -> tuple[dict, dict]:
    length = headers.get("Inference-Header-Content-Length")
    header = json.loads(body[:int(length)] if length else body)
    position, tensors = int(length) if length else 0, {}
    for spec in header.get("inputs", []):
        dtype = np.dtype(TYPES[spec["datatype"]]).newbyteorder("<")
        size = spec.get("parameters", {}).get("binary_data_size")
        if size is not None:
            data = np.frombuffer(body, dtype, count=size // dtype.itemsize, offset=position)
            position += size
        else:
            data = np.asarray(spec["data"], dtype)
        tensors[spec["name"]] = data.reshape(spec["shape"])
    assert position == len(body) or not length, "every byte after the JSON header belongs to a tensor"
    return header, tensors


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a client's connection expects

    def log_message(self, *args):
        pass

    def _send(self, status: int, doc: dict | None = None, body: bytes | None = None, headers: dict | None = None):
        body = body if body is not None else (json.dumps(doc).encode() if doc is not None else b"")
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        server = self.server
        parts = self.path.strip("/").split("/")
        if parts == ["v2"]:
            extensions = ["model_configuration"] + (["binary_tensor_data"] if server.binary else [])
            return self._send(200, {"name": "standin", "version": "0.0", "extensions": extensions})
        if parts[:2] == ["v2", "health"]:
            return self._send(200)
        if len(parts) >= 3 and parts[:2] == ["v2", "models"] and parts[2] in MODELS:
            model = MODELS[parts[2]]
            if parts[3:] == ["config"]:
                return self._send(200, {"name": parts[2], "max_batch_size": 64, "parameters": {
                    "request_parameters": {"string_value": ",".join(model["parameters"])}}})
            return self._send(200, {"name": parts[2], "versions": ["1"], "platform": "standin",
                                    "inputs": model["inputs"], "outputs": model["outputs"]})
        return self._send(404, {"error": f"unknown path {self.path}"})

    def do_POST(self):
        parts = self.path.strip("/").split("/")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if len(parts) != 4 or parts[3] != "infer" or parts[2] not in MODELS:
            return self._send(404, {"error": f"Request for unknown model: '{parts[2] if len(parts) > 2 else ''}'"})
        header, tensors = parse_request(self.headers, body)
        with self.server.lock:
            self.server.requests.append((parts[2], dict(self.headers), header, tensors))
        parameters = header.get("parameters", {})
        if parts[2] == "toy.sample":
            outputs = {"x": np.random.default_rng(parameters["seed"]).random((parameters["n"], 1, 8, 8),
                                                                            dtype=np.float32)}
        else:
            y = 2 * tensors["x"]
            outputs = {"y": y[1:] if parts[2] == "toy.short" else y}
        binary = {o["name"]: o.get("parameters", {}).get("binary_data", False) for o in header.get("outputs", [])}
        entries, blobs = [], []
        for name, array in outputs.items():
            entry = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
            if binary.get(name):
                blob = array.astype("<f4").tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = array.reshape(-1).tolist()
            entries.append(entry)
        text = json.dumps({"model_name": parts[2], "outputs": entries}).encode()
        extra = {"Inference-Header-Content-Length": str(len(text))} if blobs else {}
        self._send(200, body=text + b"".join(blobs), headers=extra)


@pytest.fixture
def v2_server():
    """``start(binary=True)`` → (url, server); server.requests holds (model, headers, JSON header, tensors)."""
    servers = []

    def start(binary: bool = True):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.binary, server.requests, server.lock = binary, [], threading.Lock()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
