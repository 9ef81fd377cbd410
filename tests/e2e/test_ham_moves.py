"""Ham from moves through real IMAP servers: Courier imapd (COPY, then
\\Deleted and EXPUNGE: it has no MOVE) and Dovecot's imap (MOVE, and COPY +
EXPUNGE) move messages out of a Junk folder; the installed `quarantine train`
then learns exactly the moved ones as ham (nham from `sa-learn --dump magic`),
not the trashed or deleted ones, and a run SIGKILLed mid-way and rerun learns
each one once."""

from __future__ import annotations

import imaplib
import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import hamledger as hl
from quarantine import junklog, sandbox

from .helpers import qmail_env, run_deliver
from .test_train_reliability import train

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.slow

ALICE = "alice@example.test"
ROUNDS = int(os.environ.get("QUARANTINE_HAM_KILL_ROUNDS", "2"))


class Server:
    """One IMAP server's session on alice's Maildir and what it calls folders."""

    def __init__(self, name: str, session: imaplib.IMAP4_stream, prefix: str) -> None:
        self.name = name
        self.session = session
        self.prefix = prefix  # Courier: INBOX. ; Dovecot (no namespace prefix): ''

    def folder(self, name: str) -> str:
        return "INBOX" if name == "INBOX" else self.prefix + name

    def ok(self, answer: tuple[str, list[object]]) -> list[object]:
        assert answer[0] == "OK", (self.name, answer)
        return answer[1]

    def select_junk(self) -> None:
        self.ok(self.session.select(self.folder("Junk")))

    def uid_of(self, mid: str) -> bytes:
        """The UID of the one message in the selected folder with Message-ID `mid`."""
        found = self.ok(self.session.uid("SEARCH", "HEADER", "Message-ID", mid))
        (uid,) = bytes(found[0]).split()  # type: ignore[arg-type]
        return uid

    def create(self, name: str) -> None:
        self.ok(self.session.create(self.folder(name)))

    def copy_expunge(self, mid: str, to: str) -> None:
        """COPY to `to`, then \\Deleted and EXPUNGE in Junk: a move."""
        uid = self.uid_of(mid)
        self.ok(self.session.uid("COPY", uid, self.folder(to)))
        self.ok(self.session.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"))
        self.ok(self.session.expunge())

    def move(self, mid: str, to: str) -> None:
        self.ok(self.session.uid("MOVE", self.uid_of(mid), self.folder(to)))

    def delete(self, mid: str) -> None:
        uid = self.uid_of(mid)
        self.ok(self.session.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"))
        self.ok(self.session.expunge())

    def capabilities(self) -> set[str]:
        return set(self.session.capabilities)


@pytest.fixture(params=["courier", "dovecot"])
def server(
    request: pytest.FixtureRequest,
    tree: sandbox.Tree,
    imap: Callable[..., imaplib.IMAP4_stream],
    dovecot: Callable[[Path], imaplib.IMAP4_stream],
) -> Callable[[], Server]:
    """A function that opens a session of the server on alice's Maildir."""
    maildir = tree.maildir(ALICE)
    if request.param == "courier":
        return lambda: Server("courier", imap(maildir), "INBOX.")
    return lambda: Server("dovecot", dovecot(maildir), "")


def plant(maildir: Path, tags: list[str]) -> dict[str, str]:
    """Ham-like messages in alice's Junk, a day old (not yet due as spam), as
    deliver leaves them (new/, no flags); their Message-IDs by tag."""
    for tag in tags:
        ts.put(maildir, "Junk", ts.ham(tag), age=ts.DAY, sub="new")
    return {tag: f"<ham-{tag}@ham.example>" for tag in tags}


def config_for(tree: sandbox.Tree) -> tuple[Path, Path]:
    db = ts.bayes_dir(tree)
    return ts.train_config(tree, dbpath=db / "bayes", batch_size=2), db / "bayes"


def run_json(quarantine_bin: Path, config: Path) -> dict[str, object]:
    ran = train(quarantine_bin, config)
    assert ran.code == 0, ran.stdout + ran.stderr
    data: dict[str, object] = json.loads(ran.stdout)
    return data


def test_the_messages_moved_out_by_imap_are_learned_as_ham_and_only_they(
    tree: sandbox.Tree, server: Callable[[], Server], quarantine_bin: Path
) -> None:
    maildir = tree.maildir(ALICE)
    config, dbpath = config_for(tree)
    mids = plant(maildir, ["copied", "moved", "filed", "trashed", "deleted", "kept"])
    first = run_json(quarantine_bin, config)
    assert first["ham_from_moves"] == 0 and first["spam_learned"] == 0

    imap = server()
    for folder in ("Work", "Trash"):
        imap.create(folder)
    imap.select_junk()
    imap.copy_expunge(mids["copied"], "INBOX")
    if imap.name == "dovecot":
        assert "MOVE" in imap.capabilities()
        imap.move(mids["moved"], "INBOX")
        imap.move(mids["filed"], "Work")
    else:  # Courier imapd 5 has no MOVE: clients copy and expunge
        assert "MOVE" not in imap.capabilities()
        imap.copy_expunge(mids["moved"], "INBOX")
        imap.copy_expunge(mids["filed"], "Work")
    imap.copy_expunge(mids["trashed"], "Trash")
    imap.delete(mids["deleted"])
    imap.session.logout()
    inbox = [p.read_bytes() for p in (maildir / "cur").iterdir()]
    inbox += [p.read_bytes() for p in (maildir / "new").iterdir()]
    assert sorted(inbox) == sorted([ts.ham("copied"), ts.ham("moved")])

    second = run_json(quarantine_bin, config)
    assert (second["ham_from_moves"], second["ham_learned"]) == (3, 3), second
    assert ts.magic(dbpath)["nham"] == 3
    states = json.loads((maildir / hl.FILE).read_text())["entries"]
    learned = {row[0] for row in states if row[4] == hl.LEARNED}
    assert len(learned) == 3  # the next run learns them no more (tests/test_hammoves.py)


def test_filed_by_deliver_and_moved_out_before_any_run_is_learned(
    tree: sandbox.Tree,
    server: Callable[[], Server],
    quarantine_bin: Path,
    sa_messages: dict[str, bytes],
) -> None:
    """The usual false positive: `quarantine deliver` files it into Junk, the
    user moves it back the same day, before the nightly run has seen it in
    Junk. deliver's line in the Junk log is what the ledger knows it by."""
    maildir = tree.maildir(ALICE)
    config, dbpath = config_for(tree)
    ran = run_deliver(quarantine_bin, tree, sa_messages["spam"], qmail_env(tree))
    assert ran.returncode == 99, ran.stdout
    (line,) = junklog.parse((maildir / junklog.LOG).read_bytes())
    assert line[0] == ".Junk" and (maildir / ".Junk" / "new" / line[1]).exists()
    imap = server()
    imap.select_junk()
    if imap.name == "dovecot":
        imap.move("<GTUBE1.1010101@example.net>", "INBOX")
    else:
        imap.copy_expunge("<GTUBE1.1010101@example.net>", "INBOX")
    imap.session.logout()
    first = run_json(quarantine_bin, config)
    assert (first["ham_from_moves"], first["spam_learned"]) == (1, 0), first
    assert ts.magic(dbpath)["nham"] == 1
    assert (maildir / junklog.LOG).read_bytes() == b""  # its line is in the ledger now


def test_a_run_killed_mid_way_and_rerun_learns_each_moved_message_once(
    tree: sandbox.Tree,
    imap: Callable[..., imaplib.IMAP4_stream],
    quarantine_bin: Path,
    seed: int,
) -> None:
    """Courier moves (COPY + EXPUNGE); the whole run, sa-learn too, SIGKILLed
    at a random moment each round; a last run finishes: Bayes counts each
    moved message once, and the ledger says each was learned."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    maildir = tree.maildir(ALICE)
    config, dbpath = config_for(tree)
    moved: set[str] = set()
    kills = 0
    span = 0.0
    for round_ in range(ROUNDS):
        tags = [f"r{round_}m{n}" for n in range(5)]
        mids = plant(maildir, tags)
        seen = train(quarantine_bin, config)  # the ledger sees them in Junk
        assert seen.code == 0, seen.stdout + seen.stderr
        span = max(span, seen.seconds)
        courier = Server("courier", imap(maildir), "INBOX.")
        courier.select_junk()
        for tag in tags[:4]:
            courier.copy_expunge(mids[tag], "INBOX")
            moved.add(tag)
        courier.session.logout()
        # Learning takes a sa-learn call or two after the scan: the whole run
        # (sa-learn too) killed anywhere from its start to past its end.
        ran = train(quarantine_bin, config, rng.uniform(0.2, 1.2 * span), group=True)
        kills += ran.code is None
    last = run_json(quarantine_bin, config)
    # What the killed runs left unlearned, at most every moved message (how
    # many depends on where the kills fell; the counts below are exact).
    assert 0 <= last["ham_from_moves"] <= len(moved), (last["ham_from_moves"], len(moved))
    assert ts.magic(dbpath)["nham"] == len(moved), (kills, len(moved))
    states = json.loads((maildir / hl.FILE).read_text())["entries"]
    assert sum(row[4] == hl.LEARNED for row in states) == len(moved)
    assert not [n for n in os.listdir(maildir) if n.endswith(".tmp")]
    again = run_json(quarantine_bin, config)
    assert again["ham_from_moves"] == 0
    assert ts.magic(dbpath)["nham"] == len(moved)
    print(f"ham moves kill: rounds={ROUNDS} killed={kills} moved={len(moved)} seed={seed}")
