"""Small, fast readers of text files under ``/proc`` and ``/sys`` (one ``os.read`` each).

The probes call these on every sample, so they avoid ``open()``'s buffered layers.
"""

from __future__ import annotations

import os

__all__ = ["find_key", "read_int", "read_keyed", "read_text"]


def read_text(path: str, limit: int = 65536) -> str:
    """Returns the file's text; raises ``OSError`` when it cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, limit).decode("ascii", "replace")
    finally:
        os.close(fd)


def read_int(path: str) -> int | None:
    """Reads a file that holds one integer; ``None`` for ``max`` (no limit)."""
    text = read_text(path, 64).strip()
    if text == "max":
        return None
    return int(text)


def read_keyed(path: str) -> dict[str, int]:
    """Reads ``key value`` lines (``memory.stat``, ``memory.events``) into a dict."""
    values: dict[str, int] = {}
    for line in read_text(path).splitlines():
        key, _, value = line.partition(" ")
        if value:
            try:
                values[key] = int(value)
            except ValueError:
                continue
    return values


def find_key(text: str, key: str) -> int | None:
    """The integer after ``key`` at the start of a line of ``text``, or ``None``.

    Faster than parsing every line when one field of a long file is needed.
    """
    start = 0 if text.startswith(key + " ") else text.find("\n" + key + " ") + 1
    if start == 0 and not text.startswith(key + " "):
        return None
    end = text.find("\n", start)
    return int(text[start + len(key) + 1 : end if end >= 0 else None])
