"""The nightly trainer: find aged messages in every vpopmail user's Junk folders,
teach them to SpamAssassin's Bayes filter through a backend (learners.py), delete
each one only after the call that contained it succeeded, and report.

Security: started as root it never opens a user file itself. The parent keeps
root for the lock and the state file only; each group of domains that share a
uid/gid (from users/assign) is handled by a forked child that has dropped to that
uid/gid for good (setgroups, setgid, setuid) before it reads a vpasswd file, so
sa-learn, spamc and every file access run as the mailbox owner. Nothing is read
through a symlink: directories are checked with lstat, files opened O_NOFOLLOW.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import sys
import time

from quarantine import batching, bayes, hammoves, learners, ledger, proof, vpopmail
from quarantine import maildir as md
from quarantine.discovery import (
    CommandError,
    Folder,
    Options,
    age_text,
    domains_to_visit,
    find_folders,
    find_users,
    maildir_of,
)
from quarantine.names import show
from quarantine.privsep import in_owner_groups, subprocess_env
from quarantine.qmail import LookupFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import IO

    from quarantine.config import Config


OK, FAILED, USAGE, LOCKED = 0, 1, 2, 75
HEADER_LIMIT = 256 * 1024  # read at most this much looking for Message-ID
SKIP_REASONS = {
    "young": "younger than {age}",
    "trashed": "trashed (T flag)",
    "dot file": "dot files",
    "symlink": "symlinks",
    "symlinked folder": "folders (or their new/, cur/) that are symlinks, not followed",
    "not a regular file": "not regular files",
    "vanished": "gone before they could be learned",
    "too big": "larger than train.max_size",
    "copy of a vanished message": "copies of a message that vanished (retried next run)",
    "other content": "left in place: Bayes learned other content under their id",
    "known": "left in place: Bayes knew them, but not from these bytes",
    "held back": "held back: other messages with their Message-ID went first (next run)",
    "mbox name": "named .mbox (sa-learn would read them as mailboxes)",
}
KEPT_TEXT = {
    "other content": "sa-learn took it for a message already learned ({key}), and what was "
    "learned under that id is other content: left in place",
    "known": "already learned as far as the learner knows ({key}), but not from these bytes "
    "as far as the ledger knows: left in place",
}
NAMED_LIMIT = 50  # files left in place that the notes name one by one, per run
_LEARNED = b"L"
_FAILED = b"F"


TrainError = CommandError  # configuration or host problem: exit 2


class Locked(Exception):
    """Another run holds the lock (exit 75)."""


class Summary:
    """Counts of one run (or one uid group of it), mergeable and JSON-able."""

    COUNTS = (
        "domains",
        "users",
        "folders",
        "spam_learned",
        "ham_learned",
        "ham_from_moves",
        "already_known",
        "copies",
        "deleted",
        "moved",
        "failed",
        "calls",
    )

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.skipped: dict[str, int] = {}
        self.failed_folders: list[str] = []
        self.errors: list[str] = []
        self.notes: list[str] = []  # reported, but not failures
        self.listing: list[dict[str, str]] = []
        self.stopped = False
        self.learned_keys: list[str] = []  # for the next uid group's dedupe

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def fail_folder(self, folder: str) -> None:
        if folder not in self.failed_folders:
            self.failed_folders.append(folder)

    def merge(self, other: dict[str, object]) -> None:
        counts = other.get("counts", {})
        assert isinstance(counts, dict)
        for name in self.COUNTS:
            self.counts[name] += int(counts.get(name, 0))
        skipped = other.get("skipped", {})
        assert isinstance(skipped, dict)
        for reason, n in skipped.items():
            self.skip(str(reason), int(n))
        for key in ("failed_folders", "errors", "notes", "listing", "learned_keys"):
            items = other.get(key, [])
            assert isinstance(items, list)
            getattr(self, key).extend(items)
        self.stopped = self.stopped or bool(other.get("stopped"))

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "skipped": dict(self.skipped),
            "failed_folders": list(self.failed_folders),
            "errors": list(self.errors),
            "notes": list(self.notes),
            "listing": list(self.listing),
            "stopped": self.stopped,
            "learned_keys": list(self.learned_keys),
        }


class Report:
    """The outcome of `run`: the merged Summary plus when, how long, how."""

    def __init__(
        self,
        summary: Summary,
        started: float,
        seconds: float,
        options: Options,
        backend: str,
        age: int,
    ) -> None:
        self.summary = summary
        self.started = started
        self.seconds = seconds
        self.options = options
        self.backend = backend
        self.age = age
        self.warnings: list[str] = []

    @property
    def exit_code(self) -> int:
        s = self.summary
        if s.failed_folders or s.errors or s.counts["failed"] or s.stopped:
            return FAILED
        return OK

    def as_dict(self) -> dict[str, object]:
        s = self.summary
        data: dict[str, object] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(self.seconds, 3),
            "dry_run": self.options.dry_run,
            "backend": self.backend,
            "age_seconds": self.age,
            "exit_code": self.exit_code,
            **s.counts,
            "skipped": dict(sorted(s.skipped.items())),
            "failed_folders": s.failed_folders,
            "errors": s.errors,
            "notes": s.notes,
            "stopped": s.stopped,
        }
        if self.options.dry_run:
            data["listing"] = s.listing
        return data

    def paragraph(self) -> str:
        """The one-paragraph summary an admin reads in cron's mail."""
        c = self.summary.counts
        s = self.summary
        would = "would learn" if self.options.dry_run else "learned"
        text = (
            f"quarantine train{' (dry run)' if self.options.dry_run else ''}: "
            f"{c['folders']} folder{_s(c['folders'])} of {c['users']} user{_s(c['users'])} "
            f"in {c['domains']} domain{_s(c['domains'])}; {would} {c['spam_learned']} "
            f"message{_s(c['spam_learned'])} as spam and {c['ham_learned']} as ham"
        )
        if c["ham_from_moves"]:
            text += f" ({c['ham_from_moves']} moved out of Junk by their users)"
        if c["already_known"]:
            text += f", {c['already_known']} already known to SpamAssassin (the same To, Date "
            text += "and body learned before)"
        if c["copies"]:
            text += f" ({c['copies']} more cop{'y' if c['copies'] == 1 else 'ies'} of the same "
            text += "messages not learned twice)"
        if self.options.dry_run:
            text += f"; would delete {c['deleted']} and move {c['moved']} to the inbox"
        else:
            text += f"; deleted {c['deleted']}, moved {c['moved']} to the inbox"
        total = sum(s.skipped.values())
        if total:
            parts = [
                f"{n} {SKIP_REASONS.get(r, r).format(age=age_text(self.age))}"
                for r, n in sorted(s.skipped.items(), key=lambda kv: -kv[1])
            ]
            text += f"; skipped {total} ({', '.join(parts)})"
        if c["failed"] or s.failed_folders:
            text += (
                f"; FAILED: {c['failed']} message{_s(c['failed'])} not learned and kept, "
                f"in {len(s.failed_folders)} folder{_s(len(s.failed_folders))}"
            )
        else:
            text += "; none failed"
        if s.errors:
            text += f"; {len(s.errors)} error{_s(len(s.errors))} (listed above)"
        if s.stopped:
            text += "; STOPPED early by a signal (the rest is left for the next run)"
        return text + f". {self.seconds:.1f} s, backend {self.backend}."


