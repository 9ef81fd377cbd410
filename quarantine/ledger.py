"""The trainer's ledger of learned content, one sqlite3 file beside each Bayes
database: the digest of every message file's bytes given to a learner, and of
those it proved learned (or already known) with the id SpamAssassin keyed them
by. It tells a file sa-learn skips by another key than the file's own content
key apart: its own bytes (delete it) or other content under the same id (keep
it). Bounded in age and rows.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import TypeVar

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

T = TypeVar("T")

MAX_AGE = 90 * 86400  # seconds a row is kept
MAX_ROWS = 200_000  # rows per table and file, the newest kept
GIVEN, LEARNED = "given", "learned"
SAME, OTHER, UNKNOWN = "same", "other", "unknown"  # what a skip was, for `resolve`
SCHEMA = """
CREATE TABLE IF NOT EXISTS content (
    store TEXT NOT NULL, kind TEXT NOT NULL, digest BLOB NOT NULL,
    state TEXT NOT NULL, key TEXT NOT NULL DEFAULT '', at REAL NOT NULL,
    PRIMARY KEY (store, kind, digest));
CREATE INDEX IF NOT EXISTS content_key ON content (store, key);
CREATE INDEX IF NOT EXISTS content_at ON content (at);
CREATE TABLE IF NOT EXISTS journal (
    store TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (store, key));
