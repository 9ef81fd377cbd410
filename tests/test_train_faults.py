"""`quarantine train` when things go wrong or must not change anything: the
dry run, the lock (exit 75), a failing or killed sa-learn (nothing of its batch
deleted), a broken backend (given up after a few calls), a missing program and
bad options (exit 2), spamd unreachable; plus discovery of a 300-user hashed
domain, the in-process path of a non-root run, and the pure helpers."""

from __future__ import annotations

import fcntl
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import bayes, discovery, learners, sandbox, train
from quarantine import config as config_module

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    yield from ts.example_tree()


def junk(tree: sandbox.Tree, address: str, count: int, tag: str = "m") -> list[Path]:
    maildir = tree.maildir(address) if address in _users(tree) else tree.add_user(address)
    return [ts.put(maildir, "Junk", ts.spam(f"{tag}{i}")) for i in range(count)]


def _users(tree: sandbox.Tree) -> set[str]:
    out = set()
    for domain, path in tree.domains.items():
        for line in (path / "vpasswd").read_text().splitlines():
            out.add(f"{line.split(':')[0]}@{domain}")
    return out


def never_run(tree: sandbox.Tree) -> tuple[Path, Path]:
    """A sa-learn that leaves a mark if anything runs it."""
    mark = tree.root / "ran"
    return ts.script(
        tree.root / "sa-learn-never", f"#!/bin/sh\ntouch {mark}\n{ts.SAYS_LEARNED}exit 0\n"
    ), mark


def test_dry_run_lists_and_changes_nothing(tree: sandbox.Tree) -> None:
    paths = junk(tree, "alice@example.test", 3)
    ham_dir = tree.maildir("alice@example.test")
    ham = ts.put(ham_dir, "NotJunk", ts.ham("h"), sub="new")
    program, mark = never_run(tree)
    config = ts.train_config(tree, sa_learn=program, ham_folder="NotJunk")
    config_module.load(str(config))  # writes the config's compiled cache beside it
    before = ts.snapshot(tree.root)
    result = ts.invoke(config, "train", "--dry-run")
    assert result.exit_code == 0, result.output
    for path in paths:
        assert f"would learn spam, delete: {path}" in result.stdout
    assert f"would learn ham, move: {ham} -> {ham_dir}/cur/{ham.name}:2," in result.stdout
    assert "(dry run)" in result.stdout and "would learn 3 messages as spam" in result.stdout
    assert ts.snapshot(tree.root) == before  # no lock file, no state file, nothing moved
    assert not mark.exists()
    data = json.loads(ts.invoke(config, "train", "--dry-run", "--json").stdout)
    assert data["dry_run"] is True and len(data["listing"]) == 4


def test_a_second_run_exits_75_while_the_lock_is_held(tree: sandbox.Tree) -> None:
    paths = junk(tree, "alice@example.test", 2)
    program, mark = never_run(tree)
    config = ts.train_config(tree, sa_learn=program)
    lock = tree.root / "train.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        result = ts.invoke(config, "train")
    finally:
        os.close(fd)
    assert result.exit_code == 75
    assert "another quarantine train run holds" in result.stderr and "pid 4242" in result.stderr
    assert not mark.exists() and all(p.exists() for p in paths)
    # Released: the next run works (the stub "learns" everything).
    assert ts.invoke(config, "train").exit_code == 0
    assert not any(p.exists() for p in paths)


