"""The import contract of docs/architecture.md, read from the source: one-way doors between layers, no circles,
and no torch on the ONNX Runtime path."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"vaedeploy": ROOT / "vaedeploy", "vaedeploy.kernels": ROOT / "kernels", "vaedeploy.export": ROOT / "export"}

# rank of each layer; a module may import its own rank and lower ones (the runtime is a column of its own)
LAYERS = [
    (0, ("vaedeploy.errors", "vaedeploy")),  # the package root: its version, and ``load`` as a lazy door for users
    (1, ("vaedeploy.io", "vaedeploy.owned", "vaedeploy.data", "vaedeploy.bundle", "vaedeploy.kernels",
         "vaedeploy.plots")),
    (2, ("vaedeploy.models",)),
    (3, ("vaedeploy.runs", "vaedeploy.fid")),
    (4, ("vaedeploy.train", "vaedeploy.evaluate", "vaedeploy.pictures")),
    (5, ("vaedeploy.export",)),
    (6, ("vaedeploy.deploy",)),  # TensorRT builds and Triton repositories: export's pieces and the runtime's
    (9, ("vaedeploy.cli", "vaedeploy.argtypes", "vaedeploy.run_commands", "vaedeploy.bundle_commands", "vaedeploy.demo",
         "vaedeploy.import_command",
         "vaedeploy.web", "vaedeploy.serve", "vaedeploy.bench")),
]
RUNTIME_USERS = 6  # the lowest layer that may import the runtime
ROOT_PACKAGE = "vaedeploy"  # its one import, of the runtime, happens when a user asks for vaedeploy.load
RUNTIME_MAY_IMPORT = ("vaedeploy.errors", "vaedeploy.io", "vaedeploy.owned", "vaedeploy.bundle", "vaedeploy.kernels")
TORCH_RUNNER = "vaedeploy.runtime.backends.torch"  # the one runtime module that may import torch and the models
FORBIDDEN = {"vaedeploy.models": ("vaedeploy.plots",)}  # a model never draws
TORCH_FREE = ("vaedeploy.errors", "vaedeploy.io", "vaedeploy.owned", "vaedeploy.bundle", "vaedeploy.kernels.numpy_ops",
              "vaedeploy.kernels.limits", "vaedeploy.kernels.philox", "vaedeploy.kernels", "vaedeploy.runtime",
              "vaedeploy.deploy.triton_repo",  # a Triton repository is written where only the runtime is installed
              "vaedeploy.deploy.triton_step")  # and its Python steps run inside Triton, where torch is not


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            if package == "vaedeploy" and parts[:1] in (["kernels"], ["export"]):
                continue  # build copies, if any; the real ones are the top-level folders
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict) -> list[tuple[str, bool]]:
    """(imported vaedeploy module, whether at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            # the package itself only where a name is not one of its modules (``from . import __version__``)
            names = submodules + ([target] if len(submodules) < len(node.names) else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for t in names:
            while t and t not in known and not t.startswith(("torch", "triton")):
                t = t.rsplit(".", 1)[0] if "." in t else ""
            if t and t != name:
                out.append((t, id(node) in top_level))
    return out


def layer(name: str) -> int | None:
    best = None
    for rank, prefixes in LAYERS:
        for prefix in prefixes:
            inside = name == prefix or (prefix != ROOT_PACKAGE and name.startswith(prefix + "."))
            if inside and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    return best[0] if best else None


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_every_module_has_a_layer():
    for name in modules():
        assert name.startswith("vaedeploy.runtime") or layer(name) is not None, f"{name} has no layer"


def test_no_layer_imports_a_higher_one():
    known = modules()
    wrong = []
    for name, path in known.items():
        if name == ROOT_PACKAGE:
            continue
        for target, _ in imports(name, path, known):
            if target.startswith(("torch", "triton")):
                continue
            if name.startswith("vaedeploy.runtime"):
                allowed = within(target, RUNTIME_MAY_IMPORT) or target.startswith("vaedeploy.runtime") or (
                    name == TORCH_RUNNER and within(target, ("vaedeploy.models",)))
            elif target.startswith("vaedeploy.runtime"):
                allowed = layer(name) >= RUNTIME_USERS
            else:
                allowed = layer(target) <= layer(name)
            allowed = allowed and not any(within(name, (k,)) and within(target, v) for k, v in FORBIDDEN.items())
            if not allowed:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_no_import_circles():
    known = modules()
    graph = {n: {t for t, _ in imports(n, p, known) if t in known} for n, p in known.items()}
    state, stack, circles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for t in graph[n]:
            if n.startswith(t + "."):  # a module importing its own package's __init__ is not a circle of code
                continue
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = "done"

    for n in known:
        if n not in state:
            visit(n)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_onnxruntime_path_imports_no_torch_at_module_level():
    known = modules()
    offenders = []
    for name, path in known.items():
        if not within(name, TORCH_FREE) or name == TORCH_RUNNER or name.startswith("vaedeploy.kernels.") and \
                name not in ("vaedeploy.kernels.numpy_ops", "vaedeploy.kernels.limits", "vaedeploy.kernels.philox"):
            continue
        offenders += [f"{name} imports {t}" for t, top in imports(name, path, known)
                      if top and (t.startswith("torch") or within(t, ("triton", "vaedeploy.models")))]
    assert not offenders, "\n".join(offenders)


def test_every_package_folder_is_installed():
    """pyproject lists its packages by name (kernels/ and export/ install inside vaedeploy): a folder left out of the
    list works in an editable install and is missing from the wheel, so check the list against the tree."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}
    found = set()
    for package, folder in PACKAGES.items():
        assert folders[package] == folder, f"pyproject maps {package} to {folders[package]}, expected {folder}"
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            if package == "vaedeploy" and parts[:1] in (("kernels",), ("export",)):
                continue
            found.add(".".join([package, *parts]))
    assert found == set(setuptools["packages"]), (
        f"packages with an __init__.py but not in pyproject: {sorted(found - set(setuptools['packages']))}; "
        f"listed but absent: {sorted(set(setuptools['packages']) - found)}")
