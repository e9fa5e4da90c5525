"""Mutation testing of vaedeploy's numeric code: put one small bug in at a time and check that a test fails.

Reads ``mutations.toml`` beside this file (each entry: id, file, the exact original snippet, its replacement, the
pytest selection that should catch it, and for a known survivor the reason it is accepted), then for each entry:
replaces the snippet in the file, runs the selection in a fresh interpreter, restores the file byte for byte (its
timestamps too) and records ``killed`` (a test failed or timed out) or ``survived``. An entry whose snippet is no
longer in its file is ``stale``, one whose snippet occurs more than once ``ambiguous``: both fail the pass, so the
list keeps step with the code. Every selection is first run on the unmutated code, which must pass.

The file being mutated is restored in a ``finally`` block (Ctrl-C and SIGTERM included), and a journal
(``.restore.json`` here) holds the original text while a mutation is in place: a run killed outright leaves the
journal behind, and the next run restores the file from it before anything else.

Usage (from the repository root; ``make mutation`` runs it in full):
    python tests/mutation/run.py                   # every mutation; writes docs/mutation_results.json and the table
    python tests/mutation/run.py --only ID [ID...] # some mutations; prints, writes nothing
    python tests/mutation/run.py --list            # the mutations and whether their snippets are found
    python tests/mutation/run.py --docs-only       # the table in docs/testing.md again from the results file
Exit status 0 when the pass holds (no stale or ambiguous entry, no unexplained survivor, at least 90% killed).
"""
from __future__ import annotations

import argparse
import datetime
import difflib
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MUTATIONS = HERE / "mutations.toml"
JOURNAL = HERE / ".restore.json"
RESULTS = ROOT / "docs" / "mutation_results.json"
DOCS = ROOT / "docs" / "testing.md"
TABLE_START, TABLE_END = "<!-- mutation-results:start -->", "<!-- mutation-results:end -->"
REQUIRED_SHARE = 0.90
FIELDS = {"id", "file", "original", "replacement", "tests", "why", "accepted"}


class Interrupted(Exception):
    """SIGTERM or SIGHUP: unwind like Ctrl-C so the mutated file is restored."""


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def load_mutations(path: Path = MUTATIONS) -> list[dict]:
    entries = tomllib.loads(path.read_text())["mutation"]
    seen = set()
    for i, entry in enumerate(entries):
        missing = {"id", "file", "original", "replacement", "tests", "why"} - set(entry)
        unknown = set(entry) - FIELDS
        if missing or unknown:
            raise SystemExit(f"{path.name}: entry {i + 1} ({entry.get('id', '?')}): missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)}; expected the fields {sorted(FIELDS)}")
        if entry["id"] in seen:
            raise SystemExit(f"{path.name}: the id {entry['id']!r} is used twice; expected unique ids")
        if entry["original"] == entry["replacement"]:
            raise SystemExit(f"{path.name}: {entry['id']}: the replacement is the original")
        seen.add(entry["id"])
    return entries


def locate(entry: dict) -> tuple[str, str]:
    """(status, detail): ``ok``, or ``stale`` / ``ambiguous`` with a sentence that says what to update."""
    path = ROOT / entry["file"]
    if not path.exists():
        return "stale", f"{entry['file']} does not exist any more"
    text = path.read_text()
    count = text.count(entry["original"])
    if count == 1:
        return "ok", ""
    if count > 1:
        return "ambiguous", (f"{entry['file']} holds the snippet {count} times; give more surrounding lines so it "
                             "names one place")
    first = entry["original"].strip().splitlines()[0].strip()
    near = difflib.get_close_matches(first, [line.strip() for line in text.splitlines()], n=1, cutoff=0.5)
    hint = f"; the nearest line now is: {near[0]!r}" if near else ""
    return "stale", f"{entry['file']} no longer contains {first!r}{hint}. Update tests/mutation/mutations.toml"


def restore_from_journal() -> None:
    if not JOURNAL.exists():
        return
    saved = json.loads(JOURNAL.read_text())
    path = ROOT / saved["file"]
    path.write_text(saved["text"])
    os.utime(path, ns=(saved["atime_ns"], saved["mtime_ns"]))
    JOURNAL.unlink()
    print(f"restored {saved['file']}, left mutated by an interrupted run ({saved['id']})")


