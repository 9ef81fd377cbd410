"""Two file primitives every command shares: read a descriptor to its end,
and fsync a directory so a rename or link in it survives a crash. Only the
posix calls are imported (fastos), so the mail path can use them for free.
"""

from quarantine import fastos as os

BLOCK = 1 << 20  # over the C library's mmap threshold: returned whole when freed


def read_fd(fd: int) -> bytes:
    """Everything left on `fd`. Read into blocks of BLOCK bytes, which the C
    library maps and unmaps whole, then joined: the peak is twice the data
    for a moment and nothing of the blocks stays behind in the heap (64 KB
    pieces did, and left a large message's memory at four times its size)."""
    blocks: list[bytearray] = []
    filled = BLOCK
    while True:
        if filled == BLOCK:
            blocks.append(bytearray(BLOCK))
            filled = 0
        with memoryview(blocks[-1]) as view:
            count = os.readv(fd, [view[filled:]])
        if not count:
            break
        filled += count
    del blocks[-1][filled:]
    data = b"".join(blocks)
    blocks.clear()
    return data


def fsync_dir(path: str) -> None:
    """Make the directory's entries (a new link, a rename) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
