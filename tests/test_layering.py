"""The package's layering, as data, and the test that holds the imports to it.

Each module of ``convnext_np`` sits in one layer; a module imports only from its own layer or
the layers below, with no circles, whether the import is at the top of the module or inside a
function. ``docs/architecture.md`` ("Where things live") shows the same table; a test checks
that it does. Run this file as a script to print the import graph's numbers:

    python tests/test_layering.py
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "convnext_np"
DOCS = PACKAGE.parent / "docs" / "architecture.md"

# Bottom to top. A new module goes in the lowest layer that has everything it imports.
LAYERS = {
    "basics": ("errors", "version", "guards", "config", "progress"),
    "network": ("ops", "kernels", "backends", "threads", "heap", "backbone", "model"),
    "files": ("safetensors_file", "torch_pickle", "weights", "family", "checkpoints", "labels",
              "files", "preprocess", "testing"),
    "loading": ("loading", "hub", "warmup"),
    "libraries": ("classify", "evaluate", "head", "golden", "published", "spark", "summary"),
    "cli": ("cli",),
    "package": ("__init__",),
}
LAYER = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}

# Imports inside a function that are deliberate: what they import is heavy and most uses of the
# importing module never need it.
LAZY = {
    ("warmup", "kernels"): "Numba itself, imported only where the kernels are compiled",
    ("loading", "warmup"): "python -m convnext_np.warmup imports the package before running the "
                           "module as __main__; imported by the package, it would be there twice",
    ("loading", "hub"): "HTTP machinery (urllib.request, http.client, ssl): only for a name, "
                        "never for a local path",
}


def imports(package: Path = PACKAGE) -> list:
    """(importer, imported, inside a function, line) for every import of a sibling module:
    ``from . import x``, ``from .x import y`` and their ``convnext_np.`` spellings, anywhere in
    the module. Importing the package itself (``from . import __version__``) counts as
    importing ``__init__``."""
    modules = {p.stem for p in package.glob("*.py")}
    found = []

    def visit(module, node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                relative = child.level == 1
                absolute = child.level == 0 and (child.module or "").split(".")[0] == package.name
                if relative or absolute:
                    parts = child.module.split(".") if child.module else []
                    names = parts[0 if relative else 1:][:1] or [alias.name for alias in child.names]
                    for name in names:
                        target = name if name in modules else "__init__"
                        if target != module:
                            found.append((module, target, in_function, child.lineno))
            visit(module, child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    for path in sorted(package.glob("*.py")):
        visit(path.stem, ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def circles(edges) -> list:
    """The groups of modules that import each other, directly or around a loop (Tarjan's
    strongly connected components of more than one module)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return groups


def upward(edges) -> list:
    return [(a, b) for a, b in edges if LAYER.get(b, -1) > LAYER.get(a, -1)]


# --- the tests ----------------------------------------------------------------------------------
def test_every_module_has_one_layer():
    placed = [m for modules in LAYERS.values() for m in modules]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    assert set(placed) == {p.stem for p in PACKAGE.glob("*.py")}, \
        "every module of convnext_np is in LAYERS, and only those"


def test_no_module_imports_a_higher_layer():
    edges = {(a, b) for a, b, _, _ in imports()}
    found = set(upward(edges))
    assert found == set(), "an import from a higher layer (see LAYERS)"


def test_no_circles():
    edges = {(a, b) for a, b, _, _ in imports()}
    assert circles(edges) == []


def test_imports_inside_functions_are_deliberate():
    inside = {(a, b) for a, b, in_function, _ in imports() if in_function}
    assert inside - LAZY.keys() == set(), \
        "a sibling imported inside a function: import it at the top, or say in LAZY why not"


def test_every_lazy_import_is_still_lazy():
    inside = {(a, b) for a, b, in_function, _ in imports() if in_function}
    assert LAZY.keys() <= inside, "an entry of LAZY is no longer a lazy import"


def test_the_package_is_not_imported_by_its_modules():
    assert [(a, line) for a, b, _, line in imports() if b == "__init__"] == []


def test_the_docs_show_these_layers():
    """docs/architecture.md's "Where things live" table: one row per layer, top first, each
    naming that layer's modules in backticks."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\| \*\*\w+\*\* \|", line)]
    shown = {re.match(r"\| \*\*(\w+)\*\*", row).group(1): set(re.findall(r"`(\w+)\.py`", row))
             for row in rows}
    assert list(shown) == list(reversed(LAYERS)), "one row per layer, top first"
    for layer, modules in LAYERS.items():
        assert shown[layer] == set(modules), layer


def test_the_graph_finds_function_level_and_package_imports(tmp_path):
    """The parser sees what the tests above rely on: imports inside functions, ``from . import``
    of a module and of the package, and a circle."""
    package = tmp_path / "convnext_np"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import f\n__version__ = '0'\n")
    (package / "a.py").write_text("from . import b\n\ndef f():\n    from .c import g\n")
    (package / "b.py").write_text("def h():\n    from . import __version__\n")
    (package / "c.py").write_text("from convnext_np.a import f\n")
    found = sorted(imports(package))
    assert found == [("__init__", "a", False, 1), ("a", "b", False, 1), ("a", "c", True, 4),
                     ("b", "__init__", True, 2), ("c", "a", False, 1)]
    assert circles({(a, b) for a, b, _, _ in found}) == [["__init__", "a", "b", "c"]]


if __name__ == "__main__":
    package = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    found = imports(package)
    edges = {(a, b) for a, b, _, _ in found}
    groups = circles({e for e in edges if "__init__" not in e})
    print(f"circles: {len(groups)}")
    for group in groups:
        print("  " + " <-> ".join(group))
    up = sorted(upward(edges))
    print(f"upward imports: {len(up)}")
    for a, b in up:
        print(f"  {a} ({[k for k, v in LAYERS.items() if a in v][0]}) -> "
              f"{b} ({[k for k, v in LAYERS.items() if b in v][0]})")
    inside = [(a, b, line) for a, b, in_function, line in found if in_function]
    print(f"imports of a sibling inside a function: {len(inside)}")
    for a, b, line in inside:
        print(f"  {a}.py:{line} -> {b}" + ("  (deliberate)" if (a, b) in LAZY else ""))
