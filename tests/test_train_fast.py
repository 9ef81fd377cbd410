"""A sa-learn call over more than learners.DEBUG_UP_TO files runs without
`-D bayes`: its count line proves the set when it learned every file given;
otherwise the batch is asked again with `-D bayes` (after a sync), and a kill
at any point deletes nothing unlearned. Also the last batch split among
parallel calls, and the ham ledger settled in one pass."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import batching, bayes, learners, sandbox

if TYPE_CHECKING:
    from collections.abc import Iterator

    from quarantine.ledger import Ledgers

MANY = learners.DEBUG_UP_TO + 8  # one call, without debug output


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    yield from ts.example_tree()


def learning_calls(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "--sync " not in line + " "]


def ledger_keys(db: Path, tmp_path: Path) -> list[str]:
    copy = tmp_path / "ledger-copy"
    copy.write_bytes((db / "bayes.quarantine-ledger").read_bytes())
    with sqlite3.connect(copy) as ledger:
        rows = ledger.execute("SELECT key FROM content WHERE state = 'learned'")
        return [key for (key,) in rows]


@pytest.mark.slow
def test_a_large_batch_is_proven_by_its_count_line_alone(tree: sandbox.Tree) -> None:
    alice = tree.add_user("alice@example.test")
    paths = [ts.put(alice, "Junk", ts.spam(f"f{n}")) for n in range(MANY)]
    db = ts.bayes_dir(tree)
    log = ts.call_log(tree)
    config = ts.train_config(tree, dbpath=db / "bayes", sa_learn=ts.logging_sa_learn(tree, log))
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    (call,) = learning_calls(log)
    assert " -D " not in call and "--no-sync" not in call  # the last call syncs itself
    assert data["spam_learned"] == data["deleted"] == MANY and data["calls"] == 1
    assert not any(p.exists() for p in paths)
    assert ts.magic(db / "bayes")["nspam"] == MANY


@pytest.mark.slow
@pytest.mark.parametrize("batch", [0, MANY], ids=["self-syncing", "journal"])
def test_a_known_message_in_a_large_batch_asks_again_with_debug_output(
    tree: sandbox.Tree, batch: int
) -> None:
    """One message of the batch was learned by an earlier run: the count line
    says MANY-1 of MANY, so the batch goes again with `-D bayes`: every file
    is known by its own content key then, MANY-1 of them counted learned."""
    alice = tree.add_user("alice@example.test")
    db = ts.bayes_dir(tree)
    old = ts.spam("old")
    ts.learn_directly(tree, db / "bayes", old)
    log = ts.call_log(tree)
    first = [ts.put(alice, "Junk", ts.spam(f"a{n}")) for n in range(MANY - 1)]
    first.append(ts.put(alice, "Junk", old))
    second = [ts.put(alice, "Junk", ts.spam(f"b{n}")) for n in range(MANY)] if batch else []
    config = ts.train_config(
        tree, dbpath=db / "bayes", sa_learn=ts.logging_sa_learn(tree, log), batch_size=batch
    )
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    calls = learning_calls(log)
    debug = [" -D " in call for call in calls]  # the old one is in either batch
    assert debug.count(True) == 1 and len(debug) == (3 if batch else 2) and not debug[0]
    assert data["spam_learned"] == len(first) - 1 + len(second)
    assert data["already_known"] == 1 and data["failed"] == 0
    assert not any(p.exists() for p in [*first, *second])
    assert ts.magic(db / "bayes")["nspam"] == 1 + len(first) - 1 + len(second)


@pytest.mark.slow
def test_a_call_that_writes_the_journal_names_the_ids_it_learned(
    tree: sandbox.Tree, tmp_path: Path
) -> None:
    """A `--no-sync` call's journal lines give the ledger each file's id; the
    last call, which syncs itself, writes no journal: its ids are not told."""
    alice = tree.add_user("alice@example.test")
    for n in range(2 * MANY):
        ts.put(alice, "Junk", ts.spam(f"j{n}"))
    db = ts.bayes_dir(tree)
    config = ts.train_config(tree, dbpath=db / "bayes", batch_size=MANY)
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["spam_learned"] == 2 * MANY
    keys = ledger_keys(db, tmp_path)
    assert len(keys) == 2 * MANY
    told = [key for key in keys if key]
    assert len(told) == len(set(told)) == MANY
    assert all(key.endswith("@sa_generated") for key in told)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [0, MANY], ids=["self-syncing", "journal"])
def test_a_call_killed_after_learning_deletes_nothing_and_the_next_run_finishes(
    tree: sandbox.Tree, batch: int
) -> None:
    """The first call learns its files (into the database, or the journal),
    then dies: none of them goes. The next run finds them known and deletes
    them; every message counted once."""
    alice = tree.add_user("alice@example.test")
    paths = [ts.put(alice, "Junk", ts.spam(f"k{n}")) for n in range(2 * MANY)]
    db = ts.bayes_dir(tree)
    mark = ts.call_log(tree)  # written once the kill is done
    dying = ts.script(
        tree.root / "sa-learn-dies",
        f'#!/bin/sh\n{ts.SA_LEARN} "$@"\ncode=$?\n'
        f'if [ "$1" != --sync ] && [ ! -s {mark} ]; then echo >> {mark}; kill -9 $$; fi\n'
        "exit $code\n",
    )
    config = ts.train_config(tree, dbpath=db / "bayes", sa_learn=dying, batch_size=batch)
    data, result = ts.train_json(config)
    assert result.exit_code == 1, result.output
    assert "killed by signal 9" in result.stderr
    killed = MANY if batch else 2 * MANY
    assert data["failed"] == killed and data["deleted"] == 2 * MANY - killed
    assert sum(p.exists() for p in paths) == killed
    data, result = ts.train_json(ts.train_config(tree, dbpath=db / "bayes", batch_size=batch))
    assert result.exit_code == 0, result.output
    assert data["already_known"] == killed and data["deleted"] == killed
    assert not any(p.exists() for p in paths)
    assert ts.magic(db / "bayes")["nspam"] == 2 * MANY


def test_a_fast_answer_with_a_file_gone_is_asked_again(tree: sandbox.Tree) -> None:
    """The count line says every file was learned, but one was gone when
    sa-learn looked (it says so only by the count): the batch goes again
    with `-D bayes`, whose per-message lines name the files still there."""
    alice = tree.add_user("alice@example.test")
    paths = [ts.put(alice, "Junk", ts.spam(f"v{n}")) for n in range(MANY)]
    log = ts.call_log(tree)
    gone = paths[3]
    lines = "".join(
        f'echo "Dec  1 03:30:00.000 [7] dbg: bayes: k{n}@sa_generated already learnt '
        f'correctly, not learning twice" >&2\n'
        for n in range(MANY - 1)
    )
    answer = (
        f'printf "%s\\n" "$*" >> {log}\n'
        'case "$*" in *" -D bayes "*) '
        + lines
        + f'echo "Learned tokens from 0 message(s) ({MANY - 1} message(s) examined)"; exit 0;; '
        f"esac\nrm -f {gone}\n"
        f'echo "Learned tokens from {MANY} message(s) ({MANY} message(s) examined)"\nexit 0\n'
    )
    program = ts.script(
        tree.root / "sa-learn-says", f'#!/bin/sh\n[ "$1" = --sync ] && exit 0\n{answer}'
    )
    data, result = ts.train_json(ts.train_config(tree, sa_learn=program))
    assert result.exit_code == 0, result.output
    calls = learning_calls(log)
    assert [" -D " in call for call in calls] == [False, True]
    # Skipped by keys that are not theirs, and no ledger saying otherwise: kept.
    assert data["skipped"] == {"vanished": 1, "known": MANY - 1}
    assert data["deleted"] == 0 and data["spam_learned"] == 0
    assert all(p.exists() for p in paths if p != gone)


class _Parallel(learners.Learner):
    parallel = 2
    batch_size = 1000

    def ledger(self, store: learners.Store) -> tuple[str, str] | None:
        return None


class _Item:
    def __init__(self, n: int) -> None:
        self.path = f"/m/{n}"
        self.digest = bytes([n % 256]) * 32
        self.ids = frozenset({f"<{n}@x>".encode()})


class _NoLedger:
    def give(self, where: object, kind: str, digests: list[bytes]) -> None:
        return None


@pytest.mark.parametrize(("count", "sizes"), [(120, [60, 60]), (99, [99]), (101, [51, 50])])
def test_the_last_batch_is_split_among_parallel_calls(count: int, sizes: list[int]) -> None:
    ledgers: Ledgers = _NoLedger()  # type: ignore[assignment]
    batcher = batching.Batcher(_Parallel(), ledgers, lambda item: None)
    items = [_Item(n) for n in range(count)]
    store = learners.Store()
    for item in items:
        assert batcher.place(item, "spam", store) is None
    tasks = list(batcher.drain())
    assert [len(t.paths) for t in tasks] == sizes
    assert [p for t in tasks for p in t.paths] == [item.path for item in items]
    for task in tasks:
        batch = task.payload
        assert isinstance(batch, batching.Batch)
        assert [item.path for item in batch.items] == task.paths
        assert batch.ids == {one for item in batch.items for one in item.ids}


def test_journal_ids_are_read_in_order_past_an_offset_and_never_from_a_fifo(
    tmp_path: Path,
) -> None:
    """The journal's message lines after `start`, in order; a FIFO planted
    where the journal should be is not waited on (the call would hang)."""
    import os
    import threading

    journal = tmp_path / "bayes_journal"
    journal.write_bytes(b"m s first\nt 1 2 3 abc\nm h second\nm s cut")
    start = len(b"m s first\n")
    assert bayes.journal_keys(str(journal)) == ["first", "second"]
    assert bayes.journal_keys(str(journal), start) == ["second"]
    assert bayes.journal_keys(str(journal), 10**6) == []
    assert bayes.journal_ids(str(tmp_path / "bayes")) == {"first", "second"}
    fifo = tmp_path / "fifo_journal"
    os.mkfifo(fifo)
    answer: list[list[str]] = []
    reader = threading.Thread(target=lambda: answer.append(bayes.journal_keys(str(fifo))))
    reader.start()
    reader.join(10)
    if reader.is_alive():  # unblock the thread before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert answer == [[]]