@pytest.mark.parametrize("how", ["exit 1", "kill -9 $$"], ids=["exits-1", "killed"])
def test_a_failing_batch_deletes_nothing_of_it(tree: sandbox.Tree, how: str) -> None:
    alice = junk(tree, "alice@example.test", 2, "a")
    bob = junk(tree, "bob@example.test", 2, "b")
    # Fails the batch that holds bob's first message, learns (pretends to) the rest.
    program = ts.script(
        tree.root / "sa-learn-flaky",
        f'#!/bin/sh\ncase "$*" in *{bob[0].name}*) {how} ;; esac\n{ts.SAYS_LEARNED}exit 0\n',
    )
    config = ts.train_config(tree, sa_learn=program, batch_size=2)
    result = ts.invoke(config, "train", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["failed"] == 2 and data["deleted"] == 2
    assert data["failed_folders"] == ["bob@example.test/.Junk"]
    assert all(p.exists() for p in bob) and not any(p.exists() for p in alice)
    detail = "exit 1" if how == "exit 1" else "killed by signal 9"
    assert detail in result.stderr


def test_a_broken_sa_learn_is_given_up_after_three_calls(tree: sandbox.Tree) -> None:
    paths = junk(tree, "alice@example.test", 6)
    log = ts.call_log(tree)
    program = ts.script(
        tree.root / "sa-learn-broken",
        f'#!/bin/sh\necho "$1" >> {log}\necho "bayes: cannot open bayes databases" >&2\nexit 2\n',
    )
    config = ts.train_config(tree, sa_learn=program, batch_size=1)
    result = ts.invoke(config, "train")
    assert result.exit_code == 1
    assert log.read_text().split() == ["--spam"] * 3 + ["--sync"]
    assert "3 sa-learn calls in a row failed" in result.stderr
    assert "cannot open bayes databases" in result.stderr
    assert all(p.exists() for p in paths)


def test_a_missing_sa_learn_is_a_clear_error(tree: sandbox.Tree) -> None:
    junk(tree, "alice@example.test", 1)
    config = ts.train_config(tree, sa_learn="/nonexistent/sa-learn")
    result = ts.invoke(config, "train")
    assert result.exit_code == 2
    assert "/nonexistent/sa-learn is not an executable program (train.sa_learn)" in result.output
    assert "Traceback" not in result.output


def test_spamd_unreachable_fails_cleanly(tree: sandbox.Tree) -> None:
    paths = junk(tree, "alice@example.test", 4)
    config = ts.train_config(tree, backend="spamc", spamd_port=1, timeout="5s")
    result = ts.invoke(config, "train")
    assert result.exit_code == 1
    assert "spamd at 127.0.0.1:1" in result.stderr
    assert "3 spamc calls in a row failed" in result.stderr
    assert all(p.exists() for p in paths)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "soon"], "is not a duration"),
        (["--user", "alice"], "give user@domain"),
        (["--domain", "nowhere.test"], "no such vpopmail domain: nowhere.test"),
    ],
)
def test_bad_options_exit_2(tree: sandbox.Tree, args: list[str], message: str) -> None:
    config = ts.train_config(tree, sa_learn=never_run(tree)[0])
    result = ts.invoke(config, "train", *args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"dbpath": "/var/lib/bayes/%d/bayes"}, "train.per_user is false"),
        ({"per_user": True, "dbpath": "/var/lib/bayes/bayes"}, "one Bayes store"),
        ({"folders": ["Junk"], "ham_folder": "junk"}, "also one of train.folders"),
    ],
)
def test_contradictory_config_exits_2(
    tree: sandbox.Tree, keys: dict[str, object], message: str
) -> None:
    config = ts.train_config(tree, sa_learn=never_run(tree)[0], **keys)
    result = ts.invoke(config, "train")
    assert result.exit_code == 2 and message in result.output


def test_narrowing_by_domain_user_and_age(tree: sandbox.Tree) -> None:
    tree.add_domain("other.test")
    tree.add_alias("alias.test", "example.test")
    alice = junk(tree, "alice@example.test", 1, "a")
    bob = junk(tree, "bob@example.test", 1, "b")
    other = junk(tree, "carol@other.test", 1, "c")
    young = ts.put(tree.maildir("bob@example.test"), "Junk", ts.spam("y"), age=2 * 3600)
    config = ts.train_config(tree, sa_learn=never_run(tree)[0])

    def listed(*args: str) -> str:
        result = ts.invoke(config, "train", "--dry-run", *args)
        assert result.exit_code == 0, result.output
        return result.stdout

    out = listed("--domain", "alias.test")
    assert str(alice[0]) in out and str(bob[0]) in out and str(other[0]) not in out
    out = listed("--user", "bob@example.test")
    assert str(bob[0]) in out and str(alice[0]) not in out and str(young) not in out
    out = listed("--user", "bob@example.test", "--older-than", "90m")
    assert str(young) in out


def test_a_hashed_domain_with_300_users_is_found_whole(tree: sandbox.Tree) -> None:
    tree.add_domain("big.test", hashed=True)
    expected = []
    message = ts.spam("big")
    for i in range(300):
        # vpopmail's bigdir layout: 100 in the domain dir, then one-letter subdirs.
        subdir = "" if i < 100 else ("0" if i < 200 else "A/B")
        maildir = tree.add_user(f"user{i}@big.test", subdir=subdir)
        expected.append(ts.put(maildir, "Junk", message))
    config = ts.train_config(tree, sa_learn=never_run(tree)[0])
    result = ts.invoke(config, "train", "--dry-run", "--json", "--domain", "big.test")
    data = json.loads(result.stdout)
    assert data["users"] == 300 and data["folders"] == 300
    assert sorted(item["path"] for item in data["listing"]) == sorted(map(str, expected))
    assert data["spam_learned"] == 1 and data["copies"] == 299


