"""The VQ-VAE: the quantizer, its codebook updates, dead codes, k-means start and the causal prior."""

import pytest
import torch

from vaedeploy.data import load_dataset
from vaedeploy.models import build_model
from vaedeploy.models.vqvae import VectorQuantizer, VQVAEConfig
from vaedeploy.train import TrainConfig, load_run, train_run

TINY = {"channels": [8, 16], "embedding_dim": 4, "num_codes": 16, "prior_width": 32, "prior_layers": 1,
        "prior_heads": 2}


def quantizer(**options) -> VectorQuantizer:
    q = VectorQuantizer(VQVAEConfig(**{"embedding_dim": 2, "num_codes": 4, "kmeans_init": False, **options}))
    return q.train()


def as_grid(vectors: torch.Tensor) -> torch.Tensor:
    """M×D vectors as the quantizer's N×D×1×1 input."""
    return vectors[:, :, None, None]


def test_shapes_and_grid_of_the_contract():
    model = build_model("vqvae", {**TINY, "input_shape": [1, 28, 28]})
    x = torch.rand(3, 1, 28, 28)
    z_e = model.encoder(x)
    assert z_e.shape == (3, 4, 7, 7)
    params = model.decoder(z_e)
    assert len(params) == 1 and params[0].shape == x.shape  # bernoulli logits by default
    assert model.encode_codes(x).shape == (3, 7, 7)
    assert model.codebook.shape == (16, 4)
    assert model.prior(torch.full((3, 5), 16)).shape == (3, 5, 16)


def test_straight_through_gradient_and_the_vq_losses():
    torch.manual_seed(0)
    beta = 0.25
    model = build_model("vqvae", {**TINY, "commitment_weight": beta, "kmeans_init": False})
    x = torch.rand(5, 1, 8, 8)
    captured = {}

    def keep_z_e(module, inputs, out):
        out.retain_grad()
        captured["z_e"] = out

    model.encoder.register_forward_hook(keep_z_e)
    loss, _ = model(x)
    loss.backward()
    z_e = captured["z_e"]
    _, z_q, _ = model.quantizer.eval()(z_e.detach())
    # the decoder sees z_q exactly, and the encoder receives the decoder's gradient at z_q plus the commitment term
    z_q_leaf = z_q.detach().requires_grad_()
    (-model.decoder.likelihood.log_prob(x, model.decoder(z_q_leaf)).mean()).backward()
    expected = z_q_leaf.grad + beta * 2 * (z_e.detach() - z_q.detach()) / len(x)
    torch.testing.assert_close(z_e.grad, expected, rtol=1e-4, atol=1e-6)
    # the codebook loss pulls exactly the used rows towards their vectors, and nothing else
    index = model.encode_codes(x).flatten()
    grad = model.codebook.grad
    used = torch.zeros(16, dtype=torch.bool)
    used[index] = True
    assert grad[used].abs().sum(1).gt(0).all() and grad[~used].eq(0).all()
    assert all(p.grad is None for p in model.prior.parameters()), "the prior trains in its own stage"


def test_nearest_code_ties_go_to_the_lowest_index():
    q = quantizer(num_codes=4).eval()
    q.codebook.data = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [3.0, 3.0], [3.0, 3.0]])
    z = torch.tensor([[0.0, 0.0], [3.0, 3.0], [0.0, 5.0], [1.0, 0.0]])  # equidistant; duplicate rows; plain
    index, z_q, _ = q(as_grid(z))
    assert index.flatten().tolist() == [0, 2, 2, 0]
    torch.testing.assert_close(z_q[:, :, 0, 0], q.codebook[index.flatten()])


