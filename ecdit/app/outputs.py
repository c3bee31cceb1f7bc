"""Outputs checked before work: every command that writes a file or a folder calls `check_output`
on it before it computes anything, so that a path it cannot write is one line naming the argument
(exit status 2), not an error after minutes of training or sampling.

    --out: cannot write '/nonexistent/dir/s.png' (no such directory)

Loads nothing but the standard library (the command line calls it before it imports JAX).
"""
from __future__ import annotations

import os
import tempfile

KINDS = ("file", "folder")


class OutputError(ValueError):
    """An output path the command cannot write (a ValueError: the command line prints it as one
    line and exits 2)."""


def _probe(directory: str) -> str | None:
    """None when a new file can be made in `directory` (made and removed again), else why not."""
    try:
        fd, name = tempfile.mkstemp(prefix=".ecdit-write-check-", dir=directory)
    except OSError as e:
        return (e.strerror or type(e).__name__).lower()
    os.close(fd)
    os.remove(name)
    return None


def check_output(path, arg: str = "--out", kind: str = "file") -> str:
    """`path` as given when the command can write a `kind` ("file" or "folder") there; else
    OutputError "ARG: cannot write 'PATH' (why)".

    file: its folder must exist and take a new file (checked by making and removing one), and
    the path must not be a folder; an existing file is overwritten, so it must be writable.
    folder: an existing folder must take a new file; a missing one is made later by the command
    (with any missing parents), so its nearest existing parent must be a folder that takes one.
    Nothing is left behind: no folder is made here, and the probe file is removed."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise OutputError(f"{arg}: cannot write {path!r} (an empty path)")
    text = os.fspath(path)

    def fail(why: str):
        raise OutputError(f"{arg}: cannot write {text!r} ({why})")

    full = os.path.abspath(text)
    if kind == "file":
        if os.path.isdir(full):
            fail("it is a folder")
        parent = os.path.dirname(full)
        if not os.path.exists(parent):
            fail("no such directory")
        if not os.path.isdir(parent):
            fail(f"{os.path.dirname(text) or parent!r} is a file, not a folder")
        if os.path.exists(full) and not os.access(full, os.W_OK):
            fail("permission denied")
        why = _probe(parent)
    else:
        if os.path.exists(full) and not os.path.isdir(full):
            fail("it is a file, not a folder")
        existing = full
        while not os.path.exists(existing):                      # the nearest parent that exists
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            fail(f"{existing!r} is a file, not a folder")
        why = _probe(existing)
    if why is not None:
        fail(why)
    return text
