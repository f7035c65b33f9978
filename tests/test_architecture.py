"""The shape of the source tree: no import circles, small files, no private modules reached into, layers respected.

Every import counts: top level, inside functions, under ``TYPE_CHECKING``. ``from fcnkit.pkg import name`` counts as
an import of ``fcnkit.pkg.name`` when that is a module, otherwise of ``fcnkit.pkg``. The layered rule is written out
in docs/design.md ("What each package may import").
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400

# Each package (or top-level module) of fcnkit, and the layer it sits in. A module may import modules of its own
# package and of any package in a lower layer; never upwards, never sideways within a layer.
LAYERS: list[set[str]] = [
    {"errors", "signals", "hardware", "progress"},
    {"io"},
    {"layers", "metrics", "losses", "data"},
    {"geometry"},
    {"convert"},
    {"models"},  # above convert: fcn_on builds a segmentation FCN on a convolutionalized classifier
    {"inference", "checkpoint"},
    {"export", "distributed"},
    {"loading"},
    {"training"},
    {"reporting"},
    {"demo"},
    {"cli"},
    {"__init__", "__main__"},
]


def module_files(root: Path = SRC) -> dict[str, Path]:
    """``{'fcnkit.io.images': Path(...), 'fcnkit.io': Path(.../io/__init__.py), ...}``."""
    modules = {}
    for path in sorted((root / "fcnkit").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _resolve(module: str, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fcnkit modules that module ``name`` imports, anywhere in its body."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, name, path.name == "__init__.py")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import fcnkit.io.images as x` names a module already
                target = target.rpartition(".")[0]
            if target.startswith("fcnkit") and target != name:
                found.add(target)
    return found


@cache
def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(edges.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(package: str) -> int | None:
    """The layer number of ``package`` (``None`` when LAYERS lacks it: test_every_package_has_a_layer says so)."""
    return next((number for number, members in enumerate(LAYERS) if package in members), None)


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in sorted(edges.items()):
        here = _package(source)
        for target in sorted(targets):
            there = _package(target)
            if there == here or target == "fcnkit" or None in (layer_of(here), layer_of(there)):
                continue
            if layer_of(there) >= layer_of(here):
                bad.append(f"{source} -> {target}")
    return bad


# --- the checks on fcnkit itself -----------------------------------------------------------------------------------

def test_no_import_cycles():
    cycles = find_cycles(graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_file_over_the_line_limit():
    long = {str(p.relative_to(SRC)): n for p in (SRC / "fcnkit").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them along an idea): {long}"


def test_no_private_module_reached_from_another_package():
    bad = [f"{source} -> {target}" for source, targets in graph().items() for target in targets
           if target.rpartition(".")[2].startswith("_") and not target.endswith("__")
           and _package(target) != _package(source)]
    assert not bad, f"private modules imported from another package: {bad}"


def test_every_package_has_a_layer():
    packages = {_package(name) for name in graph()}
    missing = [p for p in packages if not any(p in members for members in LAYERS)]
    assert not missing, f"packages without a layer in LAYERS (add them there and to docs/design.md): {missing}"


def test_packages_import_only_lower_layers():
    bad = layer_violations(graph())
    assert not bad, "imports against the layers of docs/design.md: " + ", ".join(bad)


# --- the checker itself, on a tiny tree ----------------------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    modules = module_files(tmp_path)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_checker_sees_imports_inside_functions_type_checking_and_from_package(tmp_path):
    edges = _tree(tmp_path, {
        "fcnkit/__init__.py": "",
        "fcnkit/a/__init__.py": "from fcnkit.a.x import f\n",
        "fcnkit/a/x.py": "def f():\n    from fcnkit.a import y\n",
        "fcnkit/a/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .z import g\n",
        "fcnkit/a/z.py": "import fcnkit.a.x as x\n",
    })
    assert edges["fcnkit.a.x"] == {"fcnkit.a.y"}  # `from fcnkit.a import y` is the submodule, not the package
    assert edges["fcnkit.a.y"] == {"fcnkit.a.z"}
    assert find_cycles(edges) == [["fcnkit.a.x", "fcnkit.a.y", "fcnkit.a.z"]]


def test_checker_sees_a_package_that_imports_a_module_importing_it_back(tmp_path):
    edges = _tree(tmp_path, {
        "fcnkit/__init__.py": "",
        "fcnkit/d/__init__.py": "from fcnkit.d.s import Scenes\nPALETTE = 1\n",
        "fcnkit/d/s.py": "from fcnkit.d import PALETTE\n",
    })
    assert find_cycles(edges) == [["fcnkit.d", "fcnkit.d.s"]]


def test_checker_passes_a_tree_without_cycles_and_flags_an_upward_import(tmp_path):
    edges = _tree(tmp_path, {
        "fcnkit/__init__.py": "",
        "fcnkit/errors.py": "",
        "fcnkit/io/__init__.py": "from fcnkit.errors import *\nfrom ..cli import main\n",
        "fcnkit/cli/__init__.py": "from fcnkit import errors\n",
    })
    assert find_cycles(edges) == []
    assert layer_violations(edges) == ["fcnkit.io -> fcnkit.cli"]


@pytest.mark.parametrize("level, current, is_package, expected", [
    (1, "fcnkit.io.images", False, "fcnkit.io.pixels"),
    (2, "fcnkit.io.images", False, "fcnkit.pixels"),
    (1, "fcnkit.io", True, "fcnkit.io.pixels"),
])
def test_relative_imports_resolve(level, current, is_package, expected):
    assert _resolve("pixels", level, current, is_package) == expected


# --- the picture of the module map in docs/design.md -----------------------------------------------------------------

def package_edges(edges: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Package-level arrows with every arrow that a longer path implies left out (the transitive reduction)."""
    direct = {(_package(s), _package(t)) for s, ts in edges.items() for t in ts
              if t != "fcnkit" and _package(s) != _package(t)}
    succ: dict[str, set[str]] = {}
    for a, b in direct:
        succ.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(succ.get(start, ()))
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(succ.get(node, ()))
        return seen

    return {(a, b) for a, b in direct if not any(b in reach(c) for c in succ[a] if c != b)}


