"""Philox words to uniforms exactly as ``tl.uint_to_uniform_float`` folds them: ``x < 0 ? -x - 1 : x`` on int32."""
import numpy as np
from vaedeploy.kernels.philox import uint_to_uniform_float

SCALE = np.float32(4.6566127342e-10)  # Triton's constant, about 2^-31


def test_negative_words_fold_to_their_bitwise_complement():
    words = np.array([0xFFFFFFFF, 0xFFFFFFFE, 0x80000000, 0, 5, 0x7FFFFFFF], np.uint32)
    # -1 folds to 0 and -2 to 1 (not to 1 and 2); the most negative word to the largest positive one
    expected = np.array([0, 1, 0x7FFFFFFF, 0, 5, 0x7FFFFFFF], np.float32) * SCALE
    np.testing.assert_array_equal(uint_to_uniform_float(words), expected)
    random = np.random.default_rng(0).integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(uint_to_uniform_float(random), uint_to_uniform_float(~random))
