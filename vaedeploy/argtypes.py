"""argparse types shared by every subcommand: a bad number is refused by the parser with one line."""
from __future__ import annotations

import argparse
import math
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
