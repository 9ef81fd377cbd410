"""The ham ledger of one Maildir: what sat in its Junk folders, known by
Message-ID and a digest of the body (IMAP COPY and MOVE rename files), and
what became of it: still in Junk, left, found elsewhere, learned as ham.

It lives in the Maildir as `quarantine-hamledger` (JSON, rewritten whole:
temporary file, fsync, rename, under an flock of `quarantine-hamledger.lock`);
every file is opened through the Maildir's descriptor without following a
symlink. Bounded: MAX_ENTRIES entries, MAX_BYTES on disk, entries expire.

For `quarantine release`, which moves a message from Junk to the inbox itself:

    note_released(maildir, name)

`maildir` is the mailbox's Maildir directory, `name` the message's file name
in its inbox (`cur/` or `new/`) after the move. The next `quarantine train`
learns that file as ham, once, like a message the user moved. Raises OSError
(the file or the ledger cannot be read or written) or ValueError (a name with
a slash, or not found); the caller decides whether that matters.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import NamedTuple

from quarantine import junklog
from quarantine.flockwait import flock_within

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

FILE = "quarantine-hamledger"
LOCK = "quarantine-hamledger.lock"
VERSION = 1
MAX_ENTRIES = 20_000  # per Maildir; the oldest go first
MAX_BYTES = 16 << 20  # a larger ledger file is not read (it is started afresh)
LOCK_WAIT = 30.0  # seconds a flock (the ledger's, the Junk log's) is waited for, at most
HEADER_LIMIT = junklog.HEADER_LIMIT
KEEP = {  # seconds an entry is kept in each state, counted from its last change
    "left": 30 * 86400,  # gone from Junk, not (yet) seen elsewhere
    "found": 30 * 86400,  # seen outside Junk, to be learned
    "learned": 90 * 86400,  # learned as ham: never again while it is kept
    "done": 90 * 86400,  # learned by another way (the ham folder)
}
JUNK, LEFT, FOUND, LEARNED, DONE = "junk", "left", "found", "learned", "done"
STATES = (JUNK, LEFT, FOUND, LEARNED, DONE)
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Ident(NamedTuple):
    """What makes two files one message here: the digest of the first
    Message-ID ('' when there is none) and of the body (line ends taken as
    LF), and the body's length so counted."""

    mid: str
    body: str
    blen: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.mid, self.body)


class Head(NamedTuple):
    """A file's cheap identity: its Message-ID digest and where its body starts."""

    mid: str
    body_at: int
    size: int


def read_head(fd: int) -> Head:
    """Read at most HEADER_LIMIT bytes from the start of `fd`: the first
    Message-ID and the offset of the body (junklog.read_head)."""
    return Head(*junklog.read_head(fd))


def identify(fd: int, head: Head | None = None) -> Ident:
    """The Ident of the open regular file `fd` (its body read once, in blocks)."""
    return Ident(*junklog.identify(fd, head))


def open_file(dir_fd: int, relative: str) -> int:
    """`relative` (below the directory `dir_fd`) opened for reading, no
    component followed through a symlink; OSError when it is not a regular file."""
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a relative name: {relative!r}")
    fd = dir_fd
    opened: list[int] = []
    try:
        for part in parts[:-1]:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=fd)  # fmt: skip
            opened.append(fd)
        file_fd = os.open(parts[-1], OPEN_FILE, dir_fd=fd)
    finally:
        for each in opened:
            os.close(each)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise OSError(21, "not a regular file")
    return file_fd


