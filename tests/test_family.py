"""The rest of the family: weight-tied bivae, hierarchical biva, two-stage VAE, sample FD and collapse figures."""
import json
import shutil

import numpy as np
import pytest
import torch

from vaedeploy.cli import main
from vaedeploy.data import load_dataset
from vaedeploy.evaluate import evaluate_model, evaluate_run
from vaedeploy.fid import CACHE_NAME, frechet_distance, load_or_train_classifier
from vaedeploy.io import load_tensors, save_tensors
from vaedeploy.models import build_model
from vaedeploy.models.backbones import upsampling_padding
from vaedeploy.models.base import log_normal
from vaedeploy.models.biva import gaussian_kl_between
from vaedeploy.train import TrainConfig, load_run, train_run

TINY = {"hidden": [32], "latent_dim": 4}
TINY_BIVA = {"hidden": [32], "latent_dims": [4, 3, 2], "layer_hidden": 16}
TINY_TWOSTAGE = {**TINY, "stage2_hidden": [16]}


def n_parameters(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def fd_classifier(digits, tmp_path_factory):
    """A briefly trained sample-FD classifier file for digits, copied into run directories to save test time."""
    cache = tmp_path_factory.mktemp("fd")
    load_or_train_classifier(digits, cache, epochs=8)
    return cache / CACHE_NAME


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


def _graphs_for_export():
    """(name, module, example inputs) for every graph export will trace on its own: tensors in, tensors out."""
    bivae = build_model("bivae", TINY)
    bivae_conv = build_model("bivae", {**TINY, "backbone": "conv", "channels": [3, 5], "input_shape": (1, 28, 28)})
    biva = build_model("biva", TINY_BIVA)
    twostage = build_model("twostage", TINY_TWOSTAGE)
    noise = tuple(torch.randn(3, d) for d in (4, 3, 2))
    return [
        ("bivae decoder", bivae.decoder.standalone(), (torch.randn(3, 4),)),
        ("bivae conv decoder", bivae_conv.decoder.standalone(), (torch.randn(3, 4),)),
        ("biva encoder", biva.encoder, (torch.rand(3, 1, 8, 8), *noise)),
        ("biva decoder", biva.decoder, noise),
        ("twostage stage-2 decoder", twostage.stage2.decoder, (torch.randn(3, 4),)),
        ("twostage stage-1 decoder", twostage.decoder, (torch.randn(3, 4),)),
    ]


@pytest.mark.slow
def test_every_family_graph_exports_to_onnx_alone_and_matches_pytorch(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    for i, (name, module, inputs) in enumerate(_graphs_for_export()):
        module.eval()
        path = tmp_path / f"graph{i}.onnx"
        torch.onnx.export(module, inputs, path, dynamo=True)
        session = onnxruntime.InferenceSession(str(path))
        feeds = {spec.name: x.numpy() for spec, x in zip(session.get_inputs(), inputs)}
        with torch.no_grad():
            expected = module(*inputs)
        for got, want in zip(session.run(None, feeds), expected):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-5, err_msg=name)


def test_kl_between_gaussians_matches_monte_carlo():
    torch.manual_seed(0)
    qm, qlv, pm, plv = torch.tensor([0.5, -1.0]), torch.tensor([-0.3, 0.4]), torch.tensor([0.1, 0.2]), \
        torch.tensor([0.5, -0.2])
    z = qm + torch.exp(0.5 * qlv) * torch.randn(400_000, 2)
    mc = (log_normal(z, qm, qlv) - log_normal(z, pm, plv)).mean(0)
    torch.testing.assert_close(mc, gaussian_kl_between(qm, qlv, pm, plv), atol=0.01, rtol=0)


@pytest.mark.parametrize("backbone", ["mlp", "conv"])
def test_biva_contract_and_noise_as_input(backbone):
    model = build_model("biva", {**TINY_BIVA, "backbone": backbone, "channels": [4, 8]}).eval()  # as exported
    x = torch.rand(5, 1, 8, 8)
    noise = [torch.randn(5, d) for d in (4, 3, 2)]
    outputs = model.encoder(x, *noise)
    assert [o.shape[1] for o in outputs] == [4, 3, 2] * 3  # z, mean, logvar of each layer
    for a, b in zip(outputs, model.encoder(x, *noise)):  # no randomness inside the graph
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(model.decoder(*noise), model.decoder(*noise)))
    assert model.decoder(*noise)[0].shape == x.shape
    loss, metrics = model(x)
    assert {"kl_layer1", "kl_layer2", "kl_layer3"} <= set(metrics)
    total = sum(float(metrics[f"kl_layer{i}"]) for i in (1, 2, 3))
    assert total == pytest.approx(float(metrics["kl"]), rel=1e-5)
    assert model.sample(2).shape == (2, 1, 8, 8) and model.reconstruct(x).shape == x.shape
    assert len({id(t) for t in model.state_dict().values()}) == len(model.state_dict())


