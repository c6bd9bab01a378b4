"""Self-contained HTML: every string escaped unless it is :class:`Safe` (built here), images as
``data:`` URIs, the styles inline, and a Content-Security-Policy that lets the page fetch nothing.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from urllib.parse import quote

from PIL import Image, UnidentifiedImageError


class Safe(str):
    """HTML made by this module from escaped parts: inserted as it is."""


def esc(value: object) -> Safe:
    """``value`` as HTML text: ``<``, ``>``, ``&`` and quotes escaped (a Safe value as it is)."""
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def href(*parts: str) -> str:
    """A relative link to the path ``parts`` (folder names, a file name), each part URL-encoded, so
    a folder named with ``#``, ``%``, ``?`` or ``/`` is still one part of the path; :func:`tag`
    escapes the attribute."""
    return "/".join(quote(part, safe="") for part in parts)


def join(parts: Iterable[object]) -> Safe:
    return Safe("".join(esc(p) for p in parts))


def tag(name: str, content: object = "", **attrs: object) -> Safe:
    """``<name attrs>content</name>``: ``class_`` is ``class``, ``data_x`` is ``data-x``; attributes
    that are None are left out; a list or tuple of contents is joined."""
    text = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    body = join(content) if isinstance(content, list | tuple) else esc(content)
    return Safe(f"<{name}{text}>{body}</{name}>")


def table(head: list[object], rows: list[list[object]], **attrs: object) -> Safe:
    """A table, wrapped to scroll sideways on a narrow screen. A row given as a ``(cells, attrs)``
    tuple gets those attributes (such as ``class_="diff"``)."""
    body = []
    for row in rows:
        cells, row_attrs = row if isinstance(row, tuple) else (row, {})
        body.append(tag("tr", [tag("td", c) for c in cells], **row_attrs))
    grid = tag("table", [tag("thead", tag("tr", [tag("th", h) for h in head])), tag("tbody", body)], **attrs)
    return tag("div", grid, class_="scroll")


def pairs(rows: list[tuple[object, object]]) -> Safe:
    """A two-column table of names and values."""
    return tag(
        "div",
        tag("table", tag("tbody", [tag("tr", [tag("th", k), tag("td", v)]) for k, v in rows]), class_="pairs"),
        class_="scroll",
    )


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of PNG ``data`` that decodes whole, or None (not a PNG, damaged)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                return None
            img.load()
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None


def image(data: bytes, alt: str, *, scale: float = 1.0, class_: str | None = None) -> Safe:
    """A PNG embedded as a ``data:`` URI, shown ``scale`` times its size (at most the page's width).
    Check the bytes with :func:`png_size` first."""
    size = png_size(data) or (None, None)
    width, height = (None if s is None else round(scale * s) for s in size)
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    attrs = {"src": uri, "alt": alt, "width": width, "height": height, "class": class_}
    return Safe("<img" + "".join(f' {k}="{esc(v)}"' for k, v in attrs.items() if v is not None) + ">")


STYLE = """
:root { color-scheme: light; --line: #d8dce3; --muted: #5b6270; --diff: #fff3c4; --bad: #b42318; --ok: #067647; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d2129; background: #fff; margin: 0 auto; max-width: 1120px; padding: 8px 20px 48px; }
h1 { font-size: 1.6em; margin: 0.6em 0 0.1em; word-break: break-all; }
h2 { font-size: 1.2em; margin: 1.8em 0 0.5em; padding-bottom: 0.2em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1em; margin: 1.2em 0 0.4em; }
p, li { max-width: 72ch; }
.muted, figcaption, caption { color: var(--muted); font-size: 0.9em; }
nav { font-size: 0.9em; margin: 0.3em 0 1em; display: flex; flex-wrap: wrap; gap: 0.1em 0.8em; }
nav a { white-space: nowrap; }
pre { background: #f5f6f8; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px;
      white-space: pre-wrap; word-break: break-all; font-size: 0.9em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.3em 0 0.8em; font-size: 0.92em; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px 4px 0; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid var(--line); white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.pairs th { font-weight: 600; white-space: nowrap; padding-right: 16px; }
tr.diff td { background: var(--diff); }
.bad { color: var(--bad); font-weight: 600; }
.good { color: var(--ok); }
.problems { border-left: 4px solid var(--bad); background: #fef3f2; padding: 6px 14px; margin: 1em 0; }
img { max-width: 100%; height: auto; image-rendering: pixelated; vertical-align: middle; }
img.chart { image-rendering: auto; }
figure { margin: 0.5em 0 1em; }
.strip { display: flex; flex-wrap: wrap; gap: 10px; }
.strip figure { margin: 0; text-align: center; }
code { font-size: 0.92em; }
@media (max-width: 600px) { body { padding: 4px 10px 32px; font-size: 14px; } th, td { padding-right: 6px; } }
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def page(title: str, body: list[Safe], *, script: str | None = None) -> str:
    """A whole HTML page; ``script`` (inline, written here) is the only code the page may run."""
    policy = CSP + ("; script-src 'unsafe-inline'" if script else "")
    head = [
        Safe('<meta charset="utf-8">'),
        Safe('<meta name="viewport" content="width=device-width, initial-scale=1">'),
        Safe(f'<meta http-equiv="Content-Security-Policy" content="{policy}">'),
        tag("title", title),
        Safe(f"<style>{STYLE}</style>"),
    ]
    tail = [Safe(f"<script>{script}</script>")] if script else []
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n{join(head)}\n</head>\n'
        f"<body>\n{join([*body, *tail])}\n</body>\n</html>\n"
    )
