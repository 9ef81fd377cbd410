"""Files SpamAssassin already knows by their own content (To, Date, body) leave
Junk; files it knows only by a Message-ID stay (issue 9, second round). On
Debian's real sa-learn and spamd: copies of one campaign that differ in
Delivered-To, spam learned before through spamc -L, a decoy keyed by its
Message-ID as older SpamAssassin releases keyed it, a spam whose Message-ID is
made to look like a content key, and runs of identical answer lines that
SpamAssassin's logger folds into one."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import proof, sandbox
from quarantine.names import show

if TYPE_CHECKING:
    from collections.abc import Iterator


# Learn a message into a Bayes store under an id of our choosing, as older
# SpamAssassin releases did (the 3.0-era Bayes.pm: its Message-ID).
LEARN_BY_ID = r"""
use strict; use Mail::SpamAssassin;
my ($dbpath, $file, $id) = @ARGV;
my $sa = Mail::SpamAssassin->new({post_config_text => "bayes_path $dbpath\n",
                                  local_tests_only => 1});
$sa->init_learner({learn_to_journal => 0});
open(my $fh, '<', $file) or die "$file: $!";
my $msg = $sa->parse(do { local $/; <$fh> });
my $status = $sa->learn($msg, $id, 1, 0);
$status->did_learn() or die "not learned\n";
$status->finish(); $msg->finish(); $sa->finish_learner();
"""


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    yield from ts.example_tree()


def delivered(to: str, message: bytes) -> bytes:
    """`message` as qmail-local hands it on for `to`."""
    return f"Delivered-To: {to}\n".encode() + message


def learn_by_id(tree: sandbox.Tree, dbpath: Path, message: bytes, mid: str) -> None:
    """Put `message` into the store under the key `mid`, the way an older
    SpamAssassin learned it (what a store carried over from one holds)."""
    path = tree.root / "learned-by-id.eml"
    path.write_bytes(message)
    path.chmod(0o644)
    ts.as_the_uid(tree, ["perl", "-e", LEARN_BY_ID, str(dbpath), str(path), mid])


def learned_keys(db: Path, tmp_path: Path) -> list[str]:
    """The keys the ledger holds learned content under, read from a copy (an
    sqlite reader as root would leave root's -shm file beside the ledger)."""
    copy = tmp_path / "ledger-copy"
    copy.write_bytes((db / "bayes.quarantine-ledger").read_bytes())
    with sqlite3.connect(copy) as ledger:
        rows = ledger.execute("SELECT DISTINCT key FROM content WHERE state = 'learned'")
        return [key for (key,) in rows]


@pytest.mark.slow
def test_copies_that_differ_in_delivered_to_go_in_two_runs_and_count_once(
    tree: sandbox.Tree, tmp_path: Path
) -> None:
    """One campaign, two mailboxes: qmail-local gave each copy its own
    Delivered-To. Run 1 learns alice's (bob's is young); in run 2 sa-learn
    skips bob's under the key it made of the same To, Date and body: it is
    already known to SpamAssassin, deleted, and not learned twice."""
    alice = tree.add_user("alice@example.test")
    bob = tree.add_user("bob@example.test")
    campaign = ts.spam("campaign")
    first = ts.put(alice, "Junk", delivered("alice@example.test", campaign))
    second = ts.put(bob, "Junk", delivered("bob@example.test", campaign), age=ts.DAY)
    db = ts.bayes_dir(tree)
    config = ts.train_config(tree, dbpath=db / "bayes")
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["spam_learned"] == 1 and data["already_known"] == 0 and data["deleted"] == 1
    assert not first.exists() and second.exists()
    ts.age(second)
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["spam_learned"] == 0 and data["already_known"] == 1 and data["deleted"] == 1
    assert data["skipped"] == {} and data["failed"] == 0
    assert not second.exists()
    assert ts.magic(db / "bayes")["nspam"] == 1
    assert "1 already known to SpamAssassin" in ts.invoke(config, "stats").stdout
    (key,) = learned_keys(db, tmp_path)  # both copies, under the one content key
    assert proof.CONTENT_KEY.match(key)


@pytest.mark.slow
def test_spam_learned_before_through_spamd_goes_on_the_next_run() -> None:
    """spamd learned the message at delivery (spamc -L spam, as its autolearn
    does) and marked it (report_safe 1: the original attached); the Junk copy
    is that marked message. sa-learn takes the markup off and skips it under
    its content key: deleted, counted as already known, Bayes unchanged."""
    tree = ts.new_tree()
    try:
        tree.add_domain("example.test")
        alice = tree.add_user("alice@example.test")
        with ts.running_spamd() as spamd:
            arrived = delivered("alice@example.test", ts.spam("autolearned"))
            answer = spamd.spamc("-L", "spam", message=arrived)
            assert answer.strip() == b"Message successfully un/learned"
            marked = spamd.spamc(message=arrived)
            assert b"X-Spam-Checker-Version:" in marked and b"x-spam-type=original" in marked
            junk = ts.put(alice, "Junk", marked)
            config = ts.train_config(tree, dbpath=spamd.db / "bayes")
            data, result = ts.train_json(config)
            assert result.exit_code == 0, result.output
            assert data["already_known"] == 1 and data["spam_learned"] == 0
            assert data["deleted"] == 1 and data["skipped"] == {} and not junk.exists()
            assert ts.magic(spamd.db / "bayes")["nspam"] == 1
    finally:
        sandbox.remove(tree)


@pytest.mark.slow
def test_a_decoy_learned_under_the_spams_message_id_does_not_get_it_deleted(
    tree: sandbox.Tree,
) -> None:
    """A store carried over from an older SpamAssassin holds a decoy (other
    words) under the real spam's Message-ID. SpamAssassin 4 still looks a
    message up by its Message-ID after its content key, so it skips the spam
    by that id: that proves nothing about the spam's content. It stays, named,
    unlearned; the same holds for its byte-identical copy."""
    alice = tree.add_user("alice@example.test")
    bob = tree.add_user("bob@example.test")
    db = ts.bayes_dir(tree)
    learn_by_id(tree, db / "bayes", ts.spam("decoy"), "spam-real@spam.example")
    real = ts.spam("real")
    paths = [ts.put(alice, "Junk", real), ts.put(bob, "Junk", real)]
    data, result = ts.train_json(ts.train_config(tree, dbpath=db / "bayes"))
    assert result.exit_code == 0, result.output
    assert data["spam_learned"] == 0 and data["already_known"] == 0 and data["deleted"] == 0
    assert data["skipped"] == {"known": 2}
    assert all(p.exists() for p in paths)
    notes = data["notes"]
    assert isinstance(notes, list) and len(notes) == 2
    for path, note in zip(sorted(map(show, paths)), sorted(notes), strict=True):
        assert note.startswith(f"{path}: already learned as far as the learner knows ")
        assert "(spam-real@spam.example)" in note and "not from these bytes" in note
    assert ts.magic(db / "bayes")["nspam"] == 1


@pytest.mark.slow
def test_a_message_id_made_to_look_like_a_content_key_proves_nothing(
    tree: sandbox.Tree, tmp_path: Path
) -> None:
    """A decoy is learned (run 1); then a spam arrives whose Message-ID is the
    decoy's content key. SpamAssassin finds the spam's own content key
    unknown, its Message-ID known, and prints that key: the key has the
    content key's shape, but the spam carries it, so it is its Message-ID.
    The ledger knows other bytes under it: left in place, named."""
    alice = tree.add_user("alice@example.test")
    db = ts.bayes_dir(tree)
    config = ts.train_config(tree, dbpath=db / "bayes")
    ts.put(alice, "Junk", ts.spam("decoy"))
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["spam_learned"] == 1
    (key,) = learned_keys(db, tmp_path)
    assert proof.CONTENT_KEY.match(key)
    spam = ts.put(alice, "Junk", ts.with_id(ts.spam("real"), f"<{key}>".encode()))
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["deleted"] == 0 and data["already_known"] == 0 and spam.exists()
    assert data["skipped"] == {"other content": 1}
    assert data["notes"] == [
        f"{show(spam)}: sa-learn took it for a message already learned ({key}), and what "
        "was learned under that id is other content: left in place"
    ]
    assert ts.magic(db / "bayes")["nspam"] == 1


@pytest.mark.slow
def test_answers_the_logger_folds_into_one_line_still_count_each_file(
    tree: sandbox.Tree,
) -> None:
    """Twelve messages with one To, Date and body under twelve Message-IDs
    (one batch), their content learned before: SpamAssassin's logger prints
    the tenth and later identical answers as one line, "[... logline repeated
    2 times]". Each file is still matched to its answer: all already known."""
    alice = tree.add_user("alice@example.test")
    db = ts.bayes_dir(tree)
    same = ts.spam("same")
    ts.learn_directly(tree, db / "bayes", same)
    ids = [f"<n{n}@spam.example>".encode() for n in range(12)]
    paths = [ts.put(alice, "Junk", ts.with_id(same, mid)) for mid in ids]
    log = ts.call_log(tree)
    spool = tree.root / "stderr"
    spool.mkdir(mode=0o777)
    spool.chmod(0o777)
    tee = ts.script(
        tree.root / "sa-learn-tee",
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n{ts.SA_LEARN} "$@" 2> {spool}/now\n'
        f"code=$?\ncat {spool}/now >&2\ncat {spool}/now >> {spool}/all\nexit $code\n",
    )
    data, result = ts.train_json(ts.train_config(tree, dbpath=db / "bayes", sa_learn=tee))
    assert result.exit_code == 0, result.output
    assert data["already_known"] == 12 and data["deleted"] == 12 and data["failed"] == 0
    assert not any(p.exists() for p in paths)
    assert sum(" -- " in line for line in log.read_text().splitlines()) == 1
    assert (spool / "all").read_text().count("[... logline repeated 2 times]") == 1
    assert ts.magic(db / "bayes")["nspam"] == 1


def test_a_content_key_counts_only_when_the_file_does_not_carry_it(tmp_path: Path) -> None:
    key = hashlib.blake2b(b"To, Date, body", digest_size=20).hexdigest() + "@sa_generated"
    plain = tmp_path / "plain"
    plain.write_bytes(ts.spam("plain"))
    digest = proof.content_hash()
    digest.update(plain.read_bytes())
    assert proof.content_digest(str(plain), key) == digest.digest()
    for name, data in {
        "its Message-ID": ts.with_id(ts.spam("a"), f"<{key}>".encode()),
        "in the body, upper case": ts.spam("b") + key.upper().encode() + b"\n",
        "a Message-ID with 8-bit bytes": ts.with_id(ts.spam("c"), b"<caf\xe9@spam.example>"),
        "a folded 8-bit Message-ID": ts.with_id(ts.spam("d"), b"\n <caf\xc3\xa9@spam.example>"),
        "a renamed 8-bit Message-ID": b"X-Spam-Prev-Message-Id: <\xff@x>\n" + ts.spam("e"),
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert proof.content_digest(str(path), key) is None, name
    other = ts.spam("f") + b"X-Note: caf\xe9, Message-ID like text\n"
    (tmp_path / "other").write_bytes(other)  # 8 bits, but in no Message-ID field
    assert proof.content_digest(str(tmp_path / "other"), key) is not None
    for shape in ("spam-plain@spam.example", key.upper(), key[1:], key + " ", "<" + key + ">"):
        assert proof.content_digest(str(plain), shape) is None, shape
    (tmp_path / "link").symlink_to(plain)
    assert proof.content_digest(str(tmp_path / "link"), key) is None
    assert proof.content_digest(str(tmp_path / "missing"), key) is None


def test_repeated_answer_lines_are_expanded_only_when_the_logger_wrote_them(
    tmp_path: Path,
) -> None:
    paths = [str(tmp_path / f"m{n}") for n in range(4)]
    for path in paths:
        Path(path).write_text("x")
    k = "a" * 40 + "@sa_generated"
    line = f"Dec  1 03:30:00.000 [7] dbg: bayes: {k} already learnt correctly, not learning twice"
    stderr = f"{line}\n{line}\n{line} [... logline repeated 2 times]\n".encode()
    skipped = b"Learned tokens from 0 message(s) (4 message(s) examined)\n"
    assert proof.read_answer(paths, skipped, stderr) == ({}, dict.fromkeys(paths, k), "")
    # A Message-ID that ends in the logger's words is one answer, not three.
    forged = "x already learnt correctly, not learning twice [... logline repeated 3 times]"
    stderr = (
        f"Dec  1 03:30:00.000 [7] dbg: bayes: {forged} already learnt correctly, "
        "not learning twice\n"
    ).encode()
    one = b"Learned tokens from 0 message(s) (1 message(s) examined)\n"
    assert proof.read_answer(paths[:1], one, stderr) == ({}, {paths[0]: forged}, "")
    # sa-learn never leaves a message "as opposite, not re-learning": that is
    # no answer line, the file counts as skipped by an unnamed key.
    opposite = f"Dec  1 03:30:00.000 [7] dbg: bayes: {k} already learnt as opposite, not "
    opposite += "re-learning"
    assert proof.read_answer(paths[:1], one, opposite.encode()) == (
        {},
        {paths[0]: ""},
        "",
    )
