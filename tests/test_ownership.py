"""vaedeploy's one ownership rule (vaedeploy/owned.py) for every command that writes a directory: what each may
replace, and that a failure at any step of a rewrite leaves the target exactly as it was."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from vaedeploy import owned
from vaedeploy.errors import ConfigError, VaedeployError
from vaedeploy.owned import MARKER

INJECTED = "(injected)"


def fail(*args, **kwargs):
    raise OSError(28, f"No space left on device {INJECTED}")


# ---- the commands ------------------------------------------------------------------------------------------------

def write_export(exported, out: Path) -> None:
    from vaedeploy.export import export_run

    export_run(exported("ae")[0], out, exporter="legacy", max_batch=4)


def write_triton(exported, out: Path) -> None:
    from vaedeploy.deploy.triton_repo import write_repository
    from vaedeploy.serve.batcher import BatchPolicy

    write_repository(exported("vae")[1], out, "vae", BatchPolicy(max_batch_size=8).model_config())


def write_web(exported, out: Path) -> None:
    from vaedeploy.web import write_site

    write_site(exported("vae")[1], out, data="digits")


COMMANDS = {"export": write_export, "triton-repo": write_triton, "web": write_web}


@pytest.fixture(autouse=True)
def fake_page(tmp_path_factory, monkeypatch):
    """A stand-in for the npm build of the web page (as tests/web does)."""
    from vaedeploy.web import site

    page = tmp_path_factory.mktemp("page")
    (page / "ort").mkdir()
    files = {"index.html": "<!doctype html>", "ort/ort-wasm-simd-threaded.jsep.wasm": "\0asm"}
    for name, text in files.items():
        (page / name).write_text(text)
    (page / "build.json").write_text(json.dumps({"onnxruntime-web": "test", "files": sorted(files)}))
    monkeypatch.setattr(site, "PAGE", page)


def snapshot(root: Path) -> dict:
    """Every entry under root: a file's bytes, a folder, a link's target; so 'as it was' means byte for byte."""
    found = {".": ("link", os.readlink(root)) if root.is_symlink() else "dir"}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            found[relative] = ("link", os.readlink(path)) if path.is_symlink() else \
                "dir" if path.is_dir() else path.read_bytes()
    return found


# ---- the fault injection: every step of a rewrite, every command --------------------------------------------------

def inject(step: str, command: str, out: Path, monkeypatch) -> None:
    """Make the next run of ``command`` to ``out`` fail at ``step``."""
    real_write_json, real_rename = owned.write_json, os.rename
    if step == "first marker":  # the staging directory's first file
        monkeypatch.setattr(owned, "write_json", lambda path, doc: fail() if doc.get("complete") is False
                            else real_write_json(path, doc))
    elif step == "final marker":  # the marker listing every entry, written just before the swap
        monkeypatch.setattr(owned, "write_json", lambda path, doc: fail() if doc.get("complete") is True
                            else real_write_json(path, doc))
    elif step == "a file":  # one of the command's own files, halfway through the staging
        if command == "export":
            import vaedeploy.export.bundle_writer as writer

            real = writer.write_json
            monkeypatch.setattr(writer, "write_json", lambda path, doc: fail() if path.name == "manifest.json"
                                else real(path, doc))
        else:
            real_copy = shutil.copyfile
            monkeypatch.setattr(shutil, "copyfile", lambda source, target: fail() if str(target).endswith(
                (".wasm", "model.onnx")) else real_copy(source, target))
    elif step == "replace_directory":
        monkeypatch.setattr(owned, "replace_directory", fail)
    elif step == "exchange":  # the renameat2(RENAME_EXCHANGE) that swaps the two directories
        monkeypatch.setattr("vaedeploy.io._exchange", fail)
    elif step == "os.rename":  # no RENAME_EXCHANGE: the old one is moved aside, the new one cannot take its place
        monkeypatch.setattr("vaedeploy.io._exchange", lambda a, b: False)
        calls = []

        def rename(source, target):
            if Path(target) == out and not calls:
                calls.append(source)  # once: putting the old one back must work
                fail()
            return real_rename(source, target)
        monkeypatch.setattr("vaedeploy.io.os.rename", rename)
    else:
        raise AssertionError(step)


FAILING_STEPS = ["first marker", "a file", "final marker", "replace_directory", "exchange", "os.rename"]


@pytest.mark.parametrize("step", FAILING_STEPS)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_failure_at_any_step_leaves_the_target_as_it_was(exported, tmp_path, monkeypatch, command, step):
    out = tmp_path / "out"
    COMMANDS[command](exported, out)
    before = snapshot(out)
    inject(step, command, out, monkeypatch)
    with pytest.raises(OSError, match=r"No space left on device.*injected"):
        COMMANDS[command](exported, out)
    monkeypatch.undo()
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or backup left behind


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_failure_with_no_target_leaves_none(exported, tmp_path, monkeypatch, command):
    inject("final marker", command, tmp_path / "out", monkeypatch)
    with pytest.raises(OSError, match="injected"):
        COMMANDS[command](exported, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_old_output_that_cannot_be_deleted_is_left_as_ours_and_cleaned_next_time(exported, tmp_path, monkeypatch,
                                                                                  command):
    """The rmtree of the old output fails halfway, after the swap: the run has succeeded (the new output is
    whole); what is left carries our marker, and the next run to the same target deletes it."""
    out = tmp_path / "out"
    COMMANDS[command](exported, out)
    real_delete = owned.delete_owned

    def half_delete(path):
        victim = next(p for p in sorted(path.iterdir()) if p.name != MARKER)
        if victim.is_dir():
            shutil.rmtree(victim)
        else:
            victim.unlink()
        fail()

    monkeypatch.setattr(owned, "delete_owned", half_delete)
    COMMANDS[command](exported, out)
    monkeypatch.setattr(owned, "delete_owned", real_delete)
    (left,) = [p for p in tmp_path.iterdir() if p != out]
    assert owned.read_marker(left)["tool"] == command and owned.read_marker(out)["complete"] is True
    COMMANDS[command](exported, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_symbolic_link_as_the_target_is_refused_and_left_as_it_was(exported, tmp_path, command):
    earlier, link = tmp_path / "earlier", tmp_path / "link"
    COMMANDS[command](exported, earlier)
    link.symlink_to(earlier)
    before = snapshot(earlier)
    with pytest.raises(VaedeployError, match="is a symbolic link"):
        COMMANDS[command](exported, link)
    assert link.readlink() == earlier and snapshot(earlier) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "link"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_of_another_command_is_not_ours(exported, tmp_path, command):
    out = tmp_path / "out"
    other = next(c for c in sorted(COMMANDS) if c != command)
    COMMANDS[other](exported, out)
    before = snapshot(out)
    with pytest.raises(VaedeployError, match=rf"says `vaedeploy {other}` wrote it"):
        COMMANDS[command](exported, out)
    assert snapshot(out) == before


# ---- the rule itself ---------------------------------------------------------------------------------------------

KIND = owned.Kind(tool="test", what="a test folder", noun="folder", error=ConfigError)


def marked(root: Path, entries: list[str], tool: str = "test", complete: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({"format": owned.FORMAT, "version": owned.VERSION, "tool": tool,
                                           "complete": complete, "entries": entries}))
    return root


def test_a_target_is_absent_empty_or_ours_with_nothing_else(tmp_path):
    owned.check_target(tmp_path / "absent", KIND)
    (tmp_path / "empty").mkdir()
    owned.check_target(tmp_path / "empty", KIND)
    ours = marked(tmp_path / "ours", ["a.txt", "sub/", "sub/b.txt"])
    (ours / "a.txt").write_text("1")
    (ours / "sub").mkdir()
    (ours / "sub" / "b.txt").write_text("2")
    (ours / ".a.txt.x1y2z3.tmp").write_text("an interrupted atomic write of a.txt")
    owned.check_target(ours, KIND)
    (ours / "sub" / "mine").symlink_to(tmp_path)
    (ours / "c.txt").write_text("the user's")
    with pytest.raises(ConfigError, match=r"not part of its folder \(c.txt, sub/mine \(a symbolic link\)\)"):
        owned.check_target(ours, KIND)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is a file, not a folder directory"):
        owned.check_target(tmp_path / "file", KIND)
    with pytest.raises(ConfigError, match=r"is not a test folder \(it holds empty/, file, ours/, "):
        owned.check_target(tmp_path, KIND)


def test_a_json_that_merely_looks_like_a_marker_proves_nothing(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / MARKER).write_text(json.dumps({"files": {"a.txt": "x"}}))
    (root / "a.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a test folder"):
        owned.check_target(root, KIND)


def test_every_path_written_stays_inside_the_staging_directory(tmp_path):
    with owned.Staging(tmp_path / "out", KIND) as staging:
        for name in ("../escape", "/etc/passwd", "a/../../escape", "."):
            with pytest.raises(ConfigError, match="would be written outside the output directory"):
                staging.path(name)
        (staging.root / "link").symlink_to(tmp_path)
        with pytest.raises(ConfigError, match="outside the output directory"):
            staging.write_bytes("link/escape", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_leftovers_are_deleted_only_when_marked_ours_and_their_run_is_gone(tmp_path):
    out = marked(tmp_path / "out", [])
    dead = 2**22 + 7  # past Linux's largest pid
    staged = marked(tmp_path / f".out.test-{dead}-ab12cd34.tmp", [], complete=False)
    (staged / "half.bin").write_bytes(b"half")
    alive = marked(tmp_path / f".out.test-{os.getppid()}-ab12cd34.tmp", [], complete=False)
    unmarked = tmp_path / f".out.test-{dead}-cd34ab12.tmp"
    unmarked.mkdir()
    (unmarked / "model.onnx").write_bytes(b"whose?")
    foreign = marked(tmp_path / f".out.test-{dead}-0000ffff.tmp", ["a"])
    (foreign / "b").write_text("added later")
    assert owned.clean_leftovers(out, KIND) == [staged]
    assert alive.exists() and unmarked.exists() and (foreign / "b").exists()


def test_without_the_target_only_staging_leftovers_go(tmp_path):
    """A killed first run leaves a staging directory (deleted); a swap without RENAME_EXCHANGE killed between its
    renames leaves the old output aside and nothing at the target (kept: it is the user's only copy)."""
    dead = 2**22 + 7
    staged = marked(tmp_path / f".out.test-{dead}-ab12cd34.tmp", [], complete=False)
    aside = marked(tmp_path / f".out.test-{dead}-cd34ab12.tmp", [])
    assert owned.clean_leftovers(tmp_path / "out", KIND) == [staged] and aside.exists()


def test_an_engine_cache_is_claimed_file_by_file_and_a_users_folder_is_refused(tmp_path):
    from vaedeploy.bundle import ENGINE_CACHE

    cache = tmp_path / "cache"
    owned.claim(cache, ENGINE_CACHE, ["encoder.fp32.plan", "encoder.fp32.json"])
    assert owned.read_marker(cache)["entries"] == ["encoder.fp32.json", "encoder.fp32.plan"]
    (cache / "encoder.fp32.plan").write_bytes(b"plan")
    owned.check_target(cache, ENGINE_CACHE)
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "taxes.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"is not an engine cache of `vaedeploy build` \(it holds taxes.json\)"):
        owned.claim(documents, ENGINE_CACHE, ["encoder.fp32.plan"])
    assert [p.name for p in documents.iterdir()] == ["taxes.json"]


def test_an_engine_cache_of_an_older_build_is_known_by_its_records(tmp_path):
    from vaedeploy.bundle import ENGINE_CACHE, ENGINE_RECORD_FORMAT

    cache = tmp_path / "engines"
    cache.mkdir()
    (cache / "encoder.fp32.plan").write_bytes(b"plan")
    (cache / "encoder.fp32.json").write_text(json.dumps({"format": ENGINE_RECORD_FORMAT,
                                                         "plan": {"file": "encoder.fp32.plan"}}))
    (cache / "timing.tensorrt-10.13.0.sm89.cache").write_bytes(b"t")
    owned.claim(cache, ENGINE_CACHE, ["decoder.fp32.plan"])
    assert set(owned.read_marker(cache)["entries"]) == {"encoder.fp32.plan", "encoder.fp32.json",
                                                        "timing.tensorrt-10.13.0.sm89.cache", "decoder.fp32.plan"}
    (cache / "stray.plan").write_bytes(b"no record names it")
    with pytest.raises(ConfigError, match=r"not part of its engine cache \(stray.plan\)"):
        owned.check_target(cache, ENGINE_CACHE)


def test_a_failure_claiming_a_file_leaves_the_engine_cache_as_it_was(tmp_path, monkeypatch):
    """The cache is filled, never replaced: a name joins the marker before its file is written, and a failure
    writing the marker leaves the folder as it was (nothing written that the marker does not list)."""
    from vaedeploy.bundle import ENGINE_CACHE

    cache = tmp_path / "cache"
    owned.claim(cache, ENGINE_CACHE, ["encoder.fp32.plan"])
    (cache / "encoder.fp32.plan").write_bytes(b"plan")
    before = snapshot(cache)
    monkeypatch.setattr("vaedeploy.io.os.replace", fail)
    with pytest.raises(OSError, match="injected"):
        owned.claim(cache, ENGINE_CACHE, ["decoder.fp32.plan"])
    assert snapshot(cache) == before
