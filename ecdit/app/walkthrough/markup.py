"""Prose to HTML: docstrings, and the small part of Markdown the docs use (headings, paragraphs,
lists, block quotes, tables, code blocks, `code`, **bold**, *italic*, [links](...)).

Everything is escaped first; a code span that names a function of the walkthrough becomes a link
to its row (the caller's `link` decides), and a Markdown link becomes a link only when `link`
maps its target into the pages (other targets, such as docs/*.md files that are not part of the
pages, keep their text and lose the link, so no link of a page points nowhere).
"""
from __future__ import annotations

import html
import re
from typing import Callable

Linker = Callable[[str], "str | None"]       # code-span text or link target -> href, or None

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _no_link(_: str) -> None:
    return None


def inline(text: str, link: Linker = _no_link) -> str:
    """One run of prose: escape, then code spans (linked where `link` knows them), links, emphasis."""
    out, last = [], 0
    for m in _CODE.finditer(text):
        out.append(_emphasis(text[last:m.start()], link))
        code = m.group(1)
        href = link(code)
        span = f"<code>{html.escape(code)}</code>"
        out.append(f'<a href="{html.escape(href)}">{span}</a>' if href else span)
        last = m.end()
    out.append(_emphasis(text[last:], link))
    return "".join(out)


def _emphasis(text: str, link: Linker) -> str:
    pieces, last = [], 0
    for m in _LINK.finditer(text):
        pieces.append(_bold_italic(html.escape(text[last:m.start()], quote=False)))
        label = _bold_italic(html.escape(m.group(1), quote=False))
        href = link(m.group(2))
        pieces.append(f'<a href="{html.escape(href)}">{label}</a>' if href else label)
        last = m.end()
    pieces.append(_bold_italic(html.escape(text[last:], quote=False)))
    return "".join(pieces)


def _bold_italic(escaped: str) -> str:
    escaped = _BOLD.sub(r"<strong>\1</strong>", escaped)
    return _ITALIC.sub(r"<em>\1</em>", escaped)


def docstring(text: str, link: Linker = _no_link) -> str:
    """A docstring as HTML: paragraphs, and every indented block (a formula, a code sketch) as it
    stands in the editor, in a <pre>."""
    blocks, para, pre = [], [], []

    def flush_para():
        if para:
            blocks.append(f"<p>{inline(' '.join(s.strip() for s in para), link)}</p>")
            para.clear()

    def flush_pre():
        if pre:
            while pre and not pre[-1].strip():
                pre.pop()
            indent = min(len(s) - len(s.lstrip()) for s in pre if s.strip())
            body = "\n".join(s[indent:] for s in pre)
            blocks.append(f'<pre class="formula">{html.escape(body)}</pre>')
            pre.clear()

    for line in text.splitlines():
        indented = line.startswith("    ") and line.strip()
        if indented or (pre and not line.strip()):
            flush_para()
            pre.append(line)
        elif not line.strip():
            flush_pre()
            flush_para()
        else:
            flush_pre()
            if para and re.match(r"\s*[-*] ", line):         # a list item starts a new line of prose
                flush_para()
            para.append(line)
    flush_pre()
    flush_para()
    return "\n".join(blocks)


def slug(heading: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def markdown(text: str, link: Linker = _no_link, heading_offset: int = 0, id_prefix: str = "") -> str:
    """The Markdown of the docs as HTML. Headings get GitHub's anchors (with `id_prefix`), moved
    down by `heading_offset` levels."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(f"<pre>{html.escape(chr(10).join(lines[i + 1:j]))}</pre>")
            i = j + 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            title = line[level:].strip()
            n = min(6, level + heading_offset)
            out.append(f'<h{n} id="{id_prefix}{slug(title)}">{inline(title, link)}</h{n}>')
            i += 1
        elif line.startswith("    "):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            body = [s[4:] for s in lines[i:j]]
            while body and not body[-1].strip():
                body.pop()
            out.append(f'<pre class="formula">{html.escape(chr(10).join(body))}</pre>')
            i = j
        elif line.startswith(">"):
            j = i
            while j < len(lines) and lines[j].startswith(">"):
                j += 1
            inner = "\n".join(s[1:].lstrip() if s.startswith("> ") or s == ">" else s[1:] for s in lines[i:j])
            out.append(f"<blockquote>{markdown(inner, link, heading_offset, id_prefix)}</blockquote>")
            i = j
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append(_table(lines[i:j], link))
            i = j
        elif re.match(r"\s*([-*]|\d+\.) ", line):
            j, items = i, []
            ordered = bool(re.match(r"\s*\d+\. ", line))
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("#", "|", "```")):
                m = re.match(r"\s*(?:[-*]|\d+\.) (.*)", lines[j])
                if m and (len(lines[j]) - len(lines[j].lstrip())) < 2:
                    items.append(m.group(1))
                elif items:
                    items[-1] += " " + lines[j].strip()
                j += 1
            tag = "ol" if ordered else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{inline(it, link)}</li>" for it in items) + f"</{tag}>")
            i = j
        else:
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("#", "|", ">", "```", "    ")) \
                    and not re.match(r"\s*([-*]|\d+\.) ", lines[j]):
                j += 1
            out.append(f"<p>{inline(' '.join(s.strip() for s in lines[i:j]), link)}</p>")
            i = j
    return "\n".join(out)


def _cells(row: str) -> list[str]:
    row = row.strip().strip("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)]


def _table(rows: list[str], link: Linker) -> str:
    head = _cells(rows[0])
    body = [_cells(r) for r in rows[2:]] if len(rows) > 1 and set(rows[1].replace("|", "").strip()) <= set("-: ") \
        else [_cells(r) for r in rows[1:]]
    parts = ["<table><thead><tr>", "".join(f"<th>{inline(c, link)}</th>" for c in head), "</tr></thead><tbody>"]
    for r in body:
        parts.append("<tr>" + "".join(f"<td>{inline(c, link)}</td>" for c in r) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)
