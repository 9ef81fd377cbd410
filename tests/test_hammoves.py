"""Ham from moves in the trainer (quarantine/hammoves.py) with Debian's real
sa-learn, the moves made on the files as IMAP servers make them (a rename
keeping the name, a copy under a new name): a message that left Junk for the
inbox or another folder is learned as ham once, where it is; one trashed,
deleted, learned as spam, moved back or reached through a symlink is not; a
release note is learned; the cost outside Junk is bounded."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import config as config_module
from quarantine import hamledger as hl
from quarantine import hammoves, junklog, sandbox
from quarantine.corpus import Mail

if TYPE_CHECKING:
    from collections.abc import Iterator

ALICE = "alice@example.test"


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    yield from ts.example_tree()


def setup(tree: sandbox.Tree, **keys: object) -> tuple[Path, Path, Path]:
    """alice's Maildir, the config (a Bayes store of the test's own) and dbpath."""
    maildir = tree.add_user(ALICE)
    db = ts.bayes_dir(tree)
    config = ts.train_config(tree, dbpath=db / "bayes", **keys)
    return maildir, config, db / "bayes"


def young(maildir: Path, tag: str, folder: str = "Junk") -> Path:
    """A ham-like message in Junk, a day old: not yet due as spam."""
    return ts.put(maildir, folder, ts.ham(tag), age=ts.DAY, sub="new")


def move(path: Path, folder: Path, *, keep_name: bool = True) -> Path:
    """As an IMAP MOVE does it: a rename into the folder's cur/ (Dovecot keeps
    the name), or a new file under a new name and the old one gone (Courier's
    COPY + EXPUNGE)."""
    for sub in ("tmp", "new", "cur"):
        if not (folder / sub).exists():
            (folder / sub).mkdir(parents=True)
            ts.chown(folder)  # only what is new: a chown changes every file's ctime
    name = path.name.partition(":")[0] + ":2,S" if keep_name else f"{time.time_ns()}.copy:2,S"
    target = folder / "cur" / name
    if keep_name:
        os.rename(path, target)
    else:
        target.write_bytes(path.read_bytes())
        ts.chown(target)
        path.unlink()
    return target


def run(config: Path, *args: str) -> dict[str, object]:
    result = ts.invoke(config, "train", "--json", *args)
    assert result.exit_code == 0, result.stdout + result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def nham(dbpath: Path) -> int:
    """Bayes's ham count; 0 while no store exists (nothing learned yet)."""
    if not dbpath.with_name("bayes_toks").exists():
        return 0
    return ts.magic(dbpath)["nham"]


def entries(maildir: Path) -> dict[str, str]:
    data = json.loads((maildir / hl.FILE).read_text())
    return {row[0]: row[4] for row in data["entries"]}


def test_moved_out_of_junk_is_learned_as_ham_once_where_it_is(tree: sandbox.Tree) -> None:
    maildir, config, dbpath = setup(tree)
    to_inbox = young(maildir, "inbox")
    to_work = young(maildir, "work")
    to_trash = young(maildir, "trash")
    deleted = young(maildir, "deleted")
    to_old_trash = young(maildir, "oldtrash")
    stays = young(maildir, "stays")
    first = run(config)
    assert (first["ham_learned"], first["ham_from_moves"], first["spam_learned"]) == (0, 0, 0)
    assert set(entries(maildir).values()) == {hl.JUNK} and len(entries(maildir)) == 6

    in_inbox = move(to_inbox, maildir, keep_name=False)
    in_work = move(to_work, maildir / ".Work")
    move(to_trash, maildir / ".Trash")
    move(to_old_trash, maildir / ".Trash.2024")
    deleted.unlink()
    second = run(config)
    assert (second["ham_learned"], second["ham_from_moves"]) == (2, 2)
    assert nham(dbpath) == 2
    assert in_inbox.read_bytes() == ts.ham("inbox") and in_work.exists()  # left where they are
    assert stays.exists()
    states = sorted(entries(maildir).values())
    assert states == sorted([hl.JUNK, hl.LEFT, hl.LEFT, hl.LEFT, hl.LEARNED, hl.LEARNED])
    text = ts.invoke(config, "train").stdout
    assert "learned 0 messages as spam and 0 as ham" in text

    third = run(config)  # learned once: not again
    assert (third["ham_learned"], third["ham_from_moves"]) == (0, 0)
    assert nham(dbpath) == 2