def test_biva_dropout_is_on_the_encoder_and_only_while_training():
    model = build_model("biva", {**TINY_BIVA, "dropout": 0.5})
    x = torch.rand(5, 1, 8, 8)
    noise = [torch.zeros(5, d) for d in (4, 3, 2)]
    assert not torch.equal(model.encoder(x, *noise)[0], model.encoder(x, *noise)[0])
    assert all(torch.equal(a, b) for a, b in zip(model.decoder(*noise), model.decoder(*noise)))  # training mode
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(model.encoder(x, *noise), model.encoder(x, *noise)))


@pytest.mark.parametrize("bound", [2.0, 0.0])
def test_biva_latent_bound_keeps_every_layer_gaussian_in_range(bound):
    model = build_model("biva", {**TINY_BIVA, "latent_bound": bound}).eval()
    with torch.no_grad():  # weights blown up as a drifting run would make them
        for head in [model.encoder.top_head, *model.encoder.posterior_head, *model.decoder.top_down.prior_head]:
            for p in head.parameters():
                p.mul_(1000.0)
        _, q_mean, q_logvar, p_mean, p_logvar = model.encoder.infer(torch.rand(64, 1, 8, 8), model._noise(64))
    means, logvars = torch.cat([*q_mean, *p_mean[:-1]], 1), torch.cat([*q_logvar, *p_logvar[:-1]], 1)
    inside = bool(means.abs().max() <= 2.0 and logvars.abs().max() <= 4.0)
    assert inside == (bound == 2.0)


@pytest.mark.parametrize("bottom_inference", ["bottom_up", "bidirectional"])
def test_biva_bottom_layer_is_inferred_bottom_up_or_from_both_paths(bottom_inference):
    model = build_model("biva", {**TINY_BIVA, "bottom_inference": bottom_inference}).eval()
    x = torch.rand(5, 1, 8, 8)
    noise = [torch.randn(5, d) for d in (4, 3, 2)]
    other = [noise[0], *(torch.randn_like(n) for n in noise[1:])]  # new draws above layer 1
    z1_mean, other_z1_mean = model.encoder(x, *noise)[3], model.encoder(x, *other)[3]
    assert torch.equal(z1_mean, other_z1_mean) == (bottom_inference == "bottom_up")


@pytest.mark.parametrize("option, value, message", [("bottom_inference", "sideways", "bottom_inference must be"),
                                                   ("latent_bound", -1.0, "latent_bound must be >= 0")])
def test_biva_refuses_bad_inference_options(option, value, message):
    with pytest.raises(ValueError, match=message):
        build_model("biva", {**TINY_BIVA, option: value})


def test_biva_elbo_is_below_the_importance_weighted_bound():
    torch.manual_seed(0)
    model = build_model("biva", TINY_BIVA).eval()
    x = torch.rand(200, 1, 8, 8)
    with torch.no_grad():
        elbo = model.elbo(x, samples=20).mean().item()
        bounds = [model.log_likelihood_iw(x, k=k).mean().item() for k in (1, 50)]
    assert elbo < bounds[1]
    assert abs(bounds[0] - elbo) < 0.05 * abs(elbo) + 1.0


def test_biva_needs_two_layers():
    with pytest.raises(ValueError, match="at least two stochastic layers"):
        build_model("biva", {"latent_dims": [8]})


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a * 2.0 + np.array([1.0, 0.0, -1.0])  # mean shift 2, every std doubled: (2 - 1)² per dimension
    assert frechet_distance(a, b) == pytest.approx(2.0 + 3.0, rel=0.02)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, a[:, :2])


