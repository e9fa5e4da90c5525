"""The weight-tied bidirectional VAE: the tie, the adjoint convolutions, the standalone decoder."""
import pytest
import torch
from helpers import n_parameters

from vaedeploy.io import load_tensors, save_tensors
from vaedeploy.models import build_model
from vaedeploy.models.backbones import upsampling_padding

TINY = {"hidden": [32], "latent_dim": 4}


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_bivae_ties_the_decoder_to_the_encoder_and_halves_the_parameters(shape, backbone):
    vae = build_model("vae", {"input_shape": shape, "backbone": backbone})
    bivae = build_model("bivae", {"input_shape": shape, "backbone": backbone})
    assert n_parameters(bivae) <= 0.55 * n_parameters(vae)
    z = torch.randn(5, 16)
    before = bivae.decoder(z)
    assert [p.shape for p in before] == [(5, *shape)] * 2
    first = next(m for m in bivae.encoder.trunk.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    with torch.no_grad():
        first.weight.mul_(2.0)  # the encoder's first layer (matrix or kernel) is the decoder's last
    assert not torch.allclose(before[0], bivae.decoder(z)[0])


def test_bivae_conv_decoder_runs_the_adjoint_of_the_encoder_convolutions():
    """With the biases, heads and nonlinearity out of the way, each transposed convolution is the adjoint of the
    encoder's: <conv(x), y> = <x, conv_transpose(y)>, which is what "the same kernel, backwards" means."""
    model = build_model("bivae", {**TINY, "backbone": "conv", "channels": [3, 5], "input_shape": (1, 28, 28)})
    decoder = model.decoder
    convs = [m for m in model.encoder.trunk.modules() if isinstance(m, torch.nn.Conv2d)]
    sizes = decoder.sizes  # smallest first: 7×7, 14×14, 28×28
    for conv, kernel, (small, big) in zip(reversed(convs), decoder.transposed_weights()[decoder.dense_layers:],
                                          zip(sizes, sizes[1:])):
        assert kernel is conv.weight
        x = torch.randn(2, conv.in_channels, *big, dtype=torch.float64)
        y = torch.randn(2, conv.out_channels, *small, dtype=torch.float64)
        forward = torch.nn.functional.conv2d(x, kernel.double(), stride=2, padding=1)
        backward = torch.nn.functional.conv_transpose2d(
            y, kernel.double(), stride=2, padding=1,
            output_padding=upsampling_padding(small, big))
        assert backward.shape == x.shape
        torch.testing.assert_close((forward * y).sum(), (x * backward).sum())


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_bivae_weights_are_stored_once_and_the_standalone_decoder_owns_its_copy(tmp_path, backbone):
    model = build_model("bivae", {**TINY, "backbone": backbone, "channels": [3, 5]})
    assert not any(name.startswith("decoder.transposed") for name in model.state_dict())
    save_tensors(tmp_path / "w.safetensors", model.state_dict())  # safetensors refuses tensors stored twice
    copy = build_model("bivae", {**TINY, "backbone": backbone, "channels": [3, 5]})
    copy.load_state_dict(load_tensors(tmp_path / "w.safetensors"))
    z = torch.randn(3, 4)
    standalone = model.decoder.standalone()
    expected = model.decoder(z)
    for a, b in zip(standalone(z), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.zero_()
    for a, b in zip(standalone(z), expected):  # the copy no longer depends on the encoder
        torch.testing.assert_close(a, b, rtol=0, atol=0)