def test_ema_update_follows_the_moving_averages():
    decay = 0.5
    q = quantizer(codebook_update="ema", ema_decay=decay, dead_code_steps=0)
    initial = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [50.0, 50.0]])
    q.codebook.copy_(initial)
    q.ema_sum.copy_(initial)
    z = torch.tensor([[1.0, 1.0], [0.0, 2.0], [9.0, 1.0]])  # codes 0, 0 and 1; codes 2 and 3 get nothing
    q(as_grid(z))
    count = decay * 1.0 + (1 - decay) * torch.tensor([2.0, 1.0, 0.0, 0.0])
    total = count.sum()
    smoothed = (count + 1e-5) / (total + 4 * 1e-5) * total
    sums = decay * initial + (1 - decay) * torch.tensor([[1.0, 3.0], [9.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(q.codebook, sums / smoothed[:, None])
    assert not any(p is q.codebook for p in q.parameters()), "the EMA codebook is not trained by gradient"


def test_ema_converges_to_the_cluster_means_and_eval_mode_changes_nothing():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])
    data = centres.repeat_interleave(50, 0) + 0.3 * torch.randn(200, 2)
    q = quantizer(codebook_update="ema", ema_decay=0.9)
    q.codebook.copy_(centres + 1.0)
    q.ema_sum.copy_(centres + 1.0)
    for _ in range(150):
        q(as_grid(data))
    means = torch.stack([data[i * 50 : (i + 1) * 50].mean(0) for i in range(4)])
    torch.testing.assert_close(q.codebook, means, atol=1e-3, rtol=0)
    frozen = q.codebook.clone()
    q.eval()(as_grid(data + 1.0))
    assert torch.equal(q.codebook, frozen)


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_dead_codes_are_reseeded_from_encoder_outputs(update):
    torch.manual_seed(0)
    q = quantizer(codebook_update=update, num_codes=8, dead_code_steps=3)
    far = torch.full((8, 2), 100.0)
    far[0] = 0.0
    q.codebook.data.copy_(far)
    if update == "ema":
        q.ema_sum.copy_(far)
    data = torch.randn(64, 2)  # every vector is nearest to code 0: codes 1..7 are dead
    for _ in range(2):
        q(as_grid(data))
    assert q.codebook[1:].gt(99).all() and int(q.codes_restarted) == 0  # still far: not yet re-seeded
    q(as_grid(data))  # the third unused step
    assert int(q.codes_restarted) == 7
    assert q.steps_unused[1:].eq(0).all()
    for row in q.codebook[1:]:
        assert (data - row).abs().sum(1).min() < 1e-5, "a re-seeded code is one of the batch's vectors"
    index, _, _ = q.eval()(as_grid(data))
    assert len(index.unique()) > 1


def test_kmeans_initialisation_finds_the_clusters_of_the_first_batch():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [8.0, 8.0], [-8.0, 8.0], [8.0, -8.0]])
    data = centres.repeat_interleave(40, 0) + 0.1 * torch.randn(160, 2)
    q = quantizer(kmeans_init=True)
    q(as_grid(data))
    assert bool(q.initialized)
    found = sorted(q.codebook.round().tolist())
    assert found == sorted(centres.tolist())


def test_prior_is_causal_and_its_sampling_is_reproducible():
    torch.manual_seed(0)
    model = build_model("vqvae", TINY).eval()
    prior = model.prior
    tokens = torch.randint(16, (2, 4))
    tokens[:, 0] = prior.start_token
    changed = tokens.clone()
    changed[:, 2] = (changed[:, 2] + 1) % 16
    a, b = prior(tokens), prior(changed)
    torch.testing.assert_close(a[:, :2], b[:, :2], rtol=0, atol=0)  # positions before the change cannot see it
    assert not torch.allclose(a[:, 2:], b[:, 2:])
    draw = lambda seed, **kw: model.sample(6, generator=torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert torch.equal(draw(3, temperature=0.5), draw(3, temperature=0.5))
    assert not torch.equal(draw(3), draw(4))
    codes = prior.sample(6, generator=torch.Generator().manual_seed(3))
    assert codes.shape == (6, 4) and codes.min() >= 0 and codes.max() < 16
    with pytest.raises(ValueError, match="temperature must be positive"):
        model.sample(2, temperature=0.0)


def test_bad_input_is_refused_with_what_was_expected():
    with pytest.raises(ValueError, match="codebook_update must be one of"):
        build_model("vqvae", {"codebook_update": "adam"})
    model = build_model("vqvae", TINY)
    with pytest.raises(ValueError, match="codes must be int64 with 2×2 = 4 per example"):
        model.decode_codes(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        model.decode_codes(torch.full((2, 4), 16))


def test_a_run_without_its_prior_is_a_clear_error(tmp_path):
    digits = load_dataset("digits")
    train_run("vqvae", digits, tmp_path, model_config=TINY, train_config=TrainConfig(epochs=1), progress=False)
    (tmp_path / "prior.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="prior stage of this run was not trained"):
        load_run(tmp_path)
