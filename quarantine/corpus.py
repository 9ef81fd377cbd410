"""The messages a trainer may learn from one folder: which files of new/ and
cur/ qualify (regular, not trashed, old enough, not too big; no symlink
followed), and what identifies a file's content and its Message-IDs.
"""

from __future__ import annotations

import hashlib
import os
import stat

from quarantine import learners, proof
from quarantine import maildir as md
from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from quarantine.discovery import Folder
    from quarantine.trainreport import Summary

HEADER_LIMIT = 256 * 1024  # read at most this much looking for Message-ID


class Mail:
    """One message file chosen for learning: `digest` of its bytes, the
    Message-IDs it carries (`ids`), and `key`, what makes two files one
    message in this run (the class, the digest, and with per-user stores
    the user)."""

    __slots__ = ("copies", "digest", "folder", "ids", "key", "name", "path", "size", "sub")

    def __init__(self, folder: Folder, sub: str, name: str, size: int) -> None:
        self.folder = folder
        self.sub = sub
        self.name = name
        self.path = os.path.join(folder.path, sub, name)
        self.size = md._size_from_name(name) or size  # what maildirsize counted
        self.key = b""
        self.digest = b""
        self.ids: frozenset[bytes] = frozenset()
        self.copies: list[Mail] = []


def is_trashed(name: str) -> bool:
    """Has the file the Maildir flag T (IMAP's \\Deleted)?"""
    info = name.partition(":")[2]
    return info.startswith("2,") and "T" in info[2:]


def scan_folder(folder: Folder, cutoff: float, max_size: int, summary: Summary) -> Iterator[Mail]:
    """The messages of `folder` to learn: regular files in new/ and cur/ not
    named with a dot, not trashed, not too big, and (spam) older than cutoff.
    The directory is read as it goes (a folder may hold a million files)."""
    for sub in ("new", "cur"):
        directory = os.path.join(folder.path, sub)
        try:
            mode = os.lstat(directory).st_mode
            if stat.S_ISLNK(mode):  # the user's doing, not followed
                summary.skip("symlinked folder")
                summary.notes.append(f"{folder.label}/{sub}: a symlink, not followed")
                continue
            if not stat.S_ISDIR(mode):
                raise NotADirectoryError(20, "not a directory")
            entries = os.scandir(directory)
        except FileNotFoundError:
            continue
        except OSError as exc:
            summary.errors.append(f"{folder.label}/{sub}: cannot list: {exc.strerror}")
            summary.fail_folder(folder.label)
            continue
        with entries:
            for entry in entries:
                mail = _select(folder, sub, entry, cutoff, max_size, summary)
                if mail is not None:
                    yield mail


def _select(
    folder: Folder,
    sub: str,
    entry: os.DirEntry[str],
    cutoff: float,
    max_size: int,
    summary: Summary,
) -> Mail | None:
    name = entry.name
    if name.startswith("."):
        summary.skip("dot file")
        return None
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        summary.skip("vanished")
        return None
    except OSError as exc:
        summary.errors.append(f"{folder.label}/{sub}/{show(name)}: {exc.strerror}")
        summary.fail_folder(folder.label)
        return None
    if stat.S_ISLNK(st.st_mode):
        summary.skip("symlink")
    elif not stat.S_ISREG(st.st_mode):
        summary.skip("not a regular file")
    elif is_trashed(name):
        summary.skip("trashed")
    elif folder.kind == learners.SPAM and st.st_mtime > cutoff:
        summary.skip("young")
    elif max_size and st.st_size > max_size:
        summary.skip("too big")
    else:
        return Mail(folder, sub, name, st.st_size)
    return None


def read_message(path: str) -> tuple[bytes, list[bytes]]:
    """A file's identities: the digest of all its bytes (what "the same
    content" means), and its Message-ID keys (`message_key`'s, one per
    Message-ID header; the body's digest when it has none). Read without
    following a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(21, "not a regular file")
        content = proof.content_hash()
        head = b""
        while len(head) < HEADER_LIMIT:
            chunk = handle.read(65536)
            if not chunk:
                break
            head += chunk
            if b"\n\n" in head or b"\r\n\r\n" in head:
                break
        content.update(head)
        header, body = _split_header(head)
        body_digest = hashlib.blake2b(b"body:", digest_size=16)
        body_digest.update(body)
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            content.update(chunk)
            body_digest.update(chunk)
    ids = [hashlib.blake2b(b"id:" + i, digest_size=16).digest() for i in _message_ids(header)]
    return content.digest(), ids or [body_digest.digest()]


def message_key(path: str) -> bytes:
    """What names a message across copies that need not be byte-identical:
    its (first) Message-ID, or, when there is none, a digest of the body."""
    return read_message(path)[1][0]


def _split_header(data: bytes) -> tuple[bytes, bytes]:
    ends = [(i, n) for i, n in ((data.find(b"\n\n"), 2), (data.find(b"\r\n\r\n"), 4)) if i >= 0]
    if not ends:
        return data, b""
    index, width = min(ends)
    return data[:index], data[index + width :]


def _message_ids(header: bytes) -> list[bytes]:
    """The value of every Message-ID header (unfolded, without <>), in order:
    SpamAssassin reads the last one, a mail reader often the first."""
    found: list[bytes] = []
    value = None
    for line in [*header.split(b"\n"), b""]:
        if value is not None and line[:1] in (b" ", b"\t"):
            value += line.strip()
            continue
        if value is not None:
            value = value.strip().strip(b"<>").strip()
            if value and value not in found:
                found.append(value)
            value = None
        if line[:11].lower() == b"message-id:":
            value = line[11:].strip()
    return found
