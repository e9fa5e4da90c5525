"""reparameterize / standard_normal: the Triton kernel under the interpreter, the torch reference, the dispatch."""
import numpy as np
import pytest
import torch
from vaedeploy.kernels import (
    philox,
    reparameterize,
    reparameterize_numpy,
    standard_normal,
    standard_normal_numpy,
    uniform_numpy,
)
from vaedeploy.kernels.sampling import (
    reparameterize_reference,
    reparameterize_triton,
    standard_normal_reference,
    standard_normal_triton,
)


def _moments(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g)
    logvar = 2 * torch.randn(shape, generator=g)
    return mean.to(dtype), logvar.to(dtype)


def _numpy_eps(n, seed, offset):
    return torch.from_numpy(philox.randn(seed, philox.counters(offset, n)))


# ---------------------------------------------------------------- the Triton kernel under the interpreter


@pytest.mark.parametrize("offset", [0, 3, 2**31 - 5, 2**32 - 7, 2**33 + 5])
def test_kernel_is_the_formula_with_the_numpy_philox_noise(offset):
    mean, logvar = _moments((3, 70))
    z, eps = reparameterize_triton(mean, logvar, 11, offset, return_eps=True, block_size=64)
    assert z.dtype == torch.float32 and eps.dtype == torch.float32 and z.shape == eps.shape == mean.shape
    torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * eps, rtol=1e-6, atol=1e-6)
    # element i uses counter offset + i, in row-major order
    torch.testing.assert_close(eps.flatten(), _numpy_eps(mean.numel(), 11, offset), rtol=1e-6, atol=1e-6)


def test_noise_does_not_depend_on_block_size_and_draws_compose():
    mean, logvar = _moments(300)
    z16 = reparameterize_triton(mean, logvar, 5, 100, block_size=16)
    z256 = reparameterize_triton(mean, logvar, 5, 100, block_size=256)
    torch.testing.assert_close(z16, z256, rtol=0, atol=0)
    # two draws at offsets o and o + n are one draw of 2n at o: callers advance the offset by numel
    head = standard_normal_triton(120, 5, 100, device="cpu")
    tail = standard_normal_triton(180, 5, 220, device="cpu")
    whole = standard_normal_triton(300, 5, 100, device="cpu", block_size=128)
    torch.testing.assert_close(torch.cat([head, tail]), whole, rtol=0, atol=0)


def test_seed_and_offset_as_int64_tensors_match_ints():
    mean, logvar = _moments((4, 33))
    seed, offset = 2**40 + 3, 2**32 + 9
    by_int = reparameterize_triton(mean, logvar, seed, offset)
    by_tensor = reparameterize_triton(mean, logvar, torch.tensor(seed), torch.tensor([offset]))
    torch.testing.assert_close(by_tensor, by_int, rtol=0, atol=0)
    assert not torch.equal(reparameterize_triton(mean, logvar, torch.tensor(seed), torch.tensor(offset + 1)), by_int)


def test_kernel_noise_statistics():
    x = standard_normal_triton(20_000, 3, 2**31 + 1, device="cpu").double()
    # 20k samples: standard errors 0.007 (mean) and 0.01 (variance)
    assert abs(x.mean()) < 0.035 and abs(x.var() - 1) < 0.05
    assert abs(torch.corrcoef(torch.stack([x[:-1], x[1:]]))[0, 1]) < 0.035
    other_seed = standard_normal_triton(20_000, 4, 2**31 + 1, device="cpu").double()
    assert abs(torch.corrcoef(torch.stack([x, other_seed]))[0, 1]) < 0.035


def test_kernel_clamps_logvar():
    mean = torch.zeros(4)
    logvar = torch.tensor([-1000.0, -30.0, 20.0, 1000.0])
    z, eps = reparameterize_triton(mean, logvar, 1, return_eps=True, block_size=16)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(z, torch.exp(0.5 * logvar.clamp(-30, 20)) * eps)


def test_kernel_float16_matches_reference():
    mean, logvar = _moments((5, 40), torch.float16)
    z = reparameterize_triton(mean, logvar, 9, 17)
    assert z.dtype == torch.float16
    torch.testing.assert_close(z, reparameterize_reference(mean, logvar, 9, 17), rtol=1e-3, atol=1e-3)


def test_kernel_bfloat16_within_one_ulp_of_reference():
    # The interpreter truncates float32 -> bfloat16 on stores (the GPU rounds to nearest; see the gpu tests), so
    # here only one bf16 ulp (2**-7 relative) is asked for.
    mean, logvar = _moments((5, 40), torch.bfloat16)
    z = reparameterize_triton(mean, logvar, 9, 17)
    assert z.dtype == torch.bfloat16
    torch.testing.assert_close(z.float(), reparameterize_reference(mean, logvar, 9, 17).float(), rtol=2**-7, atol=1e-6)


