"""Batch buckets on the CPU: bucket choice, splitting, padding isolation, ``out=``, the lock, the bookkeeping of seeds,
offsets and temperatures in recorded calls, IOBinding, and the error paths.

No GPU here, so every test runs the bucket machinery with its **capture step replaced by direct calls**
(``buckets.DirectCalls``: the plan called on the static buffers where a CUDA graph would be replayed). Everything
around the capture is the code CUDA runs: static buffers, device scalars written before each run (0-d tensors on the
torch backend, 0-d arrays on ONNX Runtime, read by the same kernels), slicing, copying out, the lock. The CUDA-graph
recorder itself is tested by tests/runtime/test_gpu.py, which skips without CUDA.
"""
import contextlib
import threading
import time

import numpy as np
import pytest
import torch

from vaedeploy import load
from vaedeploy.errors import ConfigError, MissingDependency
from vaedeploy.runtime import InputError
from vaedeploy.runtime.arrays import NumpyArrays, TorchArrays
from vaedeploy.runtime.backends import auto
from vaedeploy.runtime.backends.onnxruntime import BoundRunner
from vaedeploy.runtime.buckets import bucket_sizes
from vaedeploy.runtime.noise import DeviceNoise, Noise

BACKENDS = ["torch", "onnxruntime"]
BUCKETS = (1, 4, 16)


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def close(a, b):
    # a padded bucket runs the graphs at another batch size than the direct call: BLAS may pick other kernels
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def batch_sizes_seen(rt) -> list:
    """Install a spy on every runner: the batch size of each graph run, in order."""
    seen = []
    for runner in rt.runners.values():
        original = runner.run_impl
        runner.run_impl = lambda inputs, original=original: seen.append(len(inputs[0])) or original(inputs)
    return seen


