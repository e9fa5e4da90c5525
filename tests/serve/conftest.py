"""A real `vaedeploy serve` in a subprocess on 127.0.0.1 and a free port, for tests that talk to it over HTTP.

``serve(bundles, *options)`` starts one (the CLI itself, as a user runs it), waits for its address line (at most
60 s) and stops it with SIGTERM when the test module is done; its stderr goes to a file whose text is shown when it
failed to start. Every client call in these tests has a timeout, and every loop a bound.
"""
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

START_SECONDS = 60


@dataclass
class Server:
    url: str  # host:port, as tritonclient takes it
    port: int
    process: subprocess.Popen
    stderr_path: str

    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(bundles, *options, tmp_path) -> Server:
    args = [str(b) for b in bundles] + [str(o) for o in options]
    stderr_path = str(tmp_path / f"server-{time.monotonic_ns()}.stderr")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "vaedeploy.cli", "serve", *args, "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        if match := re.search(r"http://127\.0\.0\.1:(\d+)/v2", line):
            port = int(match.group(1))
            return Server(f"127.0.0.1:{port}", port, process, stderr_path)
    process.kill()
    process.wait(5)
    with open(stderr_path) as f:
        pytest.fail(f"vaedeploy serve did not start within {START_SECONDS} s:\n{f.read()}")


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """serve(bundles, *options) → a running ``Server``; every one is stopped when the module's tests are done."""
    started = []
    tmp_path = tmp_path_factory.mktemp("serve")

    def start(bundles, *options) -> Server:
        server = start_server(bundles, *options, tmp_path=tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
