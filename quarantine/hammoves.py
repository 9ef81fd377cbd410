"""Ham from moves, the trainer's side: per mailbox, bring the ham ledger
(hamledger.py) up to date with what is in Junk now, look for the messages
that left it in the inbox and every folder but Junk and Trash, and hand those
to the trainer to learn as ham where they are, once.

Cost: a Junk file is read once, when it first shows up; outside Junk only the
folders whose new/ or cur/ changed since the last scan are listed, only files
changed since then are opened, only their header is read, and only a file
whose Message-ID (or, without one, body length) matches a message that left
Junk has its body hashed; at most MAX_READS files a mailbox and run.
"""

from __future__ import annotations

import os
import stat
import time

from quarantine import hamledger as hl
from quarantine import junklog
from quarantine.corpus import Mail, is_trashed
from quarantine.discovery import Folder
from quarantine.flockwait import flock_within
from quarantine.kinds import HAM
from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Protocol

    from quarantine.configschema import TrainConfig

    class Counts(Protocol):
        """What this module reports into (train's Summary)."""

        notes: list[str]
        errors: list[str]
        listing: list[dict[str, str]]

        def add(self, name: str, n: int = 1) -> None: ...

        def skip(self, reason: str, n: int = 1) -> None: ...


SLACK = 120.0  # seconds before the last scan still looked at (clocks, a scan's length)
MAX_READS = 5000  # files outside Junk whose header is read, per mailbox and run
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Place(Folder):
    """The folder of a message that left Junk, learned as ham where it is (not
    moved); `key` is its ledger identity."""

    __slots__ = ("key",)

    def __init__(self, address: str, maildir: str, name: str, key: tuple[str, str]) -> None:
        super().__init__(address, maildir, name, HAM)
        self.key = key


def _is_trash(name: str, trash: set[str]) -> bool:
    folded = name[1:].lower()
    return any(folded == t or folded.startswith(t + ".") for t in trash)


def _open_dir(dir_fd: int, name: str) -> int | None:
    """The directory `name` (one component) below `dir_fd`, opened without
    following a symlink; None when it is missing or not a real directory."""
    try:
        return os.open(name, OPEN_DIR, dir_fd=dir_fd)
    except OSError:
        return None


def _open_folder(dir_fd: int, folder: str) -> int | None:
    """A descriptor of `folder` (`.Work`; '' is the inbox, the Maildir
    itself), opened relative to the Maildir's `dir_fd`: a folder that is a
    symlink (to another user's Maildir...) is never entered."""
    if not folder:
        return os.dup(dir_fd)
    if not folder.startswith(".") or folder in (".", "..") or "/" in folder:
        return None
    return _open_dir(dir_fd, folder)


def _files(
    folder_fd: int, since: float | None = None
) -> Generator[tuple[str, str, os.stat_result]]:
    """(sub, name, lstat) of the regular files in the open folder's new/ and
    cur/ (each opened relative to it, not through a symlink), dot files
    aside. With `since`, none when neither new/ nor cur/ changed since then."""
    subs: list[tuple[str, int]] = []
    try:
        for sub in ("new", "cur"):
            fd = _open_dir(folder_fd, sub)
            if fd is not None:
                subs.append((sub, fd))
        if since is not None and not any(
            max(st.st_mtime, st.st_ctime) >= since for st in (os.fstat(fd) for _, fd in subs)
        ):
            return  # nothing came into it since the last scan
        for sub, fd in subs:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield sub, entry.name, st
    finally:
        for _, fd in subs:
            os.close(fd)


