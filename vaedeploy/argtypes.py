"""argparse types shared by every subcommand: a bad number, list or device is refused by the parser with one line."""
from __future__ import annotations

import argparse
import math
import re
import sys

from .bundle import MAX_BATCH


def number(kind: type, low: float, inclusive: bool = True, high: float = math.inf):
    """An argparse type: a ``kind`` number ≥ ``low`` (> ``low`` when not ``inclusive``) and ≤ ``high``, or a
    one-line usage error."""
    expected = f"{'an integer' if kind is int else 'a finite number'} {'≥' if inclusive else '>'} {low:g}"
    if high != math.inf:
        expected += f" and ≤ {high:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        # a comparison, not math.isfinite, which raises OverflowError on integers past float's range
        if value is None or not abs(value) <= sys.float_info.max or value < low or (value == low and not inclusive) \
                or value > high:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise argparse.ArgumentTypeError(f"expected {expected}, got {shown!r}")
        return value

    return parse


POSITIVE_INT, COUNT, POSITIVE, NON_NEGATIVE = number(int, 1), number(int, 0), number(float, 0, False), \
    number(float, 0)
# a bundle's max_batch: refused before export allocates its max_batch rows of validation data per graph
BATCH_LIMIT = number(int, 1, high=MAX_BATCH)


def commas(text: str) -> list[str]:
    """The parts of a comma list, stripped; blank ones (``4,``, ``1,,2``) are skipped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def comma_list(item, expected: str | None = None, *, unique: bool = False):
    """An argparse type: values separated by commas, each read by ``item``. With ``expected``, at least one value,
    and a bad one is refused as ``expected`` words the whole list; without it, none is fine and a bad value is
    refused in ``item``'s words. ``unique`` drops repeats, keeping the first."""

    def parse(text: str) -> list:
        try:
            values = [item(part) for part in commas(text)]
        except (ValueError, argparse.ArgumentTypeError):
            if expected is None:
                raise
            values = []
        if expected is not None and not values:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return list(dict.fromkeys(values)) if unique else values

    return parse


def tcp_port(text: str) -> int:
    """A port to listen on; 0 asks the system for any free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 0 to 65535 (0: any free port), got {text!r}")
    return port


def cuda_device(text: str) -> str:
    """cuda or cuda:N: TensorRT builds on an NVIDIA GPU only."""
    if not re.fullmatch(r"cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cuda or cuda:N (TensorRT builds on an NVIDIA GPU), got {text!r}")
    return text
