"""Bounded reads of run files: a page of bytes of a text file, the last lines of a log.

Nothing here reads more than a fixed number of bytes, however large the file, so a run that
printed gigabytes cannot make the server answer with (or hold) gigabytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_BYTES = 16 * 1024 * 1024  # tail_lines searches at most this much of a file
TAIL_BLOCK = 64 * 1024


@dataclass
class Page:
    """Bytes [offset, next_offset) of a file, decoded; next_offset is None at the end."""
    text: str
    offset: int
    next_offset: int | None
    size: int


def _whole_chars(data: bytes) -> bytes:
    """`data` without a UTF-8 character cut at its end."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 == 0x80:  # a continuation byte: keep looking for the lead byte
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
        return data if need <= back else data[:-back]
    return data


def read_bytes(path: Path, offset: int | None, max_bytes: int) -> Page:
    """A page of at most `max_bytes` bytes of a text file. `offset=None` means the last page
    (starting at a line boundary when there is one), for logs; pages never split a character."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        if offset is None:
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read(max_bytes)
            if start > 0:
                nl = data.find(b"\n")
                if 0 <= nl < len(data) - 1:
                    start, data = start + nl + 1, data[nl + 1:]
        else:
            start = min(max(0, offset), size)
            f.seek(start)
            data = f.read(max_bytes)
    end = start + len(data)
    if end < size:
        data = _whole_chars(data)
        end = start + len(data)
    return Page(data.decode("utf-8", errors="replace"), start, end if end < size else None, size)


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
