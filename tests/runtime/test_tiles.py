"""Tiled encode and decode (runtime/tiles.py): a local function gives the untiled result away from the seams; the
blend equals an independent reference written the way diffusers writes it (every tile kept, blended in place); and
wrapping a tiny diffusers AutoencoderKL's own decoder (encoder) as the tile function gives exactly what that model's
``enable_tiling()`` decode (encode) gives."""
from fractions import Fraction

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaedeploy
from vaedeploy.errors import InputError
from vaedeploy.runtime.arrays import NumpyArrays, TorchArrays
from vaedeploy.runtime.tiles import AUTO_TILE, Tiling, choose, tiled

NUMPY = NumpyArrays()


def box_then_upsample(x, factor=2):
    """A local function of receptive radius 1 (input units): a 3×3 box sum with zero padding, then nearest-neighbour
    upsampling by ``factor``; two outputs, as an encoder's (mean, logvar)."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    box = sum(padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]] for dy in range(3) for dx in range(3))
    up = box.repeat(factor, axis=2).repeat(factor, axis=3).astype(np.float32)
    return up, -up


def seams(size: int, tiling: Tiling, axis: int, radius: int) -> np.ndarray:
    """Output rows (columns) within ``radius`` input rows of a tile's edge inside the image, where a tile sees zero
    padding instead of its neighbour."""
    t, scale = tiling.tile[axis], int(tiling.scale)
    near = np.zeros(size * scale, bool)
    for start in tiling.starts(size, axis):
        if start:
            near[start * scale:(start + radius) * scale] = True
        if start + t < size:
            near[(start + t - radius) * scale:(start + t) * scale] = True
    return near


def reference(run, x, tile, scale: Fraction, overlap=0.25):
    """diffusers' tiled_decode / _tiled_encode restated for numpy: every tile run and kept, blended in place row by
    row of the overlap, then cropped and concatenated. ``tile``: a side (diffusers' square tiles) or (rows, columns),
    each axis then computed as diffusers computes its one side."""
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    t_out = (int(th * scale), int(tw * scale))
    stride, extent = [int(t * (1 - overlap)) for t in (th, tw)], [int(t * overlap) for t in t_out]
    limit = [t - e for t, e in zip(t_out, extent)]

    def blend(a, b, e, axis):
        e = min(a.shape[axis], b.shape[axis], e)
        for y in range(e):
            index = (slice(None),) * axis + (y,)
            b[index] = a[(slice(None),) * axis + (-e + y,)] * np.float32(1 - y / e) + b[index] * np.float32(y / e)
        return b

    rows = [[run(x[:, :, i:i + th, j:j + tw].copy()) for j in range(0, x.shape[3], stride[1])]
            for i in range(0, x.shape[2], stride[0])]
    result = []
    for i, row in enumerate(rows):
        kept = []
        for j, tile_out in enumerate(row):
            if i:
                tile_out = blend(rows[i - 1][j], tile_out, extent[0], 2)
            if j:
                tile_out = blend(row[j - 1], tile_out, extent[1], 3)
            kept.append(tile_out[:, :, :limit[0], :limit[1]])
        result.append(np.concatenate(kept, axis=3))
    return np.concatenate(result, axis=2)


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), tile=st.sampled_from([4, 8, 12]),
       seed=st.integers(0, 2**31))
def test_tiled_equals_untiled_away_from_the_seams_for_a_local_function(height, width, tile, seed):
    x = np.random.default_rng(seed).normal(size=(2, 3, height, width)).astype(np.float32)
    tiling = Tiling((tile, tile), 2)
    got = tiled(box_then_upsample, x, tiling, NUMPY)
    whole = box_then_upsample(x)
    away = ~seams(height, tiling, 0, 1)[:, None] & ~seams(width, tiling, 1, 1)[None, :]
    for g, w in zip(got, whole):
        assert g.shape == w.shape
        np.testing.assert_allclose(g[:, :, away], w[:, :, away], rtol=1e-6, atol=1e-5)


def test_the_seams_differ_so_the_check_above_can_fail():
    x = np.random.default_rng(0).normal(size=(1, 1, 20, 20)).astype(np.float32)
    tiling = Tiling((8, 8), 2)
    got, whole = tiled(box_then_upsample, x, tiling, NUMPY)[0], box_then_upsample(x)[0]
    near = seams(20, tiling, 0, 1)
    assert not np.allclose(got[:, :, near], whole[:, :, near], atol=1e-3)


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 36), width=st.integers(1, 36), tile=st.sampled_from([4, 8]),
       seed=st.integers(0, 2**31))
def test_decode_direction_equals_the_reference_blend(height, width, tile, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1, 2, height, width)).astype(np.float32)
    weights = rng.normal(size=(2, 2)).astype(np.float32)

    def run(t):  # mixes channels and upsamples ×4: each tile's output is its own, so every blend shows
        mixed = np.einsum("oc,nchw->nohw", weights, t) + t.mean(axis=(2, 3), keepdims=True)
        return (mixed.repeat(4, axis=2).repeat(4, axis=3).astype(np.float32),)

    got = tiled(run, x, Tiling((tile, tile), 4), NUMPY)[0]
    np.testing.assert_allclose(got, reference(lambda t: run(t)[0], x, tile, Fraction(4)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("tile", [(4, 8), (12, 4)])
def test_a_rectangular_tile_blends_each_axis_over_its_own_extent(tile):
    # tile=(th, tw) as the runtime takes it: rows blend over th's overlap, columns over tw's (diffusers tiles squares)
    x = np.random.default_rng(3).normal(size=(1, 2, 21, 27)).astype(np.float32)
    got = tiled(box_then_upsample, x, Tiling(tile, 2), NUMPY)[0]
    np.testing.assert_allclose(got, reference(lambda t: box_then_upsample(t)[0], x, tile, Fraction(2)), rtol=0,
                               atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 12), width=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_encode_direction_equals_the_reference_blend(height, width, seed):
    x = np.random.default_rng(seed).normal(size=(2, 1, 4 * height, 4 * width)).astype(np.float32)

    def run(t):  # 4×4 average pooling plus the tile's mean: downsampling by 4, and no two tiles agree
        n, c, h, w = t.shape
        pooled = t.reshape(n, c, h // 4, 4, w // 4, 4).mean(axis=(3, 5))
        return (pooled + t.mean(axis=(2, 3), keepdims=True),)

    got = tiled(run, x, Tiling((16, 16), Fraction(1, 4)), NUMPY)[0]
    np.testing.assert_allclose(got, reference(lambda t: run(t)[0], x, 16, Fraction(1, 4)), rtol=0, atol=1e-6)


def test_torch_tensors_give_what_numpy_arrays_give():
    x = np.random.default_rng(1).normal(size=(1, 2, 18, 11)).astype(np.float32)

    def run_torch(t):
        return tuple(torch.from_numpy(a) for a in box_then_upsample(t.numpy()))

    got = tiled(run_torch, torch.from_numpy(x), Tiling((8, 8), 2), TorchArrays("cpu"))
    expected = tiled(box_then_upsample, x, Tiling((8, 8), 2), NUMPY)
    for g, e in zip(got, expected):
        assert isinstance(g, torch.Tensor)
        np.testing.assert_array_equal(g.numpy(), e)


def test_tiles_run_one_at_a_time():
    seen = []

    def run(t):
        seen.append(t.shape)
        return box_then_upsample(t)

    tiled(run, np.zeros((3, 1, 30, 30), np.float32), Tiling((8, 8), 2), NUMPY)
    assert len(seen) == 5 * 5 and all(shape[0] == 3 and max(shape[2:]) <= 8 for shape in seen)


@pytest.mark.parametrize("tile, scale", [((6, 8), 2), ((8, 2), 2), ((8, 8), Fraction(1, 8)), ((9, 8), 1)])
def test_a_tile_whose_overlap_is_not_whole_rows_is_refused(tile, scale):
    with pytest.raises(InputError, match=r"tile: expected sides whose overlap of 0.25 is a whole number"):
        Tiling(tile, scale)


def test_a_tile_function_of_the_wrong_scale_is_refused():
    with pytest.raises(InputError, match=r"expected a 8×8 tile to give 16×16 outputs \(scale 2\), got 8×8"):
        tiled(lambda t: (t,), np.zeros((1, 1, 12, 12), np.float32), Tiling((8, 8), 2), NUMPY)


@pytest.mark.parametrize("tile, size, largest, expected", [
    (None, (4096, 4096), None, None),
    ((64, 64), (64, 64), None, None),  # within one tile: run whole, as diffusers does
    ((64, 64), (64, 65), None, (64, 64)),
    ((32, 64), (48, 48), None, (32, 64)),
    ("auto", (AUTO_TILE, AUTO_TILE), None, None),
    ("auto", (AUTO_TILE + 8, 64), None, (AUTO_TILE, AUTO_TILE)),
    ("auto", (300, 200), (256, 256), (256, 256)),
])
def test_choose_tiles_only_an_image_larger_than_the_tile(tile, size, largest, expected):
    assert choose(tile, size, largest) == expected


@pytest.mark.parametrize("tile", ["big", (64,), (64, 0), (64.0, 64), (True, 64), 64])
def test_choose_refuses_a_tile_that_is_not_two_positive_integers(tile):
    with pytest.raises(InputError, match=r"tile: expected None, 'auto' or \(height, width\) in pixels"):
        choose(tile, (128, 128))


# ---- against diffusers' own AutoencoderKL ---------------------------------------------------------------------------

SAMPLE = 16  # the tiny model's sample_size: diffusers' tile, 16 pixels, 8 latent rows (downsample 2)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=SAMPLE).eval()
    model.enable_tiling()
    assert (model.tile_sample_min_size, model.tile_latent_min_size) == (SAMPLE, SAMPLE // 2)
    return model


@settings(max_examples=5, deadline=None)
@given(height=st.integers(9, 14), width=st.integers(4, 14), seed=st.integers(0, 2**31))
def test_tiled_decode_equals_diffusers_enable_tiling(vae, height, width, seed):
    z = torch.from_numpy(np.random.default_rng(seed).normal(size=(2, 4, height, width)).astype(np.float32))

    def run(tile):
        return (vae.decoder(vae.post_quant_conv(torch.from_numpy(tile))).numpy(),)

    tile = choose((SAMPLE, SAMPLE), (2 * height, 2 * width))
    with torch.no_grad():
        expected = vae.decode(z).sample.numpy()
        got = tiled(run, z.numpy(), Tiling((tile[0] // 2, tile[1] // 2), 2), NUMPY)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@settings(max_examples=5, deadline=None)
@given(height=st.integers(9, 14), width=st.integers(4, 14), seed=st.integers(0, 2**31))
def test_tiled_encode_equals_diffusers_enable_tiling(vae, height, width, seed):
    x = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (1, 3, 2 * height, 2 * width)).astype(np.float32))

    def run(tile):  # the posterior's parameters, before diffusers clamps logvar to [-30, 20]
        return vae.quant_conv(vae.encoder(tile)).chunk(2, dim=1)

    tile = choose((SAMPLE, SAMPLE), tuple(x.shape[2:]))
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        mean, logvar = tiled(run, x, Tiling(tile, Fraction(1, 2)), TorchArrays("cpu"))
    np.testing.assert_allclose(mean.numpy(), posterior.mean.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(logvar.numpy(), posterior.logvar.numpy(), rtol=0, atol=1e-6)


# ---- decode(z, tile=...) and encode(x, tile=...) of a spatial bundle ------------------------------------------------

@pytest.fixture(scope="module")
def spatial(tmp_path_factory):
    """A KL-conv bundle (f = 4, sizes 8…32, scaled latents) exported untrained, and its model: what the runtime's
    tiled calls are checked against, tile by tile through tiles.tiled on the PyTorch modules."""
    from vaedeploy.export import write_bundle

    from vaedeploy.models.klconv import KLConv, KLConvConfig

    torch.manual_seed(0)
    model = KLConv(KLConvConfig(input_shape=(1, 16, 16), latent_channels=2, channels=(4, 8), max_size=32,
                                scaling_factor=0.5, shift_factor=0.25)).eval()
    data = np.random.default_rng(0).uniform(0, 1, (4, 1, 16, 16)).astype(np.float32)
    with torch.no_grad():
        spec = model.export_spec(data, 2)
    bundle = write_bundle(spec, out=tmp_path_factory.mktemp("tiles") / "klconv", kind="klconv", max_batch=2,
                          input_spec={"shape": [1, 16, 16], "dtype": "float32", "range": [0.0, 1.0]})
    return vaedeploy.load(bundle, backend="onnxruntime"), model


def test_runtime_decode_tiles_an_image_larger_than_the_graphs_take(spatial):
    rt, model = spatial
    z = np.random.default_rng(3).normal(size=(3, 2, 12, 10)).astype(np.float32)  # a 48×40 image: beyond 32×32

    def run(tile):  # the model's mean image of the unscaled latents, as decode takes scaled ones
        with torch.no_grad():
            return (model.decoder(torch.from_numpy(tile / np.float32(0.5) + np.float32(0.25)))[0].numpy(),)

    got = rt.decode(z, tile=(16, 16))
    assert got.shape == (3, 1, 48, 40)
    np.testing.assert_allclose(got, tiled(run, z, Tiling((4, 4), 4), NUMPY)[0], rtol=1e-5, atol=1e-5)
    out = np.empty_like(got)
    assert rt.decode(z, tile=(16, 16), out=out) is out and np.array_equal(out, got)
    with pytest.raises(InputError, match=r"z: expected shape N×2×h×w"):
        rt.decode(z)  # whole, the image is beyond what the graphs take


def test_runtime_encode_tiles_the_posterior_then_draws_one_latent(spatial):
    from vaedeploy.kernels import standard_normal_numpy

    rt, model = spatial
    x = np.random.default_rng(4).uniform(0, 1, (2, 1, 40, 48)).astype(np.float32)

    def run(tile):
        with torch.no_grad():
            return tuple(p.numpy() for p in model.encoder(torch.from_numpy(tile)))

    mean, logvar = tiled(run, x, Tiling((16, 16), Fraction(1, 4)), NUMPY)
    eps = standard_normal_numpy(mean.shape, 7, 0)
    expected = (mean + np.exp(logvar / 2) * eps - np.float32(0.25)) * np.float32(0.5)
    np.testing.assert_allclose(rt.encode(x, seed=7, tile=(16, 16)), expected, rtol=1e-5, atol=1e-5)
    tiled_mean, tiled_logvar = rt.encode_params(x, tile=(16, 16))  # the blended posterior encode draws from
    np.testing.assert_allclose(tiled_mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tiled_logvar, logvar, rtol=1e-5, atol=1e-5)


def test_runtime_auto_tiles_at_the_largest_size_the_graphs_take(spatial):
    rt, _ = spatial
    z = np.random.default_rng(5).normal(size=(1, 2, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(rt.decode(z, tile="auto"), rt.decode(z, tile=(32, 32)))
    small = z[:, :, :8, :8]  # 32×32: within one tile, run whole
    np.testing.assert_array_equal(rt.decode(small, tile="auto"), rt.decode(small))


@pytest.mark.parametrize("tile, match", [
    ((10, 16), r"tile: expected \(th, tw\) with H and W multiples of 4 from 8×8 to 32×32, got \(10, 16\)"),
    ((64, 64), r"tile: expected \(th, tw\) with H and W multiples of 4 from 8×8 to 32×32"),
    ((12, 16), r"tile: expected sides that are multiples of 16 pixels \(the overlap, 0.25 of a tile, a whole number "
               r"of latent rows\), got \(12, 16\)"),
    ("big", r"tile: expected None, 'auto' or \(height, width\) in pixels"),
])
def test_runtime_refuses_a_tile_the_bundle_cannot_run(spatial, tile, match):
    rt, _ = spatial
    with pytest.raises(InputError, match=match):
        rt.decode(np.zeros((1, 2, 12, 12), np.float32), tile=tile)


def test_a_bundle_of_vector_latents_takes_no_tile(exported):
    rt = vaedeploy.load(exported("vae")[1])
    with pytest.raises(InputError, match=r"tile: expected None for a gaussian bundle of latent shape \d+; tiles need "
                                         r"spatial gaussian or deterministic latents"):
        rt.decode(np.zeros((1, *rt.latent_shape), np.float32), tile=(16, 16))
