"""vq_nearest: the fused Triton kernel vs `torch.cdist(z, e).argmin(1)` + gather, in one run.

    python -m benchmarks.bench_vq_nearest        (needs a CUDA GPU)

Time at N=65,536, K=1,024, D=64 float32 (IEEE and tf32 kernels, torch), TFLOP/s counted as the 2·N·K·D of the dot;
argmin agreement with float64 on centred data and on data sharing a common offset of 10 (where tf32 flips argmins);
peak memory for growing N (the kernel never holds the N×K matrix, cdist does).
Goals (centred data, the IEEE kernel): at least 5× cdist + argmin, its argmin equal to float64's on ≥ 99.99% of rows.
Writes benchmarks/results/bench_vq_nearest.json and .png.
"""
import sys

import torch

from .common import RESULTS_DIR, machine_info, markdown_table, write_rows

N, K, D = 65_536, 1_024, 64
MEMORY_NS = [2**14, 2**16, 2**18, 2**20]
OFFSETS = [0.0, 10.0]
QUANTILES = [0.5, 0.2, 0.8]
GOAL_VS_CDIST, GOAL_AGREEMENT = 5.0, 0.9999


def _providers(z, e):
    from vaedeploy.kernels import vq_nearest

    def torch_cdist():
        index = torch.cdist(z, e).argmin(1)
        return index, e[index]

    return {
        "triton-ieee": lambda: vq_nearest(z, e),
        "triton-tf32": lambda: vq_nearest(z, e, precision="tf32"),
        "torch-cdist": torch_cdist,
    }


def _float64_argmin(z, e, chunk=8192):
    e64 = e.double()
    return torch.cat([torch.cdist(z[i : i + chunk].double(), e64).argmin(1) for i in range(0, len(z), chunk)])


def measure_timed(offsets=OFFSETS) -> list[dict]:
    """One row per provider and data offset at N, K, D: p50/p20/p80, TFLOP/s and argmin agreement with float64."""
    import triton.testing

    info = machine_info()
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for offset in offsets:
        z = offset + torch.randn(N, D, device="cuda", generator=g)
        e = offset + torch.randn(K, D, device="cuda", generator=g)
        exact = _float64_argmin(z, e)
        for provider, fn in _providers(z, e).items():
            p50, p20, p80 = triton.testing.do_bench(fn, quantiles=QUANTILES)
            rows.append({
                **_common(info), "provider": provider, "shape": [N, K, D], "data_offset": offset,
                "ms_p50": p50, "ms_p20": p20, "ms_p80": p80, "tflop_per_s": 2 * N * K * D / p50 / 1e9,
                "argmin_agreement_vs_float64": (fn()[0] == exact).double().mean().item(),
            })
    return rows


def goals(rows: list[dict]) -> list[dict]:
    """The kernel (IEEE float32) on centred data: ≥ 5× cdist + argmin, and its argmin equal to float64's on ≥ 99.99%
    of rows."""
    at = {r["provider"]: r for r in rows if r["data_offset"] == 0.0}
    kernel, cdist = at["triton-ieee"], at["torch-cdist"]
    speedup, agreement = cdist["ms_p50"] / kernel["ms_p50"], kernel["argmin_agreement_vs_float64"]
    return [{"goal": f"vq_nearest N={N:,} K={K:,} D={D}: ≥ {GOAL_VS_CDIST}× cdist + argmin", "value": speedup,
             "threshold": GOAL_VS_CDIST, "met": speedup >= GOAL_VS_CDIST},
            {"goal": f"vq_nearest N={N:,} K={K:,} D={D}: argmin = float64's on ≥ {GOAL_AGREEMENT:.2%} of rows",
             "value": agreement, "threshold": GOAL_AGREEMENT, "met": agreement >= GOAL_AGREEMENT}]


def _common(info: dict) -> dict:
    return {"op": "vq_nearest", "dtype": "float32", "device": info["gpu"]["name"], "versions": info["versions"]}


def main():
    if not torch.cuda.is_available():
        sys.exit("bench_vq_nearest needs a CUDA GPU and found none; these figures are GPU-only.")
    common = _common(machine_info())
    rows = measure_timed()
    g = torch.Generator(device="cuda").manual_seed(1)
    for n in MEMORY_NS:
        z, e = torch.randn(n, D, device="cuda", generator=g), torch.randn(K, D, device="cuda", generator=g)
        for provider, fn in _providers(z, e).items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append({**common, "provider": provider, "shape": [n, K, D], "peak_mib": peak})
    path = write_rows("bench_vq_nearest", rows)
    timed = [r for r in rows if "ms_p50" in r]
    print(markdown_table(
        ["provider", "data offset", "ms p50", "p20", "p80", "TFLOP/s", "argmin = float64"],
        [[r["provider"], r["data_offset"], r["ms_p50"], r["ms_p20"], r["ms_p80"], r["tflop_per_s"],
          r["argmin_agreement_vs_float64"]] for r in timed],
    ))
    memory = [r for r in rows if "peak_mib" in r]
    print(markdown_table(["provider", "N", "peak MiB"],
                         [[r["provider"], r["shape"][0], r["peak_mib"]] for r in memory]))
    _plot(timed, memory, RESULTS_DIR / "bench_vq_nearest.png")
    print(f"rows: {path}")


def _plot(timed, memory, path):
    from vaedeploy.plots import pyplot, save_figure

    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    centred = [r for r in timed if r["data_offset"] == 0.0]
    left.bar([r["provider"] for r in centred], [r["ms_p50"] for r in centred])
    left.set(ylabel="ms (p50)", title=f"vq_nearest N={N} K={K} D={D} float32")
    for provider in sorted({r["provider"] for r in memory}):
        pts = [(r["shape"][0], r["peak_mib"]) for r in memory if r["provider"] == provider]
        right.plot(*zip(*pts), marker="o", label=provider)
    right.set(xscale="log", yscale="log", xlabel="N", ylabel="peak MiB above inputs", title="peak memory")
    right.legend()
    fig.suptitle(timed[0]["device"])
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
