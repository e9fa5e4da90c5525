import numpy as np
import pytest

from vaedeploy.data import DataError, load_dataset


def test_digits_splits_are_fixed_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.image_shape == (1, 8, 8) and a.levels == 17
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    np.testing.assert_array_equal(a.test.raw, b.test.raw)
    other = load_dataset("digits", split_seed=1)
    assert not np.array_equal(a.test.raw, other.test.raw)


def test_mnist5k_comes_from_the_installed_wheel():
    data = load_dataset("mnist5k")
    assert data.image_shape == (1, 28, 28) and data.levels == 256
    assert len(data.train) + len(data.val) + len(data.test) == 5000
    assert set(np.unique(np.concatenate([data.train.labels, data.val.labels, data.test.labels]))) == set(range(10))


@pytest.mark.parametrize("preprocessing", ["dequantize", "binarize", "scale"])
def test_preprocessing_ranges(preprocessing):
    data = load_dataset("digits", preprocessing=preprocessing)
    x = data.prepare(data.train.raw, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == data.train.raw.shape
    assert x.min() >= 0.0 and x.max() <= 1.0
    if preprocessing == "binarize":
        assert set(np.unique(x)) <= {0.0, 1.0}
    if preprocessing == "dequantize":
        # each value stays inside its own pixel level's bin
        np.testing.assert_array_equal(np.floor(x * 17), data.train.raw)


def test_dequantization_is_fresh_for_training_and_fixed_for_evaluation():
    data = load_dataset("digits")
    rng = np.random.default_rng(0)
    assert not np.array_equal(data.prepare(data.test.raw, rng), data.prepare(data.test.raw, rng))
    np.testing.assert_array_equal(data.evaluation_inputs(), data.evaluation_inputs())


def test_bits_per_dim_accounts_for_the_pixel_grid():
    data = load_dataset("digits")
    # a uniform density on [0,1)^64 has log-likelihood 0 and costs log2(17) bits per discrete pixel
    assert data.bits_per_dim(0.0) == pytest.approx(np.log2(17))


def test_user_arrays_npy_and_npz(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    data = load_dataset(str(tmp_path / "x.npy"))
    assert data.image_shape == (1, 28, 28) and data.levels == 256 and data.test.labels is None
    np.savez(tmp_path / "xy.npz", x=np.random.default_rng(1).random((20, 12)), y=np.arange(20))
    flat = load_dataset(str(tmp_path / "xy.npz"))
    assert flat.image_shape == (1, 1, 12) and flat.levels is None and flat.test.labels is not None


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((0, 8, 8)), "empty"),
        (np.zeros((4, 2, 2, 2, 2)), "rank 5"),
        (np.array([["a", "b"]] * 4), "numeric"),
        (np.full((4, 8), np.nan), "NaN or Inf"),
        (np.full((4, 8), np.inf), "NaN or Inf"),
        (np.full((4, 8), -1.0), "non-negative"),
        (np.full((4, 8), 2.5), "floats in \\[0, 1\\]"),
    ],
)
def test_bad_arrays_get_a_clear_error_naming_the_file(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(str(path))
    assert str(path) in str(info.value)


def test_missing_file_unknown_name_and_bad_suffix(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "absent.npy"))
    with pytest.raises(DataError, match="unknown data set 'cifar'"):
        load_dataset("cifar")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="expected .npy or .npz"):
        load_dataset(str(tmp_path / "x.csv"))
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((5, 4)), y=np.zeros(3))
    with pytest.raises(DataError, match="5 images but 3 labels"):
        load_dataset(str(tmp_path / "mismatch.npz"))
    with pytest.raises(DataError, match="preprocessing must be one of"):
        load_dataset("digits", preprocessing="whiten")


def test_channels_last_images_are_read_as_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 8, 6, 3)).astype(np.uint8)  # N×H×W×C, as PIL writes them
    np.save(tmp_path / "rgb.npy", rgb)
    data = load_dataset(str(tmp_path / "rgb.npy"))
    assert data.image_shape == (3, 8, 6)
    first = np.concatenate([data.train.raw, data.val.raw, data.test.raw])
    assert sorted(map(bytes, first.astype(np.uint8).transpose(0, 2, 3, 1))) == sorted(map(bytes, rgb))
    np.save(tmp_path / "chw.npy", rgb.transpose(0, 3, 1, 2))  # already N×C×H×W: unchanged
    assert load_dataset(str(tmp_path / "chw.npy")).image_shape == (3, 8, 6)


def test_every_split_gets_an_example_and_fewer_than_three_are_refused(tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((3, 4)))
    data = load_dataset(str(tmp_path / "three.npy"))
    assert (len(data.train), len(data.val), len(data.test)) == (1, 1, 1)
    np.save(tmp_path / "two.npy", np.zeros((2, 4)))
    with pytest.raises(DataError, match="expected at least 3 examples .* got 2"):
        load_dataset(str(tmp_path / "two.npy"))
    with pytest.raises(DataError, match="split fractions"):
        load_dataset("digits", fractions=(0.6, 0.5))
