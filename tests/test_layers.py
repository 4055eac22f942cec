"""The package's layers, read from the code with ``ast``: imports run one way, down, in no circle.

``cli -> pipeline -> {ingest, scoring, training, report, sim} -> {model, store, formats, metrics}
-> core`` (docs/ARCHITECTURE.md). A module may import its own subpackage and any lower layer;
never a higher one, nor a sibling of its own layer. An import inside a function is there only to
defer a heavy import, says why in a comment, and reaches a heavy library. No private name
(``_x``) is imported from another module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "s2v_batch"

RANK = {
    "core": 0,
    "model": 1,
    "store": 1,
    "formats": 1,
    "metrics": 1,
    "ingest": 2,
    "scoring": 2,
    "training": 2,
    "report": 2,
    "sim": 2,
    "scan": 2,
    "pipeline": 3,
    "cli": 4,
}
#: What an import inside a function may defer: the libraries slow to import or to start.
HEAVY = {
    "keras", "tensorflow", "jax", "matplotlib", "prefect", "s2v_flows", "dask_cuda",
    "dask_jobqueue", "distributed", "dask", "zarr", "xarray", "pandas", "pyarrow", "scipy",
    "astropy", "fastavro", "PIL", "imagecodecs", "tqdm",
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _layer(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def _owner(package: str, name: str) -> str:
    """The module a package's lazy re-export (``_OWNERS``, as in ``s2v_batch.model``) comes from."""
    if package not in MODULES or not MODULES[package].name == "__init__.py":
        return package
    for node in ast.parse(MODULES[package].read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_OWNERS":
            owners = ast.literal_eval(node.value)
            if name in owners:
                return f"{package}.{owners[name]}"
    return package


def _import_time_nodes(tree: ast.Module, typing: bool = False):
    """The nodes that run when the module is imported: all but the bodies of functions (and of
    ``if TYPE_CHECKING:`` blocks, unless ``typing``)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse + (node.body if typing else [])
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            todo += list(ast.iter_child_nodes(node))


def _imports(mod: str):
    """``(target module, names, node, at module level)`` for every import of the package."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text())
    top = {id(n) for n in _import_time_nodes(tree, typing=True)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            base = node.module or ""
            if base.split(".")[0] not in ("s2v_batch", "s2v_flows"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                target = full if full in MODULES else _owner(base, a.name)
                yield target, [a.name] if target == base else [], node, id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("s2v_batch", "s2v_flows"):
                    yield a.name, [], node, id(node) in top


@cache
def _direct(mod: str) -> tuple[frozenset[str], frozenset[str]]:
    """Third-party top-level packages and package modules that ``mod`` imports at module level
    (importing a submodule runs its packages' ``__init__`` first)."""
    tree = ast.parse(MODULES[mod].read_text())
    third: set[str] = set()
    for node in _import_time_nodes(tree):
        if isinstance(node, ast.Import):
            third |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            third.add(node.module.split(".")[0])
    run = {n.lineno for n in _import_time_nodes(tree) if isinstance(n, ast.Import | ast.ImportFrom)}
    ours = {t for t, _, node, _ in _imports(mod) if node.lineno in run and t in MODULES}
    parts = mod.split(".")
    ours |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return frozenset(third), frozenset(ours - {mod})


def _third_party(mod: str) -> set[str]:
    """Top-level third-party packages that importing ``mod`` loads."""
    seen, todo, found = {mod}, [mod], set()
    while todo:
        third, ours = _direct(todo.pop())
        found |= third
        todo += [m for m in ours if m not in seen]
        seen |= ours
    return found


def test_no_module_imports_a_higher_layer_or_a_sibling():
    bad = []
    for mod in MODULES:
        here = _layer(mod)
        for target, _, node, _ in _imports(mod):
            if target.startswith("s2v_flows"):
                if here != "cli":
                    bad.append(f"{mod}:{node.lineno} imports {target} (only cli may)")
                continue
            there = _layer(target)
            if there is None or there == here:  # the package root holds only __version__
                continue
            if here is None or RANK[there] >= RANK[here]:
                bad.append(f"{mod}:{node.lineno} ({here}) imports {target} ({there})")
    assert not bad, "\n".join(bad)


def test_every_module_is_in_a_layer_and_the_root_imports_nothing():
    assert {_layer(m) for m in MODULES} - {None} == set(RANK)
    assert not list(_imports("s2v_batch"))


def test_no_import_circle():
    graph = {m: {t for t, *_ in _imports(m) if t in MODULES and t != m} for m in MODULES}
    # A package's __init__ re-exporting its own modules is not a circle with them.
    for m, deps in graph.items():
        graph[m] = {d for d in deps if not m.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _commented(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import, or above it in the block of imports it belongs to."""
    if any("#" in line for line in lines[node.lineno - 1 : node.end_lineno]):
        return True
    i = node.lineno - 2
    while i >= 0 and lines[i].strip() and not lines[i].rstrip().endswith((":", '"""')):
        if lines[i].strip().startswith("#"):
            return True
        i -= 1
    return False


def test_imports_inside_functions_defer_something_heavy_and_say_so():
    bad = []
    for mod, path in MODULES.items():
        lines = path.read_text().splitlines()
        for target, _, node, top in {(t, (), n, top) for t, _, n, top in _imports(mod)}:
            if top or target not in MODULES:
                continue
            heavy = _third_party(target) & HEAVY
            said = _commented(lines, node)
            if not heavy:
                bad.append(f"{mod}:{node.lineno} defers {target}, which loads nothing heavy")
            elif not said:
                bad.append(f"{mod}:{node.lineno} defers {target} without a comment saying why")
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_from_another_module():
    bad = [
        f"{mod}:{node.lineno} imports {name} from {target}"
        for mod in MODULES
        for target, names, node, _ in _imports(mod)
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != mod
    ]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The checks are not vacuous: an upward import planted in a copy of a module is found."""
    mod = "s2v_batch.core.conventions"
    planted = tmp_path / "conventions.py"
    planted.write_text(
        MODULES[mod].read_text() + "\n\ndef f():\n    from s2v_batch.cli.main import main\n"
    )
    monkeypatch.setitem(MODULES, mod, planted)
    _direct.cache_clear()
    with pytest.raises(AssertionError, match="conventions:.*imports s2v_batch.cli.main"):
        test_no_module_imports_a_higher_layer_or_a_sibling()
    with pytest.raises(AssertionError, match="without a comment|loads nothing heavy"):
        test_imports_inside_functions_defer_something_heavy_and_say_so()
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circle()
    _direct.cache_clear()
