"""The layering of kernels_docs/README.md, checked on the source: who may import whom.

    core (gpurnn/*.py, cells/)  <-  train/  <-  apps/
    backends (cpu/, cuda/) are reached only through the registry (gpurnn.backend) and the
    contract (gpurnn.contract); no module outside a backend imports that backend's insides.

Every import statement counts, also those inside functions (a lazy import is still a
dependency). The CPU benchmarks (bench_cpu.py profiles the kernels' phases; bench_vs_commit
loads two commits' CPU backends; bench_tokens.py times the token-input kernels against the
GEMMs they replace) are the CPU backend's own tools and may import its insides.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpurnn"
BACKENDS = ("gpurnn.cpu", "gpurnn.cuda")
CPU_TOOLS = ("bench_cpu.py", "bench_vs_commit.py", "bench_tokens.py")


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path, top_level_only=False):
    """Absolute names of the modules ``path`` imports (from X import y gives X.y too, as y
    may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path) if path.is_relative_to(PACKAGE) else ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            found.add(origin)
            found.update(f"{origin}.{a.name}" for a in node.names)
    return found


def library_modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def layer_of(name):
    if name.startswith(BACKENDS):
        return "backend"
    if name.startswith("gpurnn.train"):
        return "train"
    if name.startswith("gpurnn.apps") or name == "gpurnn.__main__":
        return "apps"
    return "core"


def inside_a_backend(name):
    """``gpurnn.cpu.kernels`` -> "gpurnn.cpu": a backend's internal module (its package
    itself, the public face, is not)."""
    return next((b for b in BACKENDS if name.startswith(b + ".")), None)


def test_no_module_outside_a_backend_imports_its_internals():
    offenders = []
    files = library_modules() + [p for p in sorted((ROOT / "benchmarks").glob("*.py"))
                                 if p.name not in CPU_TOOLS]
    for path in files:
        me = module_name(path) if path.is_relative_to(PACKAGE) else path.name
        for name in imports(path):
            backend = inside_a_backend(name)
            if backend and not me.startswith(backend) and not _a_public_name(name, backend):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def _a_public_name(name, backend):
    """``gpurnn.cpu.CpuBackend`` (from gpurnn.cpu import CpuBackend) is the package's face."""
    tail = name[len(backend) + 1:]
    return "." not in tail and not (PACKAGE / backend.split(".")[1] / f"{tail}.py").exists()


def test_the_library_never_imports_a_backend_except_through_the_registry():
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in library_modules() if layer_of(module_name(path)) != "backend"
                 for name in imports(path) if name.startswith(BACKENDS)]
    assert not offenders, "\n".join(offenders)


ALLOWED = {"core": {"core"}, "train": {"core", "train"}, "apps": {"core", "train", "apps"},
           "backend": {"core", "backend"}}


def test_layers_import_only_downwards():
    offenders = []
    for path in library_modules():
        me = module_name(path)
        for name in imports(path):
            if name == "gpurnn" or not name.startswith("gpurnn."):
                continue
            if me == "gpurnn" and name in ("gpurnn.train", "gpurnn.train.tbptt",
                                           *(f"gpurnn.train.tbptt.{n}" for n in
                                             ("tbptt_window", "tbptt_windows", "window_at"))):
                continue    # the package re-exports the public window loop (README)
            if layer_of(name) not in ALLOWED[layer_of(me)]:
                offenders.append(f"{me} ({layer_of(me)}) imports {name} ({layer_of(name)})")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycle_between_modules():
    """Module-level imports between gpurnn's modules form no cycle (a package's
    __init__ re-exporting its modules is not an edge back)."""
    paths = {module_name(p): p for p in library_modules()}
    graph = {m: {n for n in imports(p, top_level_only=True) if n in paths and n != m
                 and not paths[n].name == "__init__.py"}
             for m, p in paths.items() if p.name != "__init__.py"}
    state = {}

    def visit(m, trail):
        if state.get(m) == "done":
            return
        if state.get(m) == "open":
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(m):] + [m]))
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            visit(n, trail + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])