def module_map_svg(edges: dict[str, set[str]]) -> str:
    """The layers as rows (the top layer on top), each package a box, each remaining arrow a line."""
    width, row, box_w, box_h = 980, 64, 120, 26
    rows = [sorted(members) for members in reversed(LAYERS)]
    where = {}
    for r, members in enumerate(rows):
        for i, name in enumerate(members):
            zigzag = (-1) ** r * 90 if len(members) == 1 else 0  # lone boxes alternate, so no arrow hides behind one
            where[name] = ((i + 1) * width / (len(members) + 1) + zigzag, 30 + r * row)
    label = {"__init__": "fcnkit (facade)", "__main__": "__main__"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{30 + len(rows) * row}" '
             f'font-family="sans-serif" font-size="13">',
             '<defs><marker id="a" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
             'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#5b6b82"/></marker></defs>',
             '<rect width="100%" height="100%" fill="white"/>']
    for a, b in sorted(package_edges(edges)):
        (x1, y1), (x2, y2) = where[a], where[b]
        parts.append(f'<line x1="{x1:.0f}" y1="{y1 + box_h / 2:.0f}" x2="{x2:.0f}" y2="{y2 - box_h / 2:.0f}" '
                     f'stroke="#5b6b82" stroke-opacity="0.6" marker-end="url(#a)"/>')
    for name, (x, y) in sorted(where.items()):
        folder = (SRC / "fcnkit" / name).is_dir()
        text = label.get(name, name + ("/" if folder else ".py"))
        parts.append(f'<rect x="{x - box_w / 2:.0f}" y="{y - box_h / 2:.0f}" width="{box_w}" height="{box_h}" '
                     f'rx="5" fill="{"#dce6f4" if folder else "#f4efe2"}" stroke="#44546a"/>'
                     f'<text x="{x:.0f}" y="{y + 4:.0f}" text-anchor="middle">{text}</text>')
    parts.append("</svg>\n")
    return "\n".join(parts)


def test_the_module_map_draws_every_package_and_only_the_arrows_no_path_implies():
    from xml.etree import ElementTree

    edges = {"fcnkit.cli": {"fcnkit.io.images", "fcnkit.errors"}, "fcnkit.io.images": {"fcnkit.errors"},
             "fcnkit.errors": set()}
    assert package_edges(edges) == {("cli", "io"), ("io", "errors")}  # cli -> errors goes through io
    svg = ElementTree.fromstring(module_map_svg(graph()))
    boxes = [e for e in svg.iter() if e.tag.endswith("rect") and e.get("rx")]
    lines = [e for e in svg.iter() if e.tag.endswith("line")]
    assert len(boxes) == sum(len(members) for members in LAYERS)
    assert len(lines) == len(package_edges(graph())) > 0


if __name__ == "__main__":  # python tests/test_architecture.py docs/images/modules.svg
    import sys

    Path(sys.argv[1]).write_text(module_map_svg(graph()))
