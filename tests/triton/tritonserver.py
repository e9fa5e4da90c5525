"""A real Triton Inference Server for the tests: the build the PyPI wheel nvidia-pytriton 0.7.0 ships (Triton 2.51.0,
the Python backend only; it starts on a CPU-only machine), installed once into a cache folder, and the Python
environment its Python-backend models run in (numpy < 2, onnxruntime, this checkout's vaedeploy).

- The server: ``pip install --no-deps --target`` into ``CACHE/nvidia-pytriton-0.7.0`` (pip's cache keeps the wheel),
  with the Python backend's stub for this Python copied beside the backend, where its RPATH still finds the wheel's
  libraries (``nvidia_pytriton.libs``, the same depth as the stub's own folder).
- The environment: a venv per checkout (``CACHE/env-<hash of the checkout's path>``), whose ``bin/`` comes first on
  the server's PATH: the stub runs isolated, so PYTHONPATH is ignored (docs/serving.md).
``CACHE`` is ``$VAEDEPLOY_TRITON_CACHE`` or ``~/.cache/vaedeploy-triton``; a lock file keeps two test runs from
installing at once. Where something cannot be installed or run, ``unavailable`` skips with a sentence saying what;
under CI=true it fails instead, so CI cannot pass without the real server.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PYTRITON = "nvidia-pytriton==0.7.0"
PERF_ANALYZER = "tritonclient==2.51.0"  # the wheel whose bin/ holds a perf_analyzer for this Triton
ROOT = Path(__file__).resolve().parents[2]  # the checkout whose vaedeploy the Python models import
CACHE = Path(os.environ.get("VAEDEPLOY_TRITON_CACHE") or Path.home() / ".cache" / "vaedeploy-triton")
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # the stub must embed the environment's Python
START_SECONDS = 180


class Unavailable(Exception):
    """The real server cannot be installed or started here; the message says why."""


def unavailable(reason: str):
    """Skip with ``reason``, or fail under CI=true (where the real server is part of what CI proves)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the real Triton tests must run)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def _locked():
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(command: list, what: str) -> None:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Unavailable(f"{what} failed (exit {done.returncode}): {tail[0]}")


def _pip(python, *args) -> None:
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
         f"pip install {' '.join(map(str, args))}")


def install_server() -> Path:
    """The server's folder (``bin/tritonserver``, ``backends/``, ``caches/``), installed on first use."""
    target = CACHE / PYTRITON.replace("==", "-")
    server = target / "pytriton" / "tritonserver"
    with _locked():
        if not (target / ".installed").is_file():
            shutil.rmtree(target, ignore_errors=True)  # a half-done install of an earlier run
            _pip(sys.executable, "--no-deps", "--target", target, PYTRITON)
            stub = server / "python_backend_stubs" / PYTHON / "triton_python_backend_stub"
            if not stub.is_file():
                raise Unavailable(f"{PYTRITON} has no Python backend stub for Python {PYTHON}")
            shutil.copy2(stub, server / "backends" / "python")
            (target / ".installed").touch()
    missing = _missing_libraries(server / "backends" / "python" / "triton_python_backend_stub")
    if missing:
        raise Unavailable(f"Triton's Python backend stub needs {', '.join(missing)}, not found on this machine "
                          f"(libpython{PYTHON}: apt-get install libpython{PYTHON})")
    return server


def _missing_libraries(binary: Path) -> list[str]:
    done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]


def install_environment() -> Path:
    """The venv the Python models run in: numpy < 2 (Triton 2.51's backend misreads numpy 2 tensors), this
    machine's onnxruntime version, and this checkout's vaedeploy (editable, no dependencies: no torch)."""
    env = CACHE / f"env-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
    wanted = {"checkout": str(ROOT), "numpy": "<2", "onnxruntime": importlib.metadata.version("onnxruntime")}
    record = env / "vaedeploy-triton-env.json"
    with _locked():
        if not record.is_file() or json.loads(record.read_text()) != wanted:
            shutil.rmtree(env, ignore_errors=True)
            _run([sys.executable, "-m", "venv", env], f"python -m venv {env}")
            python = env / "bin" / "python"
            _pip(python, "numpy<2", f"onnxruntime=={wanted['onnxruntime']}")
            _pip(python, "--no-deps", "-e", ROOT)
            record.write_text(json.dumps(wanted))
    return env


def install_perf_analyzer() -> tuple[Path, dict]:
    """NVIDIA's perf_analyzer, as the Linux wheel of tritonclient 2.51.0 carries it (``bin/perf_analyzer``; later
    wheels and the PyPI ``perf-analyzer`` package do not), and the environment it runs in: the two libraries it needs
    (``libb64.so.0d``, ``libcudart.so.12``; it runs without a GPU) linked from the server wheel's, on its
    LD_LIBRARY_PATH."""
    server = install_server()
    target = CACHE / PERF_ANALYZER.replace("==", "-")
    libraries = target / "libraries"
    with _locked():
        if not (target / ".installed").is_file():
            shutil.rmtree(target, ignore_errors=True)
            _pip(sys.executable, "--no-deps", "--target", target, PERF_ANALYZER)
            libraries.mkdir()
            wheel_libraries = server.parents[1] / "nvidia_pytriton.libs"
            for name, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
                [found] = wheel_libraries.glob(pattern)
                (libraries / name).symlink_to(found)
            (target / ".installed").touch()
    return target / "bin" / "perf_analyzer", {**os.environ, "LD_LIBRARY_PATH": str(libraries)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Triton:
    """``tritonserver`` on 127.0.0.1 over ``repositories``, its HTTP, gRPC and metrics ports free ones; models that
    fail to load leave it up (``--exit-on-error=false``), so the tests read why from the repository index."""

    def __init__(self, repositories: list[Path], log: Path):
        server, env = install_server(), install_environment()
        self.http_port, self.grpc_port, metrics = free_port(), free_port(), free_port()
        self.http, self.grpc = f"127.0.0.1:{self.http_port}", f"127.0.0.1:{self.grpc_port}"
        self.log = log
        command = [server / "bin" / "tritonserver", *(f"--model-repository={r}" for r in repositories),
                   f"--backend-directory={server / 'backends'}", f"--cache-directory={server / 'caches'}",
                   "--http-address=127.0.0.1", f"--http-port={self.http_port}", "--grpc-address=127.0.0.1",
                   f"--grpc-port={self.grpc_port}", "--metrics-address=127.0.0.1", f"--metrics-port={metrics}",
                   "--allow-gpu-metrics=false", "--exit-on-error=false"]
        environment = {**os.environ, "PATH": f"{env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        with open(log, "w") as out:
            self.process = subprocess.Popen([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT,
                                            env=environment)
        self._wait_live()

    def _wait_live(self) -> None:
        """Triton opens its HTTP port once every model has loaded or failed (model control mode NONE)."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"tritonserver exited with {self.process.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/live", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise Unavailable(f"tritonserver did not answer within {START_SECONDS} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.startswith("E")]
        return " | ".join(lines[-3:]) or "no error in its log"

    def index(self) -> dict[str, dict]:
        """The repository index: model name → {state, reason}."""
        request = urllib.request.Request(f"http://{self.http}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return {m["name"]: m for m in json.loads(answer.read())}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
