"""The compiled Philox path (kernels/philox_numba.py, numba) against the numpy path that defines it: bit for bit."""
import numpy as np
import pytest
from vaedeploy.kernels import numpy_ops, philox

pytest.importorskip("numba", reason="the compiled path needs numba (pip install 'vaedeploy[fast]')")


@pytest.fixture(params=["compiled", "numpy"])
def path(request, monkeypatch):
    """Run a test body on one path; ``philox._compiled`` picks it."""
    if request.param == "numpy":
        monkeypatch.setattr(philox, "_COMPILED", False)
    else:
        monkeypatch.setattr(philox, "_COMPILED", None)
        assert philox._compiled() is not None
    return request.param


def draws() -> dict:
    g = np.random.default_rng(3)
    seeds, offsets = g.integers(0, 2**63, size=40), g.integers(0, 2**40, size=40)
    mean = g.standard_normal((40, 9)).astype(np.float32)
    logvar = (4 * g.standard_normal((40, 9))).astype(np.float32)
    logvar[0, :3] = [-100, 100, np.nan]  # both clamps, and a NaN that stays a NaN
    z, eps = numpy_ops.reparameterize_numpy(mean, logvar, 2**40 + 1, 2**32 - 5, return_eps=True)
    return {
        "stream": numpy_ops.standard_normal_numpy((300, 7), 2**62 + 9, 2**32 - 100),  # the low word wraps
        "rows": numpy_ops.standard_normal_numpy((40, 9), seeds, offsets),
        "uniform stream": numpy_ops.uniform_numpy((30, 5), 5, 77),
        "uniform rows": numpy_ops.uniform_numpy((40, 9), seeds, offsets),
        "z": z, "eps": eps,
        "z per row": numpy_ops.reparameterize_numpy(mean, logvar, seeds, offsets),
        "z float16": numpy_ops.reparameterize_numpy(mean.astype(np.float16), logvar.astype(np.float16), 3),
    }


def test_compiled_and_numpy_paths_draw_the_same_bits(monkeypatch):
    monkeypatch.setattr(philox, "_COMPILED", None)
    assert philox._compiled() is not None
    compiled = draws()
    monkeypatch.setattr(philox, "_COMPILED", False)
    reference = draws()
    for name, values in reference.items():
        np.testing.assert_array_equal(compiled[name], values, err_msg=name)  # NaN equals NaN here


def test_each_path_matches_the_general_randn_and_randint(path):
    counters = philox.counters(2**32 - 3, 50)
    np.testing.assert_array_equal(numpy_ops.standard_normal_numpy(50, 2**40 + 7, 2**32 - 3),
                                  philox.randn(2**40 + 7, counters))
    np.testing.assert_array_equal(numpy_ops.uniform_numpy(50, 11, 2**32 - 3),
                                  philox.uint_to_uniform_float(philox.randint(11, counters)))


def test_a_stream_drawn_in_pieces_is_the_stream(path):
    whole = numpy_ops.standard_normal_numpy(1000, 7, 123)
    pieces = [numpy_ops.standard_normal_numpy(n, 7, 123 + start) for start, n in ((0, 1), (1, 16), (17, 983))]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
