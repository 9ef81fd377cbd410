"""Fills the learner's batches from the files the trainer scans: one open batch
per (class, store), never two different contents with one Message-ID in one
call (such a file waits for a later batch), and each batch's contents given to
the ledger just before it is sent.
"""

from __future__ import annotations

from typing import Protocol

from quarantine import learners

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from quarantine.ledger import Ledgers

    Slot = tuple[str, tuple[str, str]]  # (class, store) of an open batch

HELD_CALLS = 20  # calls of their own, per slot and run, for files that had to wait
SHARE_AT_LEAST = 50  # files per call when a last batch is split among parallel calls


class Item(Protocol):
    """What a batch needs of a file: where it is, the digest of its bytes,
    and the Message-IDs it carries."""

    path: str
    digest: bytes
    ids: frozenset[bytes]


class Batch:
    """A learner Task's payload: its files, and the Message-IDs among them."""

    __slots__ = ("ids", "items")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.ids: set[bytes] = set()


class Batcher:
    """The open batches of one trainer. `place` puts a file in one and returns
    a batch that is full (to send first); `drain` sends what is open, then the
    files held back: up to HELD_CALLS calls per slot, the rest handed to `drop`
    (left for the next run)."""

    def __init__(
        self, learner: learners.Learner, ledgers: Ledgers, drop: Callable[[Item], None]
    ) -> None:
        self.learner = learner
        self.ledgers = ledgers
        self.drop = drop
        self.open: dict[Slot, learners.Task] = {}
        self.held: dict[Slot, tuple[learners.Store, list[Item]]] = {}

    def place(self, item: Item, kind: str, store: learners.Store) -> learners.Task | None:
        slot = (kind, store.key())
        task = self.open.get(slot)
        full = None
        if task is not None and not self.learner.fits(task, item.path):
            full = self._given(self.open.pop(slot))
            task = None
        if task is None:
            task = self.open[slot] = self._new(slot, store)
        if not self._join(task, item):  # another content with its Message-ID is in there
            self.held.setdefault(slot, (store, []))[1].append(item)
        return full

    def drain(self, store_key: tuple[str, str] | None = None) -> Iterator[learners.Task]:
        """The open batches of one store (or all), each split among the
        learner's parallel calls, then its held-back files."""
        for slot in [s for s in self.open if store_key is None or s[1] == store_key]:
            for part in self._split(self.open.pop(slot)):
                yield self._given(part)
        for slot in [s for s in self.held if store_key is None or s[1] == store_key]:
            store, waiting = self.held[slot]
            for _ in range(HELD_CALLS):
                if not waiting:
                    break
                yield self._given(self._new(slot, store))
            for item in self.held.pop(slot)[1]:
                self.drop(item)

    def _new(self, slot: Slot, store: learners.Store) -> learners.Task:
        """A new batch, started with the files held back for its slot that fit."""
        task = learners.Task(slot[0], store, [], Batch())
        waiting = self.held.get(slot, (store, []))[1]
        for item in list(waiting):
            if self._join(task, item):
                waiting.remove(item)
        return task

    def _join(self, task: learners.Task, item: Item) -> bool:
        batch = _batch(task)
        if batch.ids & item.ids or not self.learner.fits(task, item.path):
            return False
        task.paths.append(item.path)
        batch.items.append(item)
        batch.ids |= item.ids
        return True

    def _split(self, task: learners.Task) -> list[learners.Task]:
        """`task` in up to `learner.parallel` parts of SHARE_AT_LEAST files
        or more (the files in their order): what is left at the end of a run
        is shared by the calls that run at once instead of waiting for one."""
        items = _batch(task).items
        parts = min(self.learner.parallel, len(items) // SHARE_AT_LEAST)
        if parts < 2:
            return [task]
        size = -(-len(items) // parts)
        out = []
        for start in range(0, len(items), size):
            part = learners.Task(task.kind, task.store, [], Batch())
            batch = _batch(part)
            batch.items = items[start : start + size]
            batch.ids = {one for item in batch.items for one in item.ids}
            part.paths = [item.path for item in batch.items]
            out.append(part)
        return out

    def _given(self, task: learners.Task) -> learners.Task:
        """`task`, once the ledger of its store holds its contents as given (a
        run killed during the call leaves them so)."""
        where = self.learner.ledger(task.store)
        self.ledgers.give(where, task.kind, [item.digest for item in _batch(task).items])
        return task


def _batch(task: learners.Task) -> Batch:
    batch = task.payload
    assert isinstance(batch, Batch)
    return batch