def test_bucket_sizes_are_powers_of_two_up_to_max_batch_or_the_callers_checked():
    assert bucket_sizes(None, 64) == (1, 2, 4, 8, 16, 32, 64)
    assert bucket_sizes(None, 100) == (1, 2, 4, 8, 16, 32, 64, 100)
    assert bucket_sizes([16, 1, 4, 4], 64) == (1, 4, 16)
    for bad in ([], [0, 4], [65], [2.0], [True], 3, "124"):
        with pytest.raises(ConfigError, match="buckets must be batch sizes"):
            bucket_sizes(bad, 64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_call_runs_the_smallest_bucket_and_splits_above_the_largest(exported, backend):
    _, bundle = exported("vae")
    direct = load(bundle, backend=backend)
    rt = load(bundle, backend=backend, buckets=BUCKETS)
    seen = batch_sizes_seen(rt)
    x = images(40)
    for n, runs in [(1, [1]), (3, [4]), (4, [4]), (5, [16]), (16, [16]), (17, [16, 1]), (40, [16, 16, 16])]:
        seen.clear()
        params = rt.encode_params(x[:n])
        assert seen == runs, f"{n} rows ran buckets {seen}"
        assert all(len(p) == n for p in params)
        for got, expected in zip(params, direct.encode_params(x[:n])):
            close(got, expected)
    # sample has no input: its rows are the noise's, and it runs the same buckets
    seen.clear()
    assert rt.sample(17, seed=2).shape == (17, 1, 8, 8) and seen == [16, 1]


@pytest.mark.parametrize("name", ["vae", "vae_conv_bernoulli", "ae", "biva", "vqvae", "twostage"])
def test_padding_rows_never_change_the_callers_rows(exported, name):
    """The rows of a bucket after the caller's hold what an earlier call left; poisoned with NaN they still leave
    every caller's row as the direct call computes it (every op is row-wise)."""
    _, bundle = exported(name)
    direct, rt = load(bundle, backend="torch"), load(bundle, backend="torch", buckets=(8,))
    x = images(8, seed=1)
    codes = direct.encode(x)[0] if name == "vqvae" else None
    z = direct.encode(x, seed=4)
    z = z[1] if name == "vqvae" else z
    rt.warmup()  # every slot made, then poisoned (white-box: each slot's static inputs)
    for slot in rt._buckets.slots.values():
        for static in slot.inputs:
            if static.is_floating_point():
                static[3:] = float("nan")
    checks = [(rt.reconstruct(x[:3]), direct.reconstruct(x[:3])), (rt.encode_params(x[:3])[0],
                                                                  direct.encode_params(x[:3])[0]),
              (rt.decode(z[:3]), direct.decode(z[:3]))]
    if name == "vqvae":
        checks += [(rt.decode(codes[:3]), direct.decode(codes[:3])), (rt.encode(x[:3])[1], direct.encode(x[:3])[1])]
    else:
        checks.append((rt.encode(x[:3], seed=9), direct.encode(x[:3], seed=9)))
    if "sample" in rt.plans and rt.plans["sample"].recordable:
        checks.append((rt.sample(3, seed=9), direct.sample(3, seed=9)))
    for got, expected in checks:
        assert len(got) == 3 and np.isfinite(np.asarray(got)).all()
        close(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeds_offsets_and_temperature_reach_the_recorded_call_through_device_scalars(exported, backend):
    _, bundle = exported("vae")
    direct, rt = load(bundle, backend=backend), load(bundle, backend=backend, buckets=BUCKETS)
    x = images(20)
    for n, seed, offset, t in [(3, 5, 0, 1.0), (3, 5, 7, 1.0), (3, 6, 7, 0.5), (16, 2**62, 3, 0.0), (20, 8, 1, 0.7)]:
        close(rt.sample(n, seed=seed, offset=offset, temperature=t),
              direct.sample(n, seed=seed, offset=offset, temperature=t))
        close(rt.encode(x[:n], seed=seed, offset=offset), direct.encode(x[:n], seed=seed, offset=offset))
    # the scalars the recorded calls read hold the last call's seed and first row: the second slice of 20 rows
    noise, temperature = rt._buckets.noise, rt._buckets.temperature
    assert int(noise.seed) == 8 and int(noise.row) == 1 + 16 and float(temperature) == pytest.approx(0.7)
    # one stream however the call is bucketed: rows 7..9 of seed 5 are rows 7..9 of one call of 10
    close(rt.sample(3, seed=5, offset=7), direct.sample(10, seed=5)[7:])
    assert not np.allclose(rt.sample(3, seed=5), rt.sample(3, seed=6)), "a new seed must draw new noise"
    np.testing.assert_array_equal(rt.sample(3, seed=5), rt.sample(3, seed=5))
    with pytest.raises(InputError, match="past 2\\*\\*63 counters"):
        rt.encode(x[:2], seed=1, offset=2**62)


@pytest.mark.parametrize("arrays", [NumpyArrays(), TorchArrays("cpu")], ids=["numpy", "torch"])
def test_device_noise_gives_the_kernels_scalars_of_the_written_stream(arrays):
    noise = DeviceNoise(arrays)
    rows = noise.rows(4)
    assert len(rows) == 4
    noise.write(Noise.of(9, 5, 3))
    seed, offset = rows.stream(6)
    assert int(seed) == 9 and int(offset) == 30
    assert int(rows.stream(6, base=2**40)[1]) == 2**40 + 30
    seed_array = noise.seed
    noise.write(Noise.of(10, 0, 3))
    assert noise.seed is seed_array and int(noise.seed) == 10  # written in place: what a graph replay reads
    with pytest.raises(InputError, match="past 2\\*\\*63 counters"):
        noise.write(Noise.of(1, 2**61, 3))  # a stream of width 6 drawn before: row 2**61 of it is past 2**63


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_seeds_run_outside_the_buckets_and_give_each_row_its_own_noise(exported, backend):
    _, bundle = exported("vae")
    direct, rt = load(bundle, backend=backend), load(bundle, backend=backend, buckets=BUCKETS)
    seeds, offsets = np.array([3, 3, 11]), np.array([0, 1, 0])
    got = rt.sample(3, seed=seeds, offset=offsets)
    assert rt._buckets.slots == {}, "per-row noise must not run through a recorded call"
    close(got, direct.sample(3, seed=seeds, offset=offsets))
    close(got[:2], direct.sample(2, seed=3))
    close(rt.encode(images(3), seed=seeds), direct.encode(images(3), seed=seeds))


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_receives_the_rows_and_is_returned(exported, backend):
    _, bundle = exported("vae")
    for rt in (load(bundle, backend=backend, buckets=BUCKETS), load(bundle, backend=backend)):
        make = (lambda *s: np.full(s, np.nan, np.float32)) if backend == "onnxruntime" else \
            (lambda *s: torch.full(s, float("nan")))
        x = images(20)
        for n in (3, 20):
            out = make(n, 4)
            assert rt.encode(x[:n], seed=1, out=out) is out
            close(out, rt.encode(x[:n], seed=1))
            images_out = make(n, 1, 8, 8)
            assert rt.sample(n, seed=2, out=images_out) is images_out
            close(images_out, rt.sample(n, seed=2))
            assert rt.decode(np.asarray(out), out=images_out) is images_out
            assert rt.reconstruct(x[:n], out=images_out) is images_out
            close(images_out, rt.reconstruct(x[:n]))
        for bad, message in [(make(3, 5), "expected 3×4 float32 for this result, got 3×5"),
                             (make(2, 4), "expected 3×4 float32 for this result, got 2×4"),
                             ([[0.0] * 4] * 3, "out: expected a")]:
            with pytest.raises(InputError, match=message):
                rt.encode(x[:3], seed=1, out=bad)


def test_an_out_of_another_array_type_is_refused(exported):
    _, bundle = exported("vae")
    with pytest.raises(InputError, match="out: expected a numpy array"):
        load(bundle, backend="onnxruntime", buckets=BUCKETS).decode(np.zeros((2, 4), np.float32),
                                                                     out=torch.zeros(2, 1, 8, 8))
    with pytest.raises(InputError, match="out: expected a tensor on cpu, got ndarray"):
        load(bundle, backend="torch", buckets=BUCKETS).decode(np.zeros((2, 4), np.float32),
                                                               out=np.zeros((2, 1, 8, 8), np.float32))


def test_a_bucket_is_recorded_once_for_each_op_it_runs(exported):
    _, bundle = exported("vae")
    rt = load(bundle, backend="onnxruntime", buckets=(1, 2, 4))
    recorded = []
    record = rt._buckets.recorder.record
    rt._buckets.recorder.record = lambda call, what: recorded.append(what) or record(call, what)
    for n in (1, 2, 3, 4, 3, 1, 9):
        rt.decode(np.zeros((n, 4), np.float32))
    assert recorded == ["decode at bucket 1 (rows of 4)", "decode at bucket 2 (rows of 4)",
                        "decode at bucket 4 (rows of 4)"]
    runs = {size: entry["runs"] for size, entry in rt.describe()["buckets"]["recorded"]["decode"].items()}
    assert runs == {1: 3, 2: 1, 4: 5}  # 9 rows: 4 + 4 + 1
    rt.reconstruct(images(3))
    assert recorded[-1] == "reconstruct at bucket 4 (rows of 1×8×8)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_warmup_records_every_op_for_every_bucket_largest_first(exported, backend):
    _, bundle = exported("vae")
    rt = load(bundle, backend=backend, buckets=(1, 2, 4))
    recorded = []
    record = rt._buckets.recorder.record
    rt._buckets.recorder.record = lambda call, what: recorded.append(what) or record(call, what)
    described = rt.warmup()
    ops = ["encode_params", "encode", "decode", "reconstruct", "sample"]
    rows = {"encode_params": "1×8×8", "encode": "1×8×8", "decode": "4", "reconstruct": "1×8×8", "sample": "4"}
    assert recorded == [f"{op} at bucket {size} (rows of {rows[op]})" for op in ops for size in (4, 2, 1)]
    assert {op: sorted(sizes) for op, sizes in described["buckets"]["recorded"].items()} == \
        {op: [1, 2, 4] for op in ops}
    assert described["buckets"]["static_input_bytes"] == 7 * 4 * (3 * 64 + 4)  # 1+2+4 rows of 3 image ops + decode
    assert load(bundle, backend=backend, buckets=(1, 2, 4), warmup="all").describe()["buckets"]["recorded"].keys() \
        == set(ops)


def test_vq_sampling_is_never_recorded_and_runs_directly(exported):
    _, bundle = exported("vqvae")
    direct, rt = load(bundle), load(bundle, buckets=BUCKETS)
    np.testing.assert_array_equal(rt.sample_codes(5, seed=3), direct.sample_codes(5, seed=3))
    close(rt.sample(5, seed=3), direct.sample(5, seed=3))
    described = rt.warmup()
    assert set(described["buckets"]["not_recorded"]) == {"sample", "sample_codes"}
    assert set(described["buckets"]["recorded"]) == {"encode_params", "encode", "decode", "decode_codes", "reconstruct"}


class OverlapDetector:
    """Wraps every recording's run: counts runs that overlapped another, sleeping inside each so overlaps happen."""

    def __init__(self, buckets):
        self.inside, self.overlaps, self.guard = 0, 0, threading.Lock()
        record = buckets.recorder.record

        def spied(call, what):
            recording = record(call, what)
            run = recording.run

            def checked():
                with self.guard:
                    self.inside += 1
                    self.overlaps += self.inside > 1
                time.sleep(0.002)
                try:
                    return run()
                finally:
                    with self.guard:
                        self.inside -= 1

            recording.run = checked
            return recording

        buckets.recorder.record = spied


def run_threads(rt, calls_per_thread: int = 15, threads: int = 4) -> dict:
    """Each thread encodes its own rows with its own seed; returns thread → its results."""
    x = images(12 * threads, seed=3)
    results, start = {}, threading.Barrier(threads)

    def work(i):
        start.wait()
        results[i] = [rt.encode(x[12 * i:12 * i + 3 + i], seed=i) for _ in range(calls_per_thread)]

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {i: (x[12 * i:12 * i + 3 + i], r) for i, r in results.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_calls_from_threads_run_one_at_a_time_and_get_their_own_rows(exported, backend):
    _, bundle = exported("vae")
    direct, rt = load(bundle, backend=backend), load(bundle, backend=backend, buckets=BUCKETS)
    detector = OverlapDetector(rt._buckets)
    for i, (x, got) in run_threads(rt).items():
        for z in got:
            close(z, direct.encode(x, seed=i))
    assert detector.overlaps == 0


def test_without_the_lock_the_threads_would_overlap(exported):
    """The control of the test above: the detector does see overlapping runs when the lock is taken away."""
    _, bundle = exported("vae")
    rt = load(bundle, backend="torch", buckets=BUCKETS)  # unlocked calls on the CPU only compute wrong rows
    detector = OverlapDetector(rt._buckets)
    rt._buckets.lock = contextlib.nullcontext()
    run_threads(rt, calls_per_thread=5)
    assert detector.overlaps > 0


def test_onnxruntime_with_buckets_runs_through_iobinding_with_fixed_buffers_per_bucket(exported):
    _, bundle = exported("vae")
    direct, rt = load(bundle, backend="onnxruntime"), load(bundle, backend="onnxruntime", buckets=BUCKETS)
    encoder = rt.runners["encoder"]
    assert isinstance(encoder, BoundRunner) and not isinstance(direct.runners["encoder"], BoundRunner)
    x = images(3)
    close(rt.encode(x, seed=1), direct.encode(x, seed=1))
    binding = encoder.bindings[(4, (1, 8, 8))]  # (rows, the input's per-row shape)
    buffers = binding.inputs + binding.outputs
    close(rt.encode(images(4, seed=2), seed=1), direct.encode(images(4, seed=2), seed=1))
    assert encoder.bindings[(4, (1, 8, 8))] is binding and [id(b) for b in binding.inputs + binding.outputs] == \
        [id(b) for b in buffers], "a bucket's binding keeps its buffers: fixed addresses for a CUDA graph"
    close(binding.inputs[0], images(4, seed=2))  # the call's rows were copied into the bound input
    # a size that is no bucket (a direct call with per-row seeds) binds fresh buffers and keeps nothing
    close(rt.encode(images(3), seed=np.array([1, 1, 1]), offset=np.arange(3)), direct.encode(images(3), seed=1))
    assert sorted(encoder.bindings) == [(4, (1, 8, 8))]
    assert encoder.infer({"x": images(2)})["mean"].shape == (2, 4)


def test_describe_and_repr_say_what_runs(exported):
    _, bundle = exported("vae")
    rt = load(bundle)
    described = rt.describe()
    assert described["backend"] == "onnxruntime" and described["backend_reason"].startswith("auto on the CPU")
    assert described["buckets"] is None and described["execution"].startswith("direct")
    assert "[auto on the CPU: onnxruntime" in repr(rt)
    rt = load(bundle, backend="torch", buckets=BUCKETS)
    rt.decode(np.zeros((3, 4), np.float32))
    described = rt.describe()
    assert described["backend_reason"] == "asked for" and described["cuda_graphs"] is False
    assert described["execution"] == "batch buckets, each call on static buffers run directly (no graphs)"
    assert described["buckets"]["recorded"] == {"decode": {4: {"recorded_seconds": pytest.approx(0, abs=0.1),
                                                                "runs": 1, "shapes": [[[4]]]}}}
    assert described["buckets"]["graph_pool_bytes"] is None
    assert repr(rt).endswith("buckets=1..16 (3), direct calls: 1 made)")


def test_bad_gpu_options_fail_at_load_with_one_sentence(exported):
    _, bundle = exported("vae")
    with pytest.raises(ConfigError, match="cuda_graphs must be True or False, and True needs device='cuda'"):
        load(bundle, cuda_graphs=True)
    with pytest.raises(ConfigError, match="warmup must be one of"):
        load(bundle, warmup="soon")
    with pytest.raises(ConfigError, match="warmup needs batch buckets"):
        load(bundle, warmup="all")
    with pytest.raises(ConfigError, match="buckets must be batch sizes from 1 to the bundle's max_batch 64"):
        load(bundle, buckets=(1, 128))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("backend", ["auto", "torch", "onnxruntime"])
def test_cuda_without_a_cuda_device_fails_at_load(exported, backend):
    _, bundle = exported("vae")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError) as error:
            load(bundle, backend=backend, device=device)
        assert str(error.value) == (f"device '{device}': this machine has no CUDA device that torch can use "
                                    f"(torch.cuda.is_available() is False; torch {torch.__version__}, built for "
                                    f"CUDA {torch.version.cuda or 'none'})")


def test_auto_on_cuda_takes_torch_then_onnxruntime_gpu_and_says_why():
    everything = {"torch": True, "onnxruntime": True, "onnxruntime_cuda": True, "weights": True}
    name, why = auto("cuda", everything)
    assert name == "torch"
    assert why == ("auto on CUDA: torch, the whole call in one CUDA graph per bucket (tensorrt is not installed)")
    name, why = auto("cuda", {**everything, "weights": False})
    assert name == "onnxruntime" and "ONNX Runtime's CUDA graph per session and bucket" in why
    assert "torch needs the model's weights, which this bundle does not have" in why
    with pytest.raises(MissingDependency, match="no backend can run this bundle on CUDA: tensorrt is not "
                                                "installed; torch is not installed; onnxruntime has no "
                                                "CUDAExecutionProvider"):
        auto("cuda", {**everything, "torch": False, "onnxruntime_cuda": False})
