"""The Open Inference Protocol over gRPC: KServe V2's ``inference.GRPCInferenceService`` (what Triton serves on its
gRPC port), beside the HTTP endpoints, for the same models, through the same checks and batchers
(``InferenceServer.queue``), on the same event loop (``grpc.aio``), so both front ends feed one batcher per model.

Served: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelInfer,
RepositoryIndex and ModelStatistics; the rest of the service (streaming, shared memory, tracing, logging, model
loading) answers UNIMPLEMENTED, as the servicer base class does. The messages are tritonclient's generated stubs
(``tritonclient.grpc.service_pb2``): the protocol's own, imported rather than vendored, because a copy would register
the same ``.proto`` files a second time in protobuf's one descriptor pool of a process that also runs tritonclient's
gRPC client (docs/serving.md).

An infer request's tensors come in ``raw_input_contents`` (one little-endian, row-major buffer per input, in input
order: what tritonclient sends) or in the typed ``contents`` fields (FP16 only raw, as in Triton); outputs always go
back in ``raw_output_contents``. A request is refused with Triton's status codes for the HTTP statuses the server
uses (``CODES``); messages larger than the server's ``--max-body-bytes`` are refused by gRPC itself
(RESOURCE_EXHAUSTED).
"""
from __future__ import annotations

import asyncio
import math
import time

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from .. import __version__
from ..errors import ConfigError
from .protocol import DATATYPES, DIM, DTYPE_NAMES, OFF_LOOP_BYTES, ProtocolError, check, values_tensor

# Triton's gRPC status for each HTTP status this server answers with
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
         408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         499: grpc.StatusCode.CANCELLED, 500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE}
# the typed field of ``InferTensorContents`` that carries each datatype (FP16 has none: raw only)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents"}


# ---- the messages of an infer call --------------------------------------------------------------------------------

def _parameter(value: service_pb2.InferParameter):
    choice = value.WhichOneof("parameter_choice")
    return None if choice is None else getattr(value, choice)


