"""diffusers' autoencoders as the modules vaedeploy exports and runs (docs/diffusers.md): one encoder and one decoder
module per supported class, and the model the torch backend rebuilds from an imported bundle.

Not a registered kind (nothing here trains): ``vaedeploy import diffusers`` (``export/diffusers.py``) exports these
modules, and the torch backend rebuilds them from the bundle's ``model`` entry (kind ``diffusers.CLASS``, the
class's config and its weights in safetensors) with diffusers itself, imported only then.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, MissingDependency
from ..kernels.limits import LOGVAR_MAX, LOGVAR_MIN

SUPPORTED = ("AutoencoderKL", "AutoencoderTiny", "VQModel")
KIND_PREFIX = "diffusers."  # an imported bundle's kind and model kind: diffusers.AutoencoderKL, ...
# diffusers' DiagonalGaussianDistribution clamps the encoder's logvar to [-30, 20], the range the runtime's kernels
# clamp to as well (kernels/limits.py); the graph clamps it, so encode_params gives diffusers' posterior
LOGVAR_RANGE = (LOGVAR_MIN, LOGVAR_MAX)


def diffusers_package():
    """diffusers, imported on first use; a sentence naming the extra that installs it where it is missing."""
    try:
        import diffusers
    except ImportError:
        raise MissingDependency("a diffusers model needs diffusers: pip install 'vaedeploy[diffusers]'") from None
    return diffusers


def check_supported(vae: nn.Module) -> str:
    """The name of ``vae``'s class if vaedeploy imports it, else one sentence naming it and what is supported."""
    name = type(vae).__name__
    if name not in SUPPORTED:
        raise ConfigError(f"vaedeploy imports diffusers' {', '.join(SUPPORTED)}; got a {name}")
    return name


class KLEncoder(nn.Module):
    """AutoencoderKL's x → (mean, logvar) of the posterior, logvar clamped as diffusers clamps it."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv  # quant_conv is None without use_quant_conv

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)


class KLDecoder(nn.Module):
    """AutoencoderKL's z (unscaled) → image."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


class VQEncoder(nn.Module):
    """VQModel's x → z_e, before the nearest code."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))


class VQDecoder(nn.Module):
    """VQModel's z_q → image (a spatially normalised decoder also reads z_q itself)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder
        self.spatial_norm = vae.config.norm_type == "spatial"

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q), z_q if self.spatial_norm else None)


def modules(vae: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) modules of a supported autoencoder, float32 in eval mode."""
    name = check_supported(vae)
    if name == "AutoencoderKL":
        pair = KLEncoder(vae), KLDecoder(vae)
    elif name == "AutoencoderTiny":
        pair = vae.encoder, vae.decoder
    else:
        pair = VQEncoder(vae), VQDecoder(vae)
    return tuple(m.float().eval() for m in pair)


class Imported(nn.Module):
    """An imported autoencoder as the torch backend runs it: the ``encoder`` and ``decoder`` modules its graphs were
    exported from (the manifest's ``graphs.ROLE.module`` paths)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder, self.decoder = modules(vae)


def model_entry(vae: nn.Module) -> dict:
    """What a bundle stores to rebuild ``vae`` (``bundle_writer.write_bundle``'s ``model``): its kind, its config as
    diffusers writes it (JSON) and its weights (safetensors, never pickle)."""
    import json

    return {"kind": KIND_PREFIX + check_supported(vae), "config": json.loads(vae.to_json_string()),
            "state_dict": vae.state_dict()}


def rebuild(kind: str, config: dict, weights: dict) -> Imported:
    """The model of an imported bundle's ``model`` entry: diffusers' class ``kind`` names, built from ``config``
    (no download) with ``weights`` loaded; a ``ConfigError`` for a class vaedeploy does not import or a config
    diffusers refuses, a ``RuntimeError`` (load_state_dict's) for weights that do not fit."""
    name = kind.removeprefix(KIND_PREFIX)
    if not kind.startswith(KIND_PREFIX) or name not in SUPPORTED:
        raise ConfigError(f"expected the kind diffusers.CLASS of one of {', '.join(SUPPORTED)}, got {kind!r}")
    cls = getattr(diffusers_package(), name)
    try:
        vae = cls.from_config(config)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"diffusers could not build its {name} from the config ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from None
    vae.load_state_dict(weights)
    return Imported(vae.eval())
