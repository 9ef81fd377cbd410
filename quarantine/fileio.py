"""Two file primitives every command shares: read a descriptor to its end,
and fsync a directory so a rename or link in it survives a crash. Only `os`
is imported, so the mail path can use them for free.
"""

from __future__ import annotations

import os


def read_fd(fd: int, chunk: int = 1 << 16) -> bytes:
    """Everything left on `fd`, read in `chunk`-sized pieces."""
    chunks: list[bytes] = []
    while True:
        data = os.read(fd, chunk)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def fsync_dir(path: str) -> None:
    """Make the directory's entries (a new link, a rename) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
