"""What a trainer backend is (learners.py holds the two there are): the store
learning goes to, a call's worth of messages (Task), what became of each file
(Result), the interface every backend has (Learner), and its error.
"""

from __future__ import annotations

import os

from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

OUTPUT_KEPT = 2000  # characters of a failing program's output kept for the report


class LearnerError(Exception):
    """The backend cannot work at all: its program is missing, or it failed
    GIVE_UP_AFTER times in a row. Nothing more is attempted this run."""


class Store:
    """Where learning goes: a Bayes database path (sa-learn `--dbpath`), a user
    (`-u user@domain`), both, or neither (the program's own default)."""

    __slots__ = ("dbpath", "user")

    def __init__(self, dbpath: str | None = None, user: str | None = None) -> None:
        self.dbpath = dbpath
        self.user = user

    def key(self) -> tuple[str, str]:
        return (self.dbpath or "", self.user or "")

    def __repr__(self) -> str:
        return f"Store({self.dbpath!r}, {self.user!r})"


class Task:
    """One call's worth of learning: messages of one class (`spam` or `ham`)
    into one store. `payload` is the caller's own record of the messages."""

    __slots__ = ("counted", "kind", "paths", "payload", "store", "used")

    def __init__(self, kind: str, store: Store, paths: list[str], payload: object = None) -> None:
        self.kind = kind
        self.store = store
        self.paths = paths
        self.payload = payload
        self.counted = 0  # paths whose argv bytes `used` holds (SaLearn.fits)
        self.used = 0


class Result:
    """What became of a Task. `ok`: the call (and the sync after it) worked.
    Per file: `learned` maps a path to the id SpamAssassin stored it under
    ('' when the program does not say), `known` a path it skipped by its own
    content key (to that key and the digest of the bytes that showed it:
    proof.content_digest), `skipped` a path it did not learn because it took
    it for one already learned by another key, or did not say which (the id
    it matched, or ''), `vanished` lists files gone when the program looked.
    A file in none of them was not proven learned; `detail` says why (or what
    failed). `first`: how many of `known` an earlier call over the same files
    learned (they count as learned)."""

    __slots__ = ("detail", "first", "known", "learned", "ok", "skipped", "task", "vanished")

    def __init__(
        self,
        task: Task,
        ok: bool,
        detail: str = "",
        vanished: list[str] | None = None,
        learned: dict[str, str] | None = None,
        skipped: dict[str, str] | None = None,
        known: dict[str, tuple[str, bytes]] | None = None,
    ):
        self.task = task
        self.ok = ok
        self.detail = detail
        self.vanished = vanished or []
        self.learned = learned if learned is not None else {}
        self.skipped = skipped if skipped is not None else {}
        self.known = known if known is not None else {}
        self.first = 0  # of `known`: how many an earlier call over these files learned


class Learner:
    """The interface: check() before anything, run(tasks) yields one Result per
    Task (in any order), finish() after the last (sa-learn's journal sync).
    `batch_size` is how many messages the caller should put in one Task."""

    name = "learner"
    batch_size = 1
    parallel = 1  # calls at once: the caller splits its last batches this many ways
    calls = 0  # programs run so far
    # Called with a store and the ids its Bayes journal holds, before a sync
    # applies a journal whose messages no answer matched to files.
    on_journal: Callable[[Store, set[str]], None] | None = None

    def check(self) -> None:
        raise NotImplementedError

    def run(self, tasks: Iterable[Task], stop: Callable[[], bool]) -> Iterator[Result]:
        raise NotImplementedError

    def finish(self) -> list[str]:
        """Work owed at the end of the run; returns error messages."""
        return []

    def take_notes(self) -> list[str]:
        """What it did that an admin should hear of (not failures), once."""
        return []

    def fits(self, task: Task, path: str) -> bool:
        """May `path` join `task`, or must the task be sent first?"""
        return len(task.paths) < self.batch_size

    def refuse(self, path: str) -> str | None:
        """A skip reason when the program would misread `path`, else None."""
        return None

    def ledger(self, store: Store) -> tuple[str, str] | None:
        """Where the ledger of `store` lives and the name of the store in it;
        None when there is no place for one."""
        return None


def check_program(path: str, key: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise LearnerError(f"{show(path)} is not an executable program (train.{key})")


def output_tail(text: bytes) -> str:
    """The end of a program's output, as one printable line."""
    line = show(" ".join(text.decode("utf-8", "surrogateescape").split()))
    return line if len(line) <= OUTPUT_KEPT else "..." + line[-OUTPUT_KEPT:]


def exit_text(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit {code}"
