"""Code panes: a function's source highlighted by Pygments, line by line, with its source line
numbers, names of other walkthrough functions linked to their rows, the lines where the twin
departs from the spec marked, and `# JAX:` comments lifted out of the code into numbered notes.

Departures are found by comparing the two bodies line by line (difflib) after normalising what
is the same on purpose: comments, the docstring, the decorator (`checked` / `checked_jit`),
`np.` against `jnp.`, and spacing.
"""
from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass
from typing import Callable

from pygments.lexers import PythonLexer
from pygments.token import STANDARD_TYPES, Comment, Name, String

from .source import JAX_NOTE, Function

Resolver = Callable[[str], "str | None"]      # a name in the code -> href of its row, or None

_LEXER = PythonLexer(stripnl=False, ensurenl=False)


@dataclass
class Line:
    number: int                  # source line number
    tokens: list                 # (token type, text) of the line, JAX note removed
    note: str | None = None      # the `# JAX:` note of this line
    departs: bool = False        # differs from the other half (after normalising)


def _shown_lines(fn: Function) -> list[tuple[int, str, str | None]]:
    """(line number, text, JAX note) of the lines shown: the docstring is left out (it is the
    prose beside the code), and a `# JAX:` comment is cut out of its line."""
    out = []
    skip = range(fn.docstring_lines[0], fn.docstring_lines[1] + 1) if fn.docstring_lines else range(0)
    for i, text in enumerate(fn.lines):
        number = fn.first_line + i
        if number in skip:
            continue
        note = None
        m = JAX_NOTE.search(text)
        if m:
            note = m.group("note").strip()
            hash_at = text.rfind("#", 0, m.start("note"))
            kept = text[:hash_at].rstrip()
            comment = text[hash_at:m.start("note")].replace("JAX:", "").strip(" #")
            text = f"{kept}  # {comment}" if comment else kept
        out.append((number, text, note))
    return out


def lines_of(fn: Function) -> list[Line]:
    shown = _shown_lines(fn)
    source = "\n".join(t for _, t, _ in shown)
    rows: list[list] = [[]]
    for ttype, value in _LEXER.get_tokens(source):
        parts = value.split("\n")
        for k, part in enumerate(parts):
            if k:
                rows.append([])
            if part:
                rows[-1].append((ttype, part))
    rows += [[] for _ in range(len(shown) - len(rows))]
    return [Line(number, rows[i], note) for i, (number, _, note) in enumerate(shown)]


def _normalised(line: Line) -> str | None:
    """What must match between the halves, or None for a line that takes no part (blank,
    comment only, decorator)."""
    text = "".join(v for t, v in line.tokens if t not in Comment)
    text = re.sub(r"\bjnp\.", "np.", text)
    text = " ".join(text.split())
    if not text or text.startswith("@"):
        return None
    return text


def mark_departures(spec: list[Line], twin: list[Line]) -> None:
    """Set `departs` on the lines of each half that have no counterpart in the other."""
    a = [(i, n) for i, line in enumerate(spec) if (n := _normalised(line)) is not None]
    b = [(i, n) for i, line in enumerate(twin) if (n := _normalised(line)) is not None]
    matcher = difflib.SequenceMatcher(None, [n for _, n in a], [n for _, n in b], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        for i in range(i1, i2):
            spec[a[i][0]].departs = True
        for j in range(j1, j2):
            twin[b[j][0]].departs = True


def _token_html(ttype, value: str, resolve: Resolver, after_dot: bool = False) -> str:
    cls = STANDARD_TYPES.get(ttype)
    while cls is None and ttype.parent is not None:
        ttype = ttype.parent
        cls = STANDARD_TYPES.get(ttype)
    text = html.escape(value, quote=False)
    if ttype in Name and ttype not in Name.Function and ttype not in Name.Decorator and not after_dot:
        href = resolve(value)
        if href:
            return f'<a class="{cls} ref" href="{html.escape(href)}">{text}</a>'
    if ttype in String.Doc:
        cls = "sd"
    return f'<span class="{cls}">{text}</span>' if cls else text


def pane(lines: list[Line], resolve: Resolver, id_prefix: str | None, note_ids: dict[int, str] | None = None,
         departures: bool = True) -> str:
    """A <pre> of the lines: each a row with its line number, the departure mark, and a link to
    its JAX note. `id_prefix`: give each line the id prefix + number (None: no ids, for code shown
    twice on a page)."""
    out = []
    for line in lines:
        classes = "ln departs" if (departures and line.departs) else "ln"
        ident = f' id="{id_prefix}{line.number}"' if id_prefix else ""
        code = "".join(_token_html(t, v, resolve, k > 0 and line.tokens[k - 1][1] == ".")   # x.name is an attribute
                       for k, (t, v) in enumerate(line.tokens)) or " "
        mark = ""
        if line.note is not None and note_ids and line.number in note_ids:
            mark = f'<a class="note-mark" href="#{note_ids[line.number]}">JAX</a>'
        out.append(f'<span class="{classes}"{ident}><span class="no">{line.number}</span>'
                   f'<span class="src">{code}</span>{mark}</span>')
    return '<pre class="code">' + "".join(out) + "</pre>"


def lines_of_source(text: str) -> list[Line]:
    """Every line of a whole file, highlighted, numbered from 1 (the tests' source pages)."""
    rows: list[list] = [[]]
    for ttype, value in _LEXER.get_tokens(text):
        for k, part in enumerate(value.split("\n")):
            if k:
                rows.append([])
            if part:
                rows[-1].append((ttype, part))
    count = len(text.splitlines())
    return [Line(i + 1, rows[i] if i < len(rows) else []) for i in range(count)]
