"""`vaedeploy serve` under load: dynamic batching on against max_batch_size=1, beside a plain FastAPI endpoint and the
bare runtime in-process (the ceiling).

    python benchmarks/serve.py --demo DEMO_BUNDLE --conv CONV_BUNDLE   # measures; writes results/serve.json + .png
    python benchmarks/serve.py --table                                 # the docs table from the committed JSON

For each model (the demo VAE on digits, a conv VAE on mnist5k), operation (``sample`` and ``encode`` of one row)
and number of concurrent clients (1, 8, 64, each with one request outstanding, a closed loop), three servers run on
127.0.0.1 at once, each serving both bundles, and are measured point by point in turn (the order rotating, two
rounds by default, pooled), so a busy moment on the shared machine hits all three alike:

- ``batched``: ``vaedeploy serve --max-batch-size 64`` (Triton's defaults otherwise: no queue delay, so a batch is
  whatever queued while the model computed the last one);
- ``unbatched``: ``vaedeploy serve --max-batch-size 1``: the same server, one request per model execution;
- ``fastapi``: the endpoint a user would otherwise write (``serve_anchor.py``): FastAPI, a pydantic body with the
  seed (and the image as a JSON list), ``runtime.sample`` / ``runtime.encode`` per request in FastAPI's thread
  pool, JSON out.
The V2 requests are what tritonclient sends by default: the image as binary, outputs asked for as binary.

The load generator is this process: asyncio (uvloop) over keep-alive HTTP/1.1 connections, a few microseconds of
Python per request, on the same cores as the server (the machine has two). A point is, per round, a warm-up then a
timed window; throughput is completed requests per second over the windows, p50/p99 their latencies as the client
saw them.
Beside each point: the server's CPU time per request (all its threads, from /proc; less sensitive than throughput
to other work on a shared machine), split into its event loop's (the main thread: HTTP, the protocol, the batcher's
queue) and the rest (the model's instance and ONNX Runtime's threads), the load generator's own CPU per request,
each round's throughput (the spread), and the machine's 1-minute load average.
The ceiling is the runtime called in this process with no server, at the batch sizes the batcher formed (per-row
seeds and offsets, as the batcher calls it), with the server's session options: rows per second the model alone can
give at that batch size, and its CPU time per call. The same calls on a runtime loaded with ONNX Runtime's default
(intra-op threads spinning between calls, what ``vaedeploy.load`` keeps) show what the server's setting costs and
saves.
Goal (issue 16), at 64 clients on the conv VAE: batched ≥ 2× unbatched throughput, with p99 no worse.

    python benchmarks/serve.py --perf-analyzer --demo DEMO_BUNDLE   # results/serve_perf_analyzer.json + .png

measures with NVIDIA's perf_analyzer (tritonclient 2.51.0's binary) instead of this process: batch-1 ``decode``
requests of the demo VAE at concurrency 1 to 64, without and with a 500 µs queue delay, against ``vaedeploy serve``
(HTTP, and gRPC where the server has it) and a real Triton Inference Server 2.51.0 (nvidia-pytriton's Python-backend
build, installed by tests/triton/tritonserver.py) serving ``vaedeploy triton-repo --graphs python``'s repository of
the same bundle with the same batching; at no queue delay also Triton with the same repository less its
``dynamic_batching`` blocks (``triton_unbatched``: Triton's dynamic batcher is what stalls requests for 500 ms on a
starved machine, docs/serving.md). One perf_analyzer measurement per point. Throughput and p50/p99 are
perf_analyzer's own; so is the server-side split where a server has the statistics extension. The machine's
``uptime`` is recorded before and after, and the 1-minute load average at every point. Goals (issue 31):
vaedeploy's throughput at least Triton's and its p99 no worse at every point, on each protocol, and its p99 at
concurrency 1 within 2× of its p50.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.common` when run as a script

from benchmarks.common import RESULTS_DIR, markdown_table, summarize, write_rows  # noqa: E402

NAME = "serve"
CONCURRENCY = (1, 8, 64)
OPERATIONS = ("sample", "encode")
SYSTEMS = ("batched", "unbatched", "fastapi")
CEILING_BATCHES = (1, 2, 4, 8, 16, 32, 64)
GOAL = {"model": "conv", "concurrency": 64, "speedup": 2.0}
CONTENT_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")  # not Inference-Header-Content-Length


# ---- servers --------------------------------------------------------------------------------------------------

def start(command: list[str], pattern: str, timeout: float = 90) -> tuple[subprocess.Popen, int]:
    """Start a server; return it and its port once it accepts connections."""
    import socket

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if match := re.search(pattern, line):
            port = int(match.group(1))
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return process, port
                except OSError:
                    time.sleep(0.1)
        if time.monotonic() > deadline:
            break
    process.kill()
    raise RuntimeError(f"{' '.join(command)} did not start")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_system(system: str, bundles: dict[str, str]) -> tuple[subprocess.Popen, int]:
    if system == "fastapi":
        port = free_port()
        anchor = Path(__file__).with_name("serve_anchor.py")
        return start([sys.executable, str(anchor), str(port), *(f"{n}={p}" for n, p in bundles.items())],
                     r"127\.0\.0\.1:(\d+)")
    names = [a for name in bundles for a in ("--name", name)]
    batch = "64" if system == "batched" else "1"
    return start([sys.executable, "-m", "vaedeploy.cli", "serve", *bundles.values(), *names, "--port", "0",
                  "--max-batch-size", batch], r"127\.0\.0\.1:(\d+)/v2")


# ---- requests -------------------------------------------------------------------------------------------------

def http_request(path: str, body: bytes, headers: dict | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def requests_for(system: str, model: str, operation: str, images: np.ndarray, count: int = 64) -> list[bytes]:
    """``count`` prebuilt requests (rotating seeds and images), as each system's client sends them."""
    made = []
    for i in range(count):
        x = images[i % len(images)][None]
        if system == "fastapi":
            doc = {"seed": i} if operation == "sample" else {"x": x.reshape(-1).tolist(), "seed": i}
            made.append(http_request(f"/{model}/{operation}", json.dumps(doc).encode(),
                                     {"Content-Type": "application/json"}))
            continue
        if operation == "sample":
            header = json.dumps({"parameters": {"n": 1, "seed": i, "binary_data_output": True}}).encode()
            made.append(http_request(f"/v2/models/{model}.sample/infer", header))
            continue
        header = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                         "parameters": {"binary_data_size": x.nbytes}}],
                             "parameters": {"seed": i, "binary_data_output": True}}).encode()
        made.append(http_request(f"/v2/models/{model}.encode/infer", header + x.tobytes(),
                                 {"Inference-Header-Content-Length": len(header)}))
    return made


