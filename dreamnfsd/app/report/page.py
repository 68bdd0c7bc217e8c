"""HTML building blocks for the reports: escaping, embedded media, tables, the page skeleton and its weight.

Everything here returns :class:`Html` (markup that is inserted as is); any other value put into a table or a tag is
escaped with :func:`html.escape`, so a prompt such as ``a <b>red</b> cube`` is shown as typed, never as markup.
"""

from __future__ import annotations

import base64
import gzip
import html
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dreamnfsd.utils.files import atomic_write_bytes

REPORT_NAME = "report.html"


class Html(str):
    """A string of markup, already safe: :func:`esc` passes it through unchanged."""


def esc(value) -> Html:
    """``value`` as HTML text: markup passes through, None is empty, floats are rounded for reading."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(fmt(value)))


def fmt(value) -> str:
    """A table cell's text: floats to 4 significant digits, bools as yes/no, None (and NaN) as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def tag(name: str, body="", **attrs) -> Html:
    """``<name attrs>body</name>``; attribute names use ``_`` for ``-`` (``data_x`` -> ``data-x``), ``cls`` for
    ``class``; an attribute set to True is written bare, one set to None or False is left out."""
    parts = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = "class" if key == "cls" else key.rstrip("_").replace("_", "-")
        parts.append(key if value is True else f'{key}="{html.escape(str(value), quote=True)}"')
    return Html(f"<{' '.join(parts)}>{esc(body)}</{name}>")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image(data: bytes, mime: str, alt: str, **attrs) -> Html:
    """An ``<img>`` holding ``data`` itself (no file next to the page is read)."""
    attr = "".join(f' {k.replace("_", "-")}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items())
    return Html(f'<img src="{data_uri(data, mime)}" alt="{html.escape(alt, quote=True)}"{attr}>')


def video(data: bytes, title: str, cls: str = "video") -> Html:
    """A looping, muted ``<video>`` of an embedded mp4 (muted, so browsers let it start by itself)."""
    return Html(
        f'<figure class="{html.escape(cls, quote=True)}"><video src="{data_uri(data, "video/mp4")}" controls loop '
        f'muted autoplay playsinline title="{html.escape(title, quote=True)}"></video>'
        f"<figcaption>{esc(title)}</figcaption></figure>"
    )


def packed(data: bytes, element_id: str) -> Html:
    """``data`` gzipped and base64'd in an inert ``<script>`` block, unpacked by the page's boot script (the browser's
    DecompressionStream): plotly.js and the mesh data weigh less than half as much this way. Deterministic (no
    timestamp in the gzip header), and base64 holds no ``<``, so the block cannot end early."""
    text = base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")
    return Html(f'<script type="application/gzip;base64" id="{html.escape(element_id, quote=True)}">{text}</script>')


def key_value_table(rows: Iterable[tuple[str, object]], cls: str = "kv") -> Html:
    """A two-column table of (name, value); rows whose value is None are left out."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows if v is not None)
    return Html(f'<table class="{cls}"><tbody>{body}</tbody></table>')


def grid_table(headers: list[str], rows: Iterable[Iterable[object]], cls: str = "grid") -> Html:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return Html(f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def details(summary: str, body, open_: bool = False) -> Html:
    return Html(f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{esc(body)}</details>")


def pre(text: str) -> Html:
    return tag("pre", text)


_INLINE = [(re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"), (re.compile(r"`(.+?)`"), r"<code>\1</code>")]


def _inline_markdown(text: str) -> Html:
    """Bold and code spans of one escaped line (all the benchmark's markdown uses)."""
    out = html.escape(text)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return Html(out)


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def markdown_tables(text: str) -> Html:
    """The pipe tables, headings and paragraphs of a simple markdown file (e.g. the benchmark's ``results.md``)."""
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if len(block) >= 2:
            head = "".join(f"<th>{_inline_markdown(c)}</th>" for c in _split_row(block[0]))
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline_markdown(c)}</td>" for c in _split_row(line)) + "</tr>"
                for line in block[2:]
            )
            out.append(f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
        block.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)  # below the page's own headings
            out.append(f"<h{level}>{_inline_markdown(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline_markdown(line.strip())}</p>")
    flush()
    return Html("".join(out))


def human_bytes(n: int) -> str:
    """1234567 -> "1.2 MB" (decimal units, as file managers show sizes)."""
    size = float(n)
    for unit in ("bytes", "kB", "MB"):
        if size < 1000:
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


class Weights:
    """What the embedded parts of a page weigh (bytes as written into the page), for its footer and its builder."""

    def __init__(self) -> None:
        self.parts: dict[str, int] = {}

    def add(self, name: str, text: str) -> str:
        self.parts[name] = self.parts.get(name, 0) + len(text.encode())
        return text

    def with_rest(self, total: int) -> dict[str, int]:
        """Every part, heaviest first, plus ``text and markup``: whatever of ``total`` no part accounts for."""
        parts = dict(sorted(self.parts.items(), key=lambda kv: -kv[1]))
        parts[MARKUP] = max(total - sum(self.parts.values()), 0)
        return parts

    def footer(self, total: int) -> Html:
        listed = ", ".join(f"{name} {human_bytes(n)}" for name, n in self.with_rest(total).items())
        return Html(
            f'<footer>This page weighs {human_bytes(total)} (<span id="page-bytes">{total}</span> bytes): '
            f"{esc(listed)}. It reads no other file.</footer>"
        )


