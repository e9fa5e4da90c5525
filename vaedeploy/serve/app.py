"""The server: the Open Inference Protocol's HTTP endpoints (KServe V2 as Triton serves them), run by uvicorn (uvloop
and httptools where installed). ``POST …/infer``, the hot path, is answered as plain ASGI; the other endpoints go
through Starlette, whose routing and request objects cost more per request than the protocol itself.

Endpoints: ``GET /v2/health/live|ready``, ``GET /v2`` (server metadata with its extensions),
``GET /v2/models/{name}[/versions/1]`` (metadata), ``…/ready``, ``…/config`` (Triton's model-configuration
extension), ``…/stats`` (Triton's statistics extension; ``GET /v2/models/stats`` for every model), ``POST …/infer``,
``POST /v2/repository/index`` (Triton's repository extension) and ``GET /metrics``. The same service over gRPC is
``grpc_service.py``, on the same event loop and batchers.
Every error is ``{"error": "..."}`` with Triton's status mapping: 400 bad input, 404 unknown model or route, 408 a
request whose headers came too slowly, 413 a body over the limit, 503 unavailable (queue full, shutting down, timed
out), 500 a fault of the server. That includes uvicorn's own answers: ``Protocol`` writes its 400 for malformed HTTP
as JSON, and a request cut off by the shutdown timeout gets a JSON 503 instead of uvicorn's plain-text 500.

Shutdown (SIGTERM or Ctrl-C): ``/v2/health/ready`` turns false at once, uvicorn stops accepting connections and
waits for the requests in flight, then every batcher runs what is queued and every runtime is closed.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import re
import socket
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .. import __version__
from ..errors import ConfigError, InputError, VaedeployError
from .batcher import BatchPolicy, DynamicBatcher
from .metrics import Metrics
from .models import MAX_SAMPLE, Operation, describe, operations
from .protocol import HEADER_LENGTH, MAX_BODY_BYTES, OFF_LOOP_BYTES, ProtocolError, parse_request, write_response

log = logging.getLogger("vaedeploy.serve")
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository(index)", "schedule_policy",
              "parameters", "statistics"]
INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
HEADER_BYTES = HEADER_LENGTH.encode()
CLIENT_GONE = 499  # nginx's "client closed request": written to no one
# A request still waiting after this long starts watching its connection for a disconnect. Watching from arrival cost
# one task per request, about 30 µs of the event loop's time each (docs/serving.md); most requests are answered
# sooner, and the ones left waiting in a queue are those whose cancellation frees something.
WATCH_AFTER_S = 0.05
# CPython hands the GIL to a waiting thread after 5 ms by default: an instance thread back from a batch in ONNX Runtime
# waited that long for the busy event loop, so the model and the HTTP work took turns instead of overlapping. Without
# batching (one short run per request) 1 ms only added switches, so the default stays there (docs/serving.md).
SWITCH_INTERVAL_S = 0.001


class Disconnected(Exception):
    """The client closed its connection before its response was ready."""


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _error(message: str, status: int, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers)


def _error_body(message: str, status: int, headers: dict | None = None) -> tuple[int, bytes, dict]:
    return status, json.dumps({"error": message}).encode(), {"content-type": "application/json", **(headers or {})}


class InferenceServer:
    """The models of some bundles, their batchers and metrics, and the ASGI app that serves them (itself: infer
    requests directly, the other endpoints through a Starlette app).

    Args:
        bundles: ``(name, runtime)`` pairs: each runtime (``vaedeploy.load``) is served as the models ``name.*``;
            the server closes the runtimes when it stops.
        policy: the ``BatchPolicy`` of every model (default: ``BatchPolicy()``).
        max_body_bytes: the largest request body accepted (413 beyond).
        max_sample: the largest ``n`` of a sampling request (400 beyond).
    """

    extensions = EXTENSIONS

    def __init__(self, bundles: list[tuple[str, object]], policy: BatchPolicy | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES, max_sample: int = MAX_SAMPLE):
        names = [name for name, _ in bundles]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ConfigError(f"model names must be unique; {duplicates} would be served twice (use --name)")
        self.runtimes = [runtime for _, runtime in bundles]
        policy = policy or BatchPolicy()
        self.policy, self.max_body_bytes = policy, max_body_bytes
        self.metrics = Metrics()
        self.models: dict[str, Operation] = {op.name: op for name, rt in bundles
                                             for op in operations(name, rt, max_sample)}
        self.batchers = {name: DynamicBatcher(op, policy, self.metrics.model(name))
                         for name, op in self.models.items()}
        self.ready = False
        self.announce: str | None = None  # printed once the models are ready (the CLI's address line)
        self.urls: list[str] = []  # where it listens, for that line
        self.grpc = None  # the gRPC front end (``grpc_service.bind``), started and stopped with the batchers
        self.shutdown_timeout = 30.0  # seconds the gRPC requests in flight may take to finish at shutdown
        # requests between their arrival (HTTP: headers read, counted by ``Protocol``; gRPC: the call begun) and their
        # answer; a request that finds none but itself may run on the event loop (``DynamicBatcher.submit``)
        self.in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grpc_stopped: asyncio.Future | None = None  # the gRPC service's stop, once begun
        self.app = self._app()

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self._loop = asyncio.get_running_loop()
        for batcher in self.batchers.values():
            batcher.start()
        if self.grpc is not None:
            await self.grpc.start()
        # Everything loaded so far (the CLI imports torch: some 10^5 objects) lives as long as the server; frozen, it
        # is no longer scanned by each full collection, which otherwise paused every request for 100-200 ms here.
        gc.freeze()
        self.ready = True
        if self.announce:
            print(self.announce, flush=True)
        try:
            yield
        finally:
            self.ready = False
            if self.grpc is not None:  # begun at the signal; its calls in flight may still be finishing
                self._stop_grpc()
                await self._grpc_stopped
            await asyncio.gather(*(b.close() for b in self.batchers.values()))
            for runtime in self.runtimes:
                runtime.close()

    # ---- routes ------------------------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        def model_routes(suffix: str, endpoint) -> list[Route]:
            return [Route(f"/v2/models/{{name}}{version}{suffix}", endpoint) for version in ("", "/versions/{version}")]

        routes = [Route("/v2/health/live", self.live), Route("/v2/health/ready", self.health_ready),
                  Route("/v2", self.server_metadata), Route("/v2/repository/index", self.index, methods=["POST"]),
                  Route("/metrics", self.metrics_page), Route("/v2/models/stats", self.model_statistics),
                  *model_routes("/stats", self.model_statistics),
                  *model_routes("", self.model_metadata), *model_routes("/ready", self.model_ready),
                  *model_routes("/config", self.model_config)]

        async def http_error(request, exc: HTTPException):
            what = "no such endpoint" if exc.status_code == 404 else exc.detail
            return _error(f"{request.method} {request.url.path}: {what}; expected the V2 endpoints under /v2 "
                          "(docs/serving.md)", exc.status_code)

        async def fault(request, exc: Exception):  # Starlette logs the traceback after this answer
            return _error(f"internal error in {request.method} {request.url.path}: {type(exc).__name__}: {exc}", 500)

        return Starlette(routes=routes, lifespan=self.lifespan,
                         exception_handlers={HTTPException: http_error, Exception: fault})

    def _model(self, request: Request) -> Operation:
        return self.lookup(request.path_params["name"], request.path_params.get("version", "1"))

    def lookup(self, name: str, version: str) -> Operation:
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(f"unknown model {name!r}; this server has {sorted(self.models)}", 404)
        if version != "1":
            raise ProtocolError(f"model {name!r} has no version {version!r}; expected version 1", 404)
        return model

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def health_ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.ready else 400)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "vaedeploy", "version": __version__, "extensions": self.extensions})

    async def index(self, request: Request) -> Response:
        state = "READY" if self.ready else "UNAVAILABLE"
        return JSONResponse([{"name": name, "version": "1", "state": state} for name in self.models])

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), headers={"content-type": self.metrics.content_type})

    async def model_metadata(self, request: Request) -> Response:
        try:
            return JSONResponse(self._model(request).metadata())
        except ProtocolError as e:
            return _error(str(e), e.status)

    def stop_accepting(self) -> None:
        """The shutdown's first step (SIGTERM or Ctrl-C, from the signal handler): unready at once, and the gRPC
        service takes no new calls, as uvicorn's listener closes; the calls in flight get ``shutdown_timeout``."""
        self.ready = False
        if self.grpc is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_grpc)  # the way into the loop that a signal handler may take

    def _stop_grpc(self) -> None:
        if self._grpc_stopped is None:
            self._grpc_stopped = asyncio.ensure_future(self.grpc.stop(self.shutdown_timeout))

    def config(self, model: Operation) -> dict:
        return model_config(model, self.policy)

    def statistics(self, name: str = "", version: str = "") -> dict:
        """Triton's statistics of one model (all when ``name`` is empty): ``{"model_stats": [...]}``."""
        models = [self.lookup(name, version or "1")] if name else self.models.values()
        return {"model_stats": [self.metrics.model(m.name).statistics.as_json() for m in models]}

    async def model_statistics(self, request: Request) -> Response:
        try:
            return JSONResponse(self.statistics(request.path_params.get("name", ""),
                                                request.path_params.get("version", "")))
        except ProtocolError as e:
            return _error(str(e), e.status)

    async def model_ready(self, request: Request) -> Response:
        try:
            self._model(request)
        except ProtocolError as e:
            return _error(str(e), e.status)
        return Response(status_code=200 if self.ready else 400)

    async def model_config(self, request: Request) -> Response:
        try:
            model = self._model(request)
        except ProtocolError as e:
            return _error(str(e), e.status)
        return JSONResponse(self.config(model))

    # ---- infer: plain ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        """The ASGI app: ``POST …/infer`` here, everything else (and the lifespan) through Starlette. An HTTP request
        is in flight (counted since ``Protocol`` read its headers) until this returns."""
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        try:  # a websocket scope (an upgraded request, refused by Starlette) was counted too
            await self._http(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _http(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and (match := INFER.fullmatch(scope["path"])):
            status, body, headers = await self.infer(match.group(1), match.group(2) or "1", scope, receive)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-length", str(len(body)).encode()),
                                    *((k.encode(), v.encode()) for k, v in headers.items())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def queue(self, model: Operation, inputs: dict, parameters: dict, requested: list[str] | None,
              alone: bool = False):
        """Check one request and queue its rows: (its batcher, its ``Job``). Every check runs here, before the
        request takes a place in the queue; a refusal is a ``ProtocolError``. Both front ends (HTTP and gRPC) call
        it."""
        model.check_outputs(requested)
        parameters = model.checked_parameters(parameters)
        piece = model.piece(inputs, parameters)
        batcher = self.batchers[model.name]
        return batcher, batcher.submit(piece, parameters.get("priority", 0), parameters.get("timeout", 0),
                                       alone=alone)

    def succeeded(self, model: Operation, job, started: float, resolved: float) -> None:
        """Count a request answered now in its model's statistics: it arrived at ``started``, its outputs came at
        ``resolved`` (``time.monotonic()``), and its ``job`` knows its time in the queue and in its batches."""
        done = time.monotonic()
        input_ns, infer_ns, output_ns = job.phases_ns
        self.metrics.model(model.name).statistics.succeeded(
            _ns(done - started), _ns(job.queue_s or 0.0),
            (_ns(job.enqueued - started) + input_ns, infer_ns, output_ns + _ns(done - resolved)))

    def refusal(self, error: BaseException, name: str, model: Operation | None, queued: bool, started: float) \
            -> tuple[int, str, dict]:
        """(status, message, headers) of a request that arrived at ``started`` and failed with ``error``, counted in
        the metrics where the batcher did not count it and in its model's statistics; both front ends answer with
        it (HTTP as JSON, gRPC as a status code)."""
        if model is not None:
            self.metrics.model(model.name).statistics.failed(_ns(time.monotonic() - started))
        if isinstance(error, asyncio.CancelledError):  # the shutdown timeout ran out while the request waited
            if model is not None:
                self.metrics.model(model.name).failed("CANCELED")
            return 503, ("the server shut down before this request finished (its --shutdown-timeout ran out); "
                         "expected it to be sent again, to a server that is ready"), {}
        if isinstance(error, ProtocolError):
            if model is not None and not queued and error.status != 503:  # the batcher counted its own refusals
                self.metrics.model(model.name).failed("OTHER")
            return error.status, str(error), error.headers
        if isinstance(error, (InputError, ConfigError)):  # the runtime refused what the checks let through
            return 400, str(error), {}
        if isinstance(error, VaedeployError):
            return 500, f"{model.name if model else 'the server'}: {error}", {}
        log.error("infer on %s failed", name, exc_info=error)  # a fault of the server, answered as one line
        return 500, f"internal error in {name}: {type(error).__name__}: {error}", {}

    async def infer(self, name: str, version: str, scope, receive) -> tuple[int, bytes, dict]:
        """(status, body, headers) of one infer request; every failure is a JSON error with its status."""
        model, queued, started = None, False, time.monotonic()  # once queued, the batcher counts its failures
        try:
            model = self.lookup(name, version)
            headers = {k: v for k, v in scope["headers"] if k in (b"content-length", HEADER_BYTES)}
            body = await self._body(receive, headers.get(b"content-length"))
            started = time.monotonic()  # the request has arrived
            header_length = headers[HEADER_BYTES].decode("latin-1") if HEADER_BYTES in headers else None
            if len(body) > OFF_LOOP_BYTES:
                parsed = await asyncio.to_thread(parse_request, body, header_length)
            else:
                parsed = parse_request(body, header_length)
            batcher, job = self.queue(model, parsed.inputs, parsed.parameters, parsed.outputs, self.in_flight <= 1)
            queued = True
            outputs = await self._result(receive, batcher, job)
            resolved = time.monotonic()
            named = dict(zip(model.output_names, outputs))
            if sum(a.size for a in outputs) * 4 > OFF_LOOP_BYTES:
                body, headers = await asyncio.to_thread(write_response, model.name, parsed, named)
            else:
                body, headers = write_response(model.name, parsed, named)
            self.succeeded(model, job, started, resolved)
            return 200, body, headers
        except Disconnected:
            self.metrics.model(model.name).statistics.failed(_ns(time.monotonic() - started))
            return CLIENT_GONE, b"", {}
        except (asyncio.CancelledError, Exception) as e:  # CancelledError: uvicorn's --shutdown-timeout ran out
            status, message, headers = self.refusal(e, name, model, queued, started)
            return _error_body(message, status, headers)

    async def _body(self, receive, length: bytes | None) -> bytes:
        limit = self.max_body_bytes
        too_big = f"the request body is larger than this server's limit of {limit} bytes (--max-body-bytes)"
        if length is not None:
            if not length.isdigit():
                raise ProtocolError(f"Content-Length: expected a byte count, got {length.decode('latin-1')!r}")
            if int(length) > limit:
                raise ProtocolError(too_big, 413)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Disconnected()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProtocolError(too_big, 413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _result(receive, batcher: DynamicBatcher, job):
        """The job's outputs; a client that disconnects while it waits cancels the job (its queued rows are dropped),
        noticed from ``WATCH_AFTER_S`` after arrival on. After the body, uvicorn's ``receive`` returns only when the
        client disconnects or the response is sent."""
        watch = None

        def gone(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is None and task.result()["type"] == "http.disconnect":
                batcher.cancel(job)
                if not job.future.done():
                    job.future.set_exception(Disconnected())

        def start_watching() -> None:
            nonlocal watch
            watch = asyncio.ensure_future(receive())
            watch.add_done_callback(gone)

        timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
        try:
            return await job.future
        finally:
            timer.cancel()
            if watch is not None:
                watch.cancel()


def model_config(model: Operation, policy: BatchPolicy) -> dict:
    """Triton's ``ModelConfig`` of a served model, as JSON (the ``/config`` endpoint; ``vaedeploy triton-repo``
    writes the same fields as text)."""
    def tensors(specs) -> list[dict]:
        return [{"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": s.v2_dims} for s in specs]

    config = {"name": model.name, "platform": f"vaedeploy_{model.runtime.backend}", "input": tensors(model.inputs),
              "output": tensors(model.outputs), **policy.model_config()}
    if model.parameters:
        config["parameters"] = {"request_parameters": {"string_value": ",".join(model.parameters)}}
    return config


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"{host}:{port}: cannot listen ({e.strerror}); expected a free port (--port, 0 for any)") \
            from None
    sock.listen(2048)  # connections made before uvicorn starts wait in the backlog
    return sock


class Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with the server's two changes: its answer to malformed HTTP is a JSON
    400 like every other error (uvicorn writes it as text from inside the protocol, before any app sees a request),
    and a connection is closed when it sends nothing for the keep-alive timeout before its first request (uvicorn
    times only the wait between requests) or when a request's headers take longer than ``header_timeout`` seconds
    (uvicorn has no such timeout; the client gets a JSON 408). It also counts each request into the server's
    ``in_flight`` once its headers are read, before its task first runs, so requests that arrived together are not
    taken for lone ones (a request whose task never starts stays counted: it only costs lone requests their
    shortcut)."""

    def __init__(self, *args, header_timeout: float, server: InferenceServer, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.inference_server = server
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self.inference_server.in_flight += 1  # until the app returns (InferenceServer.__call__)
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._stop_header_timer()
        self._send_error(400, "the request is not valid HTTP/1.1 (uvicorn's parser refused it); expected a request "
                              "such as POST /v2/models/NAME/infer")

    def _headers_too_slow(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:  # a pipelined request: answer the one before
            self.cycle.keep_alive = False
            return
        self._send_error(408, f"the request's headers did not arrive within {self.header_timeout:g} s "
                              "(--header-timeout); expected a whole request")

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _send_error(self, status: int, message: str) -> None:
        """Write ``{"error": message}`` with ``status`` and close the connection (no request cycle runs)."""
        if self.transport.is_closing():
            return
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status], *(b"%s: %s\r\n" % pair for pair in self.server_state.default_headers),
                b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)]
        self.transport.write(b"".join([*head, body]))
        self.transport.close()