async def one_client(port: int, requests: list[bytes], start_at: float, stop_at: float, latencies: list,
                     failures: list, offset: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while (now := time.perf_counter()) < stop_at:
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(CONTENT_LENGTH.search(head).group(1))
            await reader.readexactly(length)
            done = time.perf_counter()
            if now >= start_at:
                (latencies if head.startswith(b"HTTP/1.1 200") else failures).append(done - now)
    finally:
        writer.close()


def load_point(port: int, requests: list[bytes], clients: int, warmup: float, seconds: float) -> dict:
    async def main():
        begin = time.perf_counter()
        start_at, stop_at = begin + warmup, begin + warmup + seconds
        latencies, failures = [], []
        await asyncio.gather(*(one_client(port, requests, start_at, stop_at, latencies, failures, k)
                               for k in range(clients)))
        return latencies, failures

    latencies, failures = _event_loop_run(main())
    return {"latencies": latencies, "failures": len(failures), "seconds": seconds}


def _event_loop_run(coroutine):
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time so far (Linux /proc) of a process and all its threads, or of one of its threads."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batch_figures(port: int, model: str) -> dict:
    """The server's batch-size histogram and counts for one model, from /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def value(name: str, extra: str = "") -> float:
        pattern = rf'^{name}\{{[^}}]*model="{re.escape(model)}"[^}}]*{extra}[^}}]*\}} (\S+)$'
        return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))

    buckets = {}
    for m in re.finditer(rf'^vaedeploy_batch_size_bucket\{{le="([^"]+)",model="{re.escape(model)}"[^}}]*\}} (\S+)$',
                         text, re.M):
        buckets[m.group(1)] = float(m.group(2))
    return {"rows": value("nv_inference_count"), "executions": value("nv_inference_exec_count"),
            "cumulative_buckets": buckets}


# ---- the ceiling ----------------------------------------------------------------------------------------------

def ceiling(bundles: dict[str, str], images: dict[str, np.ndarray], min_seconds: float) -> list[dict]:
    """The runtime alone at each batch size, with the server's session options (``spinning`` False) and with ONNX
    Runtime's default, which ``vaedeploy.load`` keeps (True), the two measured in turn at each point."""
    from vaedeploy import load
    from vaedeploy.serve.command import SESSION_CONFIG

    rows = []
    for model, path in bundles.items():
        runtimes = {False: load(path, session_config=SESSION_CONFIG), True: load(path)}
        for batch in CEILING_BATCHES:
            for operation in OPERATIONS:
                for spinning, rt in runtimes.items():
                    rows.append({"kind": "ceiling", "model": model, "operation": operation, "batch": batch,
                                 "spinning": spinning, **time_call(runtime_call(rt, operation, batch, images[model]),
                                                                   batch, min_seconds)})
        for rt in runtimes.values():
            rt.close()
    return rows


def runtime_call(rt, operation: str, batch: int, image: np.ndarray):
    """The runtime call the batcher makes for ``batch`` rows of ``operation`` (a lone request: one seed)."""
    x = np.ascontiguousarray(np.resize(image, (batch, *rt.input_shape)))
    if batch == 1:
        return (lambda: rt.sample(1, seed=0)) if operation == "sample" else (lambda: rt.encode(x, seed=0))
    seeds, offsets = np.arange(batch, dtype=np.int64), np.zeros(batch, np.int64)
    if operation == "sample":
        return lambda: rt.sample(batch, seed=seeds, offset=offsets)
    return lambda: rt.encode(x, seed=seeds, offset=offsets)


def time_call(call, batch: int, min_seconds: float) -> dict:
    """Median wall time and mean CPU time (all threads, spinning included) per call."""
    for _ in range(5):
        call()
    times, started, cpu = [], time.perf_counter(), own_cpu_seconds()
    while time.perf_counter() - started < min_seconds or len(times) < 20:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    cpu = own_cpu_seconds() - cpu
    per_call = float(np.median(times))
    return {"us_per_call": per_call * 1e6, "rows_per_s": batch / per_call, "cpu_us_per_call": cpu / len(times) * 1e6}


# ---- the run --------------------------------------------------------------------------------------------------

def measure(args) -> None:
    """Every point of every system, the systems interleaved point by point in rotating order (``--rounds`` times),
    so a busy moment on the shared machine hits all three alike; each row pools its rounds."""
    bundles = {"demo": str(Path(args.demo).resolve()), "conv": str(Path(args.conv).resolve())}
    from vaedeploy import load

    images = {}
    for model, path in bundles.items():
        rt = load(path)
        images[model] = np.random.default_rng(0).random((64, *rt.input_shape), dtype=np.float32)
        rt.close()
    servers = {system: start_system(system, bundles) for system in SYSTEMS}
    rows = []
    try:
        for system, (_, port) in servers.items():  # first calls (sessions' arenas, caches) are not measured
            for model in bundles:
                for operation in OPERATIONS:
                    load_point(port, requests_for(system, model, operation, images[model]), 8, 0.0, 1.0)
        for model in bundles:
            for operation in OPERATIONS:
                requests = {s: requests_for(s, model, operation, images[model]) for s in SYSTEMS}
                for clients in CONCURRENCY:
                    pooled = {s: {"latencies": [], "failures": 0, "seconds": 0.0, "cpu": 0.0, "loop_cpu": 0.0,
                                  "client_cpu": 0.0, "rounds_rps": [], "load": []} for s in SYSTEMS}
                    before = {s: batch_figures(servers[s][1], f"{model}.{operation}") for s in SYSTEMS[:2]}
                    for round_ in range(args.rounds):
                        for system in SYSTEMS[round_ % 3:] + SYSTEMS[:round_ % 3]:
                            process, port = servers[system]
                            # CPU counts include the warm-up: they are per request of warm-up and window alike
                            cpu, loop, own = cpu_seconds(process.pid), cpu_seconds(process.pid, process.pid), \
                                own_cpu_seconds()
                            point = load_point(port, requests[system], clients, args.warmup, args.seconds)
                            into = pooled[system]
                            into["cpu"] += cpu_seconds(process.pid) - cpu
                            into["loop_cpu"] += cpu_seconds(process.pid, process.pid) - loop  # the main thread
                            into["client_cpu"] += own_cpu_seconds() - own
                            into["rounds_rps"].append(len(point["latencies"]) / point["seconds"])
                            into["latencies"] += point["latencies"]
                            into["failures"] += point["failures"]
                            into["seconds"] += point["seconds"]
                            into["load"].append(os.getloadavg()[0])
                    for system in SYSTEMS:
                        into, n = pooled[system], len(pooled[system]["latencies"])
                        figures = summarize(into["latencies"]) if n else {}
                        per_request = 1e6 / (n * (args.warmup + args.seconds) / args.seconds) if n else None
                        row = {"kind": "server", "system": system, "model": model, "operation": operation,
                               "concurrency": clients, "requests": n, "failures": into["failures"],
                               "throughput_rps": n / into["seconds"], "p50_ms": figures.get("p50_ms"),
                               "p99_ms": figures.get("p99_ms"), "mean_ms": figures.get("mean_ms"),
                               "throughput_rps_rounds": into["rounds_rps"],
                               "server_cpu_us_per_request": into["cpu"] * per_request if n else None,
                               "loop_cpu_us_per_request": into["loop_cpu"] * per_request if n else None,
                               "client_cpu_us_per_request": into["client_cpu"] * per_request if n else None,
                               "loadavg_1min": [round(x, 2) for x in into["load"]]}
                        if system in before:
                            after = batch_figures(servers[system][1], f"{model}.{operation}")
                            executions = after["executions"] - before[system]["executions"]
                            row["mean_batch"] = ((after["rows"] - before[system]["rows"]) / executions
                                                 if executions else None)
                            row["batch_histogram"] = {le: after["cumulative_buckets"].get(le, 0) - count for le, count
                                                      in before[system]["cumulative_buckets"].items()}
                        rows.append(row)
                        print(f"{system:9} {model:4} {operation:6} c={clients:<3} {row['throughput_rps']:8.0f} "
                              f"req/s  p50 {row['p50_ms'] or 0:7.2f} ms  p99 {row['p99_ms'] or 0:7.2f} ms  "
                              f"batch {row.get('mean_batch') or 1:5.1f}  server CPU "
                              f"{row['server_cpu_us_per_request'] or 0:5.0f} us/req  load {max(into['load']):.1f}  "
                              f"failures {row['failures']}", flush=True)
    finally:
        for process, _ in servers.values():
            stop(process)
    rows += ceiling(bundles, images, args.ceiling_seconds)
    meta = {"settings": {"warmup_s": args.warmup, "window_s": args.seconds, "rounds": args.rounds,
                         "concurrency": list(CONCURRENCY),
                         "bundles": {m: {"path": p, "manifest": _manifest_summary(p)} for m, p in bundles.items()},
                         "note": args.note},
            "goal": goal_verdict(rows)}
    path = write_rows(NAME, rows, meta=meta)
    print(f"wrote {path}")
    plot(json.loads(path.read_text()), RESULTS_DIR / f"{NAME}.png")
    print(table(json.loads(path.read_text())))


def _manifest_summary(path: str) -> dict:
    m = json.loads((Path(path) / "manifest.json").read_text())
    config = (m.get("model") or {}).get("config", {})
    return {"kind": m["kind"], "input": m["input"]["shape"], "latent_dim": m["latent"]["dim"],
            "backbone": config.get("backbone"), "data": m["input"].get("data", {}).get("name")}


def server_row(rows, system, model, operation, clients):
    return next(r for r in rows if r["kind"] == "server" and r["system"] == system and r["model"] == model
                and r["operation"] == operation and r["concurrency"] == clients)


def ceiling_at(rows, model: str, operation: str, batch: float | None) -> dict:
    """The ceiling row at the measured batch size nearest ``batch`` (1 when unknown)."""
    options = [r for r in rows if r["kind"] == "ceiling" and r["model"] == model and r["operation"] == operation
               and not r.get("spinning")]
    return min(options, key=lambda r: abs(np.log(r["batch"]) - np.log(max(1.0, batch or 1.0))))


def goal_verdict(rows) -> dict:
    """The goal at its point, pooled over the rounds, with each round's ratio (batched and unbatched were measured
    next to each other in every round) to show the spread."""
    verdict = {}
    for operation in OPERATIONS:
        batched = server_row(rows, "batched", GOAL["model"], operation, GOAL["concurrency"])
        unbatched = server_row(rows, "unbatched", GOAL["model"], operation, GOAL["concurrency"])
        speedup = batched["throughput_rps"] / unbatched["throughput_rps"]
        verdict[operation] = {
            "speedup": speedup,
            "speedup_rounds": [b / u for b, u in zip(batched.get("throughput_rps_rounds", []),
                                                     unbatched.get("throughput_rps_rounds", []))],
            "batched_p99_ms": batched["p99_ms"], "unbatched_p99_ms": unbatched["p99_ms"],
            "met": speedup >= GOAL["speedup"] and batched["p99_ms"] <= unbatched["p99_ms"],
            "share_of_ceiling": batched["throughput_rps"] / ceiling_at(rows, GOAL["model"], operation,
                                                                       batched.get("mean_batch"))["rows_per_s"]}
    return verdict


def table(doc: dict) -> str:
    rows = doc["rows"]
    out = []
    for model in ("demo", "conv"):
        for operation in OPERATIONS:
            lines = []
            for clients in CONCURRENCY:
                b, u, f = (server_row(rows, s, model, operation, clients) for s in SYSTEMS)
                ceil = ceiling_at(rows, model, operation, b.get("mean_batch"))
                lines.append([clients, b["throughput_rps"], b["p50_ms"], b["p99_ms"], b.get("mean_batch") or 1.0,
                              b["server_cpu_us_per_request"], u["throughput_rps"], u["p50_ms"], u["p99_ms"],
                              u["server_cpu_us_per_request"], f["throughput_rps"], f["p99_ms"],
                              f"{b['throughput_rps'] / u['throughput_rps']:.2f}×",
                              f"{ceil['rows_per_s']:.0f} (batch {ceil['batch']})"])
            out.append(f"**{model} VAE, `{operation}`** (requests/s; latency in ms; server CPU in µs per request)\n")
            out.append(markdown_table(["clients", "batched req/s", "p50", "p99", "mean batch", "CPU",
                                       "unbatched req/s", "p50", "p99", "CPU", "fastapi req/s", "p99",
                                       "batched / unbatched", "runtime ceiling rows/s"], lines))
            out.append("")
    return "\n".join(out)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for (model, operation), ax in zip([(m, o) for m in ("demo", "conv") for o in OPERATIONS], axes.flat):
        for system, style in zip(SYSTEMS, ("o-", "s--", "^:")):
            ys = [server_row(rows, system, model, operation, c)["throughput_rps"] for c in CONCURRENCY]
            ax.plot(CONCURRENCY, ys, style, label=system)
        ceil = [ceiling_at(rows, model, operation, server_row(rows, "batched", model, operation, c).get("mean_batch"))
                ["rows_per_s"] for c in CONCURRENCY]
        ax.plot(CONCURRENCY, ceil, "k-", alpha=0.3, label="runtime ceiling at the batch formed")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{model} VAE: {operation}, batch-1 requests")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("requests / s")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    cpu = doc["machine"]["cpu"]
    fig.suptitle(f"vaedeploy serve on {doc['machine']['cpu_cores_available']} cores of {cpu} (shared)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


# ---- perf_analyzer side by side: vaedeploy serve against a real Triton (issue 31) ------------------------------

PA_NAME = "serve_perf_analyzer"
PA_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
PA_DELAYS_US = (0, 500)  # without and with a queue delay, the same on both servers
PA_OPERATION = "decode"  # batch-1 requests of one latent row: mostly the serving path, the model's work small
PA_SYSTEMS = ("vaedeploy", "triton", "triton_unbatched")
PA_COLUMNS = {"Inferences/Second": "throughput_ips", "p50 latency": "p50_us", "p90 latency": "p90_us",
              "p99 latency": "p99_us", "Avg latency": "mean_us", "Client Send": "client_send_us",
              "Network+Server Send/Recv": "network_server_us", "Server Queue": "server_queue_us",
              "Server Compute Input": "server_compute_input_us", "Server Compute Infer": "server_compute_infer_us",
              "Server Compute Output": "server_compute_output_us", "Client Recv": "client_recv_us"}


def pa_model(delay_us: int) -> str:
    """The name the bundle is served as, on both servers, at one queue delay."""
    return f"demo_d{delay_us}"


def perf_analyzer_run(args) -> None:
    """Every (system, protocol) at every queue delay and concurrency, one perf_analyzer measurement each; each
    server alone on the machine while it is measured, its protocols in turn point by point."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "triton"))
    from tritonserver import install_perf_analyzer  # the tests' installer: one recipe

    from vaedeploy.deploy.triton_repo import write_repository
    from vaedeploy.serve.batcher import BatchPolicy

    perf, perf_env = install_perf_analyzer()
    bundle, work = Path(args.demo).resolve(), Path(tempfile.mkdtemp(prefix="vaedeploy-perf-"))
    uptime_before = _uptime()
    repositories = {}  # (system, delay) → the repository Triton serves there
    for delay in PA_DELAYS_US:
        policy = BatchPolicy(max_batch_size=64, max_queue_delay_microseconds=delay).model_config()
        repositories["triton", delay] = work / f"repository-{delay}"
        write_repository(bundle, repositories["triton", delay], pa_model(delay), policy, graphs="python")
    unbatched = {k: v for k, v in BatchPolicy(max_batch_size=64).model_config().items() if k != "dynamic_batching"}
    repositories["triton_unbatched", 0] = work / "repository-unbatched"
    write_repository(bundle, repositories["triton_unbatched", 0], pa_model(0), unbatched, graphs="python")
    grpc = "--grpc-port" in subprocess.run([sys.executable, "-m", "vaedeploy.cli", "serve", "--help"],
                                           capture_output=True, text=True).stdout
    rows = []
    for delay in PA_DELAYS_US:
        for system in PA_SYSTEMS:
            if system == "triton_unbatched" and delay:  # a queue delay is the dynamic batcher's
                continue
            # one server at a time, alone on the machine: with vaedeploy serve or a second repository running beside
            # it, Triton's Python-backend requests stalled for 500 ms at a time here (docs/serving.md)
            server, endpoints = pa_server(system, bundle, repositories.get((system, delay)), delay, grpc, work)
            try:
                for clients in PA_CONCURRENCY:
                    for protocol, url in endpoints.items():
                        row = perf_point(perf, perf_env, url, protocol, pa_model(delay), clients, args, work)
                        rows.append({"kind": "perf_analyzer", "system": system, "protocol": protocol,
                                     "queue_delay_us": delay, "concurrency": clients, **row})
                        print(f"{system:9} {protocol:4} delay {delay:4} us c={clients:<3} "
                              f"{row.get('throughput_ips') or 0:8.0f} inf/s  p50 {(row.get('p50_us') or 0) / 1e3:6.2f}"
                              f" ms  p99 {(row.get('p99_us') or 0) / 1e3:6.2f} ms  {row.get('error', '')}", flush=True)
            finally:
                server()
    meta = {"settings": {"operation": PA_OPERATION, "concurrency": list(PA_CONCURRENCY),
                         "queue_delays_us": list(PA_DELAYS_US), "max_batch_size": 64,
                         "measurement_interval_ms": args.pa_window_ms, "stability_percentage": args.pa_stability,
                         "max_trials": args.pa_trials, "bundle": {"path": str(bundle),
                                                                  "manifest": _manifest_summary(str(bundle))},
                         "triton": "Triton Inference Server 2.51.0 (nvidia-pytriton 0.7.0), Python backend, "
                                   "vaedeploy triton-repo --graphs python",
                         "triton_unbatched": "the same repository without dynamic_batching in its models' configs "
                                             "(Triton's default scheduler), at no queue delay",
                         "perf_analyzer": "tritonclient 2.51.0's bin/perf_analyzer", "grpc_on_vaedeploy": grpc,
                         "uptime": {"before": uptime_before, "after": _uptime()}, "note": args.note},
            "goals": perf_goals(rows), "goals_against_unbatched_triton": perf_goals(rows, "triton_unbatched")}
    path = write_rows(PA_NAME, rows, meta=meta)
    print(f"wrote {path}")
    plot_perf(json.loads(path.read_text()), RESULTS_DIR / f"{PA_NAME}.png")


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def pa_server(system: str, bundle: Path, repository: Path | None, delay: int, grpc: bool, work: Path):
    """Start ``system`` serving the bundle at one queue delay: (a function that stops it, protocol → address)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "triton"))
    from tritonserver import Triton, free_port

    if system != "vaedeploy":
        triton = Triton([repository], work / f"{system}-{delay}.log")
        return triton.stop, {"http": triton.http, "grpc": triton.grpc}
    grpc_port = free_port() if grpc else None
    process, port = start([sys.executable, "-m", "vaedeploy.cli", "serve", str(bundle), "--name", pa_model(delay),
                           "--port", "0", "--max-batch-size", "64", "--max-queue-delay-us", str(delay),
                           *(["--grpc-port", str(grpc_port)] if grpc else [])], r"127\.0\.0\.1:(\d+)/v2")
    endpoints = {"http": f"127.0.0.1:{port}", **({"grpc": f"127.0.0.1:{grpc_port}"} if grpc else {})}
    return (lambda: stop(process)), endpoints


