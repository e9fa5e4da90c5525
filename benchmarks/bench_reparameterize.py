"""reparameterize: the Triton kernel vs the PyTorch composition vs a device-to-device copy, in one run.

    python -m benchmarks.bench_reparameterize        (needs a CUDA GPU)

The kernel reads mean and logvar and writes z: 3 tensors of traffic. The copy moves the same bytes
(`dst.copy_(src)` with src 1.5× the size, read + written), so its GB/s is the ceiling the kernel is held to.
Goals: at least 85% of copy bandwidth and at least 2.5× the torch composition at 16M elements and above.
Writes benchmarks/results/bench_reparameterize.json and .png.
"""
import sys

import torch

from .common import RESULTS_DIR, machine_info, markdown_table, write_rows

SIZES = [2**16, 2**18, 2**20, 2**22, 2**24, 2**26]
DTYPES = [torch.float32, torch.bfloat16]
QUANTILES = [0.5, 0.2, 0.8]
GOAL_OF_COPY, GOAL_VS_TORCH, GOAL_MIN_ELEMENTS = 0.85, 2.5, 2**24


def _providers(n, dtype):
    from vaedeploy.kernels import reparameterize

    mean = torch.randn(n, device="cuda", dtype=dtype)
    logvar = torch.randn(n, device="cuda", dtype=dtype)
    src = torch.empty(3 * n // 2, device="cuda", dtype=dtype)
    dst = torch.empty_like(src)
    seed, offset = torch.tensor(0, device="cuda"), torch.tensor(0, device="cuda")
    return {
        "triton": lambda: reparameterize(mean, logvar, seed, offset),
        "torch": lambda: mean + torch.exp(0.5 * logvar) * torch.randn_like(mean),
        "copy": lambda: dst.copy_(src),
    }


def measure(sizes=SIZES, dtypes=DTYPES) -> list[dict]:
    """One row per provider, dtype and size: p50/p20/p80 of ``triton.testing.do_bench`` and GB/s."""
    import triton.testing

    info = machine_info()
    rows = []
    for dtype in dtypes:
        for n in sizes:
            traffic = 3 * n * torch.finfo(dtype).bits // 8
            for provider, fn in _providers(n, dtype).items():
                p50, p20, p80 = triton.testing.do_bench(fn, quantiles=QUANTILES)
                rows.append({
                    "op": "reparameterize", "provider": provider, "shape": [n],
                    "dtype": str(dtype).removeprefix("torch."),
                    "ms_p50": p50, "ms_p20": p20, "ms_p80": p80, "gb_per_s": traffic / p50 / 1e6,
                    "device": info["gpu"]["name"], "versions": info["versions"],
                })
    return rows


def goals(rows: list[dict]) -> list[dict]:
    """Each goal at each dtype and size of at least 16M elements: met or missed, with its figure."""
    by = {(r["dtype"], r["shape"][0], r["provider"]): r for r in rows}
    out = []
    for dtype, n, provider in by:
        if provider != "triton" or n < GOAL_MIN_ELEMENTS:
            continue
        kernel, composed, copy = by[dtype, n, "triton"], by[dtype, n, "torch"], by[dtype, n, "copy"]
        of_copy, vs_torch = kernel["gb_per_s"] / copy["gb_per_s"], composed["ms_p50"] / kernel["ms_p50"]
        out += [{"goal": f"reparameterize {dtype} {n:,}: ≥ {GOAL_OF_COPY:.0%} of copy bandwidth", "value": of_copy,
                 "threshold": GOAL_OF_COPY, "met": of_copy >= GOAL_OF_COPY},
                {"goal": f"reparameterize {dtype} {n:,}: ≥ {GOAL_VS_TORCH}× the torch composition", "value": vs_torch,
                 "threshold": GOAL_VS_TORCH, "met": vs_torch >= GOAL_VS_TORCH}]
    return out


def main():
    if not torch.cuda.is_available():
        sys.exit("bench_reparameterize needs a CUDA GPU and found none; these figures are GPU-only.")
    rows = measure()
    thresholds = {"of_copy": GOAL_OF_COPY, "vs_torch": GOAL_VS_TORCH}
    path = write_rows("bench_reparameterize", rows, meta={"goals": thresholds})
    print(_summary(rows))
    _plot(rows, RESULTS_DIR / "bench_reparameterize.png")
    print(f"rows: {path}")


def _summary(rows):
    by = {(r["dtype"], r["shape"][0], r["provider"]): r for r in rows}
    table = []
    for dtype, n, provider in by:
        if provider != "triton":
            continue
        k, t, c = by[dtype, n, "triton"], by[dtype, n, "torch"], by[dtype, n, "copy"]
        of_copy, vs_torch = k["gb_per_s"] / c["gb_per_s"], t["ms_p50"] / k["ms_p50"]
        met = "yes" if of_copy >= GOAL_OF_COPY and vs_torch >= GOAL_VS_TORCH else "no"
        met = met if n >= GOAL_MIN_ELEMENTS else "-"
        table.append([dtype, n, k["ms_p50"], k["gb_per_s"], c["gb_per_s"], of_copy, vs_torch, met])
    headers = ["dtype", "elements", "triton ms", "triton GB/s", "copy GB/s", "of copy", "× torch", "goals met (≥16M)"]
    return markdown_table(headers, table)


def _plot(rows, path):
    from vaedeploy.plots import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, len(DTYPES), figsize=(6 * len(DTYPES), 4), squeeze=False)
    for ax, dtype in zip(axes[0], DTYPES):
        name = str(dtype).removeprefix("torch.")
        for provider in ("triton", "torch", "copy"):
            pts = [(r["shape"][0], r["gb_per_s"]) for r in rows if r["dtype"] == name and r["provider"] == provider]
            ax.plot(*zip(*pts), marker="o", label=provider)
        ax.set(xscale="log", xlabel="elements", ylabel="GB/s (mean + logvar read, z written)",
               title=f"reparameterize {name}")
        ax.legend()
    fig.suptitle(rows[0]["device"])
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
