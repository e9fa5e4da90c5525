"""benchmarks/peers.py's peers do the same work as vaedeploy's ops (torch.compile and OpenVINO are left to the
benchmark itself: compiling costs tens of seconds)."""
import numpy as np
import pytest

from benchmarks import peers
from vaedeploy import load
from vaedeploy.bench import local


@pytest.mark.parametrize("name", ["vae", "ae"])
def test_raw_onnxruntime_and_eager_compute_what_the_runtime_does(exported, name):
    with load(exported(name)[1]) as rt:
        inputs = local.Inputs(rt, local.load_images(rt, None)[0])
        images, latents = inputs.images_of(4), inputs.latents_of(4)
        providers = {"ort": peers.onnxruntime_graphs(rt, tuned=True),
                     "ort default": peers.onnxruntime_graphs(rt, tuned=False),
                     "eager": peers.torch_graphs(rt, compiled=False, batches=[4])}
        for label, graphs in providers.items():
            decode = peers.peer_call(graphs, rt, "decode", 4, latents)
            reconstruct = peers.peer_call(graphs, rt, "reconstruct", 4, images)
            np.testing.assert_allclose(np.asarray(decode(1)), rt.decode(latents[1]), rtol=1e-4, atol=1e-5,
                                       err_msg=label)
            np.testing.assert_allclose(np.asarray(reconstruct(0)), rt.reconstruct(images[0]), rtol=1e-4, atol=1e-5,
                                       err_msg=label)
            z = np.asarray(peers.peer_call(graphs, rt, "encode", 4, images)(0))
            assert z.shape == (4, rt.latent_dim) and np.isfinite(z).all()
            if rt.latent_type == "gaussian":
                mean = rt.encode_params(images[0])[0]
                assert not np.allclose(z, mean), "encode draws noise around the mean"
                assert np.asarray(peers.peer_call(graphs, rt, "sample", 4, images)(0)).shape == (4, *rt.input_shape)
            else:
                np.testing.assert_allclose(z, rt.encode(images[0]), rtol=1e-4, atol=1e-5)


def test_each_providers_error_is_against_eager_fp32_and_bf16_autocast_shows_its_loss(exported):
    with load(exported("vae")[1], backend="onnxruntime") as rt:
        inputs = local.Inputs(rt, local.load_images(rt, None)[0])
        providers = {"vaedeploy": rt, "pytorch eager": peers.torch_graphs(rt, compiled=False, batches=[16]),
                     "pytorch bf16 autocast": peers.torch_graphs(rt, compiled=False, batches=[16], autocast=True)}
        found = peers.errors_of(rt, inputs, providers)
    for op in ("decode", "reconstruct"):
        assert found["pytorch eager"][op]["max_abs"] == 0  # the reference itself
        assert 0 < found["vaedeploy"][op]["max_abs"] < 1e-4 < found["pytorch bf16 autocast"][op]["max_abs"]
        assert found["pytorch bf16 autocast"][op]["psnr_db"] < found["vaedeploy"][op]["psnr_db"]