def perf_point(perf: Path, env: dict, url: str, protocol: str, model: str, clients: int, args, work: Path) -> dict:
    """One perf_analyzer measurement of ``model``'s decode at ``clients`` concurrent batch-1 requests: its own CSV's
    throughput, latency percentiles and (where the server has the statistics extension) server-side split, in µs."""
    csv = work / f"{model}-{protocol}-{clients}-{time.monotonic_ns()}.csv"
    command = [perf, "-m", f"{model}.{PA_OPERATION}", "-u", url, "-i", protocol, "-b", "1",
               "--concurrency-range", f"{clients}:{clients}", "-p", str(args.pa_window_ms), "-r", str(args.pa_trials),
               "-s", str(args.pa_stability), "-f", csv]
    load = os.getloadavg()[0]
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=300)
    row = {"loadavg_1min": round(load, 2)}
    if not csv.is_file():
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        return {**row, "error": f"exit {done.returncode}: {tail[0]}"}
    header, values = csv.read_text().splitlines()[:2]
    figures = dict(zip(header.split(","), values.split(",")))
    row.update({key: float(figures[column]) for column, key in PA_COLUMNS.items() if column in figures})
    if done.returncode != 0:  # perf_analyzer writes the last trial even when it did not settle
        row["unstable"] = True
    return row


