"""The graphs of the kinds beyond a plain encoder and decoder: what ``KIND_GRAPHS`` in ``bundle_writer`` calls.

Each function takes (trained model in eval mode, real inputs N×C×H×W, max batch) and returns the arguments of
``export_bundle`` or, with ``cases``, of ``write_bundle``. Every graph gets validation inputs of ``max_batch`` rows:
real data, their real encodings, and N(0, I) draws; the manifest's ``latent`` says everything the runtime needs to
run the kind (graph roles, noise inputs, sizes), so no Python logic of the model is needed to serve it.

- ``bivae``: the decoder graph is ``decoder.standalone()``, which owns a copy of the transposed encoder matrices.
- ``twostage``: stage 1 as a Gaussian VAE plus ``stage2_decoder`` (u → mean, log γ of p(z|u)).
- ``vqvae``: encoder x → z_e, decoder z_q → likelihood, ``prior`` tokens → logits, ``codebook.npy``; the nearest-code
  step is the runtime's (``vaedeploy.kernels``), never in a graph. Validation adds the index agreement rate.
- ``biva``: encoder (x, eps_1..eps_L) → (z_i, mean_i, logvar_i per layer), decoder (eps_1..eps_L) → likelihood
  (ancestral sampling), and ``latent_decoder`` (z_1..z_L concatenated → likelihood) for ``decode``/``reconstruct``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .validate import GraphCase, batch_sizes, cpu_session, rows

NORMAL_SEED = 0
# Least share of VQ indices on which ONNX Runtime and PyTorch must agree, per precision. An index can only flip where
# z_e lies within the graph's error (≤ 1e-4 in fp32, ≤ 5e-2 in fp16) of the boundary between two codes: a
# near-tie, rare in fp32 (one flip in a thousand vectors allowed) and less rare in fp16, whose error is 500× larger.
# A wrong graph moves most vectors to other codes, far below either threshold.
VQ_AGREEMENT = {"fp32": 0.999, "fp16": 0.99}


def _normal(shape, seed: int = NORMAL_SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def bivae_graphs(model, example: torch.Tensor, max_batch: int) -> dict:
    return {"latent": "gaussian", "decoder": model.decoder.standalone().eval()}


def two_stage_graphs(model, example: torch.Tensor, max_batch: int) -> dict:
    stage2 = model.stage2
    u_dim = stage2.config.latent_dim
    with torch.no_grad():
        z_means = model.encoder(torch.from_numpy(rows(example.numpy(), max_batch)))[0]
        u_means = stage2.encoder(z_means)[0].numpy()
    case = GraphCase("stage2_decoder", stage2.decoder, ["u"],
                     {"encodings": [u_means], "normal": [_normal((max_batch, u_dim), NORMAL_SEED + 1)]},
                     ["mean", "log_gamma"], module_path="stage2.decoder")
    # sample: u ~ N(0, T² I) → (mean, log γ) → z = mean + T·exp(log γ / 2)·eps → decoder
    latent = {"type": "gaussian", "prior": {"type": "two_stage", "graph": "stage2_decoder", "dim": u_dim}}
    return {"latent": latent, "extra_graphs": (case,)}


def vq_graphs(model, example: torch.Tensor, max_batch: int) -> dict:
    from vaedeploy.kernels import vq_nearest

    codebook = model.codebook.detach().float().contiguous()
    num_codes, dim = codebook.shape
    (h, w), length = model.grid, model.prior.length
    data = rows(example.numpy(), max_batch)
    with torch.no_grad():
        z_e = model.encoder(torch.from_numpy(data))
        index, z_q = vq_nearest(z_e.permute(0, 2, 3, 1).reshape(-1, dim).contiguous(), codebook)
        z_q = z_q.view(max_batch, h, w, dim).permute(0, 3, 1, 2).contiguous().numpy()
        tokens = model.prior.tokens_for(index.view(max_batch, length)).numpy()
    random_tokens = np.random.default_rng(NORMAL_SEED).integers(0, num_codes, (max_batch, length), dtype=np.int64)
    random_tokens[:, 0] = model.prior.start_token
    likelihood = list(model.decoder.likelihood.spec()["outputs"])
    cases = [
        GraphCase("encoder", model.encoder, ["x"], {"data": [data]}, ["z_e"]),
        GraphCase("decoder", model.decoder, ["z_q"],
                  {"encodings": [z_q], "normal": [_normal((max_batch, dim, h, w))]}, likelihood),
        GraphCase("prior", model.prior, ["tokens"], {"encodings": [tokens], "random_codes": [random_tokens]},
                  ["logits"]),
    ]
    latent = {
        "type": "vq", "dim": dim, "grid": [h, w], "num_codes": num_codes, "codebook": "codebook",
        # the prior graph reads N×L tokens (start token, then codes 0..L-2) and gives N×L×K logits; it is causal,
        # so the runtime feeds all L positions at every step and reads position t
        "prior": {"type": "autoregressive", "graph": "prior", "length": length,
                  "start_token": model.prior.start_token},
    }

    def index_agreement(root: Path, graph_files: dict) -> dict:
        return vq_index_agreement(model.encoder, codebook.numpy(), data, root, graph_files["encoder"], max_batch)

    return {"cases": cases, "latent": latent, "extra_arrays": {"codebook": codebook.numpy()},
            "extra_checks": (index_agreement,)}


def vq_index_agreement(encoder, codebook: np.ndarray, data: np.ndarray, root: Path, files: dict,
                       max_batch: int) -> dict:
    """Share of latent vectors whose nearest code is the same from ONNX Runtime's z_e and from PyTorch's."""
    from vaedeploy.kernels import vq_nearest_numpy

    def codes(z_e: np.ndarray) -> np.ndarray:
        return vq_nearest_numpy(np.ascontiguousarray(z_e.transpose(0, 2, 3, 1).reshape(-1, codebook.shape[1])),
                                codebook)[0]

    results, failures = {}, []
    for precision, file in files.items():
        graph = cpu_session(root / file)
        for b in batch_sizes(max_batch):
            with torch.no_grad():
                expected = codes(encoder(torch.from_numpy(data[:b])).numpy())
            got = codes(graph.run(None, {"x": data[:b]})[0])
            rate = float((got == expected).mean())
            results[f"{precision}@{b}"] = {"rate": rate, "vectors": int(expected.size),
                                           "disagreements": int((got != expected).sum())}
            if rate < VQ_AGREEMENT[precision]:
                failures.append(f"encoder {precision} on data at batch {b}: VQ index agreement {rate:.4f} below "
                                f"{VQ_AGREEMENT[precision]}")
    worst = min(r["rate"] for r in results.values())
    return {"name": "vq_index_agreement", "passed": not failures, "thresholds": VQ_AGREEMENT, "worst": worst,
            "by_precision_and_batch": results, "failures": failures}


class WithHiddenParts(nn.Module):
    """``module`` plus the modules it reads without registering them (the BIVA encoder reads the decoder's top-down
    path), registered here so the half-precision copy of the graph casts them too."""

    def __init__(self, module: nn.Module, *hidden: nn.Module):
        super().__init__()
        self.module, self.hidden = module, nn.ModuleList(hidden)

    def forward(self, *inputs: torch.Tensor):
        return self.module(*inputs)


def hierarchical_graphs(model, example: torch.Tensor, max_batch: int) -> dict:
    # the number and sizes of the stochastic layers come from the config, so added layers export the same way
    dims = [int(d) for d in model.config.latent_dims]
    layers = [{"dim": d, "noise": f"eps_{i}", "z": f"z_{i}", "mean": f"mean_{i}", "logvar": f"logvar_{i}"}
              for i, d in enumerate(dims, 1)]
    noise_names = [layer["noise"] for layer in layers]
    data = rows(example.numpy(), max_batch)
    noise = [_normal((max_batch, d), NORMAL_SEED + i) for i, d in enumerate(dims)]
    zeros = [np.zeros_like(eps) for eps in noise]
    with torch.no_grad():
        z = model.encoder(torch.from_numpy(data), *map(torch.from_numpy, noise))[: len(dims)]
    encodings = torch.cat(z, 1).numpy()
    likelihood = list(model.decoder.likelihood.spec()["outputs"])
    outputs = [layer[k] for k in ("z", "mean", "logvar") for layer in layers]
    cases = [
        GraphCase("encoder", WithHiddenParts(model.encoder, model.decoder.top_down), ["x", *noise_names],
                  {"data": [data, *noise], "data_posterior_means": [data, *zeros]}, outputs),
        GraphCase("decoder", model.decoder, noise_names, {"normal": noise}, likelihood),
        GraphCase("latent_decoder", model.decoder.x_decoder, ["z"],
                  {"encodings": [encodings], "normal": [_normal((max_batch, sum(dims)))]}, likelihood,
                  module_path="decoder.x_decoder"),
    ]
    latent = {
        # z is every layer's sample concatenated (bottom first); each layer's noise is N(0, I) of its size
        "type": "hierarchical", "dim": sum(dims), "layers": layers,
        "graphs": {"encode": "encoder", "decode": "latent_decoder", "sample": "decoder"},
    }
    return {"cases": cases, "latent": latent}
