"""The numpy ops (the ONNX Runtime path) on their own, and the package importing without torch or Triton."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from vaedeploy.kernels import reparameterize_numpy, standard_normal_numpy
from vaedeploy.kernels.sampling import reparameterize_reference


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_reparameterize_numpy_matches_torch_reference(dtype):
    g = np.random.default_rng(0)
    mean = g.standard_normal((6, 11)).astype(dtype)
    logvar = (3 * g.standard_normal((6, 11))).astype(dtype)
    logvar[0, :2] = [-100, 100]
    z, eps = reparameterize_numpy(mean, logvar, 2**35 + 1, 2**32 - 5, return_eps=True)
    assert z.dtype == dtype and eps.dtype == np.float32 and np.isfinite(z).all()
    ref = reparameterize_reference(torch.from_numpy(mean), torch.from_numpy(logvar), 2**35 + 1, 2**32 - 5)
    tol = 1e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(z.astype(np.float64), ref.double().numpy(), rtol=tol, atol=tol)


def test_standard_normal_numpy_shapes_and_offsets():
    whole = standard_normal_numpy((4, 5), 3, 10)
    assert whole.shape == (4, 5) and whole.dtype == np.float32
    np.testing.assert_array_equal(standard_normal_numpy(8, 3, 22), whole.ravel()[12:])
    assert standard_normal_numpy((2, 0), 3).shape == (2, 0)


def test_numpy_bad_input():
    with pytest.raises(ValueError, match=r"same shape and dtype, got \(2,\) float32 and \(3,\) float32"):
        reparameterize_numpy(np.zeros(2, np.float32), np.zeros(3, np.float32), 1)
    with pytest.raises(TypeError, match="mean must be float16, float32 or float64, got int64"):
        reparameterize_numpy(np.zeros(2, np.int64), np.zeros(2, np.int64), 1)


def _run_without(module: str, body: str) -> str:
    # A None entry in sys.modules makes `import <module>` raise ImportError, as on a machine without it.
    code = f"import sys\nsys.modules[{module!r}] = None\n" + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_numpy_ops_run_where_torch_cannot_be_imported():
    out = _run_without(
        "torch",
        """
        import numpy as np
        import vaedeploy.kernels as k
        z = k.reparameterize_numpy(np.zeros(4, np.float32), np.zeros(4, np.float32), 1)
        index, rows = k.vq_nearest_numpy(np.ones((3, 2), np.float32), np.eye(2, dtype=np.float32))
        print(z.shape, k.standard_normal_numpy(5, 1).shape, index.tolist())
        try:
            k.reparameterize
        except ImportError:
            print("torch entry points need torch")
        """,
    )
    assert out.split("\n")[:2] == ["(4,) (5,) [0, 0, 0]", "torch entry points need torch"]


def test_torch_entry_points_fall_back_to_the_reference_without_triton():
    out = _run_without(
        "triton",
        """
        import torch
        from vaedeploy.kernels import reparameterize, standard_normal, vq_nearest
        from vaedeploy.kernels.sampling import reparameterize_triton
        z = reparameterize(torch.zeros(3), torch.zeros(3), 1)
        index, rows = vq_nearest(torch.ones(3, 2), torch.eye(2))
        print(tuple(z.shape), tuple(standard_normal(4, 1).shape), index.tolist())
        try:
            reparameterize_triton(torch.zeros(3), torch.zeros(3), 1)
        except RuntimeError as e:
            print(e)
        """,
    )
    assert out.startswith("(3,) (4,) [0, 0, 0]\nTriton is not installed")


def test_per_row_streams_are_exactly_the_single_stream_they_stand_for():
    from vaedeploy.kernels import uniform_numpy

    d, rows = 5, np.arange(7)
    for draw in (standard_normal_numpy, uniform_numpy):
        whole = draw((7, d), 2**40 + 3, 10 * d)
        np.testing.assert_array_equal(draw((7, d), np.full(7, 2**40 + 3), (10 + rows) * d), whole)
    mixed = standard_normal_numpy((2, d), np.array([1, 9]), np.array([0, 4 * d]))
    np.testing.assert_array_equal(mixed[1], standard_normal_numpy((5, d), 9)[4])
    mean, logvar = np.zeros((2, d), np.float32), np.zeros((2, d), np.float32)
    np.testing.assert_array_equal(reparameterize_numpy(mean, logvar, np.array([1, 9]), np.array([0, 4 * d])), mixed)
    torch_z = reparameterize_reference(torch.from_numpy(mean), torch.from_numpy(logvar), np.array([1, 9]),
                                       np.array([0, 4 * d]))
    np.testing.assert_array_equal(torch_z.numpy(), mixed)
    with pytest.raises(ValueError, match="offsets must be integers"):
        standard_normal_numpy((2, d), np.array([1, 9]), np.array([-1, 0]))