def pa_row(rows, system: str, protocol: str, delay: int, clients: int) -> dict | None:
    return next((r for r in rows if r["system"] == system and r["protocol"] == protocol
                 and r["queue_delay_us"] == delay and r["concurrency"] == clients), None)


def perf_goals(rows, triton: str = "triton") -> dict:
    """Issue 31's goals on each protocol: vaedeploy's throughput at least Triton's (``triton``: the system measured as
    Triton) and its p99 no worse at every delay and concurrency, and its p99 at concurrency 1 within 2× of its p50."""
    goals = {}
    for protocol in ("http", "grpc"):
        points, misses = 0, []
        for delay in PA_DELAYS_US:
            for clients in PA_CONCURRENCY:
                ours, theirs = pa_row(rows, "vaedeploy", protocol, delay, clients), \
                    pa_row(rows, triton, protocol, delay, clients)
                if not ours or not theirs or "throughput_ips" not in ours or "throughput_ips" not in theirs:
                    continue
                points += 1
                if ours["throughput_ips"] < theirs["throughput_ips"] or ours["p99_us"] > theirs["p99_us"]:
                    misses.append({"queue_delay_us": delay, "concurrency": clients})
        tails = [r["p99_us"] / r["p50_us"] for r in rows if r["system"] == "vaedeploy" and r["protocol"] == protocol
                 and r["concurrency"] == 1 and "p50_us" in r]
        goals[protocol] = {"points": points, "missed_at": misses, "p99_over_p50_at_1": tails,
                           "met": points > 0 and not misses and all(t <= 2 for t in tails)}
    return goals


