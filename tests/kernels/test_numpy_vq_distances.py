"""The numpy VQ op's distances: cancellation in ‖z‖² + ‖e‖² − 2 z·e never leaves a negative squared distance."""
import numpy as np
from vaedeploy.kernels import vq_nearest_numpy


def test_exact_hits_on_offset_codes_give_non_negative_distances():
    codebook = (3.0 + np.random.default_rng(0).standard_normal((40, 24))).astype(np.float32)
    x = codebook
    raw = np.einsum("nd,nd->n", x, x)[:, None] + np.einsum("kd,kd->k", x, x)[None] - 2 * (x @ x.T)
    assert (np.diag(raw) < 0).any(), "premise: float32 cancellation makes some exact hits negative"
    index, rows, distance = vq_nearest_numpy(codebook, codebook, return_distance=True)
    assert index.tolist() == list(range(40)) and (distance >= 0).all()
    np.testing.assert_array_equal(rows, codebook)
