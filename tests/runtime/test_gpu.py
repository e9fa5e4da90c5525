"""The runtime on CUDA: one CUDA graph per bucket, checked against the same runtime run eagerly on the same GPU.

Every test here is marked ``gpu`` and skips without CUDA (tests/conftest.py). **Not yet run on a GPU**: none was
available where they were written. On a CUDA machine: ``.venv/bin/python -m pytest -q tests/runtime/test_gpu.py``.
Graph and eager results are compared to 1e-5: the same kernels (Triton noise, cuBLAS/cuDNN) at the same batch size,
except where a call is padded to its bucket, where cuBLAS may pick other kernels.
"""
import threading

import numpy as np
import pytest
import torch
from vaedeploy.kernels import standard_normal_numpy

from vaedeploy import load
from vaedeploy.models import MODELS

pytestmark = pytest.mark.gpu

ATOL = 1e-5


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)).cuda()


def same(a, b, atol=ATOL):
    torch.testing.assert_close(torch.as_tensor(a).cpu(), torch.as_tensor(b).cpu(), rtol=0, atol=atol)


def graphs_and_eager(bundle, **options):
    return (load(bundle, backend="torch", device="cuda", **options),
            load(bundle, backend="torch", device="cuda", cuda_graphs=False))


@pytest.mark.parametrize("name", ["vae", "vae_conv_bernoulli"])
def test_every_bucket_replays_what_the_eager_call_computes(exported, name):
    graphs, eager = graphs_and_eager(exported(name)[1])
    assert graphs.buckets == (1, 2, 4, 8, 16, 32, 64) and graphs.describe()["execution"].startswith("batch buckets, "
                                                                                                   "one CUDA graph")
    for n in (*graphs.buckets, 3, 5, 33):
        x = images(n, seed=n)
        same(graphs.encode(x, seed=n), eager.encode(x, seed=n))
        for got, expected in zip(graphs.encode_params(x), eager.encode_params(x)):
            same(got, expected)
        same(graphs.reconstruct(x), eager.reconstruct(x))
        z = eager.encode(x, seed=1)
        same(graphs.decode(z), eager.decode(z))
        same(graphs.sample(n, seed=n, temperature=0.8), eager.sample(n, seed=n, temperature=0.8))
    recorded = graphs.describe()["buckets"]
    assert sorted(recorded["recorded"]["encode"]) == list(graphs.buckets)
    assert recorded["graph_pool_bytes"] > 0


def test_each_replay_draws_the_noise_of_its_seed_and_offset(exported):
    graphs, _ = graphs_and_eager(exported("vae")[1])
    first = graphs.sample(8, seed=1)
    same(graphs.sample(8, seed=1), first, atol=0)
    assert not torch.allclose(graphs.sample(8, seed=2).cpu(), first.cpu())
    same(graphs.sample(4, seed=1, offset=4), first[4:])  # rows 4..7 of the same stream, through bucket 4
    assert graphs.describe()["buckets"]["recorded"]["sample"][8]["runs"] == 3  # recorded once, run three times
    # the noise is the kernels' Philox stream: z = N(0, 1) rows of seed 1 decode to the same images
    z = torch.from_numpy(standard_normal_numpy((8, graphs.latent_dim), 1)).cuda()
    same(first, graphs.decode(z), atol=1e-4)  # the GPU's randn differs from numpy's by a few ulp


def test_calls_above_the_largest_bucket_are_split_and_reassembled(exported):
    graphs, eager = graphs_and_eager(exported("vae")[1], buckets=(1, 2, 4, 8))
    x = images(21)
    same(graphs.encode(x, seed=5), eager.encode(x, seed=5))
    same(graphs.sample(21, seed=5), eager.sample(21, seed=5))
    assert sorted(graphs.describe()["buckets"]["recorded"]["encode"]) == [8]  # 8 + 8 + 5 (bucket 8)