def perf_table(doc: dict) -> str:
    """Throughput and p50/p99 of every point, vaedeploy serve and Triton side by side (report.py's table)."""
    rows, lines = doc["rows"], []
    columns = [(s, p) for s in PA_SYSTEMS for p in ("http", "grpc") if any(r["system"] == s and r["protocol"] == p
                                                                            for r in rows)]
    for delay in doc["settings"]["queue_delays_us"]:
        for clients in doc["settings"]["concurrency"]:
            line = [delay, clients]
            for system, protocol in columns:
                r = pa_row(rows, system, protocol, delay, clients) or {}
                line += [f"{r['throughput_ips']:.0f}" if "throughput_ips" in r else _failure(r),
                         f"{r['p50_us'] / 1e3:.2f}" if "p50_us" in r else "–",
                         f"{r['p99_us'] / 1e3:.2f}{' (unstable)' if r.get('unstable') else ''}" if "p99_us" in r
                         else "–"]
            lines.append(line)
    head = ["queue delay µs", "clients"]
    for system, protocol in columns:
        head += [f"{system} {protocol} inf/s", "p50 ms", "p99 ms"]
    return markdown_table(head, lines)


SPLIT_CONCURRENCY = (1, 8, 64)
SPLIT = (("server_queue_us", "queue"), ("server_compute_input_us", "compute input"),
         ("server_compute_infer_us", "compute infer"), ("server_compute_output_us", "compute output"),
         ("network_server_us", "network + server send/recv"), ("client_send_us", "client send"),
         ("client_recv_us", "client recv"))