CREATE INDEX IF NOT EXISTS journal_at ON journal (at);
"""


class LedgerError(Exception):
    """The ledger file cannot be opened, read or written."""


class Ledger:
    """The ledger rows of one Bayes store (`store` names it) in the file `path`.

    Rows: `given` (the bytes were handed to a learner whose answer is not in
    yet: a run killed mid-call leaves them), `learned` (the learner said so,
    with SpamAssassin's id), and the ids a Bayes journal held when a run had
    to leave it unread (learned, but not told which file they came from).
    Every change is one sqlite transaction: a crash keeps it whole or not at
    all. The file is opened per use; nothing stays open between batches."""

    def __init__(self, path: str, store: str, since: float) -> None:
        self.path = path
        self.store = store
        self.since = since  # when this run began: `given` rows older are a dead call's
        self.pruned = False

    def _connect(self) -> sqlite3.Connection:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.close(fd)
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(_why(exc)) from None
        try:
            # WAL: a commit is one append, no fsync (synchronous=NORMAL): a
            # killed process loses nothing, a power cut at most the last
            # commits, as it does the Bayes journal sa-learn appends to.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            if not self.pruned:
                self._prune(db)
                self.pruned = True
        except sqlite3.Error as exc:
            db.close()
            raise LedgerError(_why(exc)) from None
        return db

    def _prune(self, db: sqlite3.Connection) -> None:
        old = time.time() - MAX_AGE
        with db:
            for table in ("content", "journal"):
                db.execute(f"DELETE FROM {table} WHERE at < ?", (old,))  # noqa: S608 - fixed names
                db.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "  # noqa: S608
                    "ORDER BY at DESC LIMIT -1 OFFSET ?)",
                    (MAX_ROWS,),
                )

    def _write(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        db = self._connect()
        try:
            with db:
                db.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise LedgerError(_why(exc)) from None
        finally:
            db.close()

    def give(self, kind: str, digests: Iterable[bytes]) -> None:
        """Before a learner call: these bytes are about to be learned (a row
        that is there already keeps its first time)."""
        now = time.time()
        self._write(
            "INSERT INTO content (store, kind, digest, state, at) VALUES (?, ?, ?, 'given', ?) "
            "ON CONFLICT (store, kind, digest) DO NOTHING",
            ((self.store, kind, digest, now) for digest in digests),
        )

    def record(
        self, kind: str, learned: Iterable[tuple[bytes, str]], dropped: Iterable[bytes] = ()
    ) -> None:
        """After a call: `learned` (digest, SpamAssassin's id) pairs; `dropped`
        digests the call did not learn (their `given` rows go)."""
        now = time.time()
        db = self._connect()
        try:
            with db:
                db.executemany(
                    "INSERT INTO content (store, kind, digest, state, key, at) "
                    "VALUES (?, ?, ?, 'learned', ?, ?) ON CONFLICT (store, kind, digest) "
                    "DO UPDATE SET state = 'learned', key = excluded.key, at = excluded.at",
                    ((self.store, kind, digest, key, now) for digest, key in learned),
                )
                db.executemany(
                    "DELETE FROM content WHERE store = ? AND kind = ? AND digest = ? "
                    "AND state = 'given'",
                    ((self.store, kind, digest) for digest in dropped),
                )
        except sqlite3.Error as exc:
            raise LedgerError(_why(exc)) from None
        finally:
            db.close()

    def journal(self, keys: Iterable[str]) -> None:
        """Ids a Bayes journal held that no answer matched to a file (a call
        killed or not understood), kept before that journal is synced away."""
        now = time.time()
        self._write(
            "INSERT INTO journal (store, key, at) VALUES (?, ?, ?) "
            "ON CONFLICT (store, key) DO UPDATE SET at = excluded.at",
            ((self.store, key, now) for key in keys),
        )

    def resolve(self, kind: str, digest: bytes, key: str) -> str:
        """What a skip ("already learned", under SpamAssassin's id `key`, ''
        when not told) means for a file with `digest`: SAME when these bytes
        were learned, or were given to a call of an earlier run that never
        answered while a journal no answer accounted for held `key`, and no
        other content is known under it; OTHER when other content was learned
        under `key`; UNKNOWN otherwise."""
        db = self._connect()
        try:
            row = db.execute(
                "SELECT state, at FROM content WHERE store = ? AND kind = ? AND digest = ?",
                (self.store, kind, digest),
            ).fetchone()
            other = (
                bool(key)
                and db.execute(
                    "SELECT 1 FROM content WHERE store = ? AND key = ? AND digest != ? "
                    "AND state = 'learned' LIMIT 1",
                    (self.store, key, digest),
                ).fetchone()
                is not None
            )
            journaled = (
                bool(key)
                and db.execute(
                    "SELECT 1 FROM journal WHERE store = ? AND key = ?", (self.store, key)
                ).fetchone()
                is not None
            )
        except sqlite3.Error as exc:
            raise LedgerError(_why(exc)) from None
        finally:
            db.close()
        state, at = row if row else (None, 0.0)
        if state == LEARNED or (state == GIVEN and at < self.since and journaled and not other):
            return SAME
        return OTHER if other else UNKNOWN


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class Ledgers:
    """The ledgers one trainer run uses, by (file, store name) as a learner's
    `ledger()` gives them. One is used only where its directory exists (the
    Bayes directory: sa-learn makes it; nothing is created here). One that
    cannot be used is named once in `notes` and then acts as empty: nothing
    it would have proved is deleted."""

    def __init__(self) -> None:
        self.since = time.time()
        self.ledgers: dict[tuple[str, str], Ledger | None] = {}
        self.notes: list[str] = []

    def _get(self, where: tuple[str, str] | None) -> Ledger | None:
        if where is None:
            return None
        if where not in self.ledgers:
            if not os.path.isdir(os.path.dirname(where[0])):
                return None  # not yet: the first sa-learn call makes the directory
            self.ledgers[where] = Ledger(*where, self.since)
        return self.ledgers[where]

    def _failed(self, where: tuple[str, str], exc: LedgerError) -> None:
        from quarantine.names import show

        self.ledgers[where] = None
        self.notes.append(
            f"cannot use the ledger {show(where[0])}: {show(str(exc))}; files the learner "
            "takes for already learned stay where they are"
        )

    def _use(self, where: tuple[str, str] | None, action: Callable[[Ledger], T], default: T) -> T:
        ledger = self._get(where)
        if ledger is None or where is None:
            return default
        try:
            return action(ledger)
        except LedgerError as exc:
            self._failed(where, exc)
            return default

    def give(self, where: tuple[str, str] | None, kind: str, digests: list[bytes]) -> None:
        self._use(where, lambda ledger: ledger.give(kind, digests), None)

    def record(
        self,
        where: tuple[str, str] | None,
        kind: str,
        learned: list[tuple[bytes, str]],
        dropped: list[bytes],
    ) -> None:
        if learned or dropped:
            self._use(where, lambda ledger: ledger.record(kind, learned, dropped), None)

    def journal(self, where: tuple[str, str] | None, keys: set[str]) -> None:
        self._use(where, lambda ledger: ledger.journal(keys), None)

    def resolve(self, where: tuple[str, str] | None, kind: str, digest: bytes, key: str) -> str:
        return self._use(where, lambda ledger: ledger.resolve(kind, digest, key), UNKNOWN)
