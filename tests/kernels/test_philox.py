"""kernels/philox.py against Triton's own tl.randint / tl.randn (run by the interpreter on CPU) and Random123."""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from vaedeploy.kernels import philox

CASES = [
    (0, 0),
    (123, 5),
    (2**31 + 11, 2**31 - 7),  # seed in the int64 range, counters crossing 2**31
    (2**40 + 7, 2**32 - 3),  # counters crossing 2**32: the low word wraps and the high word (c1) steps
    (1, 2**33 + 5),
    (2**63 - 1, 2**62),
]


@triton.jit
def _stream_kernel(int_ptr, normal_ptr, seed, offset, n, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    counters = offset.to(tl.int64) + idx
    tl.store(int_ptr + idx, tl.randint(seed, counters), mask=idx < n)
    tl.store(normal_ptr + idx, tl.randn(seed, counters), mask=idx < n)


def _triton_stream(seed, offset, n, block=64):
    ints = torch.empty(n, dtype=torch.int32)
    normals = torch.empty(n, dtype=torch.float32)
    _stream_kernel[(triton.cdiv(n, block),)](ints, normals, seed, offset, n, BLOCK=block)
    return ints.numpy().view(np.uint32), normals.numpy()


@pytest.mark.parametrize("seed,offset", CASES)
def test_randint_is_bit_exact_and_randn_within_ulps(seed, offset):
    ints, normals = _triton_stream(seed, offset, 150)
    counters = philox.counters(offset, 150)
    np.testing.assert_array_equal(philox.randint(seed, counters), ints)
    np.testing.assert_allclose(philox.randn(seed, counters), normals, rtol=1e-6, atol=1e-6)


def test_philox_matches_random123_known_answers():
    # Known-answer vectors of Philox4x32-10 from Random123 (kat_vectors): the stream is the standard one, not just
    # self-consistent with Triton.
    kats = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in kats:
        words = philox.philox4x32(*(np.array([c], dtype=np.uint32) for c in counter), *key)
        assert tuple(int(w[0]) for w in words) == expected


def test_uniforms_lie_in_unit_interval_and_normals_have_unit_moments():
    counters = philox.counters(0, 200_000)
    u = philox.uint_to_uniform_float(philox.randint(7, counters))
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    x = philox.randn(7, counters)
    assert x.dtype == np.float32
    # 200k samples: standard error of the mean 0.0022, of the variance about 0.0032
    assert abs(x.mean()) < 0.01 and abs(x.var() - 1.0) < 0.015
    # neighbouring counters are independent draws
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01


def test_counters_reject_what_an_int64_cannot_hold():
    with pytest.raises(ValueError, match="offset"):
        philox.counters(-1, 4)
    with pytest.raises(ValueError, match="offset"):
        philox.counters(2**63 - 2, 4)
    assert philox.counters(2**63 - 4, 4)[-1] == 2**63 - 1  # the largest counter an int64 holds is drawn
    # per-row starts have the same last start as one stream: a row's last counter may be 2**63 - 1, not beyond
    assert philox.check_starts([0, 2**63 - 4], 4).tolist() == [0, 2**63 - 4]
    with pytest.raises(ValueError, match=r"offsets must be integers in \[0, 2\*\*63 - 4\]"):
        philox.check_starts([2**63 - 3], 4)
    with pytest.raises(ValueError, match="seed"):
        philox.randint(2**63, philox.counters(0, 4))
