"""Serving an explorer directory on 127.0.0.1, cross-origin isolated so onnxruntime-web may use threads.

Cross-origin isolation (``self.crossOriginIsolated`` in the page) needs ``Cross-Origin-Opener-Policy: same-origin``
and ``Cross-Origin-Embedder-Policy: require-corp`` on the document; every file is also marked same-origin
(``Cross-Origin-Resource-Policy``), which is all the page loads. GET and HEAD only, no directory listings.
"""
from __future__ import annotations

import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .site import SPEC, WebError

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
         ".json": "application/json", ".onnx": "application/octet-stream", ".npy": "application/octet-stream"}


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}
    isolated = True
    quiet = False

    def end_headers(self):
        if self.isolated:
            for name, value in ISOLATION_HEADERS.items():
                self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")  # a rewritten --out is picked up on reload
        super().end_headers()

    def list_directory(self, path):
        self.send_error(404, "no directory listings")
        return None

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def make_server(directory, port: int = 8080, isolated: bool = True, quiet: bool = False) -> ThreadingHTTPServer:
    """A server of ``directory`` (a ``vaedeploy web`` output) on 127.0.0.1:``port`` (0: any free port), not started.

    Args:
        isolated: send the cross-origin-isolation headers (default True); False shows the page's one-thread mode.
        quiet: do not log each request to stderr.
    """
    directory = Path(directory)
    if not (directory / SPEC).is_file():
        raise WebError(f"{directory}: no {SPEC}; expected a directory written by `vaedeploy web`")
    handler = type("ExplorerHandler", (_Handler,), {"isolated": isolated, "quiet": quiet})
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(directory)))
    except OSError as e:
        raise WebError(f"127.0.0.1:{port}: cannot listen ({e.strerror}); expected a free port (pass --port)") from None


def serve(directory, port: int = 8080) -> None:
    """Serve ``directory`` on 127.0.0.1 until interrupted (Ctrl-C)."""
    server = make_server(directory, port)
    print(f"serving {directory} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
