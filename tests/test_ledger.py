"""The trainer's ledger of learned content (quarantine/ledger.py): what a skip
resolves to, the rows a run killed mid-call leaves, its bounds in age and
rows, and a ledger that cannot be used (it proves nothing, and says so)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from quarantine import ledger

STORE = "sa-learn /var/lib/bayes/bayes -"


def at(tmp_path: Path, since: float | None = None) -> ledger.Ledger:
    return ledger.Ledger(str(tmp_path / "bayes.quarantine-ledger"), STORE, since or time.time())


def test_a_skip_is_the_same_content_only_for_bytes_learned(tmp_path: Path) -> None:
    book = at(tmp_path)
    book.record("spam", [(b"decoy", "K@sa_generated"), (b"real", "R@sa_generated")])
    assert book.resolve("spam", b"real", "R@sa_generated") == ledger.SAME
    assert book.resolve("spam", b"real", "anything") == ledger.SAME  # its bytes were learned
    assert book.resolve("spam", b"spam", "K@sa_generated") == ledger.OTHER
    assert book.resolve("spam", b"spam", "unknown@sa_generated") == ledger.UNKNOWN
    assert book.resolve("spam", b"spam", "") == ledger.UNKNOWN
    assert book.resolve("ham", b"real", "R@sa_generated") == ledger.UNKNOWN  # other class
    other = ledger.Ledger(book.path, "sa-learn /elsewhere -", time.time())
    assert other.resolve("spam", b"real", "R@sa_generated") == ledger.UNKNOWN  # other store


def test_given_rows_of_a_dead_call_count_only_with_the_journal_and_from_an_earlier_run(
    tmp_path: Path,
) -> None:
    """A run killed during a sa-learn call leaves its files `given`; the next
    run proves one by the id a journal no answer matched held, and only when
    no other content is known under that id."""
    killed = at(tmp_path, time.time())
    killed.give("spam", [b"a", b"b", b"c"])
    now = at(tmp_path, time.time() + 1)
    assert now.resolve("spam", b"a", "A@g") == ledger.UNKNOWN  # no journal held A
    now.journal({"A@g", "C@g"})
    assert now.resolve("spam", b"a", "A@g") == ledger.SAME
    now.record("spam", [(b"other", "C@g")])
    assert now.resolve("spam", b"c", "C@g") == ledger.OTHER
    same_run = at(tmp_path, time.time() - 5)  # the rows were given in this very run
    assert same_run.resolve("spam", b"a", "A@g") == ledger.UNKNOWN
    now.record("spam", [], dropped=[b"a"])
    assert now.resolve("spam", b"a", "A@g") == ledger.UNKNOWN
    between = time.time()
    now.give("spam", [b"b"])  # given again by this run: the row keeps its first time
    assert at(tmp_path, between).resolve("spam", b"b", "A@g") == ledger.SAME


def test_the_ledger_is_bounded_in_age_and_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = at(tmp_path)
    book.record("spam", [(bytes([n]), f"k{n}") for n in range(10)])
    book.journal({f"j{n}" for n in range(10)})
    db = sqlite3.connect(book.path)
    with db:
        db.execute("UPDATE content SET at = 0 WHERE key = 'k0'")
    db.close()
    monkeypatch.setattr(ledger, "MAX_ROWS", 4)
    fresh = at(tmp_path)
    assert fresh.resolve("spam", b"\x00", "k0") == ledger.UNKNOWN  # too old: gone first
    db = sqlite3.connect(book.path)
    count = "SELECT (SELECT count(*) FROM content), (SELECT count(*) FROM journal)"
    assert db.execute(count).fetchone() == (4, 4)
    db.close()


def test_an_unusable_ledger_proves_nothing_and_says_so_once(tmp_path: Path) -> None:
    books = ledger.Ledgers()
    missing = (str(tmp_path / "not-yet" / "bayes.quarantine-ledger"), STORE)
    books.give(missing, "spam", [b"x"])  # no Bayes directory yet: nothing, silently
    assert books.resolve(missing, "spam", b"x", "k") == ledger.UNKNOWN and not books.notes
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "bayes.quarantine-ledger").mkdir()  # not a file
    where = (str(blocked / "bayes.quarantine-ledger"), STORE)
    books.record(where, "spam", [(b"x", "k")], [])
    assert books.resolve(where, "spam", b"x", "k") == ledger.UNKNOWN
    assert len(books.notes) == 1 and "cannot use the ledger" in books.notes[0]
