"""diffusers' autoencoders as vaedeploy graphs (issue 29, docs/diffusers.md): loading a saved model, the modules each
class exports, and the photographs they are validated on.

- **AutoencoderKL** (SD 1.x/2.x, SDXL, SD3, FLUX: 4 or 16 latent channels, with or without quant convs):
  ``encoder`` x → (mean, logvar), the posterior's parameters with diffusers' clamp of logvar to [-30, 20], so the
  runtime draws z with its own Philox noise as for our kinds; ``decoder`` z → image (post-quant conv, decoder).
- **AutoencoderTiny** (TAESD): deterministic latents, ``encoder`` x → z and ``decoder`` z → image.
- **VQModel** (VQGAN-style): ``encoder`` x → z_e (encoder, quant conv); the codebook is an array and the runtime
  finds each position's nearest code; ``decoder`` z_q → image. There is no learned prior over the codes, so such a
  bundle has no ``sample``.

Images are in the model's range, [-1, 1] for all three; latents are the model's own (unscaled). The latent scaling of
the config (``scaling_factor``, ``shift_factor``) is recorded in the manifest, and the runtime applies it by the
bundle's one rule (docs/bundle.md).

Validation inputs are photographs, not noise: the two that scikit-learn ships (``load_sample_images``), cropped at
several places and scales and resized to each size, so the graphs are checked on the images they will see.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from vaedeploy.kernels.limits import LOGVAR_MAX, LOGVAR_MIN

from vaedeploy.errors import ConfigError, FileFormatError, MissingDependency
from vaedeploy.io import read_json

SUPPORTED = ("AutoencoderKL", "AutoencoderTiny", "VQModel")
IMAGE_RANGE = (-1.0, 1.0)  # what every supported class takes and gives
# diffusers' DiagonalGaussianDistribution clamps the encoder's logvar to [-30, 20], the range the runtime's kernels
# clamp to as well (kernels/limits.py); the graph clamps it, so encode_params gives diffusers' posterior
LOGVAR_RANGE = (LOGVAR_MIN, LOGVAR_MAX)
# the files a hub download fetches: a model folder's, or a pipeline's vae/ subfolder (never a pipeline's other weights)
HUB_FILES = ["config.json", "diffusion_pytorch_model*.safetensors", "vae/config.json",
             "vae/diffusion_pytorch_model*.safetensors"]


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise MissingDependency("importing a diffusers model needs diffusers: pip install 'vaedeploy[diffusers]'") \
            from None
    return diffusers


def model_folder(source: str | Path) -> Path:
    """The folder holding the autoencoder's ``config.json``: ``source`` itself (written by ``save_pretrained``) or
    its ``vae/`` subfolder (a pipeline's); a ``source`` that is no folder here is a hub id, downloaded."""
    path = Path(source)
    if not path.exists():
        path = _download(str(source))
    if not path.is_dir():
        raise ConfigError(f"{source}: expected a folder written by save_pretrained (a model's, or a pipeline's with "
                          "a vae/ subfolder) or a hub id, got a file")
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            return folder
    raise ConfigError(f"{source}: expected config.json of a diffusers autoencoder in it or in its vae/ subfolder, "
                      "found neither")


def _download(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MissingDependency("a hub id needs huggingface_hub: pip install 'vaedeploy[diffusers]'") from None
    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repo, gated repo: the hub client raises many types for one cause
        raise ConfigError(f"{repo}: not a folder here, and the hub could not give it ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from None


def class_name(folder: Path) -> str:
    """The diffusers class the folder's ``config.json`` names, if it is one vaedeploy imports."""
    config = read_json(folder / "config.json")
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name not in SUPPORTED:
        raise ConfigError(f"{folder / 'config.json'}: vaedeploy imports diffusers' {', '.join(SUPPORTED)}; the "
                          f"config names {name!r}")
    return name


def load_vae(source: str | Path) -> nn.Module:
    """The autoencoder saved at ``source`` (see ``model_folder``) as float32 in eval mode."""
    folder = model_folder(source)
    cls = getattr(_diffusers(), class_name(folder))
    try:
        vae = cls.from_pretrained(folder, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise FileFormatError(f"{folder}: diffusers could not load the {cls.__name__} saved there ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'})") from None
    return vae.eval()


def check_supported(vae: nn.Module) -> str:
    """The name of ``vae``'s class if vaedeploy imports it, else one sentence naming it and what is supported."""
    name = type(vae).__name__
    if name not in SUPPORTED:
        raise ConfigError(f"vaedeploy imports diffusers' {', '.join(SUPPORTED)}; got a {name}")
    return name


# ---- the modules each class exports --------------------------------------------------------------------------------

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


def downsample(vae: nn.Module) -> int:
    """How many image pixels one latent position covers, measured on the encoder (the configs say it three ways)."""
    encoder = modules(vae)[0]
    with torch.no_grad():
        out = encoder(torch.zeros(1, vae.config.in_channels, 64, 64))
    height = (out[0] if isinstance(out, tuple) else out).shape[2]
    return 64 // height


def scaling(vae: nn.Module) -> dict | None:
    """diffusers' latent scaling of the config (``scaling_factor``, ``shift_factor``; None when it is the identity)."""
    factor = float(vae.config.get("scaling_factor", 1.0) or 1.0)
    shift = float(vae.config.get("shift_factor", 0.0) or 0.0)
    return None if (factor, shift) == (1.0, 0.0) else {"scaling_factor": factor, "shift_factor": shift}


# ---- validation inputs and figures ---------------------------------------------------------------------------------

def photographs(height: int, width: int, n: int) -> np.ndarray:
    """n photographs in [-1, 1] (N × 3 × height × width float32): scikit-learn's two sample photographs, cropped to
    the size's aspect ratio at a different place and scale for each row, then resized (antialiased bilinear)."""
    sources = _sample_photographs()
    rows = []
    for i in range(n):
        image = sources[i % len(sources)]
        rows.append(_crop_resized(image, height, width, step=i // len(sources)))
    return np.ascontiguousarray(torch.stack(rows).clamp(*IMAGE_RANGE).numpy())


@functools.cache
def _sample_photographs() -> tuple[torch.Tensor, ...]:
    """scikit-learn's two sample photographs (China, a flower; 427 × 640) as 3 × H × W tensors in [-1, 1]."""
    from sklearn.datasets import load_sample_images

    return tuple(torch.tensor(image).permute(2, 0, 1).float() / 127.5 - 1 for image in load_sample_images().images)


def _crop_resized(image: torch.Tensor, height: int, width: int, step: int) -> torch.Tensor:
    """The largest crop of ``image`` with the aspect ratio height:width, shrunk by 15% per ``step`` (down to a
    third) and moved along the diagonal, resized to height × width."""
    _, h, w = image.shape
    scale = max(1 / 3, 0.85 ** step) * min(h / height, w / width)
    ch, cw = max(1, round(height * scale)), max(1, round(width * scale))
    fraction = (step * 0.37) % 1  # where along the free room the crop sits
    top, left = round((h - ch) * fraction), round((w - cw) * (1 - fraction))
    crop = image[:, top:top + ch, left:left + cw]
    return nn.functional.interpolate(crop[None], size=(height, width), mode="bilinear", antialias=True,
                                     align_corners=False)[0]


def psnr(actual: np.ndarray, expected: np.ndarray, value_range: float = IMAGE_RANGE[1] - IMAGE_RANGE[0]) -> float:
    """Peak signal-to-noise ratio in dB of ``actual`` against ``expected`` for images spanning ``value_range``
    (inf when they are equal; NaN when either holds NaN)."""
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0 else 10 * math.log10(value_range ** 2 / mse)