MARKUP = "text and markup"


@dataclass
class Report:
    """A written report: where it is and what it weighs, in all (bytes) and per part (``Weights.with_rest``)."""

    path: Path
    size: int
    parts: dict[str, int] = field(default_factory=dict)

    def weight_line(self) -> str:
        listed = ", ".join(f"{name} {n}" for name, n in self.parts.items())
        return f"{self.size} bytes ({listed})"


_WEIGHT_MARK = "<!--page-weight-->"

CSS = """
:root { color-scheme: light; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --line: #d0d7de; --soft: #f6f8fa; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1280px;
  padding: 16px 24px 40px; color: #1f2328; background: #fff; }
h1 { font-size: 1.6em; margin: .2em 0 .4em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid
  var(--line); padding-bottom: .2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .92em; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
thead th, table.kv th { background: var(--soft); font-weight: 600; }
pre { background: var(--soft); padding: 10px; overflow: auto; max-height: 480px; font-size: .85em; }
.banner { border-radius: 6px; padding: 10px 14px; margin: .6em 0 1em; border: 2px solid; font-size: 1.05em; }
.banner.completed { border-color: var(--ok); background: #dafbe1; }
.banner.interrupted, .banner.running, .banner.exporting { border-color: var(--warn); background: #fff8c5; }
.banner.failed, .banner.lost { border-color: var(--bad); background: #ffebe9; }
.status { font-weight: 700; text-transform: uppercase; letter-spacing: .03em; }
.status.completed { color: var(--ok); } .status.failed, .status.lost { color: var(--bad); }
.status.interrupted, .status.running, .status.exporting { color: var(--warn); }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.top { display: grid; grid-template-columns: minmax(280px, 400px) minmax(0, 1fr); gap: 24px; align-items: start; }
.top h2:first-child { margin-top: .4em; } .top table.kv { width: 100%; } .top td { overflow-wrap: anywhere; }
@media (max-width: 900px) { .top { grid-template-columns: minmax(0, 1fr); } }
#viewer { width: 100%; height: 520px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
.viewer-note { color: #59636e; font-size: .9em; }
figure { margin: 0; } figcaption { font-size: .85em; color: #59636e; }
video { max-width: 100%; background: #000; border-radius: 4px; }
.video video { width: 256px; } .video.wide video { width: 768px; }
img.pixel { image-rendering: pixelated; }
.valgrid { display: flex; flex-wrap: wrap; gap: 12px; }
.valgrid img { width: 256px; height: auto; border: 1px solid var(--line); }
img.curves { max-width: 100%; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
.card.failed, .card.lost { border-color: var(--bad); background: #fff5f5; }
.card.interrupted { border-color: var(--warn); background: #fffbe6; }
.card img { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid var(--line); float: right;
  margin-left: 8px; background: var(--soft); }
.card h3 { margin: 0 0 4px; word-break: break-word; } .card table { clear: both; width: 100%; }
.card .error { color: var(--bad); font-size: .88em; word-break: break-word; }
.strip { image-rendering: pixelated; height: 96px; width: auto; max-width: 100%; }
.nothumb { width: 128px; height: 128px; float: right; margin-left: 8px; background: var(--soft); color: #59636e;
  display: flex; align-items: center; justify-content: center; font-size: .85em; border: 1px solid var(--line); }
#viewer-picker select { font: inherit; max-width: 100%; }
button.show-mesh { font: inherit; font-size: .85em; padding: 1px 8px; cursor: pointer; }
table.bench > tbody > tr > th { white-space: nowrap; }
.methods { display: flex; flex-direction: column; gap: 6px; } .methods h4 { margin: 0 0 2px; }
table.compare { margin: 0; font-size: .85em; }
footer { margin-top: 2.5em; color: #59636e; font-size: .85em; border-top: 1px solid var(--line); padding-top: .6em; }
"""


def document(title: str, body: Html, weights: Weights, scripts: str = "") -> str:
    """The whole page; ``scripts`` go last, so everything above them is shown before any script is read."""
    text = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
        f'initial-scale=1"><title>{esc(title)}</title><style>{CSS}</style></head>\n'
        f"<body>\n{body}\n{_WEIGHT_MARK}\n{scripts}\n</body></html>\n"
    )
    # The footer states the page's own weight, footer included: iterate to the size that states itself.
    size = len(text.encode())
    for _ in range(8):
        new = len(text.replace(_WEIGHT_MARK, weights.footer(size)).encode())
        if new == size:
            break
        size = new
    return text.replace(_WEIGHT_MARK, weights.footer(size))


def write_page(folder: Path, text: str, weights: Weights) -> Report:
    """Writes ``<folder>/report.html`` atomically (a reader never sees half a page)."""
    path = Path(folder) / REPORT_NAME
    data = text.encode()
    atomic_write_bytes(data, path, what=f"nothing else was touched; rebuild it with dreamnfsd-report {folder}")
    return Report(path, len(data), weights.with_rest(len(data)))
