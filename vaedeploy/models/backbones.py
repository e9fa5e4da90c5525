"""MLP and small convolutional trunks, sized for 8×8 and 28×28 images, chosen by a model's config.

An encoder trunk maps C×H×W images to a feature vector; a decoder trunk maps a code to ``out_channels``×H×W raw
likelihood parameters. The convolutional pair halves (then doubles) the resolution at each stage with 3×3 kernels,
so 8→4→2 and 28→14→7; the transposed convolutions pick their output padding to land on the exact input size.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from ..errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "elu": nn.ELU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def check_sizes(**sizes) -> None:
    """Refuse a config whose layer sizes cannot make a network: each named tuple non-empty, every entry ≥ 1."""
    for name, values in sizes.items():
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if not values or min(values) < 1:
            raise ConfigError(f"{name}: expected sizes of at least 1 (and at least one of them), got {values!r}")


def mlp(sizes: list[int], act: str, final_activation: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


def upsampling_padding(in_size: tuple[int, int], out_size: tuple[int, int]) -> tuple[int, int]:
    """The output padding that makes a stride-2, padding-1 3×3 transposed convolution land on ``out_size`` (h, w)."""
    (ih, iw), (oh, ow) = in_size, out_size
    return oh - (2 * ih - 1), ow - (2 * iw - 1)


def upsampling_conv(c_in: int, c_out: int, in_size: tuple[int, int], out_size: tuple[int, int]) -> nn.ConvTranspose2d:
    """A stride-2 3×3 transposed convolution from ``in_size`` to exactly ``out_size`` (h, w), e.g. 4→7 or 7→14."""
    return nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=upsampling_padding(in_size, out_size))


def conv_sizes(h: int, w: int, stages: int) -> list[tuple[int, int]]:
    """Spatial size after each stride-2 stage, starting with the input's."""
    sizes = [(h, w)]
    for _ in range(stages):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


class EncoderTrunk(nn.Module):
    """Image (N×C×H×W) → features (N×``out_features``).

    Args:
        input_shape: (C, H, W).
        backbone: ``mlp`` (flatten, then ``hidden`` layers) or ``conv`` (``channels`` stride-2 stages, then
            ``hidden`` dense layers).
        hidden: widths of the dense layers.
        channels: channels of the convolutional stages (``conv`` only).
        act: activation name.
    """

    def __init__(self, input_shape, backbone: str, hidden, channels, act: str):
        super().__init__()
        check_sizes(input_shape=input_shape, hidden=hidden, **({"channels": channels} if backbone == "conv" else {}))
        c, h, w = input_shape
        if backbone == "mlp":
            self.body = nn.Sequential(nn.Flatten(), mlp([c * h * w, *hidden], act))
        elif backbone == "conv":
            convs: list[nn.Module] = []
            for c_in, c_out in zip([c, *channels[:-1]], channels):
                convs += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), activation(act)]
            fh, fw = conv_sizes(h, w, len(channels))[-1]
            self.body = nn.Sequential(*convs, nn.Flatten(), mlp([channels[-1] * fh * fw, *hidden], act))
        else:
            raise ValueError(f"backbone must be 'mlp' or 'conv', got {backbone!r}")
        self.out_features = hidden[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class DecoderTrunk(nn.Module):
    """Code (N×``in_features``) → raw parameters (N×``out_channels``×H×W); mirrors ``EncoderTrunk``."""

    def __init__(self, in_features: int, input_shape, out_channels: int, backbone: str, hidden, channels, act: str):
        super().__init__()
        _, h, w = input_shape
        widths = list(reversed(hidden))
        if backbone == "mlp":
            self.body = nn.Sequential(
                mlp([in_features, *widths], act),
                nn.Linear(widths[-1], out_channels * h * w),
                nn.Unflatten(1, (out_channels, h, w)),
            )
        elif backbone == "conv":
            sizes = list(reversed(conv_sizes(h, w, len(channels))))
            chans = list(reversed(channels))
            layers: list[nn.Module] = [
                mlp([in_features, *widths], act),
                nn.Linear(widths[-1], chans[0] * sizes[0][0] * sizes[0][1]),
                activation(act),
                nn.Unflatten(1, (chans[0], *sizes[0])),
            ]
            for i, (c_in, c_out) in enumerate(zip(chans, [*chans[1:], out_channels])):
                layers.append(upsampling_conv(c_in, c_out, sizes[i], sizes[i + 1]))
                if i < len(chans) - 1:
                    layers.append(activation(act))
            self.body = nn.Sequential(*layers)
        else:
            raise ValueError(f"backbone must be 'mlp' or 'conv', got {backbone!r}")

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)
