"""The documents a user reads: the README's Python example runs as written, and every relative link
in README.md and docs/*.md leads to a file (and heading) that exists; every function that
docs/HOW_IT_WORKS.md links to is defined in the file it links to."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
HOW_IT_WORKS = ROOT / "docs" / "HOW_IT_WORKS.md"
README_LIMIT = 15_000  # bytes: the README is a first reading, measurements live in docs/RESULTS.md

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]+)\)")
SHAPE_COMMENT = re.compile(r"^(\w+) = .*#\s*\(([\d, ]+)\)", re.M)
IDENTIFIER = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def prose(path: Path) -> str:
    """The document's text without its fenced code blocks (code is not links)."""
    return FENCE.sub("", path.read_text())


def links(path: Path) -> list[tuple[str, str]]:
    """(text, target) of every markdown link and image in ``path`` outside code blocks."""
    return LINK.findall(prose(path))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose(path), re.M)}


def relative_links() -> list[tuple[Path, str, str]]:
    return [(doc, text, target) for doc in DOCUMENTS for text, target in links(doc) if not re.match(r"[a-z]+:", target)]


def test_documents_are_found():
    names = {p.name for p in DOCUMENTS}
    assert {"README.md", "RESULTS.md", "HOW_IT_WORKS.md"} <= names
    assert len(relative_links()) > 30  # the link pattern finds the documents' links


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings(doc):
    broken = []
    for text, target in links(doc):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"[{text}]({target}): no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"[{text}]({target}): no heading #{anchor} in {dest.name}")
    assert not broken, "\n".join(broken)


def test_how_it_works_cites_functions_that_exist():
    cited = [
        (text.strip("`").removesuffix("()"), target)
        for text, target in links(HOW_IT_WORKS)
        if target.partition("#")[0].endswith(".py")
    ]
    assert len(cited) >= 15, cited  # the page links the code section by section
    wrong = []
    for name, target in cited:
        path = (HOW_IT_WORKS.parent / target.partition("#")[0]).resolve()
        if name == path.name:  # a link to the file itself
            continue
        if not IDENTIFIER.fullmatch(name):
            wrong.append(f"[{name}]({target}): a link to code names a function, a class or the file")
            continue
        source = path.read_text() if path.is_file() else ""
        for part in name.split("."):  # Schedule.q_sample: the class and its method
            if not re.search(rf"^\s*(async\s+)?(def|class)\s+{re.escape(part)}\b", source, re.M):
                wrong.append(f"[{name}]({target}): no def or class {part} in {path}")
    assert not wrong, "\n".join(wrong)


def test_readme_fits_its_limit():
    assert len((ROOT / "README.md").read_bytes()) < README_LIMIT


def readme_python() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


def test_readme_python_example_runs_as_written(tiny_run, tmp_path, monkeypatch):
    """The example, unchanged, in a folder whose ./artifacts holds a trained run; each variable
    whose line ends in a shape comment has that shape."""
    artifacts, _ = tiny_run
    shutil.copytree(artifacts, tmp_path / "artifacts")
    monkeypatch.chdir(tmp_path)
    code = readme_python()
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    shapes = SHAPE_COMMENT.findall(code)
    assert len(shapes) >= 5, shapes
    for name, shape in shapes:
        expected = tuple(int(n) for n in shape.split(","))
        assert tuple(namespace[name].shape) == expected, (name, tuple(namespace[name].shape))
    digits, filled = namespace["digits"], namespace["filled"]
    assert 0.0 <= float(digits.min()) and float(digits.max()) <= 1.0
    known = ~namespace["missing"]
    assert torch.allclose(filled[:, 0, 0][:, known], digits[:4, 0][:, known], atol=1e-6)  # what is known is kept
