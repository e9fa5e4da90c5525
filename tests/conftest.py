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
from helpers import BUNDLE_MAX_BATCH, BUNDLE_RUNS


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# The Triton interpreter must be chosen before any module that defines a @triton.jit kernel is imported; conftest
# runs before test collection, so on a machine without CUDA every kernel test runs under the interpreter.
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ---- exported bundles shared by tests/export and tests/runtime: a dynamo export costs seconds per graph ----------


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """name → (run dir, bundle dir), each trained for one epoch and exported once, on first use."""
    from vaedeploy.export import export_run

    from vaedeploy.data import load_dataset
    from vaedeploy.train import TrainConfig, train_run

    root = tmp_path_factory.mktemp("bundles")
    data = load_dataset("digits")
    made = {}

    def get(name):
        if name not in made:
            kind, config, exporter, precisions = BUNDLE_RUNS[name]
            run, bundle = root / f"{name}_run", root / f"{name}_bundle"
            train_run(kind, data, run, model_config=config, train_config=TrainConfig(epochs=1), progress=False)
            export_run(run, bundle, exporter=exporter, precisions=precisions, max_batch=BUNDLE_MAX_BATCH)
            made[name] = (run, bundle)
        return made[name]

    return get


@pytest.fixture(scope="session")
def diffusers_bundle(tmp_path_factory):
    """name → a bundle imported with ``from_diffusers`` from the tiny diffusers model ``name``
    (``helpers.DIFFUSERS_CONFIGS``: sd, flux, taesd, vqgan) in fp32 and fp16, made once, on first use."""
    from helpers import DIFFUSERS_SIZES, tiny_diffusers
    from vaedeploy.export.diffusers import from_diffusers

    root = tmp_path_factory.mktemp("imported")
    made = {}

    def get(name):
        if name not in made:
            made[name] = from_diffusers(tiny_diffusers(name), out=root / name, sizes=DIFFUSERS_SIZES, max_batch=2,
                                        precisions=("fp32", "fp16"))
        return made[name]

    return get


@pytest.fixture(scope="session")
def digits():
    from vaedeploy.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def fd_classifier(digits, tmp_path_factory):
    """A briefly trained sample-FD classifier file for digits, copied into run directories to save test time."""
    from vaedeploy.fid import CACHE_NAME, load_or_train_classifier

    cache = tmp_path_factory.mktemp("fd")
    load_or_train_classifier(digits, cache, epochs=8)
    return cache / CACHE_NAME


# ---- a real `vaedeploy serve`, for tests/serve and the bench tool's server mode --------------------
# A real `vaedeploy serve` in a subprocess on 127.0.0.1 and a free port, for tests that talk to it over HTTP.
#
# ``serve(bundles, *options)`` starts one (the CLI itself, as a user runs it), waits for its address line (at most
# 60 s) and stops it with SIGTERM when the test module is done; its stderr goes to a file whose text is shown when it
# failed to start. Every client call in these tests has a timeout, and every loop a bound.
START_SECONDS = 60


@dataclass
class Server:
    url: str  # host:port, as tritonclient takes it
    port: int
    process: subprocess.Popen
    stderr_path: str
    grpc_url: str | None = None  # host:port of its gRPC service, started with --grpc-port

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
            grpc = re.search(r"grpc://(127\.0\.0\.1:\d+)", line)
            return Server(f"127.0.0.1:{port}", port, process, stderr_path, grpc.group(1) if grpc else None)
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
