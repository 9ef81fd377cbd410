"""The ham ledger of a Maildir (quarantine/hamledger.py): what makes two files
one message, the file written whole or not at all, its bounds, a hostile or
broken ledger file, symlinks never followed, a lock held forever waited for
only so long, and `note_released`."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import train_support as ts

from quarantine import hamledger as hl
from quarantine import junklog

MESSAGE = (
    b"From: a@example.test\nTo: b@example.test\nSubject: hi\n"
    b"Message-ID: <one@example.test>\n\nline one\nline two\n"
)


def maildir(tmp_path: Path) -> Path:
    top = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp", ".Junk/new", ".Junk/cur", ".Junk/tmp"):
        (top / sub).mkdir(parents=True, exist_ok=True)
    return top


def ident_of(path: Path) -> hl.Ident:
    fd = os.open(path, os.O_RDONLY)
    try:
        return hl.identify(fd)
    finally:
        os.close(fd)


def test_one_message_whatever_its_name_line_ends_or_header_flags(tmp_path: Path) -> None:
    one = tmp_path / "1"
    one.write_bytes(MESSAGE)
    crlf = tmp_path / "2"
    crlf.write_bytes(MESSAGE.replace(b"\n", b"\r\n"))
    flagged = tmp_path / "3"  # a client added a header: the body is what counts
    flagged.write_bytes(b"X-Mozilla-Status: 0001\n" + MESSAGE)
    assert ident_of(one) == ident_of(crlf) == ident_of(flagged)
    assert ident_of(one).mid == junklog.mid_digest(b"one@example.test")
    assert ident_of(one).blen == len(b"line one\nline two\n")
    other_body = tmp_path / "4"
    other_body.write_bytes(MESSAGE.replace(b"line two", b"line 2"))
    other_id = tmp_path / "5"
    other_id.write_bytes(MESSAGE.replace(b"<one@", b"<two@"))
    keys = {ident_of(p).key for p in (one, other_body, other_id)}
    assert len(keys) == 3


def test_a_crlf_split_across_blocks_is_one_line_end(tmp_path: Path) -> None:
    body = b"x" * ((1 << 16) - 1 - len(b"Subject: s\r\n\r\n")) + b"\r\nend\r\n"
    crlf = tmp_path / "crlf"
    crlf.write_bytes(b"Subject: s\r\n\r\n" + body)
    lf = tmp_path / "lf"
    lf.write_bytes(b"Subject: s\n\n" + body.replace(b"\r\n", b"\n"))
    assert ident_of(crlf) == ident_of(lf)
    cr_last = tmp_path / "cr"
    cr_last.write_bytes(b"Subject: s\n\nends in CR\r")
    assert ident_of(cr_last).blen == len(b"ends in CR\r")


def test_the_first_message_id_unfolded_and_none_is_empty() -> None:
    assert junklog.first_message_id(b"Message-Id:\n <a@b>\nMessage-ID: <c@d>") == b"a@b"
    assert junklog.first_message_id(b"Subject: Message-ID: <x@y>\nTo: z") is None
    assert junklog.first_message_id(b"Message-ID: <>") is None


def test_a_header_longer_than_the_limit_is_read_only_that_far(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(b"X-Pad: " + b"p" * (2 * hl.HEADER_LIMIT) + b"\n\nbody\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        head = hl.read_head(fd)
    finally:
        os.close(fd)
    assert head.mid == "" and head.body_at == hl.HEADER_LIMIT


def test_saved_whole_and_read_back(tmp_path: Path) -> None:
    top = maildir(tmp_path)
    with hl.Locked(top) as book:
        book.scanned, book.cutoff = 1000.0, 900.0
        ident = hl.Ident("m", "b", 3)
        now = float(int(time.time()))
        book.entries[".Junk/x"] = hl.Entry(".Junk/x", ident, hl.JUNK, ".Junk/cur/x:2,", 1.0, 2.0)
        book.entries[".Junk/y"] = hl.Entry(".Junk/y", ident, hl.LEFT, ".Junk/new/y", 1.0, now)
        book.save()
    assert sorted(os.listdir(top)) == sorted(["new", "cur", "tmp", ".Junk", hl.FILE, hl.LOCK])
    assert (top / hl.FILE).stat().st_mode & 0o777 == 0o600
    with hl.Locked(top) as again:
        assert (again.scanned, again.cutoff) == (1000.0, 900.0)
        assert {o: e.as_list() for o, e in again.entries.items()} == {
            ".Junk/x": [".Junk/x", "m", "b", 3, hl.JUNK, ".Junk/cur/x:2,", 1.0, 2.0],
            ".Junk/y": [".Junk/y", "m", "b", 3, hl.LEFT, ".Junk/new/y", 1.0, now],
        }
        again.learned(("m", "b"), now=5.0)
        assert {e.state for e in again.entries.values()} == {hl.LEARNED}


def test_a_failed_write_keeps_the_old_ledger_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = maildir(tmp_path)
    with hl.Locked(top) as book:
        book.scanned = 1.0
        book.save()
    before = (top / hl.FILE).read_bytes()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hl.os, "fsync", full)
    with hl.Locked(top) as book, pytest.raises(OSError):
        book.scanned = 2.0
        book.save()
    assert (top / hl.FILE).read_bytes() == before
    assert not [n for n in os.listdir(top) if n.endswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"version": 99, "entries": []}',
        b"[1, 2, 3]",
        b"\xff\xfe",
        json.dumps({"version": 1, "scanned": "x", "entries": [[1], "row", None]}).encode(),
    ],
)
def test_a_broken_or_hostile_ledger_is_started_afresh(tmp_path: Path, content: bytes) -> None:
    top = maildir(tmp_path)
    (top / hl.FILE).write_bytes(content)
    with hl.Locked(top) as book:
        assert book.entries == {} and book.scanned == 0.0


def test_only_the_valid_rows_of_a_ledger_are_kept(tmp_path: Path) -> None:
    top = maildir(tmp_path)
    good = [".Junk/a", "m", "b", 1, "left", ".Junk/cur/a", 1.0, time.time()]
    rows = [good, [".Junk/b", "m", "b", 1, "bogus", "", 1, 1], [".Junk/c", 1, 2, 3, 4, 5, 6, 7]]
    (top / hl.FILE).write_text(json.dumps({"version": 1, "entries": rows}))
    with hl.Locked(top) as book:
        assert list(book.entries) == [".Junk/a"]


def test_bounded_in_entries_and_in_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hl, "MAX_ENTRIES", 5)
    top = maildir(tmp_path)
    now = time.time()
    with hl.Locked(top) as book:
        for n in range(8):
            book.entries[f".Junk/{n}"] = hl.Entry(
                f".Junk/{n}", hl.Ident("", str(n), 1), hl.JUNK, "", 0.0, now - 100 + n
            )
        old = now - hl.KEEP[hl.LEFT] - 1
        book.entries["gone"] = hl.Entry("gone", hl.Ident("", "g", 1), hl.LEFT, "", 0.0, old)
        book.save()
    with hl.Locked(top) as book:
        assert sorted(book.entries) == [f".Junk/{n}" for n in range(3, 8)]


def test_a_ledger_file_larger_than_the_bound_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hl, "MAX_BYTES", 100)
    top = maildir(tmp_path)
    (top / hl.FILE).write_text(json.dumps({"version": 1, "entries": [], "pad": "x" * 200}))
    with hl.Locked(top) as book:
        assert book.problem and book.entries == {}


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    top = maildir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = elsewhere / "secret"
    secret.write_text("{}")
    link = tmp_path / "linked"
    link.symlink_to(top)
    with pytest.raises(OSError), hl.Locked(link):
        pass
    (top / hl.FILE).symlink_to(secret)  # the ledger itself
    with pytest.raises(OSError), hl.Locked(top):
        pass
    (top / hl.FILE).unlink()
    (top / hl.LOCK).unlink()
    (top / hl.LOCK).symlink_to(elsewhere / "lock")  # the lock file
    with pytest.raises(OSError), hl.Locked(top):
        pass
    assert not (elsewhere / "lock").exists()
    (top / hl.LOCK).unlink()
    (top / "cur" / "msg").symlink_to(secret)
    with pytest.raises(OSError):
        hl.note_released(top, "msg")
    dir_fd = hl.open_maildir(top)
    try:
        (top / ".Work").symlink_to(elsewhere)
        with pytest.raises(OSError):
            os.close(hl.open_file(dir_fd, ".Work/secret"))
        with pytest.raises(ValueError):
            hl.open_file(dir_fd, "../elsewhere/secret")
    finally:
        os.close(dir_fd)


def test_note_released_records_the_inbox_file_once(tmp_path: Path) -> None:
    top = maildir(tmp_path)
    (top / "cur" / "1700000000.1.host:2,S").write_bytes(MESSAGE)
    hl.note_released(top, "1700000000.1.host:2,S")
    with hl.Locked(top) as book:
        (entry,) = book.entries.values()
        assert entry.state == hl.FOUND
        assert entry.where == "cur/1700000000.1.host:2,S"
        assert entry.key == ident_of(top / "cur" / "1700000000.1.host:2,S").key
        book.learned(entry.key)
        book.save()
    hl.note_released(top, "1700000000.1.host:2,S")  # learned: not again
    with hl.Locked(top) as book:
        assert [e.state for e in book.entries.values()] == [hl.LEARNED]
    for bad in ("", "a/b", "..", "missing"):
        with pytest.raises(ValueError):
            hl.note_released(top, bad)


def _release(top: str, name: str) -> None:
    hl.note_released(top, name)


def test_releases_at_once_are_all_kept(tmp_path: Path) -> None:
    """The flock: each writer reads what the one before it wrote."""
    top = maildir(tmp_path)
    names = [f"17000000{n:02d}.{n}.host" for n in range(8)]
    for n, name in enumerate(names):
        (top / "new" / name).write_bytes(MESSAGE.replace(b"one@", f"m{n}@".encode()))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_release, args=(str(top), name)) for name in names]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    with hl.Locked(top) as book:
        assert sorted(e.where for e in book.entries.values()) == [f"new/{n}" for n in names]


def test_a_temporary_file_left_by_a_killed_writer_goes_with_the_next_save(tmp_path: Path) -> None:
    top = maildir(tmp_path)
    (top / f"{hl.FILE}.4242.tmp").write_text('{"version": 1, "half')
    with hl.Locked(top) as book:
        book.save()
    assert sorted(n for n in os.listdir(top) if n.startswith(hl.FILE)) == [hl.FILE, hl.LOCK]


def test_read_only_creates_nothing(tmp_path: Path) -> None:
    top = maildir(tmp_path)
    before = sorted(os.listdir(top))
    with hl.Locked(top, read_only=True) as book:
        assert book.entries == {}
    assert sorted(os.listdir(top)) == before
    with hl.Locked(top) as book:
        book.scanned = 5.0
        book.save()
    with hl.Locked(top, read_only=True) as book:  # a shared flock of the lock file
        assert book.scanned == 5.0


def test_a_lock_held_forever_costs_a_bounded_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the ledger's flock and never letting go: the
    trainer's Locked (and a release's note) give up after LOCK_WAIT with an
    OSError, exclusive or shared; the ledger is untouched."""
    top = maildir(tmp_path)
    (top / "cur" / "1700000000.1.host:2,S").write_bytes(MESSAGE)
    with hl.Locked(top) as book:
        book.scanned = 5.0
        book.save()
    before = (top / hl.FILE).read_bytes()
    monkeypatch.setattr(hl, "LOCK_WAIT", 0.3)

    def locked(read_only: bool) -> None:
        with hl.Locked(top, read_only=read_only):
            raise AssertionError("entered a ledger another process holds")

    with open(top / hl.LOCK, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another open file: another holder
        for work in (
            lambda: locked(False),
            lambda: locked(True),
            lambda: hl.note_released(top, "1700000000.1.host:2,S"),
        ):
            started = time.monotonic()
            raised = ts.finishes_within(10, work)
            assert isinstance(raised, BlockingIOError), raised
            assert 0.3 <= time.monotonic() - started < 5
            assert "locked by another process for over 0.3 s" in str(raised)
    assert (top / hl.FILE).read_bytes() == before
    hl.note_released(top, "1700000000.1.host:2,S")  # let go: it goes through
    with hl.Locked(top) as book:
        assert [e.state for e in book.entries.values()] == [hl.FOUND]