def _s(n: int) -> str:
    return "" if n == 1 else "s"


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


# --- one uid group ---------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total = total
        self.done = 0
        self.shown = 0.0

    def step(self, learned: int, *, advance: bool = True) -> None:
        self.done += advance
        now = time.monotonic()
        if not self.enabled or (now - self.shown < 0.2 and self.done < self.total and advance):
            return
        self.shown = now
        width = 30
        filled = width * self.done // max(self.total, 1)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} mailboxes, "
            f"{learned} learned"
        )
        self.stream.flush()

    def close(self, learned: int) -> None:
        if self.enabled and self.shown:
            self.step(learned, advance=False)  # the batches learned after the last mailbox
            self.stream.write("\n")
            self.stream.flush()


class Trainer:
    """Learns the folders of a list of domains (all with one owner) and deletes
    what was learned. Runs as the domains' uid."""

    def __init__(
        self,
        cfg: Config,
        options: Options,
        seen: set[bytes],
        stop: Callable[[], bool],
        env: dict[str, str],
    ) -> None:
        self.cfg = cfg
        self.tcfg = cfg.train
        self.options = options
        self.stop = stop
        self.summary = Summary()
        self.keys: dict[bytes, object] = dict.fromkeys(seen, _LEARNED)
        self.learner: learners.Learner = (
            DryRun() if options.dry_run else learners.make(cfg.train, env)
        )
        age = options.age if options.age is not None else self.tcfg.age
        self.cutoff = time.time() - age
        self.quota: dict[str, list[int]] = {}
        self.record_keys = False
        self.ledgers = ledger.Ledgers()
        self.batcher = batching.Batcher(self.learner, self.ledgers, self._hold_over)
        self.learner.on_journal = lambda store, keys: self.ledgers.journal(
            self.learner.ledger(store), keys
        )
        self.named = self.unnamed = 0
        self.moves = hammoves.Moves(self.tcfg, self.cutoff, options.dry_run, self.summary)

    def store_for(self, address: str) -> learners.Store:
        dbpath = self.tcfg.dbpath
        if not self.tcfg.per_user:
            return learners.Store(dbpath)
        local, _, domain = address.partition("@")
        if dbpath:
            dbpath = dbpath.replace("%u", address).replace("%l", local).replace("%d", domain)
        return learners.Store(dbpath, address)

    def run(self, domains: list[vpopmail.Domain]) -> Summary:
        try:
            self.learner.check()
        except learners.LearnerError as exc:
            self.summary.errors.append(str(exc))
            return self.summary
        mailboxes = list(self._mailboxes(domains))
        progress = Progress(len(mailboxes))
        try:
            results = self.learner.run(self._tasks(mailboxes, progress), self.stop)
            for result in results:
                self._settle(result)
                self._flush_quota()
                self.moves.flush()
        except learners.LearnerError as exc:
            self.summary.errors.append(str(exc))
        finally:
            progress.close(self.summary.counts["spam_learned"] + self.summary.counts["ham_learned"])
            self._flush_quota()
            self.moves.flush()
            try:
                self.summary.errors.extend(self.learner.finish())
            except learners.LearnerError as exc:
                self.summary.errors.append(str(exc))
            self.summary.counts["calls"] = self.learner.calls
            self.summary.notes.extend(self.learner.take_notes())
            self.summary.notes.extend(self.ledgers.notes)
            if self.unnamed:
                self.summary.notes.append(
                    f"{self.unnamed} more files left in place for the same reasons (not named)"
                )
        self._abandon_pending()
        if self.stop():
            self.summary.stopped = True
        if self.record_keys:
            self.summary.learned_keys = [k.hex() for k, v in self.keys.items() if v is _LEARNED]
        return self.summary

    def _mailboxes(self, domains: list[vpopmail.Domain]) -> Iterator[tuple[str, str]]:
        """(address, maildir) of every mailbox to visit; counts domains and users."""
        wanted = set(self.options.users)
        for domain in domains:
            try:
                users = list(find_users(self.cfg, domain))
            except LookupFailed as exc:
                self.summary.errors.append(f"{domain.name}: {exc}")
                self.summary.fail_folder(domain.name)
                continue
            self.summary.add("domains")
            for user, home in users:
                address = f"{user}@{domain.name}"
                if wanted and address not in wanted:
                    continue
                maildir = maildir_of(self.cfg, domain, home)
                if maildir is None:
                    continue
                self.summary.add("users")
                yield address, maildir

    def _tasks(
        self, mailboxes: list[tuple[str, str]], progress: Progress
    ) -> Iterator[learners.Task]:
        """Tasks for the learner, filled as the folders are scanned: one open
        batch per (class, store); a user's batches are sent when a per-user
        store is done with, shared ones when full or at the end."""
        for address, maildir in mailboxes:
            if self.stop():
                return
            store = self.store_for(address)
            for found in self.moves.scan(address, maildir):  # ham the user moved out of Junk
                task = self._place(Mail(found.folder, found.sub, found.name, found.size), store)
                if task is not None:
                    yield task
            folders = find_folders(
                maildir, address, self.tcfg.folders, self.tcfg.ham_folder, self.summary
            )
            for folder in folders:
                self.summary.add("folders")
                for mail in scan_folder(folder, self.cutoff, self.tcfg.max_size, self.summary):
                    task = self._place(mail, store)
                    if task is not None:
                        yield task
                self._flush_quota()
            if self.tcfg.per_user:
                yield from self.batcher.drain(store.key())
            progress.step(self.summary.counts["spam_learned"] + self.summary.counts["ham_learned"])
        yield from self.batcher.drain()

    def _hold_over(self, item: batching.Item) -> None:
        """A file that waited for a call of its own in vain: the next run's."""
        assert isinstance(item, Mail)
        del self.keys[item.key]
        self.summary.skip("held back", 1 + len(item.copies))

    def _place(self, mail: Mail, store: learners.Store) -> learners.Task | None:
        """Put `mail` in an open batch (or hold it back when another content
        with its Message-ID is in there), or settle it as a copy of a file
        already placed or decided; returns a batch that is full and must be
        sent before this mail can be placed."""
        refused = self.learner.refuse(mail.path)
        if refused:
            self.summary.skip(refused)
            return None
        try:
            digest, ids = read_message(mail.path)
        except FileNotFoundError:
            self.summary.skip("vanished")
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # it became a symlink
                self.summary.skip("symlink")
            else:
                self.summary.errors.append(f"{show(mail.path)}: cannot read: {exc.strerror}")
                self.summary.fail_folder(mail.folder.label)
            return None
        key = digest
        if self.tcfg.per_user:
            key = hashlib.blake2b(mail.folder.address.encode() + b"\0" + key).digest()
        mail.key = mail.folder.kind.encode() + key
        mail.digest = digest
        mail.ids = frozenset(ids)
        state = self.keys.get(mail.key)
        if state is _LEARNED:
            self.summary.add("copies")
            self._dispose(mail, copy=True)
            return None
        if state is _FAILED:
            self.summary.add("failed")
            self.summary.fail_folder(mail.folder.label)
            return None
        if isinstance(state, tuple):  # its twin was left in place: so is it
            self._leave(mail, *state)
            return None
        if isinstance(state, Mail):
            state.copies.append(mail)
            return None
        self.keys[mail.key] = mail
        return self.batcher.place(mail, mail.folder.kind, store)

    def _settle(self, result: learners.Result) -> None:
        """Act on what the learner said of each file of a batch: learned, or
        skipped by the key SpamAssassin made of its own To, Date and body
        (already known), or skipped by another key and its own bytes are in
        the ledger -> delete (or move); skipped otherwise -> leave it, named
        in the notes; neither, or the call failed -> keep it, failed."""
        batch = result.task.payload
        assert isinstance(batch, batching.Batch)
        mails = [mail for mail in batch.items if isinstance(mail, Mail)]
        kind = result.task.kind
        where = self.learner.ledger(result.task.store)
        if result.detail:
            self.summary.errors.append(result.detail)
        keys = {**result.skipped, **{p: key for p, (key, _) in result.known.items()}}
        # Known by content only when the bytes that showed it are the ones scanned.
        known = {m.path for m in mails if result.known.get(m.path, ("", b""))[1] == m.digest}
        skipped = {
            mail.path: self.ledgers.resolve(where, kind, mail.digest, keys[mail.path])
            for mail in mails
            if result.ok and mail.path in keys and mail.path not in known
        }
        same = {p for p, verdict in skipped.items() if verdict == ledger.SAME} | known
        self.ledgers.record(
            where,
            kind,
            [
                (m.digest, result.learned.get(m.path, keys.get(m.path, "")))
                for m in mails
                if m.path in result.learned or m.path in same
            ],
            [m.digest for m in mails if m.path in skipped and m.path not in same],
        )
        vanished = set(result.vanished)
        for mail in mails:
            if result.ok and mail.path in vanished:
                del self.keys[mail.key]
                self.summary.skip("vanished")
                self.summary.skip("copy of a vanished message", len(mail.copies))
            elif result.ok and (mail.path in result.learned or mail.path in same):
                self.keys[mail.key] = _LEARNED
                if mail.path in known:
                    self.summary.add("already_known")
                else:
                    self.summary.add("spam_learned" if kind == learners.SPAM else "ham_learned")
                self._dispose(mail, copy=False)
                for copy in mail.copies:
                    self.summary.add("copies")
                    self._dispose(copy, copy=True)
            elif mail.path in skipped:
                reason = "other content" if skipped[mail.path] == ledger.OTHER else "known"
                self.keys[mail.key] = (reason, keys[mail.path])
                for each in (mail, *mail.copies):
                    self._leave(each, reason, keys[mail.path])
            else:  # failed, or not proven learned
                self.keys[mail.key] = _FAILED
                self.summary.add("failed", 1 + len(mail.copies))
                for each in (mail, *mail.copies):
                    self.summary.fail_folder(each.folder.label)
            mail.copies = []

    def _leave(self, mail: Mail, reason: str, key: str) -> None:
        """A file the learner took for one already learned, not from its own
        bytes: it stays, counted, and (up to NAMED_LIMIT a run) named. (Ham
        moved out of Junk: Bayes has its Message-ID as ham, nothing to do.)"""
        if isinstance(mail.folder, hammoves.Place):
            self.moves.settled(mail.folder, mail.path, learned=False, copy=True)
            return
        self.summary.skip(reason)
        if self.named < NAMED_LIMIT:
            self.named += 1
            text = KEPT_TEXT[reason].format(key=show(key) if key else "id not given")
            self.summary.notes.append(f"{show(mail.path)}: {text}")
        else:
            self.unnamed += 1

    def _abandon_pending(self) -> None:
        """Messages placed in batches that were never sent (stop, or a broken
        backend) stay where they are."""
        for key, state in list(self.keys.items()):
            if isinstance(state, Mail):
                del self.keys[key]

    def _dispose(self, mail: Mail, copy: bool) -> None:
        """A learned message: spam is deleted (and maildirsize told), ham moved
        into the inbox's cur/ keeping its flags, ham moved out of Junk left."""
        if isinstance(mail.folder, hammoves.Place):
            self.moves.settled(mail.folder, mail.path, learned=True, copy=copy)
            return
        if mail.folder.kind == learners.HAM:
            self._move_to_inbox(mail, copy)
            return
        if self.options.dry_run:
            self.summary.listing.append(
                {"action": "delete" if copy else "learn spam, delete", "path": show(mail.path)}
            )
            self.summary.add("deleted")
            return
        try:
            os.unlink(mail.path)
        except FileNotFoundError:
            self.summary.skip("vanished")
            return
        except OSError as exc:
            self.summary.errors.append(
                f"{show(mail.path)}: learned but cannot delete: {exc.strerror}"
            )
            self.summary.fail_folder(mail.folder.label)
            return
        self.summary.add("deleted")
        used = self.quota.setdefault(mail.folder.maildir, [0, 0])
        used[0] += mail.size
        used[1] += 1

    def _move_to_inbox(self, mail: Mail, copy: bool) -> None:
        info = mail.name.partition(":")[2]
        target_name = mail.name if info else mail.name + ":2,"
        target = os.path.join(mail.folder.maildir, "cur", target_name)
        if self.options.dry_run:
            self.summary.listing.append(
                {
                    "action": "move" if copy else "learn ham, move",
                    "path": show(mail.path),
                    "to": show(target),
                }
            )
            self.summary.add("moved")
            return
        try:
            os.link(mail.path, target)
        except FileNotFoundError:
            self.summary.skip("vanished")
            return
        except FileExistsError:
            # A run killed between this link and the unlink below left the
            # message in both places: finish that move.
            if not _same_file(mail.path, target):
                self.summary.errors.append(
                    f"{show(mail.path)}: learned as ham, cannot move: "
                    f"{show(target)} is another file"
                )
                self.summary.fail_folder(mail.folder.label)
                return
        except OSError as exc:
            self.summary.errors.append(
                f"{show(mail.path)}: learned as ham, cannot move: {exc.strerror}"
            )
            self.summary.fail_folder(mail.folder.label)
            return
        try:
            os.unlink(mail.path)
        except OSError as exc:
            self.summary.errors.append(
                f"{show(mail.path)}: moved to {show(target)}, cannot remove: {exc.strerror}"
            )
        self.summary.add("moved")

    def _flush_quota(self) -> None:
        """One maildirsize line per Maildir for the deletions just made
        (`-bytes -count`, summed: Maildir++ adds lines up)."""
        for maildir, (size, count) in self.quota.items():
            try:
                md.add_quota(maildir, -size, -count, md.Owner.of(maildir))
            except OSError as exc:
                self.summary.errors.append(
                    f"{show(maildir)}/maildirsize: cannot update: {exc.strerror}"
                )
        self.quota.clear()


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samestat(os.lstat(one), os.lstat(other))
    except OSError:
        return False