def _tensor(spec, raw: bytes | None, where: str) -> np.ndarray:
    if spec.datatype not in DATATYPES:
        raise ProtocolError(f"{where}.datatype: expected one of {sorted(DATATYPES)}, got {spec.datatype!r}")
    dtype, shape = DATATYPES[spec.datatype], tuple(check(f"{where}.shape", int(d), DIM) for d in spec.shape)
    if raw is None:
        field = CONTENTS.get(spec.datatype)
        if field is None:
            raise ProtocolError(f"{where}: {spec.datatype} data must be sent in raw_input_contents; the typed "
                                "contents carry the other datatypes")
        return values_tensor(list(getattr(spec.contents, field)), dtype, shape, f"{where}.contents")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(f"{where}: raw_input_contents: expected {expected} bytes for {spec.datatype} "
                            f"{list(shape)}, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def read_request(request: service_pb2.ModelInferRequest) -> tuple[dict, dict, list[str] | None]:
    """(inputs by name, parameters, the outputs asked for or None for all) of a ``ModelInferRequest``; a malformed
    one is a ``ProtocolError`` naming what came."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents: expected one buffer per input ({len(request.inputs)}), got "
                            f"{len(raw)}")
    inputs = {}
    for i, spec in enumerate(request.inputs):
        where = f"input {spec.name!r}"
        if spec.name in inputs:
            raise ProtocolError(f"{where}: given twice; expected each input once")
        if raw and spec.HasField("contents"):
            raise ProtocolError(f"{where}: expected its data in contents or in raw_input_contents, got both")
        inputs[spec.name] = _tensor(spec, raw[i] if raw else None, where)
    parameters = {key: _parameter(value) for key, value in request.parameters.items()}
    for output in request.outputs:
        if "classification" in output.parameters:
            raise ProtocolError(f"output {output.name!r}: the classification extension is not supported; expected "
                                "plain tensor outputs")
    return inputs, parameters, [o.name for o in request.outputs] or None


def write_response(model: str, request_id: str, outputs: dict[str, np.ndarray], requested: list[str] | None) \
        -> service_pb2.ModelInferResponse:
    """The ``ModelInferResponse`` of ``outputs`` (name → array, in the model's order), those asked for, each in
    ``raw_output_contents``."""
    response = service_pb2.ModelInferResponse(model_name=model, model_version="1", id=request_id)
    for name in requested or outputs:
        array = outputs[name]
        response.outputs.add(name=name, datatype=DTYPE_NAMES[array.dtype], shape=array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())
    return response


# ---- the service ------------------------------------------------------------------------------------------------

class Service(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The V2 gRPC service of an ``InferenceServer`` (its models, batchers, checks and statistics)."""

    def __init__(self, server):
        self.server = server

    async def _model(self, name: str, version: str, context):
        try:
            return self.server.lookup(name, version or "1")
        except ProtocolError as e:
            await context.abort(CODES[e.status], str(e))

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.server.ready)

    async def ModelReady(self, request, context):
        await self._model(request.name, request.version, context)
        return service_pb2.ModelReadyResponse(ready=self.server.ready)

    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="vaedeploy", version=__version__,
                                                  extensions=self.server.extensions)

    async def ModelMetadata(self, request, context):
        model = await self._model(request.name, request.version, context)
        return json_format.ParseDict(model.metadata(), service_pb2.ModelMetadataResponse())

    async def ModelConfig(self, request, context):
        model = await self._model(request.name, request.version, context)
        config = json_format.ParseDict(self.server.config(model), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    async def RepositoryIndex(self, request, context):
        state = "READY" if self.server.ready else "UNAVAILABLE"
        return service_pb2.RepositoryIndexResponse(models=[
            service_pb2.RepositoryIndexResponse.ModelIndex(name=name, version="1", state=state)
            for name in self.server.models if not request.ready or self.server.ready])

    async def ModelStatistics(self, request, context):
        try:
            stats = self.server.statistics(request.name, request.version)
        except ProtocolError as e:
            await context.abort(CODES[e.status], str(e))
        return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

    async def ModelInfer(self, request, context):
        self.server.in_flight += 1
        try:
            return await self._infer(request, context)
        finally:
            self.server.in_flight -= 1

    async def _infer(self, request, context):
        server, name = self.server, request.model_name
        model, queued, started = None, False, time.monotonic()  # once queued, the batcher counts its failures
        try:
            model = server.lookup(name, request.model_version or "1")
            if request.ByteSize() > OFF_LOOP_BYTES:  # typed contents of that size take a while to read
                inputs, parameters, requested = await asyncio.to_thread(read_request, request)
            else:
                inputs, parameters, requested = read_request(request)
            batcher, job = server.queue(model, inputs, parameters, requested)
            queued = True
            try:
                outputs = await job.future
            except asyncio.CancelledError:  # the client went away (or the shutdown's grace ran out)
                batcher.cancel(job)  # its queued rows are dropped
                server.metrics.model(model.name).statistics.failed(int((time.monotonic() - started) * 1e9))
                raise
            resolved = time.monotonic()
            named = dict(zip(model.output_names, outputs))
            if sum(a.nbytes for a in outputs) > OFF_LOOP_BYTES:  # a large copy is made off the event loop
                response = await asyncio.to_thread(write_response, model.name, request.id, named, requested)
            else:
                response = write_response(model.name, request.id, named, requested)
            server.succeeded(model, job, started, resolved)
            return response
        except Exception as e:
            status, message, _ = server.refusal(e, name, model, queued, started)
        await context.abort(CODES[status], message)


def bind(server, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A gRPC server of ``server``'s models listening on ``host:port`` (0: any free port), not yet started, and its
    port; a ``ConfigError`` when it cannot listen. Messages are bounded by the server's ``max_body_bytes``."""
    options = [("grpc.max_receive_message_length", server.max_body_bytes), ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 0)]  # gRPC shares a port by default; a busy port is an error here, as for HTTP
    grpc_server = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(server), grpc_server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise ConfigError(f"{host}:{port}: cannot listen for gRPC; expected a free port (--grpc-port, 0 for any)")
    return grpc_server, bound
