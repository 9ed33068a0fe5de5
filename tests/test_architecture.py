"""The package's shape: no module reaches into another package's private modules.

Each subpackage (``planner.step``, ``planner.estimator``, ...) keeps its implementation in private
``_name`` modules and re-exports what others may use from its ``__init__``. A private module may
be imported from inside its own package only, so a package can be rearranged without breaking
the others (and the Trainer-step layer stays the one place the step is built).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "planner"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every module name ``tree`` imports, anywhere in it (functions included), resolved."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names.append(base)
            # ``from planner.x import _y`` imports the private module ``planner.x._y`` too.
            names += [f"{base}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
    return [name for name in names if name == "planner" or name.startswith("planner.")]


def _private_owner(name: str) -> str | None:
    """The package that owns the first private part of ``name`` (None when no part is private)."""
    parts = name.split(".")
    for index, part in enumerate(parts[1:], 1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def private_cross_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        for name in _imported(tree, module, path.name == "__init__.py"):
            owner = _private_owner(name)
            if owner is not None and not (module == owner or module.startswith(owner + ".")):
                found.append(f"{module} imports {name}")
    return found


def test_no_module_imports_another_packages_private_modules() -> None:
    assert private_cross_imports() == []


def test_the_check_sees_a_private_cross_import(tmp_path: Path) -> None:
    tree = ast.parse(
        "def f():\n    from planner.estimator._fit import fit\n    from planner.step import _trace\n"
    )
    names = _imported(tree, "planner.executor._recipe", False)
    owners = [_private_owner(name) for name in names]
    assert owners == ["planner.estimator", None, "planner.step"]