def perf_split_table(doc: dict) -> str:
    """Where a request's time goes at no queue delay, as perf_analyzer splits it from the servers' statistics
    extension (µs per request, means; the latency's p50 beside them): the server's queue and compute phases, the
    rest of the server and the network, the client's own send and receive (report.py's table)."""
    lines = []
    for clients in SPLIT_CONCURRENCY:
        for system in PA_SYSTEMS:
            for protocol in ("http", "grpc"):
                r = pa_row(doc["rows"], system, protocol, 0, clients)
                if not r or "p50_us" not in r:
                    continue
                lines.append([clients, f"{system} {protocol}", f"{r['p50_us']:.0f}",
                              *(f"{r[key]:.0f}" if key in r else "–" for key, _ in SPLIT)])
    return markdown_table(["clients", "server", "p50 µs", *(name + " µs" for _, name in SPLIT)], lines)


def _failure(row: dict) -> str:
    """What a point without figures says: perf_analyzer found no three windows that agreed, or another error."""
    error = row.get("error", "")
    return "no stable figure" if "stable measurement" in error else error or "–"


def plot_perf(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, settings = doc["rows"], doc["settings"]
    delays = settings["queue_delays_us"]
    fig, axes = plt.subplots(len(delays), 2, figsize=(10, 3.4 * len(delays)), sharex=True, squeeze=False)
    styles = {("vaedeploy", "http"): "o-", ("vaedeploy", "grpc"): "s-", ("triton", "http"): "o--",
              ("triton", "grpc"): "s--", ("triton_unbatched", "http"): "o:", ("triton_unbatched", "grpc"): "s:"}
    for delay, (left, right) in zip(delays, axes):
        for (system, protocol), style in styles.items():
            points = [pa_row(rows, system, protocol, delay, c) for c in settings["concurrency"]]
            points = [(r["concurrency"], r) for r in points if r and "throughput_ips" in r]
            if not points:
                continue
            xs = [c for c, _ in points]
            left.plot(xs, [r["throughput_ips"] for _, r in points], style, label=f"{system} {protocol}")
            right.plot(xs, [r["p99_us"] / 1e3 for _, r in points], style, label=f"{system} {protocol}")
        left.set_ylabel("inferences / s")
        right.set_ylabel("p99 latency, ms")
        right.set_yscale("log")
        for ax in (left, right):
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.set_title(f"decode, batch-1 requests, queue delay {delay} µs", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("concurrency (perf_analyzer)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"perf_analyzer: vaedeploy serve against Triton 2.51 (Python backend) on "
                 f"{doc['machine']['cpu_cores_available']} shared cores of {doc['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", help="the demo VAE's bundle (vaedeploy demo, or train vae --data digits)")
    parser.add_argument("--conv", help="a conv VAE's bundle on mnist5k (train vae --data mnist5k --backbone conv)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed window per point and round (default 3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up per point and round (default 0.5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three systems per point (default 2)")
    parser.add_argument("--ceiling-seconds", type=float, default=0.5, help="timing per ceiling point (default 0.5)")
    parser.add_argument("--note", default="", help="a sentence stored with the results (e.g. who shared the machine)")
    parser.add_argument("--table", action="store_true", help="print the table of the committed results and exit")
    parser.add_argument("--perf-analyzer", action="store_true",
                        help="perf_analyzer against vaedeploy serve and a real Triton over the --demo bundle (writes "
                             f"results/{PA_NAME}.json + .png)")
    parser.add_argument("--pa-window-ms", type=int, default=2000, help="perf_analyzer's window (default 2000)")
    parser.add_argument("--pa-trials", type=int, default=6, help="perf_analyzer's most windows (default 6)")
    parser.add_argument("--pa-stability", type=int, default=50,
                        help="perf_analyzer's stability threshold, percent (default 50: the cores are shared)")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads((RESULTS_DIR / f"{NAME}.json").read_text())))
        return
    if args.perf_analyzer:
        if not args.demo:
            parser.error("--perf-analyzer needs the --demo bundle")
        perf_analyzer_run(args)
        return
    if not (args.demo and args.conv):
        parser.error("--demo and --conv bundles are needed to measure (or --table)")
    measure(args)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers it started are stopped too
    main()
