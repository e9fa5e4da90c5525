"""The runtime's own cost per batch-1 call on ONNX Runtime (issue 30's goal: under 3 µs over the backend's call).

Timed in the calling thread's CPU time (``time.thread_time``), which other processes on a shared machine do not
inflate, where wall-clock medians of a 40 µs call move by more than the cost measured:
- ``call``: the API call; ``session``: the graphs it runs, called raw on the runtime's own sessions (the runner's
  compiled run, as the runtime calls it); ``overhead`` = call − session. ONNX Runtime does these tiny graphs' work
  in the calling thread, so both count all of it.
- ``wrapper``: the API call with every session's run replaced by a stub that returns what the session gave for the
  same input: the runtime's own work alone (argument checks, the value pass, noise, the decoded-image check).
Each figure is the least, over ``--rounds`` rounds, of the mean of ``--block`` calls; the cases rotate within a round.

    python benchmarks/wrapper_cost.py BUNDLE [--rounds 15] [--block 2000] [--out benchmarks/results/wrapper_cost.json]
"""
from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS_DIR, write_rows  # noqa: E402

GOAL_US = 3.0
OPS = ("encode_params", "encode", "decode", "sample", "reconstruct")


def calls(rt) -> dict[str, tuple]:
    """op → (the API call, the raw session calls it runs) on one fixed batch-1 input."""
    x = np.random.default_rng(0).random((1, *rt.input_shape), dtype=np.float32)
    z = np.random.default_rng(1).standard_normal((1, *rt.latent_shape), dtype=np.float32)
    encoder, decoder = rt._encoder, rt._decoder  # the runners, whose compiled run the runtime calls

    def raw(runner, feed):
        names, feeds = runner.output_names, {runner.input_names[0]: feed}
        return lambda: runner._run(names, feeds, None)

    mean = encoder._run(encoder.output_names, {encoder.input_names[0]: x}, None)[0]
    return {"encode_params": (lambda: rt.encode_params(x), [raw(encoder, x)]),
            "encode": (lambda: rt.encode(x, seed=1), [raw(encoder, x)]),
            "decode": (lambda: rt.decode(z), [raw(decoder, z)]),
            "sample": (lambda: rt.sample(1, seed=1), [raw(decoder, z)]),
            "reconstruct": (lambda: rt.reconstruct(x), [raw(encoder, x), raw(decoder, mean)])}


def stub_sessions(rt, cases: dict) -> None:
    """Each runner's compiled run replaced by one that returns the outputs its session gave on the case's input."""
    for runner, feed in ((rt._encoder, cases["encode"][1][0]), (rt._decoder, cases["decode"][1][0])):
        outputs = feed()
        runner._run = lambda names, feeds, options, outputs=outputs: outputs


def cpu_us(fn, block: int) -> float:
    return timeit.Timer(fn, timer=time.thread_time).timeit(block) / block * 1e6


def measure(bundle: str, rounds: int, block: int) -> list[dict]:
    import vaedeploy

    rt = vaedeploy.load(bundle, backend="onnxruntime")
    cases = calls(rt)
    best = {(op, part): float("inf") for op in OPS for part in ("call", "session")}
    for _ in range(rounds):
        for op, (call, sessions) in cases.items():
            best[op, "call"] = min(best[op, "call"], cpu_us(call, block))
            best[op, "session"] = min(best[op, "session"], sum(cpu_us(s, block) for s in sessions))
    stub_sessions(rt, cases)
    wrapper = {op: float("inf") for op in OPS}
    for _ in range(rounds):
        for op, (call, _) in cases.items():
            wrapper[op] = min(wrapper[op], cpu_us(call, block))
    return [{"op": op, "batch": 1, "call_us": best[op, "call"], "session_us": best[op, "session"],
             "overhead_us": best[op, "call"] - best[op, "session"], "wrapper_us": wrapper[op]} for op in OPS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "wrapper_cost.json")
    args = parser.parse_args()
    rows = measure(args.bundle, args.rounds, args.block)
    meta = {"command": "python benchmarks/wrapper_cost.py " + " ".join(sys.argv[1:]), "goal_us": GOAL_US,
            "rounds": args.rounds, "block": args.block}
    print(f"wrote {write_rows('wrapper_cost', rows, meta=meta, path=args.out)}")
    for row in rows:
        print(f"{row['op']:14s} call {row['call_us']:6.1f} µs  session {row['session_us']:6.1f}  overhead "
              f"{row['overhead_us']:5.1f}  wrapper alone {row['wrapper_us']:5.1f}")


if __name__ == "__main__":
    main()
