"""Render a report, given as a list of blocks, to Markdown and to self-contained HTML.

The report's content is assembled once (`analysis.report`) and rendered twice, so the two
formats cannot drift apart. Cells and texts are plain strings; escaping happens here.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class KeyValues:
    pairs: list[tuple[str, str]]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    right: set[int] = field(default_factory=set)  # indexes of right-aligned (numeric) columns


@dataclass(frozen=True)
class Image:
    src: str  # relative to the report file
    alt: str


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Para | KeyValues | Table | Image | Code


def _md_cell(text: str) -> str:
    # A '|' would end the cell and a newline the row.
    return " ".join(str(text).split("\n")).replace("|", "\\|")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None
) -> str:
    """A GitHub-flavoured Markdown table, columns padded so the source reads as a table too."""
    right = right or set()
    cells = [[_md_cell(c) for c in header]] + [[_md_cell(c) for c in row] for row in rows]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + ":" if i in right else "-" * w for i, w in enumerate(widths)]
    return "\n".join([line(cells[0]), "| " + " | ".join(rule) + " |", *map(line, cells[1:])])


def to_markdown(blocks: Sequence[Block]) -> str:
    """Markdown text of `blocks`."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            parts.append(f"**{b.text}**" if b.strong else b.text)
        elif isinstance(b, KeyValues):
            parts.append("\n".join(f"- **{k}**: {_md_cell(v)}" for k, v in b.pairs))
        elif isinstance(b, Table):
            parts.append(markdown_table(b.header, b.rows, b.right))
        elif isinstance(b, Image):
            parts.append(f"![{b.alt}]({b.src})")
        elif isinstance(b, Code):
            fence = "````" if "```" in b.text else "```"
            parts.append(f"{fence}text\n{b.text}\n{fence}")
    return "\n\n".join(parts) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { text-align: right; }
p.strong { border-left: 4px solid #2a7; padding-left: 0.6em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #eee; }
.scroll { overflow-x: auto; }
"""


def _html_table(b: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
    rows = []
    for row in b.rows:
        tds = "".join(
            f'<td class="num">{html.escape(c)}</td>'
            if i in b.right
            else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        rows.append(f"<tr>{tds}</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>\n' + "\n".join(rows) + "</table></div>"


def to_html(blocks: Sequence[Block], title: str) -> str:
    """A self-contained HTML page of `blocks` (inline CSS, no scripts; images by relative path)."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            text = html.escape(b.text)
            parts.append(
                f'<p class="strong"><strong>{text}</strong></p>' if b.strong else f"<p>{text}</p>"
            )
        elif isinstance(b, KeyValues):
            rows = "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in b.pairs
            )
            parts.append(f'<table class="kv">{rows}</table>')
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Image):
            parts.append(f'<p><img src="{html.escape(b.src)}" alt="{html.escape(b.alt)}"></p>')
        elif isinstance(b, Code):
            parts.append(f"<pre>{html.escape(b.text)}</pre>")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