def open_maildir(path: str | Path) -> int:
    """The Maildir's directory descriptor (the Maildir itself not a symlink)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


class Entry:
    """One message that sat in Junk (or was released from it): `where` is
    where it was seen last, relative to the Maildir (`.Junk/cur/NAME`)."""

    __slots__ = ("at", "blen", "body", "mid", "mtime", "origin", "state", "where")

    def __init__(
        self,
        origin: str,
        ident: Ident,
        state: str,
        where: str,
        mtime: float,
        at: float,
    ) -> None:
        self.origin = origin  # `.Junk/BASENAME`: one entry per Junk file
        self.mid, self.body, self.blen = ident
        self.state = state
        self.where = where
        self.mtime = mtime  # the Junk file's: was it due for learning as spam?
        self.at = at  # when the state last changed

    @property
    def key(self) -> tuple[str, str]:
        return (self.mid, self.body)

    def move(self, state: str, where: str | None = None, now: float | None = None) -> None:
        self.state = state
        if where is not None:
            self.where = where
        self.at = time.time() if now is None else now

    def as_list(self) -> list[object]:
        return [self.origin, self.mid, self.body, self.blen, self.state, self.where,
                self.mtime, self.at]  # fmt: skip

    @classmethod
    def from_list(cls, row: object) -> Entry | None:
        """An entry from its JSON row, or None when the row is not one."""
        if not isinstance(row, list) or len(row) != 8:
            return None
        origin, mid, body, blen, state, where, mtime, at = row
        if not (
            isinstance(origin, str)
            and isinstance(mid, str)
            and isinstance(body, str)
            and isinstance(blen, int)
            and state in STATES
            and isinstance(where, str)
            and isinstance(mtime, int | float)
            and isinstance(at, int | float)
        ):
            return None
        return cls(origin, Ident(mid, body, blen), str(state), where, float(mtime), float(at))


class HamLedger:
    """The entries of one Maildir's ledger (by origin), and the scan marks:
    `scanned` (when the last trainer scan began; 0 before the first) and
    `cutoff` (the spam age cutoff that scan used)."""

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd
        self.entries: dict[str, Entry] = {}
        self.scanned = 0.0
        self.cutoff = 0.0
        self.problem = ""  # why the file on disk was not read ('' when it was)

    def load(self) -> HamLedger:
        try:
            fd = os.open(FILE, OPEN_FILE, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return self
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
                self.problem = "not a regular file, or too large: started afresh"
                return self
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = json.loads(handle.read(MAX_BYTES + 1))
        except (ValueError, UnicodeDecodeError):
            self.problem = "unreadable: started afresh"
            return self
        finally:
            os.close(fd)
        if not isinstance(data, dict) or data.get("version") != VERSION:
            self.problem = "of another version: started afresh"
            return self
        for name in ("scanned", "cutoff"):
            value = data.get(name)
            if isinstance(value, int | float):
                setattr(self, name, float(value))
        rows = data.get("entries")
        for row in rows if isinstance(rows, list) else []:
            entry = Entry.from_list(row)
            if entry is not None:
                self.entries[entry.origin] = entry
        return self

    def prune(self, now: float) -> None:
        """Drop expired entries, then the oldest beyond MAX_ENTRIES."""
        for origin, entry in list(self.entries.items()):
            keep = KEEP.get(entry.state)
            if keep is not None and entry.at < now - keep:
                del self.entries[origin]
        if len(self.entries) > MAX_ENTRIES:
            ordered = sorted(self.entries.values(), key=lambda e: e.at)
            for entry in ordered[: len(self.entries) - MAX_ENTRIES]:
                del self.entries[entry.origin]

    def save(self) -> None:
        """Write the ledger whole: a temporary file, fsync, rename over the
        old one, fsync of the Maildir. A crash leaves the old or the new (and
        a temporary file, which the next save removes: it holds the flock)."""
        self.prune(time.time())
        data = {
            "version": VERSION,
            "scanned": self.scanned,
            "cutoff": self.cutoff,
            "entries": [e.as_list() for e in self.entries.values()],
        }
        text = json.dumps(data, separators=(",", ":")).encode()
        temp = f"{FILE}.{os.getpid()}.tmp"
        for name in os.listdir(self.dir_fd):  # a writer killed mid-write left it
            if name.startswith(f"{FILE}.") and name.endswith(".tmp"):
                try:
                    os.unlink(name, dir_fd=self.dir_fd)
                except FileNotFoundError:
                    pass
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.dir_fd,
        )
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temp, dir_fd=self.dir_fd)
            raise
        os.close(fd)
        os.rename(temp, FILE, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)

    def with_key(self, key: tuple[str, str]) -> Iterator[Entry]:
        return (e for e in self.entries.values() if e.key == key)

    def learned(self, key: tuple[str, str], now: float | None = None) -> None:
        """Every entry of this message: learned as ham (never again)."""
        for entry in list(self.with_key(key)):
            entry.move(LEARNED, now=now)


class Locked:
    """The ledger of a Maildir, loaded under its flock; `save()` inside the
    `with` block writes it. Opened without following a symlink. With
    `read_only` (a dry run) nothing is created: no lock file, and a ledger
    that is not there reads as empty. The flock is waited for at most
    LOCK_WAIT seconds; past that, BlockingIOError (an OSError)."""

    def __init__(
        self, maildir: str | Path, dir_fd: int | None = None, *, read_only: bool = False
    ) -> None:
        self.own_fd = dir_fd is None
        self.dir_fd = open_maildir(maildir) if dir_fd is None else dir_fd
        self.lock_fd = -1
        self.read_only = read_only

    def __enter__(self) -> HamLedger:
        try:
            flags = os.O_RDONLY if self.read_only else os.O_RDWR | os.O_CREAT
            try:
                self.lock_fd = os.open(
                    LOCK, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd
                )
            except FileNotFoundError:
                if not self.read_only:
                    raise
            if self.lock_fd >= 0:
                flock_within(self.lock_fd, LOCK_WAIT, shared=self.read_only)
            return HamLedger(self.dir_fd).load()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *_: object) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)  # the flock goes with it
            self.lock_fd = -1
        if self.own_fd and self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def note_released(maildir: str | Path, name: str) -> None:
    """Record that the inbox file `name` (in `cur/` or `new/` of `maildir`),
    just moved out of Junk by `quarantine release`, is to be learned as ham
    by the next trainer run (once; a message already learned is not again)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a Maildir file name: {name!r}")
    with Locked(maildir) as book:
        for sub in ("cur", "new"):
            try:
                fd = open_file(book.dir_fd, f"{sub}/{name}")
            except FileNotFoundError:
                continue
            try:
                ident = identify(fd)
                mtime = os.fstat(fd).st_mtime
            finally:
                os.close(fd)
            break
        else:
            raise ValueError(f"no such message in the inbox: {name!r}")
        if any(e.state in (LEARNED, DONE) for e in book.with_key(ident.key)):
            return  # learned already: not twice
        now = time.time()
        base = name.partition(":")[0]
        book.entries[f"release/{base}"] = Entry(
            f"release/{base}", ident, FOUND, f"{sub}/{name}", mtime, now
        )
        book.save()
