"""The process of one case's peak memory (``memory.py``): ``python -m vaedeploy.bench.probe SPEC`` prints the peak
RSS growth of the case's first call as JSON."""
from __future__ import annotations

import json
import sys

from .. import load
from .local import Inputs, op_call
from .memory import CLEAR_REFS, status_bytes


def probe(spec: dict) -> int:
    """The bytes VmHWM grows by over VmRSS during the case's first call, as ``memory.py`` describes."""
    variant = dict(spec["variant"])
    size = tuple(spec["size"]) if spec["size"] else None
    tile = tuple(spec["tile"]) if isinstance(spec["tile"], list) else spec["tile"]
    with load(spec["path"], device=spec["device"], precision=spec["precision"], **variant) as runtime:
        smallest = runtime.bundle.sizes.low if runtime.bundle.sizes else None
        op_call(runtime, spec["op"], 1, Inputs(runtime, None, size=smallest))(0)
        call = op_call(runtime, spec["op"], spec["batch"], Inputs(runtime, None, size=size), tile=tile)
        before = status_bytes("VmRSS")
        CLEAR_REFS.write_text("5")
        call(0)
        return status_bytes("VmHWM") - before


if __name__ == "__main__":
    print(json.dumps({"growth": probe(json.loads(sys.argv[1]))}))
