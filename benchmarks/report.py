"""The tables of docs/*.md, generated from the committed results in benchmarks/results/*.json.

A docs page marks each generated table with a pair of comments::

    <!-- generated from family.json: family -->
    | ... the table ... |
    <!-- end generated -->

``python -m benchmarks.report`` rewrites every such block from its JSON (``make docs``); ``--check`` exits 1 when a
page differs from what its JSON gives, which tests/test_docs.py asserts, so no figure in docs/ drifts from its
measurement.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks.*` when run as a script

from benchmarks.common import RESULTS_DIR, markdown_table  # noqa: E402
from vaedeploy.io import atomic_write_bytes  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"(<!-- generated from (\S+): (\w+) -->\n)(.*?)(<!-- end generated -->)", re.S)
KINDS = ("vae", "bivae", "biva", "twostage")


def _spread(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _seeds(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _groups(doc: dict):
    """(data, kind) → the rows of every seed, in the file's order."""
    groups: dict[tuple, list[dict]] = {}
    for row in doc["rows"]:
        groups.setdefault((row["data"], row["kind"]), []).append(row)
    return groups


def _units(rows: list[dict]) -> str:
    per_seed = [" / ".join(map(str, r["active_units_per_layer"])) if "active_units_per_layer" in r
                else str(r["active_units"]) for r in rows]
    return "; ".join(per_seed)


def family(doc: dict) -> str:
    """The family on digits and mnist5k: mean ± standard deviation over seeds (nats per image, higher is better)."""
    lines, vae_parameters = [], {}
    for (data, kind), rows in _groups(doc).items():
        digits = 1 if data == "digits" else 0
        parameters = rows[0]["parameters"]
        vae_parameters.setdefault(data, parameters if kind == "vae" else None)
        share = f" ({parameters / vae_parameters[data]:.1%})" if kind == "bivae" and vae_parameters[data] else ""
        lines.append([data, kind, _seeds([r["seed"] for r in rows]), f"{parameters:,}{share}",
                      _spread([r["train_seconds"] for r in rows], 0), _spread([r["elbo"] for r in rows], digits),
                      _spread([r["log_likelihood_iw"] for r in rows], digits), _units(rows),
                      _spread([r["sample_fd"] for r in rows], 2),
                      _spread([r["stage1_sample_fd"] for r in rows], 2) if "stage1_sample_fd" in rows[0] else ""])
    return markdown_table(["data", "model", "seeds", "parameters", "train s", "ELBO", "IW log-lik", "active units",
                           "sample FD", "stage-1 FD"], lines)


def checks(doc: dict) -> str:
    """The checks the family benchmark decides, on the means over seeds."""
    def value(check: dict) -> str:
        if "parameters" in check["check"]:
            return f"{check['value']:.1%}"
        if "within 5%" in check["check"]:
            return f"{check['value']:.2%} apart"
        return f"{check['value']:+.2f}"

    return markdown_table(["data", "check", "value", "result"],
                          [[c["data"], c["check"], value(c), "**met**" if c["passed"] else "not met"]
                           for c in doc["checks"]])


def collapse(doc: dict) -> str:
    """Posterior collapse: unit counts and densities per training variant, mean ± standard deviation over seeds."""
    threshold = doc["kl_threshold"]

    def cell(figure: dict) -> str:
        return f"{figure['mean']:.1f} ± {figure['std']:.1f}"

    return markdown_table(
        ["training", f"informative units (KL > {threshold:g} nats)", "active units (variance > 0.01)", "total KL",
         "ELBO", "IW log-lik"],
        [[s["variant"], *(cell(s[k]) for k in ("informative_units", "active_units", "total_kl", "elbo",
                                                "log_likelihood_iw"))] for s in doc["summary"]])


def vq_vs_vae(doc: dict) -> str:
    """The VQ-VAE against Gaussian VAEs of the same trunk on mnist5k."""
    def dash(row: dict, key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "–"

    lines = []
    for r in doc["rows"]:
        epochs = ", ".join(f"{stage} {n} epochs" for stage, n in r["epochs"].items())
        used = f"{r['codes_used']:.1%} ({round(r['codes_used'] * r['num_codes'])} of {r['num_codes']})" \
            if "codes_used" in r else "–"
        lines.append([r["model"], f"{r['parameters']:,} ({r['parameters_without_prior']:,})",
                      f"{r['recon_error']:.4f}", f"{r['train_wall_seconds']:.0f} s ({epochs})", used,
                      dash(r, "codebook_perplexity", ".0f"), dash(r, "prior_nll_bits_per_code", ".2f")])
    return markdown_table(["model", "parameters (without prior)", "test recon MSE / pixel", "training wall time",
                           "codes used", "codebook perplexity", "prior bits / code"], lines)


def runtime_cpu(doc: dict) -> str:
    from benchmarks.runtime_cpu import table

    return table(doc)


TABLES = {"family": family, "checks": checks, "collapse": collapse, "vq_vs_vae": vq_vs_vae,
          "runtime_cpu": runtime_cpu}


def render(page: str) -> str:
    """``page`` with every generated block rewritten from its JSON."""
    def block(match: re.Match) -> str:
        head, file, name, _, tail = match.groups()
        doc = json.loads((RESULTS_DIR / file).read_text())
        return f"{head}{TABLES[name](doc)}\n{tail}"

    return BLOCK.sub(block, page)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page differs from its JSON")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        fresh = render(text)
        if fresh != text:
            stale.append(path)
            if not args.check:
                atomic_write_bytes(path, fresh.encode())
    for path in stale:
        print(f"{path}: {'differs from' if args.check else 'regenerated from'} its results")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