class DryRun(learners.Learner):
    """Stands in for the backend under --dry-run: every batch "succeeds", nothing runs."""

    name = "dry-run"
    batch_size = 1 << 30

    def check(self) -> None:
        return None

    def fits(self, task: learners.Task, path: str) -> bool:
        return True

    def run(
        self, tasks: Iterable[learners.Task], stop: Callable[[], bool]
    ) -> Iterator[learners.Result]:
        for task in tasks:
            yield learners.Result(task, True, learned=dict.fromkeys(task.paths, ""))


class Lock:
    """flock on train.lock_file, held for the whole run (forked children share it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TrainError(
                f"cannot open the lock file {show(path)} (train.lock_file): {exc.strerror}"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip()
            os.close(self.fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise Locked(f"another quarantine train run holds {show(path)}{who}; exiting") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)


def check_config(cfg: Config) -> None:
    """What the configuration must satisfy before a run (exit 2 otherwise)."""
    from quarantine.configschema import valid_folder

    tcfg = cfg.train
    for name in (*tcfg.folders, *([tcfg.ham_folder] if tcfg.ham_folder else [])):
        if not valid_folder(name):
            raise TrainError(f"train.folders/ham_folder: {name!r} is not a Maildir++ folder name")
    for name in tcfg.trash_folders:
        if not valid_folder(name):
            raise TrainError(f"train.trash_folders: {name!r} is not a Maildir++ folder name")
    if tcfg.ham_folder and tcfg.ham_folder.lower() in {f.lower() for f in tcfg.folders}:
        raise TrainError("train.ham_folder is also one of train.folders")
    placeholders = any(p in (tcfg.dbpath or "") for p in ("%u", "%l", "%d"))
    if placeholders and not tcfg.per_user:
        raise TrainError("train.dbpath has %u/%l/%d but train.per_user is false")
    if tcfg.per_user and tcfg.dbpath and not placeholders and tcfg.backend == "sa-learn":
        raise TrainError(
            "train.per_user with a train.dbpath that has no %u, %l or %d would put "
            "every user in one Bayes store; add them (e.g. /var/lib/bayes/%d/%l/bayes)"
        )
    for problem in bayes.problems(tcfg):
        raise TrainError(problem)
    try:
        learners.make(tcfg, {}).check()
    except learners.LearnerError as exc:
        raise TrainError(str(exc)) from None


def run(cfg: Config, options: Options, stop: Callable[[], bool] | None = None) -> Report:
    """One training run over the vpopmail tree. Raises TrainError (exit 2) or
    Locked (exit 75); everything else is in the Report."""
    stop = stop or (lambda: False)
    started = time.time()
    clock = time.monotonic()
    check_config(cfg)
    domains = domains_to_visit(cfg, options)
    lock = None if options.dry_run else Lock(cfg.train.lock_file)
    summary = Summary()
    seen: set[bytes] = set()

    def work(
        group: list[vpopmail.Domain], halt: Callable[[], bool], uid: int | None, more: bool
    ) -> dict[str, object]:
        trainer = Trainer(cfg, options, seen, halt, subprocess_env(cfg, uid))
        trainer.record_keys = more and not cfg.train.per_user
        return trainer.run(group).as_dict()

    try:
        for result in in_owner_groups(domains, work, stop):
            summary.merge(result)
            seen.update(bytes.fromhex(k) for k in summary.learned_keys)
            summary.learned_keys = []
    finally:
        if lock is not None:
            lock.release()
    report = Report(
        summary,
        started,
        time.monotonic() - clock,
        options,
        cfg.train.backend,
        options.age if options.age is not None else cfg.train.age,
    )
    if not options.dry_run:
        error = save_state(cfg.train.state_file, report)
        if error:  # the run itself is done: say so, but it does not fail the run
            report.warnings.append(error)
    return report


# --- state for `quarantine stats` --------------------------------------------


def save_state(path: str, report: Report) -> str | None:
    """Record the run's summary (atomically); returns an error text or None."""
    data = report.as_dict()
    data["summary"] = report.paragraph()
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.rename(temp, path)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        return f"cannot record the run in {show(path)} (train.state_file): {exc.strerror}"
    return None


