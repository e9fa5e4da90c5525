"""Every row draws the noise of its own (seed, row): split calls, per-row seeds and chunked samples agree.

The noise itself is bit-identical (the first test); the graphs around it may differ in the last bits between batch
sizes (BLAS picks kernels by shape), so results of differently batched calls are compared to 1e-6.
"""
import numpy as np
import pytest
from helpers import images
from vaedeploy.kernels import standard_normal_numpy, uniform_numpy

from vaedeploy import load
from vaedeploy.runtime import InputError
from vaedeploy.runtime.noise import Noise

MAX_BATCH = 64  # the test bundles' (tests/conftest.py)


def same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_calls_noise_is_its_rows_of_the_stream():
    d = 5
    whole = standard_normal_numpy((7, d), 2**40 + 3, 10 * d)  # rows 10..16 of seed 2**40 + 3
    np.testing.assert_array_equal(standard_normal_numpy((3, d), *Noise.of(2**40 + 3, 12, 3).stream(d)), whole[2:5])
    per_row = Noise.of(np.full(7, 2**40 + 3), 10, 7)  # per-row seeds, rows offset + r
    np.testing.assert_array_equal(standard_normal_numpy((4, d), *per_row[3:].stream(d)), whole[3:])
    np.testing.assert_array_equal(uniform_numpy((7, d), *per_row.stream(d)), uniform_numpy((7, d), 2**40 + 3, 10 * d))


@pytest.mark.parametrize("name", ["vae", "biva"])
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_rows_encoded_in_separate_calls_draw_what_one_call_draws(exported, name, backend):
    rt = load(exported(name)[1], backend=backend)
    x = images(150)
    whole = rt.encode(x, seed=7)
    parts = np.concatenate([rt.encode(x[:5], seed=7), rt.encode(x[5:100], seed=7, offset=5),
                            rt.encode(x[100:], seed=7, offset=100)])
    same(parts, whole)
    assert not np.allclose(rt.encode(x[5:10], seed=7), whole[5:10]), "offset 0 must not repeat rows 5..9"


@pytest.mark.parametrize("name", ["vae", "twostage", "biva", "vqvae"])
def test_per_row_seeds_give_each_row_its_own_calls_result(exported, name):
    rt = load(exported(name)[1])
    requests = [(3, 11), (1, 12), (70, 11), (2, 2**40)]  # (rows, seed): a batch a server would form
    seeds = np.concatenate([np.full(n, s) for n, s in requests])
    rows = np.concatenate([np.arange(n) for n, _ in requests])
    joined = rt.sample(len(seeds), seed=seeds, offset=rows)
    start = 0
    for n, s in requests:
        same(joined[start:start + n], rt.sample(n, seed=s))
        start += n
    if name != "vqvae":  # encode draws noise for Gaussian and hierarchical latents
        x = images(len(seeds))
        z = rt.encode(x, seed=seeds, offset=rows)
        start = 0
        for n, s in requests:
            same(z[start:start + n], rt.encode(x[start:start + n], seed=s))
            start += n


@pytest.mark.parametrize("name", ["vae", "vqvae", "biva", "twostage"])
def test_sample_is_drawn_and_decoded_max_batch_rows_at_a_time(exported, name):
    rt = load(exported(name)[1])
    seen = []
    for runner in rt.runners.values():
        original = runner.run_impl
        runner.run_impl = lambda inputs, original=original: seen.append(len(inputs[0])) or original(inputs)
    samples = rt.sample(150, seed=3)
    assert samples.shape == (150, 1, 8, 8) and max(seen) == MAX_BATCH
    same(samples[100:], rt.sample(50, seed=3, offset=100))


def test_a_sample_too_large_for_memory_is_refused_before_anything_is_drawn(exported):
    rt = load(exported("vae")[1])
    with pytest.raises(InputError, match=r"the result of 1000000000000 rows needs .* GiB, more than this machine's"):
        rt.sample(10**12, seed=0)


def test_bad_seeds_and_offsets_are_named(exported):
    rt = load(exported("vae")[1])
    x = images(3)
    for kwargs, message in [
        (dict(seed=[1, 2]), r"seed: expected an integer or 3 integers \(one per row\), got int64 values shaped \[2\]"),
        (dict(seed=np.array([1.0, 2.0, 3.0])), r"seed: expected an integer or 3 integers"),
        (dict(seed=[1, -2, 3]), r"seed: expected integers in \[0, 2\*\*63\)"),
        (dict(seed=1, offset=-1), r"offset: expected an integer in \[0, 2\*\*63\)"),
        (dict(seed=True), r"seed: expected an integer or 3 integers, got True"),
        (dict(seed=1, offset=2**62), r"offset: row 4611686018427387904 of a 4-wide stream is past 2\*\*63 counters"),
    ]:
        with pytest.raises(InputError, match=message):
            rt.encode(x, **kwargs)


def test_a_closed_runtime_says_so(exported):
    with load(exported("vae")[1]) as rt:
        rt.decode(np.zeros((1, 4), np.float32))
    assert all(not r.is_active for r in rt.runners.values())
    with pytest.raises(InputError, match="is closed"):
        rt.decode(np.zeros((1, 4), np.float32))
