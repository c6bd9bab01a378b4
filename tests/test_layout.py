"""The package's layout, as the package docstring draws it: every import points down the layers,
no module is a tangle, and no product file points outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_diffusion"
# Lowest first: a module may import from its own part and from the parts before it, never after.
LAYERS = [
    "errors",
    "io",
    "seeds",
    "config",
    "allocator",
    "runtime",
    "diffusion",
    "nets",
    "data",
    "pictures",
    "runs",
    "training",
    "sampling",
    "evaluation",
    "monitors",
    "report",
    "studio",
    "cli",
]


def part_of(module: str) -> str:
    """ "mnist_diffusion.runs.store" -> "runs"; the package itself -> ""."""
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


# A module a reader takes in one sitting; the training loop on one screen.
MODULE_LINES, CLASS_LINES, LOOP_LINES = 400, 300, 50


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_classes_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MODULE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            lines = node.end_lineno - node.lineno + 1
            assert lines <= CLASS_LINES, f"class {node.name} has {lines} lines"


def test_the_training_loop_fits_one_screen():
    tree = ast.parse((PACKAGE / "training" / "trainer.py").read_text())
    (run,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "run"]
    assert run.end_lineno - run.lineno + 1 <= LOOP_LINES


PRIVATE_PATCH = re.compile(
    r"""(setattr|patch\.object)\((?!torch)[^,]+,\s*["']_\w"""  # (module, "_name"): torch's own private names aside
    r"""|(setattr|patch)\(\s*["']mnist_diffusion[\w.]*\._\w"""  # ("mnist_diffusion.module._name")
)


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_no_test_or_benchmark_patches_a_private_name(folder):
    """Tests and benchmarks go through public seams: a rename inside a module must not break them."""
    assert PRIVATE_PATCH.search('mock.patch.object(unet, "_norm", norm)')
    assert PRIVATE_PATCH.search("monkeypatch.setattr('mnist_diffusion.training.trainer._replan', f)")
    assert not PRIVATE_PATCH.search('monkeypatch.setattr(torch, "_dynamo", d)')
    for path in sorted((PACKAGE.parent / folder).glob("*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue  # this file: the examples above
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not PRIVATE_PATCH.search(line), f"{path.name}:{number} patches a private name: {line.strip()}"