def load_state(path: str) -> dict[str, object] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- `quarantine stats` -------------------------------------------------------


def folder_stats(folder: Folder, cutoff: float) -> dict[str, object]:
    """Messages, bytes, oldest mtime and how many are due (older than cutoff)."""
    count = size = due = 0
    oldest: float | None = None
    for sub in ("new", "cur"):
        directory = os.path.join(folder.path, sub)
        try:
            if not stat.S_ISDIR(os.lstat(directory).st_mode):
                continue
            with os.scandir(directory) as entries:
                listed = list(entries)
        except OSError:
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or is_trashed(entry.name):
                continue
            count += 1
            size += st.st_size
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
            due += st.st_mtime <= cutoff
    return {
        "address": show(folder.address),
        "folder": show(folder.name[1:]),
        "kind": folder.kind,
        "messages": count,
        "bytes": size,
        "oldest": oldest,
        "due": due,
    }


def stats(cfg: Config, options: Options) -> dict[str, object]:
    """What sits in the Junk (and rescue) folders per domain and user, and the
    last run's summary. Reads as the domains' uid, like `run`."""
    domains = domains_to_visit(cfg, options)
    age = options.age if options.age is not None else cfg.train.age
    cutoff = time.time() - age
    wanted = set(options.users)

    def work(
        group: list[vpopmail.Domain], halt: Callable[[], bool], uid: int | None, more: bool
    ) -> dict[str, object]:
        rows: list[dict[str, object]] = []
        errors: list[str] = []
        for domain in group:
            try:
                users = list(find_users(cfg, domain))
            except LookupFailed as exc:
                errors.append(f"{domain.name}: {exc}")
                continue
            for user, home in users:
                address = f"{user}@{domain.name}"
                if wanted and address not in wanted:
                    continue
                maildir = maildir_of(cfg, domain, home)
                if maildir is None:
                    continue
                for folder in find_folders(
                    maildir, address, cfg.train.folders, cfg.train.ham_folder
                ):
                    rows.append({"domain": domain.name, **folder_stats(folder, cutoff)})
        return {"rows": rows, "errors": errors}

    rows: list[dict[str, object]] = []
    errors: list[str] = []
    for result in in_owner_groups(domains, work, lambda: False):
        found = result.get("rows", [])
        problems = result.get("errors", [])
        assert isinstance(found, list) and isinstance(problems, list)
        rows.extend(found)
        errors.extend(problems)
    rows.sort(key=lambda r: (str(r["domain"]), str(r["address"]), str(r["folder"])))
    return {
        "age_seconds": age,
        "folders": rows,
        "errors": errors,
        "last_run": load_state(cfg.train.state_file),
    }