class Mutated:
    """The file with the mutation in place inside the ``with`` block, the original bytes and times after it."""

    def __init__(self, entry: dict):
        self.entry, self.path = entry, ROOT / entry["file"]

    def __enter__(self):
        self.text = self.path.read_text()
        self.stat = self.path.stat()
        self.digest = hashlib.sha256(self.text.encode()).hexdigest()
        JOURNAL.write_text(json.dumps({"id": self.entry["id"], "file": self.entry["file"], "text": self.text,
                                       "atime_ns": self.stat.st_atime_ns, "mtime_ns": self.stat.st_mtime_ns}))
        self.path.write_text(self.text.replace(self.entry["original"], self.entry["replacement"], 1))
        return self

    def __exit__(self, *exc):
        self.path.write_text(self.text)
        os.utime(self.path, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))
        if hashlib.sha256(self.path.read_bytes()).hexdigest() != self.digest:
            raise SystemExit(f"{self.entry['file']}: could not restore the original; the journal {JOURNAL} keeps it")
        JOURNAL.unlink()
        return False


def run_selection(tests: list[str], timeout: float) -> dict:
    """Run a pytest selection in a fresh interpreter: returncode (None on timeout), seconds and the failure lines."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "240"}  # no bytecode cached from a mutant
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--tb=short", "-rf",
               "--hypothesis-seed=0", *tests]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        returncode = None
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)  # our own child's group: Ctrl-C must not leave it running
        process.wait()
        raise
    lines = output.splitlines()
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    # the failing source line (the one --tb=short prints before the first "E" line), then the error itself
    first_error = next((i for i, line in enumerate(lines) if line.startswith("E ")), None)
    assertion = []
    if first_error is not None:
        errors = [line.strip() for line in lines[first_error:] if line.startswith("E ")][:6]
        assertion = [lines[first_error - 1].strip()] + [line for line in errors if line != "E"]
    return {"returncode": returncode, "seconds": round(time.perf_counter() - start, 1), "failed": failed,
            "assertion": assertion, "tail": lines[-15:]}


def baseline(entries: list[dict]) -> dict[tuple, float]:
    """Each distinct selection on the unmutated code: it must pass; returns its time, which sets the timeout."""
    times = {}
    for tests in sorted({tuple(e["tests"]) for e in entries}):
        result = run_selection(list(tests), timeout=1800)
        if result["returncode"] != 0:
            print("\n".join(result["tail"]))
            raise SystemExit(f"baseline: `pytest {' '.join(tests)}` does not pass on the unmutated code (exit "
                             f"{result['returncode']}); the pass needs green selections")
        times[tests] = result["seconds"]
        print(f"baseline {result['seconds']:6.1f} s  {' '.join(tests)}")
    return times


def mutate_all(entries: list[dict]) -> list[dict]:
    located = {e["id"]: locate(e) for e in entries}
    runnable = [e for e in entries if located[e["id"]][0] == "ok"]
    times = baseline(runnable)
    records = []
    for entry in entries:
        status, detail = located[entry["id"]]
        record = {k: entry[k] for k in ("id", "file", "original", "replacement", "tests", "why")}
        if "accepted" in entry:
            record["accepted"] = entry["accepted"]
        if status != "ok":
            record.update(status=status, detail=detail)
            print(f"{status.upper():9} {entry['id']}: {detail}")
            records.append(record)
            continue
        with Mutated(entry):
            result = run_selection(entry["tests"], timeout=max(120.0, 5 * times[tuple(entry["tests"])]))
        code = result["returncode"]
        if code is None:
            status = "killed"
            result["failed"] = [f"timed out after {max(120.0, 5 * times[tuple(entry['tests'])]):.0f} s"]
        elif code == 1:
            status = "killed"
        elif code == 0:
            status = "survived"
        else:  # 2 interrupted, 3 internal error, 4 usage, 5 nothing collected: the pass cannot judge it
            status = "error"
            result["failed"] = result["tail"]
        record.update(status=status, seconds=result["seconds"], failed=result["failed"][:3],
                      assertion=result["assertion"])
        mark = {"killed": "killed", "survived": "SURVIVED" if "accepted" not in entry else "survived (accepted)",
                "error": "ERROR"}[status]
        print(f"{mark:9} {entry['id']} ({result['seconds']:.1f} s)")
        if status == "killed":
            for line in (result["failed"][:1] + result["assertion"][:2]):
                print(f"          {line}")
        records.append(record)
    return records


def summarise(records: list[dict]) -> dict:
    count = {s: sum(r["status"] == s for r in records) for s in ("killed", "survived", "stale", "ambiguous", "error")}
    judged = count["killed"] + count["survived"]
    unexplained = [r["id"] for r in records if r["status"] == "survived" and "accepted" not in r]
    share = count["killed"] / judged if judged else 0.0
    holds = (share >= REQUIRED_SHARE and not unexplained
             and not (count["stale"] or count["ambiguous"] or count["error"]))
    return {"mutations": len(records), **count, "killed_share": round(share, 4), "required_share": REQUIRED_SHARE,
            "unexplained_survivors": unexplained, "passed": holds}


def _versions() -> dict:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for name in ("torch", "numpy", "onnxruntime", "pytest", "hypothesis"):
        try:
            found[name] = version(name)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            found[name] = "not installed"
    return found


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


def write_results(records: list[dict], summary: dict, seconds: float) -> None:
    sys.path.insert(0, str(ROOT))
    from vaedeploy.io import write_json

    write_json(RESULTS, {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        # what differed from that commit while the pass ran, apart from the two files it writes
        "uncommitted_changes": sorted(line for line in _git("status", "--porcelain").splitlines()
                                      if not line.endswith(("docs/mutation_results.json", "docs/testing.md"))),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), **_versions()},
        "seconds": round(seconds, 1),
        "summary": summary,
        "mutations": records,
    })


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def table(results: dict) -> str:
    """The Markdown that docs/testing.md shows between its markers, from the results document."""
    s = results["summary"]
    lines = [
        f"Last run: {results['generated']} on commit `{results['commit'][:10]}`, {results['machine']['cpus']} CPUs, "
        f"Python {results['machine']['python']}, torch {results['machine']['torch']}; {results['seconds'] / 60:.1f} "
        "minutes.",
        "",
        f"**{s['killed']} of {s['killed'] + s['survived']} mutations killed ({100 * s['killed_share']:.1f}%; "
        f"at least {100 * s['required_share']:.0f}% required)**; stale {s['stale']}, ambiguous {s['ambiguous']}, "
        f"errors {s['error']}; the pass {'holds' if s['passed'] else 'FAILS'}.",
        "",
        "| id | file | mutation | result | caught by / why it survives |",
        "|---|---|---|---|---|",
    ]
    for r in results["mutations"]:
        change = f"`{_cell(r['original'].strip())}` → `{_cell(r['replacement'].strip())}`"
        if r["status"] == "killed":
            test = r["failed"][0].split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ") if r["failed"] else ""
            note = _cell(test)
        elif r["status"] == "survived":
            note = "**accepted**: " + _cell(r.get("accepted", "NO REASON GIVEN"))
        else:
            note = _cell(r.get("detail", ""))
        lines.append(f"| {r['id']} | {r['file']} | {change} | {r['status']} | {note} |")
    return "\n".join(lines)


def write_docs(results: dict) -> None:
    text = DOCS.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise SystemExit(f"{DOCS}: expected the markers {TABLE_START} and {TABLE_END} around the results table")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    sys.path.insert(0, str(ROOT))
    from vaedeploy.io import atomic_write_bytes

    atomic_write_bytes(DOCS, (head + TABLE_START + "\n" + table(results) + "\n" + TABLE_END + tail).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run these mutations only; nothing is written")
    parser.add_argument("--list", action="store_true", help="list the mutations and whether their snippets exist")
    parser.add_argument("--docs-only", action="store_true", help="rewrite the docs table from the results file")
    args = parser.parse_args(argv)
    if args.docs_only:
        write_docs(json.loads(RESULTS.read_text()))
        return 0
    entries = load_mutations()
    if args.list:
        for e in entries:
            status, detail = locate(e)
            print(f"{status:9} {e['id']:32} {e['file']}" + (f"  ({detail})" if detail else ""))
        return 0 if all(locate(e)[0] == "ok" for e in entries) else 1
    if args.only:
        unknown = set(args.only) - {e["id"] for e in entries}
        if unknown:
            raise SystemExit(f"--only: no mutation called {sorted(unknown)}; see --list")
        entries = [e for e in entries if e["id"] in args.only]
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    restore_from_journal()
    start = time.perf_counter()
    try:
        records = mutate_all(entries)
    except (KeyboardInterrupt, Interrupted) as stop:
        print(f"interrupted ({stop or 'Ctrl-C'}); every file is restored, nothing written")
        return 130
    summary = summarise(records)
    print(json.dumps(summary, indent=2))
    if not args.only:
        write_results(records, summary, time.perf_counter() - start)
        write_docs(json.loads(RESULTS.read_text()))
        print(f"wrote {RESULTS.relative_to(ROOT)} and the table in {DOCS.relative_to(ROOT)}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