class Uvicorn(uvicorn.Server):
    """uvicorn's server of an ``InferenceServer``, which marks it unready as soon as it is told to stop, so a load
    balancer stops sending before the listener closes; uvicorn then waits for the requests in flight."""

    def __init__(self, server: InferenceServer, shutdown_timeout: float = 30.0, keep_alive_timeout: float = 5.0,
                 header_timeout: float = 20.0, grpc_address: tuple[str, int] | None = None):
        super().__init__(uvicorn.Config(server, log_level="warning", access_log=False, lifespan="on",
                                        timeout_graceful_shutdown=shutdown_timeout, backlog=2048,
                                        http=functools.partial(Protocol, header_timeout=header_timeout,
                                                               server=server),
                                        timeout_keep_alive=keep_alive_timeout))
        self.inference_server, self.grpc_address = server, grpc_address
        server.shutdown_timeout = shutdown_timeout

    async def serve(self, sockets=None) -> None:
        """Serve, with the gRPC front end bound on this event loop first where one is asked for (a port it cannot
        listen on is a ``ConfigError`` before anything starts)."""
        if self.grpc_address is not None:
            from .grpc_service import bind

            server = self.inference_server
            server.grpc, port = bind(server, *self.grpc_address)
            server.announce = announcement(server, [*server.urls, f"grpc://{_shown(self.grpc_address[0])}:{port}"])
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        self.inference_server.stop_accepting()
        super().handle_exit(sig, frame)


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def announcement(server: InferenceServer, urls: list[str]) -> str:
    """The address line and one line per model, printed once the models are ready."""
    return (f"vaedeploy serve: {len(server.models)} models on {' and '.join(urls)} (Ctrl-C or SIGTERM stops)\n" +
            "\n".join(f"  {describe(m)}" for m in server.models.values()))


def run(server: InferenceServer, host: str = "127.0.0.1", port: int = 8000, shutdown_timeout: float = 30.0,
        keep_alive_timeout: float = 5.0, header_timeout: float = 20.0, grpc_port: int | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C, then shut down gracefully (at most ``shutdown_timeout`` seconds for the
    requests in flight); an idle connection is closed after ``keep_alive_timeout`` seconds, one whose request's
    headers take longer than ``header_timeout`` seconds gets a 408. With ``grpc_port`` the V2 gRPC service listens on
    the same host too. Prints the addresses and the models once they are ready. While it serves batching models, the
    process's GIL switch interval is ``SWITCH_INTERVAL_S``."""
    sock = _listening_socket(host, port)
    server.urls = [f"http://{_shown(host)}:{sock.getsockname()[1]}/v2"]
    server.announce = announcement(server, server.urls)
    switch_interval = sys.getswitchinterval()
    if server.policy.max_batch_size > 1:
        sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        grpc_address = None if grpc_port is None else (host, grpc_port)
        Uvicorn(server, shutdown_timeout, keep_alive_timeout, header_timeout, grpc_address).run(sockets=[sock])
    finally:
        sys.setswitchinterval(switch_interval)
        sock.close()
        sys.stdout.flush()