def test_two_threads_calling_at_once_get_their_own_results(exported):
    graphs, eager = graphs_and_eager(exported("vae")[1])
    inputs = {i: images(3 + 7 * i, seed=i) for i in range(2)}
    expected = {i: eager.encode(x, seed=i) for i, x in inputs.items()}
    got, start = {}, threading.Barrier(2)

    def work(i):
        start.wait()
        got[i] = [graphs.encode(inputs[i], seed=i) for _ in range(50)]

    threads = [threading.Thread(target=work, args=(i,)) for i in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in inputs:
        for z in got[i]:
            same(z, expected[i])


@pytest.mark.parametrize("name", [*sorted(MODELS), "vae_conv_bernoulli"])  # the bundles of tests/conftest.py
def test_every_kind_encodes_decodes_and_samples_through_its_graphs(exported, name):
    graphs, eager = graphs_and_eager(exported(name)[1])
    x = images(5)
    encoded, expected = graphs.encode(x, seed=2), eager.encode(x, seed=2)
    if isinstance(encoded, tuple):  # VQ: (codes, z_q)
        same(encoded[0], expected[0], atol=0)
        same(graphs.decode(encoded[0]), eager.decode(expected[0]))
        encoded, expected = encoded[1], expected[1]
    same(encoded, expected)
    same(graphs.decode(expected), eager.decode(expected))
    same(graphs.reconstruct(x), eager.reconstruct(x))
    if "sample" in graphs.plans:
        same(graphs.sample(5, seed=3), eager.sample(5, seed=3))


def test_a_call_makes_no_host_synchronization(exported):
    graphs = load(exported("vae")[1], backend="torch", device="cuda", warmup="all")
    x = images(3)
    z, image = torch.empty(3, 4, device="cuda"), torch.empty(3, 1, 8, 8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing CUDA call raises
    try:
        graphs.encode(x, seed=1, out=z)
        graphs.decode(z, out=image)
        graphs.sample(3, seed=2, out=image)
        graphs.sample(3, seed=3)  # a new result tensor: allocated, not synchronized
    finally:
        torch.cuda.set_sync_debug_mode(0)
    same(image, load(exported("vae")[1], backend="torch", device="cuda", cuda_graphs=False).sample(3, seed=2))


def test_calls_on_the_callers_streams_are_ordered(exported):
    graphs, eager = graphs_and_eager(exported("vae")[1])
    x = images(6)
    expected = eager.encode(x, seed=4)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    results = []
    for i in range(20):
        with torch.cuda.stream(streams[i % 2]):
            results.append(graphs.encode(x, seed=4))
    torch.cuda.synchronize()
    for z in results:
        same(z, expected)


def test_warmup_all_captures_every_op_and_bucket_at_load(exported):
    graphs = load(exported("vae")[1], backend="torch", device="cuda", warmup="all")
    described = graphs.describe()["buckets"]
    for op in ("encode_params", "encode", "decode", "reconstruct", "sample"):
        assert sorted(described["recorded"][op]) == list(graphs.buckets)
        assert all(entry["recorded_seconds"] > 0 for entry in described["recorded"][op].values())
    assert described["graph_pool_bytes"] > 0 and "CUDA graphs: 35 captured" in repr(graphs)


def test_device_tensors_stay_on_the_device_and_numpy_comes_back_as_numpy(exported):
    graphs = load(exported("vae")[1], backend="torch", device="cuda")
    assert graphs.encode(images(2), seed=1).is_cuda
    assert isinstance(graphs.encode(images(2).cpu().numpy(), seed=1), np.ndarray)
    assert graphs.sample(2, seed=1).is_cuda


def test_auto_on_cuda_picks_the_cuda_graph_torch_path_and_says_why(exported):
    rt = load(exported("vae")[1], device="cuda")
    assert rt.backend == "torch" and rt.backend_reason.startswith("auto on CUDA: torch, the whole call")
    assert rt.cuda_graphs and rt.buckets[-1] == rt.max_batch


def test_onnxruntime_gpu_through_iobinding_and_its_cuda_graphs_matches_the_cpu(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    _, bundle = exported("vae")
    cpu, gpu = load(bundle, backend="onnxruntime"), load(bundle, backend="onnxruntime", device="cuda", warmup="all")
    assert gpu.describe()["execution"].startswith("batch buckets; ONNX Runtime's own CUDA graph")
    x = images(5)
    for _ in range(4):  # past ONNX Runtime's capture run: the replays must give the same rows
        same(gpu.reconstruct(x), cpu.reconstruct(x.cpu().numpy()), atol=1e-4)
        same(gpu.encode(x, seed=3), cpu.encode(x.cpu().numpy(), seed=3), atol=1e-4)