def test_fd_classifier_is_accurate_and_cached_per_data_set(tmp_path, digits, fd_classifier):
    shutil.copy(fd_classifier, tmp_path)
    model, accuracy = load_or_train_classifier(digits, tmp_path)
    assert accuracy > 0.85
    cached, cached_accuracy = load_or_train_classifier(digits, tmp_path)
    x = torch.from_numpy(digits.evaluation_inputs("test"))
    assert cached_accuracy == accuracy and torch.equal(model.features(x), cached.features(x))
    other = load_dataset("digits", split_seed=1)  # another split must not reuse the cache: it retrains
    retrained, _ = load_or_train_classifier(other, tmp_path, epochs=1)
    assert not torch.equal(retrained.features(x), model.features(x))


def test_twostage_trains_both_stages_into_one_run(tmp_path, digits, fd_classifier):
    model, metrics = train_run("twostage", digits, tmp_path, model_config=TINY_TWOSTAGE,
                               train_config=TrainConfig(epochs=3, patience=0), progress=False)
    assert metrics["stages"]["stage2"]["stage"] == "stage2"
    for name in ("stage2.safetensors", "stage2_metrics.json", "stage2_checkpoint.safetensors",
                 "stage2_training_curve.png"):
        assert (tmp_path / name).stat().st_size > 0
    stage2 = load_tensors(tmp_path / "stage2.safetensors")
    assert stage2 and all(k.startswith("stage2.") for k in stage2)  # loads straight into the two-stage model
    loaded, _ = load_run(tmp_path)
    with torch.no_grad():
        a = loaded.sample(4, generator=torch.Generator().manual_seed(0))
        b = model.eval().sample(4, generator=torch.Generator().manual_seed(0))
        c = loaded.sample_stage1(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, c)

    shutil.copy(fd_classifier, tmp_path)
    results = evaluate_run(tmp_path, iw_samples=20, elbo_samples=2)
    assert results["sample_fd"] > 0 and results["stage1_sample_fd"] > 0
    assert "not comparable with Inception FID" in results["sample_fd_note"].replace("NOT", "not")
    assert {"active_units", "kl_per_dim", "mutual_information", "log_likelihood_iw_of_latent_means"} <= \
        set(results["stage2"])
    assert (tmp_path / "fd_classifier.safetensors").exists()


def test_eval_reports_collapse_figures_per_layer_for_biva(digits, fd_classifier):
    model = build_model("biva", {**TINY_BIVA, "input_shape": [1, 8, 8]})
    results = evaluate_model(model, digits, iw_samples=5, elbo_samples=1, fd_cache=fd_classifier.parent)
    assert results["parameters"] == n_parameters(model)
    assert [layer["latent_dim"] for layer in results["layers"]] == [4, 3, 2]
    assert len(results["kl_per_dim"]) == 9 and results["active_units"] == sum(
        layer["active_units"] for layer in results["layers"])
    assert all(np.isfinite(layer["mutual_information"]) for layer in results["layers"])
    assert np.isfinite(results["sample_fd"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bivae", "biva", "twostage"])
def test_cli_trains_evaluates_and_plots_every_family_model(tmp_path, kind, fd_classifier):
    run = str(tmp_path / kind)
    assert main(["train", kind, "--data", "digits", "--epochs", "25", "--patience", "0", "--hidden", "64", "--out", run,
                 "--no-progress"]) == 0
    shutil.copy(fd_classifier, run)
    assert main(["eval", run, "--iw-samples", "50", "--elbo-samples", "2"]) == 0
    results = json.loads((tmp_path / kind / "eval.json").read_text())
    # an untrained model scores far below 0 nats per digit; 25 epochs lift every kind well above it
    assert results["log_likelihood_iw"] > 10.0, results["log_likelihood_iw"]
    assert results["elbo"] < results["log_likelihood_iw"]
    assert main(["plot", run]) == 0
    assert (tmp_path / kind / "samples.png").stat().st_size > 0
