"""Bounded reads of run files: a page of a text file, the last lines of a log.

Nothing here reads more than a fixed number of bytes, however large the file, so a run that
printed gigabytes cannot make the server answer with (or hold) gigabytes.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_FILE_BYTES = 16 * 1024 * 1024  # a page is cut from at most this much of a file
TAIL_BLOCK = 64 * 1024


def read_page(path: Path, offset: int, max_chars: int) -> tuple[str, int, bool]:
    """Characters [offset, offset+max_chars) of a text file.

    Returns (text, total_chars, file_was_cut) where total_chars counts the characters of the
    first MAX_FILE_BYTES of the file and file_was_cut says the file is larger than that.
    """
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    cut = len(data) > MAX_FILE_BYTES
    text = data[:MAX_FILE_BYTES].decode("utf-8", errors="replace")
    return text[offset : offset + max_chars], len(text), cut


def tail_lines(path: Path, lines: int, max_line_chars: int = 2000) -> tuple[list[str], bool]:
    """The last `lines` lines of a file, each cut to `max_line_chars`.

    Reads backwards in blocks and never more than MAX_FILE_BYTES. Returns (lines, cut) where
    `cut` says a line was shortened or the search stopped at the byte limit.
    """
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        pos = end
        chunks: list[bytes] = []
        newlines = 0
        while pos > 0 and newlines <= lines and end - pos < MAX_FILE_BYTES:
            step = min(TAIL_BLOCK, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            chunks.append(block)
            newlines += block.count(b"\n")
    data = b"".join(reversed(chunks))
    cut = pos > 0 and newlines <= lines
    text = data.decode("utf-8", errors="replace")
    out = text.splitlines()
    if pos > 0 and out:
        out = out[1:]  # the first one is probably partial
    out = out[-lines:] if lines else []
    shortened = []
    for line in out:
        if len(line) > max_line_chars:
            cut = True
            line = line[:max_line_chars] + f" … [{len(line) - max_line_chars} more characters]"
        shortened.append(line)
    return shortened, cut


def read_tail_bytes(path: Path, max_bytes: int) -> tuple[bytes, bool]:
    """The last `max_bytes` of a file, starting at a line boundary when cut."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        start = max(0, size - max_bytes)
        f.seek(start)
        data = f.read(max_bytes)
    if start > 0:
        nl = data.find(b"\n")
        data = data[nl + 1 :] if nl >= 0 else b""
    return data, start > 0