def test_not_root_runs_in_process(tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = junk(tree, "alice@example.test", 2)
    config = ts.train_config(tree, sa_learn=never_run(tree)[0])
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    cfg = config_module.load(str(config))
    report = train.run(cfg, discovery.Options(dry_run=True))
    assert report.exit_code == 0
    assert sorted(i["path"] for i in report.summary.listing) == sorted(map(str, paths))


def test_message_key_prefers_message_id_then_body(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"Subject: x\nMessage-ID:\n <id-1@example>\nTo: a\n\nbody one\n")
    b = tmp_path / "b"
    b.write_bytes(b"Delivered-To: b\r\nMessage-Id: <id-1@example>\r\n\r\nother body\r\n")
    c = tmp_path / "c"
    c.write_bytes(b"Subject: no id\nTo: c\n\nbody one\n")
    d = tmp_path / "d"
    d.write_bytes(b"Subject: no id either\nTo: d\n\nbody one\n")
    assert train.message_key(str(a)) == train.message_key(str(b))
    assert train.message_key(str(c)) == train.message_key(str(d))
    assert train.message_key(str(a)) != train.message_key(str(c))
    link = tmp_path / "link"
    link.symlink_to(a)
    with pytest.raises(OSError):
        train.message_key(str(link))


def test_sa_learn_batches_are_bounded_by_count_and_argv_bytes() -> None:
    cfg = config_module.defaults().train
    learner = learners.SaLearn(cfg, {})
    task = learners.Task("spam", learners.Store(), [])
    long_path = "/" + "x" * 4000
    while learner.fits(task, long_path):
        task.paths.append(long_path)
    assert len(task.paths) == learners.ARGV_LIMIT // 4002
    small = learners.Task("spam", learners.Store(), [])
    while learner.fits(small, "/m"):
        small.paths.append("/m")
    assert cfg.batch_size == 0  # chosen from what a call costs (bayes.batch_limit)
    assert len(small.paths) == learner.batch_size == int(bayes.CHECKPOINT / bayes.PER_MESSAGE)


def test_is_trashed() -> None:
    assert train.is_trashed("1.M1.host,S=5:2,ST")
    assert not train.is_trashed("1.M1.host,S=5:2,S")
    assert not train.is_trashed("1.M1.hostT")


def test_discovery_does_not_load_the_learners(tmp_path: Path) -> None:
    """Every command that walks mailboxes imports discovery; only the trainer
    needs learners (subprocess, threads, the learner classes): the spam and
    ham kinds come from a module of their own."""
    code = (
        "import sys, quarantine.discovery as d; "
        "assert 'quarantine.learners' not in sys.modules, 'learners loaded'; "
        "from quarantine import learners; "
        "assert (d.SPAM, d.HAM) == (learners.SPAM, learners.HAM) == ('spam', 'ham')"
    )
    result = subprocess.run(  # not from the source tree: the installed package
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr


def test_progress_bar_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = train.Progress(2, screen)
    bar.step(5)
    bar.step(7)
    bar.close(9)
    assert screen.getvalue().startswith("\r[")
    assert "2/2 mailboxes, 7 learned" in screen.getvalue()
    assert screen.getvalue().endswith("\r[" + "#" * 30 + "] 2/2 mailboxes, 9 learned\n")
    log = io.StringIO()
    bar = train.Progress(2, log)
    bar.step(1)
    bar.close(1)
    assert log.getvalue() == ""


def test_an_unwritable_state_file_is_reported_not_fatal(tree: sandbox.Tree) -> None:
    paths = junk(tree, "alice@example.test", 1)
    stub = ts.script(tree.root / "sa-learn-ok", f"#!/bin/sh\n{ts.SAYS_LEARNED}exit 0\n")
    config = ts.train_config(tree, sa_learn=stub, state_file="/proc/no-such-dir/state.json")
    result = ts.invoke(config, "train")
    assert result.exit_code == 0, result.output
    assert "cannot record the run in /proc/no-such-dir/state.json" in result.stderr
    assert not paths[0].exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root-owned domain and the uid switch")
def test_a_domain_owned_by_root_is_refused(tree: sandbox.Tree) -> None:
    paths = junk(tree, "alice@example.test", 1)
    # A domain directory with no users/assign line, left owned by root.
    rogue = tree.vpopmail_home / "domains" / "rooted.test"
    (rogue / "eve" / "Maildir").mkdir(parents=True)
    (rogue / "vpasswd").write_text(f"eve:x:1:0:eve:{rogue / 'eve'}:NOQUOTA\n")
    config = ts.train_config(
        tree, sa_learn=ts.script(tree.root / "ok", f"#!/bin/sh\n{ts.SAYS_LEARNED}exit 0\n")
    )
    result = ts.invoke(config, "train", "--json")
    assert result.exit_code == 1
    assert "rooted.test: owned by uid 0 gid 0; refusing to work as root" in result.stderr
    assert json.loads(result.stdout)["failed_folders"] == ["rooted.test"]
    assert not paths[0].exists()  # the other domain was trained