def test_copied_out_and_flagged_deleted_but_not_expunged_has_left(tree: sandbox.Tree) -> None:
    """A client without MOVE copies, stores \\Deleted and may expunge later:
    the Junk file flagged T has left; flagged T with no copy anywhere, it
    was deleted and is not ham."""
    maildir, config, dbpath = setup(tree)
    copied, deleted = young(maildir, "copied"), young(maildir, "deleted")
    run(config)
    target = maildir / "cur" / f"{time.time_ns()}.copy:2,S"
    target.write_bytes(copied.read_bytes())
    ts.chown(target)
    for path in (copied, deleted):
        path.rename(maildir / ".Junk" / "cur" / f"{path.name}:2,ST")
    assert run(config)["ham_from_moves"] == 1
    assert nham(dbpath) == 1


def test_a_decoy_under_the_moved_message_id_is_not_learned(tree: sandbox.Tree) -> None:
    """The Message-ID is not an identity: a spam carrying the Message-ID of a
    message that left Junk (the original deleted) is not learned as ham."""
    maildir, config, dbpath = setup(tree)
    message = young(maildir, "target")
    run(config)
    moved = move(message, maildir)
    decoy = ts.spam("decoy").replace(b"<spam-decoy@spam.example>", b"<ham-target@ham.example>")
    assert b"<ham-target@ham.example>" in decoy and decoy.count(b"Message-ID") == 1
    ts.put(maildir, None, decoy, age=0)
    moved.unlink()
    assert run(config)["ham_from_moves"] == 0
    assert nham(dbpath) == 0


def test_moved_out_before_any_run_saw_it_in_junk_is_learned_from_the_junk_log(
    tree: sandbox.Tree,
) -> None:
    """deliver's line in the Junk log is how the ledger knows a message the
    user moved out the same day, before the nightly run; the log is emptied
    once its lines are in the ledger."""
    maildir, config, dbpath = setup(tree)
    run(config)
    filed = young(maildir, "sameday")
    junklog.note_junk(str(maildir), "Junk", filed.name)  # what deliver does
    ts.chown(maildir / junklog.LOG)
    other = young(maildir, "deleted-sameday")
    junklog.note_junk(str(maildir), "Junk", other.name)
    move(filed, maildir, keep_name=False)
    other.unlink()
    result = run(config)
    assert (result["ham_from_moves"], result["ham_learned"]) == (1, 1)
    assert nham(dbpath) == 1
    assert (maildir / junklog.LOG).read_bytes() == b""


def test_filed_and_moved_out_in_the_second_before_the_first_run_is_learned(
    tree: sandbox.Tree,
) -> None:
    """The Junk log keeps whole seconds, rounded: a message delivered, moved
    out by the user and met by the mailbox's very first run all within one
    second has a logged time after the run's start. It is still looked for
    (Dovecot's MOVE is that fast)."""
    maildir, config, dbpath = setup(tree)
    filed = young(maildir, "first-second")
    ahead = time.time() + 5  # what the rounding does, made certain
    os.utime(filed, (ahead, ahead))
    junklog.note_junk(str(maildir), "Junk", filed.name)
    ts.chown(maildir / junklog.LOG)
    move(filed, maildir, keep_name=False)
    result = run(config)
    assert (result["ham_from_moves"], result["ham_learned"]) == (1, 1), result
    assert nham(dbpath) == 1


def test_the_report_says_how_many(tree: sandbox.Tree) -> None:
    maildir, config, _ = setup(tree)
    message = young(maildir, "said")
    run(config)
    move(message, maildir)
    text = ts.invoke(config, "train").stdout
    assert "and 1 as ham (1 moved out of Junk by their users)" in text


