"""The compiled Philox path (kernels/philox_numba.py, numba) against the numpy path: the words and uniforms bit for
bit, the normals to a few ulp (the C library's float32 log and cos against numpy's), each path one definition for
every normal of an install, and position-independent, so rows split over calls draw what one call draws."""
import numpy as np
import pytest
from vaedeploy.kernels import numpy_ops, philox

pytest.importorskip("numba", reason="the compiled path needs numba (pip install 'vaedeploy[fast]')")

NORMAL_ULPS = 8  # measured: at most 5 over a million normals


def with_path(monkeypatch, name: str, draw):
    monkeypatch.setattr(philox, "_COMPILED", None if name == "compiled" else False)
    assert (philox._compiled() is not None) == (name == "compiled")
    return draw()


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
        "z": z, "eps": eps, "std": np.exp(np.clip(logvar, -30, 20) / 2),
        "z per row": numpy_ops.reparameterize_numpy(mean, logvar, seeds, offsets),
        "z float16": numpy_ops.reparameterize_numpy(mean.astype(np.float16), logvar.astype(np.float16), 3),
    }


def test_the_paths_draw_the_same_words_and_normals_within_a_few_ulp(monkeypatch):
    fast, reference = (with_path(monkeypatch, name, draws) for name in ("compiled", "numpy"))
    for name in ("uniform stream", "uniform rows"):
        np.testing.assert_array_equal(fast[name], reference[name], err_msg=name)
    for name in ("stream", "rows", "eps"):
        ulps = np.abs(fast[name] - reference[name]) / np.spacing(np.abs(reference[name]).astype(np.float32))
        assert ulps.max() <= NORMAL_ULPS, f"{name}: {ulps.max():.0f} ulp apart"
    for name in ("z", "z per row"):
        assert np.isnan(fast[name][0, 2]) and np.isnan(reference[name][0, 2]), "a NaN logvar stays a NaN"
        ok = ~np.isnan(reference[name])
        # z = mean + std·eps: eps's few ulp, scaled by std, plus the rounding of the sum
        scale = np.abs(reference["std"] * reference["eps"]) + np.abs(reference[name])
        tolerance = (NORMAL_ULPS + 2) * np.spacing(scale)
        assert (np.abs(fast[name] - reference[name])[ok] <= tolerance[ok]).all(), name
    np.testing.assert_allclose(fast["z float16"].astype(np.float32), reference["z float16"].astype(np.float32),
                               rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", ["compiled", "numpy"])
def test_a_stream_drawn_in_pieces_is_the_stream_bit_for_bit(monkeypatch, name):
    def draw():
        whole = numpy_ops.standard_normal_numpy(1000, 7, 123)
        pieces = [numpy_ops.standard_normal_numpy(n, 7, 123 + start) for start, n in ((0, 1), (1, 16), (17, 983))]
        rows = numpy_ops.standard_normal_numpy((10, 100), np.full(10, 7), 123 + 100 * np.arange(10))
        return whole, np.concatenate(pieces), rows.reshape(-1)

    whole, pieces, rows = with_path(monkeypatch, name, draw)
    np.testing.assert_array_equal(pieces, whole)
    np.testing.assert_array_equal(rows, whole)


@pytest.mark.parametrize("name", ["compiled", "numpy"])
def test_every_normal_of_one_install_comes_from_one_definition(monkeypatch, name):
    """The streams, philox.randn at any counters (what the torch reference and the tests use) and the uniforms agree
    bit for bit on each path; the numpy path is the numpy code of randn."""
    counters = philox.counters(2**32 - 3, 50)

    def draw():
        return (numpy_ops.standard_normal_numpy(50, 2**40 + 7, 2**32 - 3), philox.randn(2**40 + 7, counters),
                philox.randn(np.full((5, 1), 2**40 + 7), counters.reshape(5, 10)).ravel(),
                numpy_ops.uniform_numpy(50, 11, 2**32 - 3), philox.uint_to_uniform_float(philox.randint(11, counters)))

    stream, randn, per_element, uniforms, words = with_path(monkeypatch, name, draw)
    np.testing.assert_array_equal(stream, randn)
    np.testing.assert_array_equal(per_element, randn)
    np.testing.assert_array_equal(uniforms, words)
    if name == "numpy":
        np.testing.assert_array_equal(randn, philox._randn_numpy(2**40 + 7, counters))


def test_numba_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(philox, "_COMPILED", None)
    monkeypatch.setenv("VAEDEPLOY_NUMBA", "0")
    assert philox._compiled() is None