def test_kernel_gradients_match_reference_and_analytic_formula():
    mean, logvar = _moments((6, 50))
    logvar[0, :5] = torch.tensor([-40.0, -30.0, 20.0, 25.0, 0.0])  # both sides of both clamp bounds
    dz = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (reparameterize_triton, reparameterize_reference):
        m, lv = mean.clone().requires_grad_(), logvar.clone().requires_grad_()
        z = fn(m, lv, torch.tensor(21), torch.tensor(2**33))
        z.backward(dz)
        grads.append((m.grad, lv.grad))
    (dm_k, dlv_k), (dm_r, dlv_r) = grads
    torch.testing.assert_close(dm_k, dz)
    torch.testing.assert_close(dm_r, dz)
    eps = _numpy_eps(300, 21, 2**33).view(6, 50)
    inside = (logvar >= -30) & (logvar <= 20)
    analytic = torch.where(inside, 0.5 * dz * eps * torch.exp(0.5 * logvar.clamp(-30, 20)), 0.0)
    torch.testing.assert_close(dlv_k, analytic, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dlv_r, analytic, rtol=1e-5, atol=1e-6)
    assert dlv_k[0, 0] == 0 and dlv_k[0, 3] == 0 and dlv_k[0, 1] != 0 and dlv_k[0, 2] != 0


def test_backward_uses_the_forward_noise_even_if_offset_tensor_moves_on():
    mean, logvar = _moments(40)
    offset = torch.tensor(7)
    lv = logvar.clone().requires_grad_()
    z = reparameterize_triton(mean, lv, 3, offset)
    offset += 40  # the caller advances its offset right after sampling
    z.sum().backward()
    eps = _numpy_eps(40, 3, 7)
    torch.testing.assert_close(lv.grad, 0.5 * eps * torch.exp(0.5 * logvar), rtol=1e-5, atol=1e-6)


def test_gradient_of_mean_alone():
    mean, logvar = _moments(30)
    m = mean.clone().requires_grad_()
    reparameterize_triton(m, logvar, 3, 0).sum().backward()
    torch.testing.assert_close(m.grad, torch.ones(30))


def test_empty_input():
    z, eps = reparameterize_triton(torch.empty(0, 3), torch.empty(0, 3), 1, return_eps=True)
    assert z.shape == eps.shape == (0, 3)


# ---------------------------------------------------------------- the torch reference (what CPU users run)


def test_reference_gradcheck_float64():
    mean, logvar = (t.double().requires_grad_() for t in _moments((3, 4)))
    assert torch.autograd.gradcheck(lambda m, lv: reparameterize_reference(m, lv, 8, 2**32 + 1), (mean, logvar))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_half_inputs_compute_in_float32(dtype):
    mean, logvar = _moments((4, 25), dtype)
    z, eps = reparameterize_reference(mean, logvar, 2, 5, return_eps=True)
    assert z.dtype == dtype and eps.dtype == torch.float32
    expected = (mean.float() + torch.exp(0.5 * logvar.float()) * eps).to(dtype)
    torch.testing.assert_close(z, expected, rtol=0, atol=0)


def test_reference_noise_is_the_numpy_philox_and_standard_normal_shapes():
    eps = standard_normal_reference((2, 3, 5), 4, 2**31 + 3)
    assert eps.shape == (2, 3, 5) and eps.dtype == torch.float32
    torch.testing.assert_close(eps.flatten(), _numpy_eps(30, 4, 2**31 + 3), rtol=0, atol=0)
    assert standard_normal_reference(7, 4, dtype=torch.float16).shape == (7,)


def test_cpu_entry_points_use_the_reference_and_agree_with_the_kernel():
    mean, logvar = _moments((8, 16))
    z = reparameterize(mean, logvar, 12, 40)
    torch.testing.assert_close(z, reparameterize_reference(mean, logvar, 12, 40), rtol=0, atol=0)
    torch.testing.assert_close(z, reparameterize_triton(mean, logvar, 12, 40), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(standard_normal((8, 16), 12, 40), standard_normal_triton((8, 16), 12, 40, device="cpu"))
    # float64 is the reference's, in float64
    assert reparameterize(mean.double(), logvar.double(), 12).dtype == torch.float64


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [reparameterize, reparameterize_reference, reparameterize_triton])
def test_bad_input_names_what_was_expected(fn):
    mean, logvar = _moments((2, 3))
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3\).*\(3, 2\)"):
        fn(mean, logvar.T.contiguous(), 1)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64, got torch.int64"):
        fn(mean.long(), logvar.long(), 1)
    with pytest.raises(TypeError, match="torch tensors"):
        fn(mean.numpy(), logvar, 1)
    with pytest.raises(TypeError, match="seed tensor must hold one int64, got torch.int32"):
        fn(mean, logvar, torch.tensor(1, dtype=torch.int32))
    with pytest.raises(TypeError, match="offset must be an int or an int64 tensor, got float"):
        fn(mean, logvar, 1, 0.5)
    with pytest.raises(ValueError, match="seed must be in"):
        fn(mean, logvar, -1)
    with pytest.raises(ValueError, match="offset must be in"):
        fn(mean, logvar, 1, 2**63 - 3)