def test_spam_the_trainer_learned_is_not_ham_when_a_copy_turns_up(tree: sandbox.Tree) -> None:
    """Due as spam at the last run, gone since: the trainer deleted it (or the
    user did); a copy of it in the inbox is not a move."""
    maildir, config, dbpath = setup(tree)
    message = ts.spam("due")
    ts.put(maildir, "Junk", message)  # ten days old: learned as spam and deleted
    assert run(config)["spam_learned"] == 1
    ts.put(maildir, None, message, age=0)
    again = run(config)
    assert (again["ham_learned"], again["ham_from_moves"]) == (0, 0)
    assert nham(dbpath) == 0


def test_moved_back_into_junk_before_the_run_is_not_ham(tree: sandbox.Tree) -> None:
    maildir, config, dbpath = setup(tree)
    message = young(maildir, "back")
    run(config)
    out = move(message, maildir)
    back = move(out, maildir / ".Junk", keep_name=False)
    assert run(config)["ham_from_moves"] == 0
    assert nham(dbpath) == 0
    assert entries(maildir) == {f".Junk/{back.name.partition(':')[0]}": hl.JUNK} | {
        f".Junk/{message.name}": hl.LEFT
    }


def test_off_means_no_ledger_and_no_ham(tree: sandbox.Tree) -> None:
    maildir, config, dbpath = setup(tree, ham_from_moves=False)
    message = young(maildir, "off")
    run(config)
    move(message, maildir)
    assert run(config)["ham_from_moves"] == 0
    assert nham(dbpath) == 0
    assert not (maildir / hl.FILE).exists()


def test_trash_folders_are_configurable(tree: sandbox.Tree) -> None:
    maildir, config, _ = setup(tree, trash_folders=["Papierkorb"])
    one, two = young(maildir, "one"), young(maildir, "two")
    run(config)
    move(one, maildir / ".Papierkorb")
    move(two, maildir / ".Trash")  # an ordinary folder now
    assert run(config)["ham_from_moves"] == 1


def test_a_dry_run_tells_and_changes_nothing(tree: sandbox.Tree) -> None:
    maildir, config, dbpath = setup(tree)
    message = young(maildir, "dry")
    before = ts.snapshot(maildir)
    run(config, "--dry-run")  # no ledger yet: none is made, nor its lock file
    assert ts.snapshot(maildir) == before
    run(config)
    moved = move(message, maildir)
    before = (maildir / hl.FILE).read_bytes()
    dry = run(config, "--dry-run")
    assert dry["ham_from_moves"] == 1
    assert {"action": "learn ham (moved out of Junk), leave", "path": str(moved)} in dry["listing"]  # type: ignore[operator]
    assert (maildir / hl.FILE).read_bytes() == before
    assert nham(dbpath) == 0
    assert run(config)["ham_from_moves"] == 1


def test_a_released_message_is_learned_without_a_junk_scan(tree: sandbox.Tree) -> None:
    maildir, config, dbpath = setup(tree)
    released = ts.put(maildir, None, ts.ham("released"), age=0)
    hl.note_released(maildir, released.name)
    ts.chown(maildir)
    assert run(config)["ham_from_moves"] == 1
    assert nham(dbpath) == 1
    assert run(config)["ham_from_moves"] == 0


def test_symlinks_to_a_moved_message_are_not_followed(tree: sandbox.Tree) -> None:
    """alice's message left Junk and sits in bob's Maildir: a folder of alice's
    that is a symlink to bob's, and a file symlink in her inbox, are not read."""
    maildir, config, dbpath = setup(tree)
    bob = tree.add_user("bob@example.test")
    message = young(maildir, "linked")
    run(config)
    elsewhere = move(message, bob)
    (maildir / ".Bob").symlink_to(bob)
    os.lchown(maildir / ".Bob", ts.UID, ts.GID)
    link = maildir / "cur" / "1700000001.link:2,S"
    link.symlink_to(elsewhere)
    os.lchown(link, ts.UID, ts.GID)
    assert run(config)["ham_from_moves"] == 0
    assert nham(dbpath) == 0


def files_opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Maildir-relative names the ledger's file opener is asked for, from now on."""
    opened: list[str] = []
    real_open = hl.open_file

    def counting(dir_fd: int, relative: str) -> int:
        opened.append(relative)
        return real_open(dir_fd, relative)

    monkeypatch.setattr(hl, "open_file", counting)
    return opened


