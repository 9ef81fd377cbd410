"""`quarantine train` against Debian's real sa-learn on a throwaway Bayes
database: one full run over a sandbox vpopmail tree (alias and hashed domains,
duplicates across users, young, dot, trashed, symlinked and non-regular files,
a ham rescue folder, maildirsize), checked from several sides; then
`quarantine stats` on what it left."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import sandbox

if TYPE_CHECKING:
    from collections.abc import Iterator

    from click.testing import Result

pytestmark = pytest.mark.slow


class Scenario:
    """The tree before the run (what should go and what should stay) and the run."""

    def __init__(self) -> None:
        self.tree = ts.new_tree()
        self.learned: list[Path] = []  # should be learned and deleted
        self.copies: list[Path] = []  # duplicates: deleted, learned once
        self.kept: list[Path] = []  # must stay untouched
        self.never_read: list[Path] = []  # must never reach sa-learn
        self.ham: list[tuple[Path, str]] = []  # (file, name expected in the inbox's cur/)
        self.result: Result | None = None
        self.alice_sizes = 0  # bytes of alice's messages that should be deleted
        self.dbpath = Path()
        self.log = Path()
        self.config = Path()

    @property
    def run(self) -> Result:
        assert self.result is not None
        return self.result


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    sc = Scenario()
    tree = sc.tree
    try:
        tree.add_domain("example.test")
        tree.add_alias("alias.test", "example.test")
        tree.add_domain("hashed.test", hashed=True)
        alice = tree.add_user("alice@example.test", quota="10000000S")
        bob = tree.add_user("bob@example.test")
        carol = tree.add_user("carol@example.test")
        dave = tree.add_user("dave@hashed.test", subdir="0")
        erin = tree.add_user("erin@hashed.test", subdir="A/b")

        # One campaign in three users' Junk folders (bob's is `.junk`: any case).
        campaign = ts.spam("campaign")
        sc.learned.append(ts.put(alice, "Junk", campaign))
        sc.copies.append(ts.put(bob, "junk", campaign))
        sc.copies.append(ts.put(carol, "Junk", campaign, sub="new"))
        sc.learned.append(ts.put(alice, "Junk", ts.spam("a1"), sub="new"))
        sc.learned.append(ts.put(alice, "Junk", ts.spam("a2"), flags="RS"))
        sc.learned.append(ts.put(bob, "junk", ts.spam("b1")))
        sc.learned.append(ts.put(dave, "Junk", ts.spam("d1")))
        sc.learned.append(ts.put(erin, "Spam", ts.spam("e1")))

        # What must stay: young, trashed, dot file, symlink, FIFO, other folders.
        sc.kept.append(ts.put(alice, "Junk", ts.spam("young"), age=ts.DAY))
        sc.kept.append(ts.put(alice, "Junk", ts.spam("trashed"), flags="ST"))
        sc.kept.append(ts.put(alice, "Junk", ts.spam("dot"), name=".hidden-message"))
        sc.kept.append(ts.put(alice, "Archive", ts.spam("archive")))
        sc.kept.append(ts.put(alice, None, ts.spam("inbox")))
        secret = tree.root / "root-only.eml"
        secret.write_bytes(ts.spam("secret"))
        secret.chmod(0o600)
        link = alice / ".Junk" / "cur" / "1700000999.M1P1.test,S=10:2,S"
        link.symlink_to(secret)
        os.lchown(link, ts.UID, ts.GID)
        fifo = alice / ".Junk" / "cur" / "1700000998.M1P1.test:2,S"
        os.mkfifo(fifo)
        ts.chown(fifo)
        sc.kept += [link, fifo]
        sc.never_read = [p for p in sc.kept if ".Junk" in str(p)]

        # Bob rescued two messages into NotJunk: learned as ham, back in the inbox.
        new_ham = ts.put(bob, "NotJunk", ts.ham("h1"), sub="new")
        sc.ham.append((new_ham, new_ham.name + ":2,"))
        cur_ham = ts.put(bob, "NotJunk", ts.ham("h2"), flags="FS")
        sc.ham.append((cur_ham, cur_ham.name))

        sc.alice_sizes = sum(p.stat().st_size for p in sc.learned if p.is_relative_to(alice))
        db = ts.bayes_dir(tree)
        sc.dbpath = db / "bayes"
        sc.log = ts.call_log(tree)
        config = ts.train_config(
            tree,
            dbpath=sc.dbpath,
            sa_learn=ts.logging_sa_learn(tree, sc.log),
            folders=["Junk", "Spam"],
            ham_folder="NotJunk",
            batch_size=4,
        )
        sc.config = config
        sc.result = ts.invoke(config, "train")
        yield sc
    finally:
        sandbox.remove(tree)


def calls(sc: Scenario) -> list[str]:
    return sc.log.read_text().splitlines()


def test_run_succeeds_with_a_summary(scenario: Scenario) -> None:
    run = scenario.run
    assert run.exit_code == 0, run.output
    assert "learned 6 messages as spam and 2 as ham" in run.stdout
    assert "2 more copies" in run.stdout
    assert "deleted 8, moved 2 to the inbox" in run.stdout
    assert "none failed" in run.stdout
    assert "1 younger than 5d" in run.stdout


def test_bayes_counts_each_aged_spam_once(scenario: Scenario) -> None:
    counts = ts.magic(scenario.dbpath)
    assert counts["nspam"] == 6  # the campaign once, five others
    assert counts["nham"] == 2


def test_learned_messages_and_their_copies_are_deleted(scenario: Scenario) -> None:
    for path in scenario.learned + scenario.copies:
        assert not path.exists(), path


def test_everything_else_is_untouched(scenario: Scenario) -> None:
    for path in scenario.kept:
        assert os.path.lexists(path), path
    link = next(p for p in scenario.kept if p.is_symlink())
    assert os.readlink(link) == str(scenario.tree.root / "root-only.eml")


def test_skipped_files_never_reach_sa_learn(scenario: Scenario) -> None:
    text = "\n".join(calls(scenario))
    for path in scenario.never_read:
        assert path.name not in text, path
    assert "root-only" not in text


def test_batches_into_the_journal_and_the_last_call_syncs_it(scenario: Scenario) -> None:
    lines = calls(scenario)
    assert sorted(line.split()[0] for line in lines) == ["--ham", "--spam", "--spam"]
    assert all(f"--dbpath {scenario.dbpath}" in line for line in lines)
    assert max(len(line.split(" -- ")[1].split()) for line in lines) <= 4  # batch_size
    assert all("--no-sync" in line.split() for line in lines[:-1])
    assert "--no-sync" not in lines[-1].split()  # one start fewer than a --sync after it
    assert not any("--sync" in line.split() for line in lines)
    assert not (scenario.dbpath.parent / "bayes_journal").exists()


def test_ham_moves_to_the_inbox_keeping_flags(scenario: Scenario) -> None:
    bob = scenario.tree.maildir("bob@example.test")
    for source, name in scenario.ham:
        assert not source.exists()
        moved = bob / "cur" / name
        assert moved.is_file()
        assert b"@ham.example>" in moved.read_bytes()
    assert any(name.endswith(":2,FS") for _, name in scenario.ham)


def test_maildirsize_records_the_deletions(scenario: Scenario) -> None:
    alice = scenario.tree.maildir("alice@example.test")
    lines = (alice / "maildirsize").read_text().splitlines()
    assert lines[0] == "10000000S"
    assert lines[-1] == f"-{scenario.alice_sizes} -3"


def test_alias_domain_counted_once_hashed_dirs_found(scenario: Scenario) -> None:
    run = scenario.run
    assert "6 folders of 5 users in 2 domains" in run.stdout


def test_files_belong_to_the_domain_uid(scenario: Scenario) -> None:
    db = scenario.dbpath.parent
    for path in db.iterdir():
        assert path.stat().st_uid == ts.UID, path
    bob = scenario.tree.maildir("bob@example.test")
    for path in (bob / "cur").iterdir():
        assert path.stat().st_uid == ts.UID


def test_stats_reports_what_is_left_and_the_last_run(scenario: Scenario) -> None:
    result = ts.invoke(scenario.config, "stats", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {(r["address"], r["folder"]): r for r in data["folders"]}
    alice = rows[("alice@example.test", "Junk")]
    assert alice["messages"] == 1 and alice["due"] == 0  # the young one
    assert alice["bytes"] == scenario.kept[0].stat().st_size
    assert rows[("bob@example.test", "junk")]["messages"] == 0
    assert rows[("bob@example.test", "NotJunk")]["kind"] == "ham"
    assert rows[("erin@hashed.test", "Spam")]["messages"] == 0
    last = data["last_run"]
    assert last["exit_code"] == 0 and last["spam_learned"] == 6 and last["deleted"] == 8
    store = f"dbfile {scenario.dbpath}"
    assert data["bayes"] == {"store": store, "nspam": 6, "nham": 2}  # read as uid 89
    text = ts.invoke(scenario.config, "stats")
    assert "alice@example.test" in text.stdout and "last run:" in text.stdout
    assert f"bayes: {store}: nspam 6, nham 2" in text.stdout
    assert "learned 6 messages as spam" in text.stdout


def test_a_second_run_finds_nothing_more(scenario: Scenario) -> None:
    result = ts.invoke(scenario.config, "train", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["spam_learned"] == 0 and data["deleted"] == 0 and data["calls"] == 0
    assert data["skipped"]["young"] == 1


def test_per_user_bayes_learns_once_per_user() -> None:
    tree = ts.new_tree()
    try:
        tree.add_domain("example.test")
        alice = tree.add_user("alice@example.test")
        bob = tree.add_user("bob@example.test")
        shared = ts.spam("shared")
        for maildir in (alice, bob):
            ts.put(maildir, "Junk", shared)
            ts.put(maildir, "Junk", shared, sub="new")  # the same message twice
        ts.put(alice, "Junk", ts.spam("alice-only"))
        root = ts.bayes_dir(tree)
        config = ts.train_config(tree, dbpath=f"{root}/%d/%l/bayes", per_user=True)
        for user in ("alice", "bob"):
            (root / "example.test" / user).mkdir(parents=True)
        ts.chown(root)
        result = ts.invoke(config, "train")
        assert result.exit_code == 0, result.output
        assert ts.magic(root / "example.test" / "alice" / "bayes")["nspam"] == 2
        assert ts.magic(root / "example.test" / "bob" / "bayes")["nspam"] == 1
        assert ts.files(alice / ".Junk") == [alice / ".Junk" / "maildirfolder"]
        assert ts.files(bob / ".Junk") == [bob / ".Junk" / "maildirfolder"]
    finally:
        sandbox.remove(tree)


def test_a_message_removed_between_scan_and_learn_is_skipped() -> None:
    tree = ts.new_tree()
    try:
        tree.add_domain("example.test")
        alice = tree.add_user("alice@example.test")
        paths = [ts.put(alice, "Junk", ts.spam(f"v{i}")) for i in range(3)]
        db = ts.bayes_dir(tree)
        # The user deletes the first message just as sa-learn starts.
        wrapper = ts.script(
            tree.root / "sa-learn-racing",
            f'#!/bin/sh\n[ "$1" = --sync ] || rm -f {paths[0]}\nexec {ts.SA_LEARN} "$@"\n',
        )
        config = ts.train_config(tree, dbpath=db / "bayes", sa_learn=wrapper)
        result = ts.invoke(config, "train", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["spam_learned"] == 2 and data["deleted"] == 2
        assert data["skipped"] == {"vanished": 1}
        assert ts.magic(db / "bayes")["nspam"] == 2
        assert not any(p.exists() for p in paths)
    finally:
        sandbox.remove(tree)


def test_sa_learn_learns_what_quarantine_would_not_count_twice() -> None:
    """The measured fact behind the dedupe: the same message in two --no-sync
    calls counts twice in Bayes, so the trainer must not rely on sa-learn."""
    with ts.tempfile.TemporaryDirectory() as tmp:
        message = Path(tmp) / "m.eml"
        message.write_bytes(ts.spam("twice"))
        env = {"HOME": tmp, "PATH": "/usr/bin:/bin", "LANG": "C"}
        db = Path(tmp) / "bayes"
        for _ in range(2):
            ts.subprocess.run(
                [ts.SA_LEARN, "--dbpath", str(db), "--spam", "--no-sync", str(message)],
                env=env,
                check=True,
                capture_output=True,
            )
        ts.subprocess.run(
            [ts.SA_LEARN, "--dbpath", str(db), "--sync"], env=env, check=True, capture_output=True
        )
        assert ts.magic(db)["nspam"] == 2
        shutil.rmtree(tmp, ignore_errors=True)
