"""The package's layout, as the package docstring draws it: every import points down the layers,
no module is a tangle, and no product file points outside the repository."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_diffusion"
# Lowest first: a module may import from its own part and from the parts before it, never after.
LAYERS = ["errors", "io", "seeds", "config", "allocator", "runtime", "diffusion", "nets", "data", "pictures", "runs",
          "training", "sampling", "evaluation", "monitors", "report", "cli"]  # fmt: skip


def part_of(module: str) -> str:
    """"mnist_diffusion.runs.store" -> "runs"; the package itself -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_modules(path: Path) -> list[str]:
    """The package modules ``path`` imports, as absolute dotted names (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                found += [target] if node.module else [_module_or_package(base, a.name) for a in node.names]
            elif node.module and node.module.startswith("mnist_diffusion"):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("mnist_diffusion")]
    return [m.removesuffix(".__init__") for m in found]


def _module_or_package(package: str, name: str) -> str:
    """``from package import name``: the submodule ``name`` if there is one, else the package."""
    folder = PACKAGE.parent.joinpath(*package.split("."))
    return f"{package}.{name}" if (folder / f"{name}.py").is_file() or (folder / name).is_dir() else package


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_part_is_in_the_layers():
    parts = {part_of(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in MODULES}
    assert parts - {"", "__main__", "__init__"} == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_point_down(path):
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    own = part_of(module)
    if own in ("__main__", "__init__", ""):
        return
    for target in imported_modules(path):
        other = part_of(target)
        if other in ("", own):  # the package root (its version) and the module's own part
            continue
        assert LAYERS.index(other) < LAYERS.index(own), f"{module} imports {target}: up the layers"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_product_file_points_outside_the_repository(path):
    assert "shared/" not in path.read_text()