def _where(dir_fd: int, where: str) -> tuple[str, str, str, os.stat_result] | None:
    """(folder, sub, name, lstat) of the regular file `where` (`cur/NAME`,
    `.Folder/new/NAME`) below the Maildir, its directories real ones (each
    opened relative to the last, not through a symlink), or None."""
    parts = where.split("/")
    if len(parts) == 2:
        parts.insert(0, "")
    if len(parts) != 3 or parts[1] not in ("new", "cur") or not parts[2]:
        return None
    folder, sub, name = parts
    folder_fd = _open_folder(dir_fd, folder)
    if folder_fd is None:
        return None
    try:
        sub_fd = _open_dir(folder_fd, sub)
    finally:
        os.close(folder_fd)
    if sub_fd is None:
        return None
    try:
        st = os.stat(name, dir_fd=sub_fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(sub_fd)
    return (folder, sub, name, st) if stat.S_ISREG(st.st_mode) else None


class Moves:
    """The ham-from-moves work of one trainer (one uid group): `scan` per
    mailbox before its folders are learned, `settled` for each such file the
    learner is done with, `flush` to write those outcomes to the ledgers."""

    def __init__(self, tcfg: TrainConfig, cutoff: float, dry_run: bool, summary: Counts) -> None:
        self.enabled = tcfg.ham_from_moves
        self.junk = {n.lower() for n in tcfg.folders}
        self.trash = {n.lower() for n in tcfg.trash_folders}
        self.ham_folder = tcfg.ham_folder.lower() if tcfg.ham_folder else None
        self.max_size = tcfg.max_size
        self.cutoff = cutoff
        self.dry_run = dry_run
        self.summary = summary
        self.done: dict[str, set[tuple[str, str]]] = {}  # maildir -> keys settled

    def scan(self, address: str, maildir: str) -> list[Mail]:
        """Update `maildir`'s ledger and return the files to learn as ham.
        A ledger that cannot be used is an error of the run, named once."""
        if not self.enabled or not self._tracked(maildir):
            return []
        try:
            with hl.Locked(maildir, read_only=self.dry_run) as book:
                if book.problem:
                    self.summary.notes.append(f"{show(address)}: the ham ledger was {book.problem}")
                log = self._open_log(book.dir_fd)
                try:
                    found = self._scan(book, address, maildir, self._read_log(log))
                    if not self.dry_run:
                        book.save()
                        if log >= 0:
                            os.ftruncate(log, 0)  # its lines are in the ledger now
                finally:
                    if log >= 0:
                        os.close(log)
        except OSError as exc:
            self.summary.errors.append(
                f"{show(address)}: ham ledger {show(os.path.join(maildir, hl.FILE))}: "
                f"{show(exc.strerror or str(exc))}"
            )
            return []
        return found

    def _tracked(self, maildir: str) -> bool:
        """Whether the Maildir has a Junk folder, a ledger or a Junk log: a
        mailbox that never had any gets no ledger and no lock file."""
        try:
            fd = hl.open_maildir(maildir)
        except OSError:
            return True  # scan names the problem
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        return (
            hl.FILE in names
            or junklog.LOG in names
            or any(n.startswith(".") and n[1:].lower() in self.junk for n in names)
        )

    def _open_log(self, dir_fd: int) -> int:
        """The Junk log deliver appends to, flocked (deliver waits meanwhile,
        so no line comes between reading and emptying it); -1 when there is
        none. Not followed through a symlink. A lock held past hl.LOCK_WAIT
        is an OSError (this mailbox waits for the next run)."""
        mode = os.O_RDONLY if self.dry_run else os.O_RDWR
        try:
            fd = os.open(junklog.LOG, mode | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)  # fmt: skip
        except FileNotFoundError:
            return -1
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return -1
            flock_within(fd, hl.LOCK_WAIT, shared=self.dry_run)
        except OSError as exc:
            os.close(fd)
            raise OSError(exc.errno, f"its Junk log: {exc.strerror}") from None
        return fd

    def _read_log(self, fd: int) -> list[tuple[str, str, str, str, int, float]]:
        if fd < 0:
            return []
        return junklog.parse(os.pread(fd, junklog.LOG_LIMIT + (64 << 10), 0))

    def _logged(
        self, book: hl.HamLedger, lines: list[tuple[str, str, str, str, int, float]], now: float
    ) -> list[hl.Entry]:
        """Entries for the messages deliver filed into Junk since the last
        scan (from the Junk log), so that one moved out before this scan is
        known to have sat in Junk."""
        added = []
        for folder, name, mid, body, blen, mtime in lines:
            origin = f"{folder}/{name.partition(':')[0]}"
            if folder[1:].lower() not in self.junk or origin in book.entries:
                continue
            if len(book.entries) >= hl.MAX_ENTRIES:
                break
            entry = hl.Entry(
                origin, hl.Ident(mid, body, blen), hl.JUNK, f"{folder}/new/{name}", mtime, now
            )
            book.entries[origin] = entry
            added.append(entry)
        return added

    def _scan(
        self,
        book: hl.HamLedger,
        address: str,
        maildir: str,
        logged: list[tuple[str, str, str, str, int, float]],
    ) -> list[Mail]:
        now = time.time()
        since = book.scanned or now
        fresh = self._logged(book, logged, now)
        complete = self._junk(book, maildir, now)
        for entry in fresh:  # moved out after it was delivered
            if entry.state == hl.LEFT:
                since = min(since, entry.mtime)
        for entry in self._gone(book):  # renamed since it was found: looked for again
            since = min(since, entry.at)
        left = [e for e in book.entries.values() if e.state == hl.LEFT]
        if left:  # (a Junk log time is rounded: it may lie after `now`)
            complete = self._search(book, left, since - SLACK) and complete
        if complete:
            book.scanned = now
        book.cutoff = self.cutoff
        return self._due(book, address, maildir)

    def _gone(self, book: hl.HamLedger) -> list[hl.Entry]:
        """Found messages no longer where they were found: left again."""
        gone = []
        for entry in book.entries.values():
            if entry.state == hl.FOUND and _where(book.dir_fd, entry.where) is None:
                gone.append(entry)
        for entry in gone:
            entry.move(hl.LEFT, now=entry.at)
        return gone

    def _junk(self, book: hl.HamLedger, maildir: str, now: float) -> bool:
        """Entries for the files in Junk now; a Junk file gone since the last
        scan, or marked \\Deleted (a client's COPY, STORE \\Deleted, with the
        EXPUNGE still to come), has left (unless it was due for learning as
        spam then: the trainer deleted it, or the user did). False when a
        Junk folder could not be listed."""
        seen: set[str] = set()
        listed: set[str] = set()
        complete = True
        try:
            names = sorted(os.listdir(book.dir_fd))
        except OSError:
            return False
        for folder in (n for n in names if n.startswith(".") and n[1:].lower() in self.junk):
            folder_fd = _open_folder(book.dir_fd, folder)
            if folder_fd is None:
                continue
            listed.add(folder)
            try:
                complete = self._junk_folder(book, folder, folder_fd, seen, now) and complete
            finally:
                os.close(folder_fd)
        for origin, entry in list(book.entries.items()):
            if entry.state != hl.JUNK or origin in seen:
                continue
            if origin.partition("/")[0] not in listed and origin.partition("/")[0] in names:
                continue  # its folder could not be read: nothing is known
            if entry.mtime <= book.cutoff:
                del book.entries[origin]  # due as spam at the last run: not a move
            else:
                entry.move(hl.LEFT, now=now)
        return complete

    def _junk_folder(
        self, book: hl.HamLedger, folder: str, folder_fd: int, seen: set[str], now: float
    ) -> bool:
        """The entries for one open Junk folder's files (their origins added
        to `seen`); False when MAX_ENTRIES left some out."""
        complete = True
        for sub, name, st in _files(folder_fd):
            if is_trashed(name):
                continue  # copied out and marked \Deleted, not yet expunged: it left
            origin = f"{folder}/{name.partition(':')[0]}"
            seen.add(origin)
            where = f"{folder}/{sub}/{name}"
            entry = book.entries.get(origin)
            if entry is not None:
                if entry.state in (hl.LEFT, hl.FOUND):  # moved back into Junk
                    entry.move(hl.JUNK, where, now)
                entry.where = where
                continue
            if len(book.entries) >= hl.MAX_ENTRIES:
                complete = False
                continue
            try:
                fd = hl.open_file(book.dir_fd, where)
            except OSError:
                continue  # gone, or became a symlink: not ours to read
            try:
                ident = hl.identify(fd)
            finally:
                os.close(fd)
            book.entries[origin] = hl.Entry(origin, ident, hl.JUNK, where, st.st_mtime, now)
        return complete

    def _search(self, book: hl.HamLedger, left: list[hl.Entry], since: float) -> bool:
        """Look for the `left` messages in the folders that are not Junk or
        Trash, among the files changed since `since`. False when MAX_READS
        cut the search short (the next run looks from the same time again)."""
        by_mid: dict[str, list[hl.Entry]] = {}
        for entry in left:
            by_mid.setdefault(entry.mid, []).append(entry)
        lengths = {e.blen for e in by_mid.get("", [])}
        try:
            names = sorted(os.listdir(book.dir_fd))
        except OSError:
            return False
        folders = [""] + [
            n
            for n in names
            if n.startswith(".")
            and n not in (".", "..")
            and n[1:].lower() not in self.junk
            and not _is_trash(n, self.trash)
        ]
        reads = 0
        for folder in folders:
            if not by_mid:
                break  # every message looked for is found
            folder_fd = _open_folder(book.dir_fd, folder)
            if folder_fd is None:
                continue
            files = _files(folder_fd, since)
            try:
                for sub, name, st in files:
                    if st.st_ctime < since:
                        continue
                    if reads >= MAX_READS:
                        self.summary.notes.append(
                            f"ham from moves: more than {MAX_READS} changed files in one "
                            "mailbox; the rest are looked at by the next run"
                        )
                        return False
                    reads += 1
                    where = f"{folder}/{sub}/{name}" if folder else f"{sub}/{name}"
                    self._match(book, by_mid, lengths, folder, where)
                    if not by_mid:
                        break
            finally:
                files.close()
                os.close(folder_fd)
        return True

    def _match(
        self,
        book: hl.HamLedger,
        by_mid: dict[str, list[hl.Entry]],
        lengths: set[int],
        folder: str,
        where: str,
    ) -> None:
        try:
            fd = hl.open_file(book.dir_fd, where)
        except OSError:
            return
        try:
            head = hl.read_head(fd)
            if head.mid not in by_mid:
                return
            if not head.mid and not any(n <= head.size - head.body_at <= 2 * n for n in lengths):
                return
            ident = hl.identify(fd, head)
        finally:
            os.close(fd)
        in_ham_folder = bool(folder) and folder[1:].lower() == self.ham_folder
        for entry in by_mid[head.mid]:
            if entry.key == ident.key and entry.state == hl.LEFT:
                # The ham folder's own learning takes a message moved there.
                entry.move(hl.DONE if in_ham_folder else hl.FOUND, where)
        by_mid[head.mid] = [e for e in by_mid[head.mid] if e.state == hl.LEFT]
        if not by_mid[head.mid]:
            del by_mid[head.mid]

    def _due(self, book: hl.HamLedger, address: str, maildir: str) -> list[Mail]:
        """The found messages, one file per message (a message learned before
        is not learned again)."""
        out: list[Mail] = []
        learned = {e.key for e in book.entries.values() if e.state in (hl.LEARNED, hl.DONE)}
        taken: set[tuple[str, str]] = set()
        for entry in book.entries.values():
            if entry.state != hl.FOUND:
                continue
            if entry.key in learned:
                entry.move(hl.LEARNED)  # another copy of it was learned
                continue
            if entry.key in taken:
                continue  # another file of it goes to the learner: settled with it
            located = _where(book.dir_fd, entry.where)
            if located is None:
                continue
            folder, sub, name, st = located
            if self.max_size and st.st_size > self.max_size:
                self.summary.skip("too big")
                entry.move(hl.DONE)
                continue
            taken.add(entry.key)
            out.append(Mail(Place(address, maildir, folder, entry.key), sub, name, st.st_size))
        return out

    def settled(self, folder: Place, path: str, *, learned: bool, copy: bool) -> None:
        """The learner is done with a found file: learned (or a copy of one
        learned), or skipped as a message Bayes has as ham already."""
        self.done.setdefault(folder.maildir, set()).add(folder.key)
        if learned and not copy:
            self.summary.add("ham_from_moves")
        if self.dry_run:
            self.summary.listing.append(
                {"action": "learn ham (moved out of Junk), leave", "path": show(path)}
            )

    def flush(self) -> None:
        """Write what was settled into each Maildir's ledger: learned, once."""
        if self.dry_run:
            self.done.clear()
            return
        for maildir, keys in list(self.done.items()):
            try:
                with hl.Locked(maildir) as book:
                    now = time.time()
                    for entry in book.entries.values():  # once: a Junk scan settles thousands
                        if entry.key in keys:
                            entry.move(hl.LEARNED, now=now)
                    book.save()
            except OSError as exc:
                self.summary.errors.append(
                    f"ham ledger {show(os.path.join(maildir, hl.FILE))}: "
                    f"{show(exc.strerror or str(exc))}"
                )
            del self.done[maildir]
