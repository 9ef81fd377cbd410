"""Re-exports kept honest: a name a module imports only to hand on (in its
`__all__`, never used in its own code) must be imported through that module
somewhere in the project; otherwise the import is dead weight on every
program that loads the module."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

TOP = Path(__file__).parent.parent
PLACES = ("quarantine", "tests", "bench", "bin")
MODULES = ("quarantine.config", "quarantine.dotqmail")


@functools.cache
def _trees() -> dict[Path, ast.Module]:
    out = {}
    for place in PLACES:
        for path in sorted((TOP / place).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                out[path] = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # not Python (shell scripts, data)
    return out


def handed_on_only(module: ast.Module) -> set[str]:
    """Names imported by `module` that its own code never uses: only listed
    in `__all__`."""
    imported = {
        alias.asname or alias.name
        for node in module.body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    }
    used = {node.id for node in ast.walk(module) if isinstance(node, ast.Name)}
    return imported - used


def used_through(name: str, trees: dict[Path, ast.Module], here: Path) -> set[str]:
    """The names other files take from module `name` (from-imports, and
    attributes of the module imported under any alias)."""
    parent, _, leaf = name.rpartition(".")
    out: set[str] = set()
    for path, tree in trees.items():
        if path == here:
            continue
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == name:
                out.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module == parent:
                aliases.update(alias.asname or leaf for alias in node.names if alias.name == leaf)
            elif isinstance(node, ast.Import):
                aliases.update(a.asname or a.name for a in node.names if a.name == name)
        if not aliases:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _dotted(node.value) in aliases:
                out.add(node.attr)
    return out


def _dotted(node: ast.expr) -> str:
    """`a.b.c` for a chain of names and attributes, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


@pytest.mark.parametrize("name", MODULES)
def test_every_re_export_is_imported_through_the_module(name: str) -> None:
    trees = _trees()
    here = TOP / (name.replace(".", "/") + ".py")
    unused = handed_on_only(trees[here]) - used_through(name, trees, here)
    assert sorted(unused) == []


def test_the_check_finds_an_unused_re_export() -> None:
    module = ast.parse("from a import b, c\n__all__ = ['b', 'c']\nprint(c)\n")
    assert handed_on_only(module) == {"b"}
    user = ast.parse("from quarantine import m as mod\nmod.b\n")
    trees = {Path("/x/m.py"): module, Path("/x/user.py"): user}
    assert used_through("quarantine.m", trees, Path("/x/m.py")) == {"b"}