def test_numpy_scalars_are_seeds_and_offsets_and_floats_and_bools_are_not():
    mean, logvar = (t.numpy() for t in _moments((2, 3)))
    for draw in (lambda seed, offset: standard_normal_numpy((2, 3), seed, offset),
                 lambda seed, offset: uniform_numpy((2, 3), seed, offset),
                 lambda seed, offset: reparameterize_numpy(mean, logvar, seed, offset),
                 lambda seed, offset: standard_normal((2, 3), seed, offset).numpy()):
        expected = draw(2**63 - 1, 5)
        for seed, offset in [(np.uint64(2**63 - 1), np.int8(5)), (np.array(2**63 - 1), np.array(5, np.uint32))]:
            np.testing.assert_array_equal(draw(seed, offset), expected)
        for seed, offset, message in [(1.5, 0, "seed must be"), (True, 0, "seed must be"),
                                      (1, np.float32(2.0), "offset must be"), (np.bool_(False), 0, "seed must be")]:
            with pytest.raises(TypeError, match=message):  # 1.5 was drawn as seed 1, True as 1
                draw(seed, offset)
        with pytest.raises(ValueError, match="seed must be in"):
            draw(np.uint64(2**64 - 1), 0)


def test_triton_launcher_guards():
    mean, logvar = _moments(8)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32, got torch.float64"):
        reparameterize_triton(mean.double(), logvar.double(), 1)
    with pytest.raises(ValueError, match="power of two"):
        reparameterize_triton(mean, logvar, 1, block_size=100)


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("n", [2**24 + 3, 1000])
def test_gpu_kernel_at_real_sizes_matches_cpu_noise(n):
    mean, logvar = (t.cuda() for t in _moments(n))
    z, eps = reparameterize(mean, logvar, 17, 2**32 - 100, return_eps=True)
    # same seed and offset: the GPU's noise is the CPU's up to its approximate log/sqrt/cos (a few ulp, more in
    # absolute terms far in the tails); a wrong counter or key would differ by O(1)
    ref_eps = standard_normal_reference(n, 17, 2**32 - 100)
    torch.testing.assert_close(eps.cpu(), ref_eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * eps, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_stores_round_to_nearest(dtype):
    mean, logvar = (t.cuda() for t in _moments(100_000, dtype))
    z, eps = reparameterize(mean, logvar, 5, return_eps=True)
    exact = mean.float() + torch.exp(0.5 * logvar.float()) * eps
    # Round-to-nearest gives exact.to(dtype) except where the kernel's fast exp moves a value across a rounding
    # midpoint or fuses the multiply-add (a few in 10^4 for float16); truncation, as the interpreter does, would differ
    # on about half of the elements.
    assert (z == exact.to(dtype)).float().mean() > 0.995
    torch.testing.assert_close(z, exact.to(dtype), rtol=torch.finfo(dtype).eps, atol=1e-5)


@pytest.mark.gpu
def test_gpu_backward():
    mean, logvar = (t.cuda().requires_grad_() for t in _moments(5000))
    z, eps = reparameterize(mean, logvar, 3, 0, return_eps=True)
    dz = torch.randn_like(z)
    z.backward(dz)
    torch.testing.assert_close(mean.grad, dz)
    torch.testing.assert_close(logvar.grad, 0.5 * dz * eps * torch.exp(0.5 * logvar.detach()), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_draws_fresh_noise_from_device_seed_and_offset():
    mean, logvar = (t.cuda() for t in _moments(4096))
    seed = torch.tensor(1, device="cuda")
    offset = torch.tensor(0, device="cuda")
    reparameterize(mean, logvar, seed, offset)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z = reparameterize(mean, logvar, seed, offset)
    draws = []
    for s, o in [(1, 0), (1, 4096), (2, 0)]:
        seed.fill_(s)
        offset.fill_(o)
        graph.replay()
        torch.cuda.synchronize()
        draws.append(z.clone())
        torch.testing.assert_close(z, reparameterize(mean, logvar, s, o), rtol=0, atol=0)
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