def scanner(tree: sandbox.Tree, counts: Counts | None = None) -> hammoves.Moves:
    """The trainer's Moves on the tree's configuration, reporting into `counts`."""
    cfg = config_module.load_file(str(ts.train_config(tree)), read_cache=False, write_cache=False)
    return hammoves.Moves(cfg.train, time.time() - 5 * ts.DAY, False, counts or Counts())


def test_a_folder_symlinked_to_another_maildir_is_never_listed_or_read(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One vpopmail uid holds alice and bob; alice makes `.Bob` a symlink to
    bob's Maildir. The search outside Junk neither lists nor opens anything
    through it: bob's fresh mail (a copy of alice's message among it) costs
    her search no read, and her own moved message is still found."""
    maildir = tree.add_user(ALICE)
    bob = tree.add_user("bob@example.test")
    message = young(maildir, "mine")
    counts = Counts()
    moves = scanner(tree, counts)
    moves.scan(ALICE, str(maildir))
    for n in range(5):
        ts.put(bob, None, ts.ham(f"bobs{n}"), age=0)
    ts.put(bob, None, message.read_bytes(), age=0)
    (maildir / ".Bob").symlink_to(bob)
    os.lchown(maildir / ".Bob", ts.UID, ts.GID)
    moved = move(message, maildir / ".Work")
    opened = files_opened(monkeypatch)
    monkeypatch.setattr(hammoves, "MAX_READS", 3)  # bob's six would use them up
    (found,) = moves.scan(ALICE, str(maildir))
    assert (found.folder.name, found.name) == (".Work", moved.name)
    assert opened == [f".Work/cur/{moved.name}"]
    assert counts.notes == [] and counts.errors == []


def test_the_search_stops_once_every_message_that_left_is_found(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two messages left Junk, for the inbox and .Archive: once both are
    found, .Work (searched after them, with fresh mail) is not even opened."""
    maildir = tree.add_user(ALICE)
    first, second = young(maildir, "first"), young(maildir, "second")
    moves = scanner(tree)
    moves.scan(ALICE, str(maildir))
    to_inbox = move(first, maildir)
    to_archive = move(second, maildir / ".Archive")
    for n in range(3):
        ts.put(maildir, "Work", ts.ham(f"work{n}"), age=0)
    entered: list[str] = []
    real_open = os.open

    def spying(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        entered.append(os.fsdecode(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(hammoves.os, "open", spying)
    found = moves.scan(ALICE, str(maildir))
    monkeypatch.undo()
    assert sorted(f.path for f in found) == sorted([str(to_inbox), str(to_archive)])
    assert [p for p in entered if p.startswith(".Work")] == []
    assert ".Archive" in entered or ".Archive/cur" in entered  # searched, found there


def test_a_ledger_or_junk_log_held_forever_fails_that_mailbox_after_a_bounded_wait(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process takes alice's ledger lock, then her Junk log's, and
    never lets go: each scan (and the flush) of hers gives up after LOCK_WAIT
    with an error naming the mailbox; bob's mailbox is scanned all the same."""
    maildir = tree.add_user(ALICE)
    bob = tree.add_user("bob@example.test")
    message = young(maildir, "held")
    junklog.note_junk(str(maildir), "Junk", message.name)
    young(bob, "free")
    monkeypatch.setattr(hl, "LOCK_WAIT", 0.3)
    counts = Counts()
    moves = scanner(tree, counts)
    for name, what in ((hl.LOCK, "ham ledger"), (junklog.LOG, "its Junk log")):
        with open(maildir / name, "ab") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            started = time.monotonic()
            assert ts.finishes_within(10, lambda: moves.scan(ALICE, str(maildir))) == []
            assert 0.3 <= time.monotonic() - started < 5
        (error,) = counts.errors
        assert error.startswith(f"{ALICE}: ham ledger ") and what in error
        assert "locked by another process for over 0.3 s" in error
        counts.errors.clear()
    assert (maildir / junklog.LOG).read_bytes().count(b"\n") == 1  # not taken in, not lost
    assert moves.scan("bob@example.test", str(bob)) == []
    assert counts.errors == [] and (bob / hl.FILE).exists()
    moves.done[str(maildir)] = {("mid", "body")}
    with open(maildir / hl.LOCK, "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        ts.finishes_within(10, moves.flush)
    (error,) = counts.errors
    assert "locked by another process" in error and moves.done == {}


class Counts:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.listing: list[dict[str, str]] = []
        self.counts: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def skip(self, reason: str, n: int = 1) -> None:
        self.add(reason, n)


def test_outside_junk_only_files_changed_since_the_last_scan_are_opened(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    maildir = tree.add_user(ALICE)
    for n in range(300):
        ts.put(maildir, None, ts.ham(f"old{n}"), age=3 * ts.DAY)
        ts.put(maildir, "Archive", ts.ham(f"arch{n}"), age=3 * ts.DAY)
    message = young(maildir, "moved")
    cfg = config_module.load_file(str(ts.train_config(tree)), read_cache=False, write_cache=False)
    opened = files_opened(monkeypatch)
    monkeypatch.setattr(hammoves, "SLACK", 0.0)
    moves = hammoves.Moves(cfg.train, time.time() - 5 * ts.DAY, False, Counts())
    assert moves.scan(ALICE, str(maildir)) == []
    assert opened == [f".Junk/new/{message.name}"]  # the Junk file, once
    opened.clear()
    time.sleep(0.05)
    moved = move(message, maildir)
    (found,) = moves.scan(ALICE, str(maildir))
    assert opened == [f"cur/{moved.name}"]  # not the 600 older files
    assert (found.folder.name, found.sub, found.name) == ("", "cur", moved.name)
    assert isinstance(found, Mail) and found.path == str(moved)  # the trainer's own kind


def test_a_bound_on_files_read_outside_junk_defers_the_rest(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    maildir = tree.add_user(ALICE)
    message = young(maildir, "late")
    cfg = config_module.load_file(str(ts.train_config(tree)), read_cache=False, write_cache=False)
    counts = Counts()
    moves = hammoves.Moves(cfg.train, time.time() - 5 * ts.DAY, False, counts)
    moves.scan(ALICE, str(maildir))
    for n in range(5):
        ts.put(maildir, None, ts.ham(f"fresh{n}"), age=0)
    moved = move(message, maildir / ".Work")
    monkeypatch.setattr(hammoves, "MAX_READS", 3)
    assert moves.scan(ALICE, str(maildir)) == []  # the inbox's five came first
    assert any("more than 3 changed files" in note for note in counts.notes)
    monkeypatch.setattr(hammoves, "MAX_READS", 100)
    (found,) = moves.scan(ALICE, str(maildir))  # looked at from the same time again
    assert (found.folder.name, found.name) == (".Work", moved.name)


def test_two_entries_of_one_message_wait_for_its_learning_both(tree: sandbox.Tree) -> None:
    """Released (noted) and seen leaving Junk: two entries, one message. A run
    killed before learning it (scan, no settle) leaves it to the next run:
    neither entry counts as learned before the learner said so."""
    maildir = tree.add_user(ALICE)
    message = young(maildir, "twice")
    cfg = config_module.load_file(str(ts.train_config(tree)), read_cache=False, write_cache=False)
    moves = hammoves.Moves(cfg.train, time.time() - 5 * ts.DAY, False, Counts())
    moves.scan(ALICE, str(maildir))
    released = move(message, maildir)  # as `quarantine release` moves it
    hl.note_released(maildir, released.name)
    for _ in range(2):  # the second scan: the run before it was killed
        (found,) = moves.scan(ALICE, str(maildir))
        assert found.name == released.name
        assert sorted(entries(maildir).values()) == [hl.FOUND, hl.FOUND]
    moves.settled(found.folder, str(released), learned=True, copy=False)
    moves.flush()
    assert sorted(entries(maildir).values()) == [hl.LEARNED, hl.LEARNED]
    assert moves.scan(ALICE, str(maildir)) == []
