"""A file leaves Junk only when its own bytes were learned (issue 9): decoys
that carry a real spam's Message-ID (in the same folder, or learned a run
before), a batch in which sa-learn skips some files, byte-identical copies,
answers that prove nothing, spamc's two answers, and at most one content per
Message-ID in one sa-learn call. The decoys run on Debian's real sa-learn."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import batching, learners, proof, sandbox
from quarantine.names import show

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    yield from ts.example_tree()


def twin(message: bytes) -> bytes:
    """Other bytes that SpamAssassin 4 takes for `message`: it keys a learned
    message by a digest of To, Date and the body, and this differs only in
    its Subject (the Message-ID is the same too)."""
    out = message.replace(b"Subject: Offer ", b"Subject: Hello, this is not an offer ")
    assert out != message
    return out


@pytest.mark.slow
def test_a_decoy_in_the_same_folder_does_not_get_the_spam_deleted_unlearned(
    tree: sandbox.Tree,
) -> None:
    """Two decoys carry the Message-ID of a real spam beside it: one with
    other words, one that SpamAssassin even keys the same (To, Date, body).
    Each file is learned on its own bytes before it goes: Bayes counts as
    many messages as were deleted."""
    alice = tree.add_user("alice@example.test")
    real = ts.spam("real")
    decoy = ts.with_id(ts.spam("decoy"), b"<spam-real@spam.example>")
    paths = [ts.put(alice, "Junk", m) for m in (real, decoy, twin(real))]
    db = ts.bayes_dir(tree)
    data, result = ts.train_json(ts.train_config(tree, dbpath=db / "bayes"))
    assert result.exit_code == 0, result.output
    # The twin is either learned on its own bytes or, when sa-learn meets it
    # after the real one, already known by the same content key: both delete it.
    assert data["deleted"] == 3 and data["copies"] == 0
    assert data["spam_learned"] + data["already_known"] == 3, data
    assert ts.magic(db / "bayes")["nspam"] == data["spam_learned"]
    assert not any(p.exists() for p in paths)


@pytest.mark.slow
def test_skips_in_a_batch_delete_only_what_was_learned_or_known_by_its_own_content(
    tree: sandbox.Tree,
) -> None:
    """Run 1 learns two decoys of spams that are still young. In run 2 one
    sa-learn batch holds: the spam whose decoy SpamAssassin keys the same
    (To, Date and body: skipped by that content key, already known, deleted),
    the spam whose decoy only shares its Message-ID (learned: SpamAssassin 4
    stored the decoy under its content key, not its Message-ID), a fresh spam
    (learned), and a spam Bayes learned elsewhere in another form with the
    same To, Date and body (already known, deleted). One sa-learn call, no
    more; Bayes counts each content once."""
    alice = tree.add_user("alice@example.test")
    db = ts.bayes_dir(tree)
    log = ts.call_log(tree)
    config = ts.train_config(tree, dbpath=db / "bayes", sa_learn=ts.logging_sa_learn(tree, log))
    one, two = ts.spam("one"), ts.spam("two")
    decoys = [
        ts.put(alice, "Junk", twin(one)),
        ts.put(alice, "Junk", ts.with_id(ts.spam("decoy"), b"<spam-two@spam.example>")),
    ]
    young = [ts.put(alice, "Junk", m, age=ts.DAY) for m in (one, two, ts.spam("fresh"))]
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["deleted"] == 2 and not any(p.exists() for p in decoys)

    elsewhere = ts.spam("elsewhere")
    ts.learn_directly(tree, db / "bayes", twin(elsewhere))
    known = ts.put(alice, "Junk", elsewhere)
    ts.age(*young)
    log.write_text("")
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["spam_learned"] == 2 and data["already_known"] == 2 and data["deleted"] == 4
    assert data["skipped"] == {} and data["failed"] == 0 and data["notes"] == []
    assert not any(p.exists() for p in [*young, known])
    learning = [line for line in log.read_text().splitlines() if " -- " in line]
    assert len(learning) == 1 and len(learning[0].split(" -- ")[1].split()) == 4
    assert "2 already known to SpamAssassin" in ts.invoke(config, "stats").stdout
    # Bayes: the two decoys, the form learned elsewhere, and the two learned now.
    assert ts.magic(db / "bayes")["nspam"] == 2 + 1 + 2


@pytest.mark.slow
def test_a_byte_identical_copy_goes_once_its_twin_was_learned(tree: sandbox.Tree) -> None:
    """Copies with the same bytes: one learned, the others deleted after it,
    in the same run or (a copy that was young) in a later one, where sa-learn
    skips it and the ledger shows these very bytes were learned."""
    alice = tree.add_user("alice@example.test")
    bob = tree.add_user("bob@example.test")
    carol = tree.add_user("carol@example.test")
    message = ts.spam("campaign")
    now = [ts.put(alice, "Junk", message), ts.put(bob, "Junk", message)]
    later = ts.put(carol, "Junk", message, age=ts.DAY)
    db = ts.bayes_dir(tree)
    config = ts.train_config(tree, dbpath=db / "bayes")
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["spam_learned"] == 1 and data["copies"] == 1 and data["deleted"] == 2
    assert later.exists()
    assert (db / "bayes.quarantine-ledger").stat().st_uid == ts.UID
    ts.age(later)
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    assert data["deleted"] == 1 and data["skipped"] == {}
    assert not any(p.exists() for p in [*now, later])
    assert ts.magic(db / "bayes")["nspam"] == 1


def stand_in(tree: sandbox.Tree, body: str) -> Path:
    """A sa-learn that answers with `body` (shell) for learning calls, and
    says nothing for --sync."""
    return ts.script(tree.root / "sa-learn-says", f'#!/bin/sh\n[ "$1" = --sync ] && exit 0\n{body}')


def per_message(*learned: bool, pid: int = 4242) -> str:
    """sa-learn -D bayes's per-message lines, one `printf` each (stderr)."""
    lines = []
    for n, was in enumerate(learned):
        learned_line = f"learned 'k{n}@sa_generated', atime: 1"
        what = learned_line if was else f"k{n}@x already learnt correctly, not learning twice"
        lines.append(f'echo "Dec  1 03:30:00.000 [{pid}] dbg: bayes: {what}" >&2\n')
    return "".join(lines)


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("", 'printed no "Learned tokens from N message(s)" line'),
        (
            'echo "Learned tokens from 2 message(s) (3 message(s) examined)"\n',
            "its per-message lines do not say which",
        ),
        (  # lines from two processes: one was forged (a file name, a header)
            per_message(True, True)
            + per_message(False, pid=4243)
            + 'echo "Learned tokens from 2 message(s) (3 message(s) examined)"\n',
            "its per-message lines do not say which",
        ),
        (  # one line too many
            per_message(True, True, False, True)
            + 'echo "Learned tokens from 2 message(s) (3 message(s) examined)"\n',
            "its per-message lines do not say which",
        ),
    ],
    ids=["no-count", "no-lines", "two-pids", "extra-line"],
)
def test_an_answer_that_proves_nothing_deletes_nothing(
    tree: sandbox.Tree, answer: str, why: str
) -> None:
    """sa-learn exiting 0 is no proof: without a count line, or with fewer
    learned than examined and per-message lines that do not add up, every
    file of the batch stays and is counted as failed."""
    alice = tree.add_user("alice@example.test")
    paths = [ts.put(alice, "Junk", ts.spam(f"p{n}")) for n in range(3)]
    config = ts.train_config(tree, sa_learn=stand_in(tree, answer + "exit 0\n"))
    data, result = ts.train_json(config)
    assert result.exit_code == 1
    assert data["failed"] == 3 and data["deleted"] == 0
    assert all(p.exists() for p in paths)
    assert why in result.stderr and "none of them counts as learned" in result.stderr


def test_per_message_lines_tell_which_files_were_learned(tree: sandbox.Tree) -> None:
    """Fewer learned than examined: the per-message lines, in argument order,
    say which; the learned go, the skipped stay (Bayes knows their id from
    other bytes, as far as the ledger knows)."""
    alice = tree.add_user("alice@example.test")
    paths = [ts.put(alice, "Junk", ts.spam(f"p{n}")) for n in range(3)]
    log = ts.call_log(tree)
    answer = (
        f'printf "%s\\n" "$@" >> {log}\n'
        + per_message(True, False, True)
        + 'echo "Learned tokens from 2 message(s) (3 message(s) examined)"\nexit 0\n'
    )
    data, result = ts.train_json(ts.train_config(tree, sa_learn=stand_in(tree, answer)))
    assert result.exit_code == 0, result.output
    given = [line for line in log.read_text().splitlines() if line.startswith("/")]
    assert sorted(given) == sorted(map(str, paths))
    kept = Path(given[1])
    assert [Path(p).exists() for p in given] == [False, True, False]
    assert data["skipped"] == {"known": 1}
    assert data["notes"][0].startswith(f"{show(kept)}: already learned as far as the learner")


@pytest.mark.parametrize("spool", ["file", "pipe"])
def test_stderr_goes_to_a_temporary_file_or_without_one_to_a_pipe(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch, spool: str
) -> None:
    """sa-learn's stderr goes to an unnamed temporary file; when none can be
    made, to a pipe: the per-message lines prove the same files either way."""
    alice = tree.add_user("alice@example.test")
    paths = [ts.put(alice, "Junk", ts.spam(f"p{n}")) for n in range(3)]
    answer = (
        f"[ -{spool[0]} /dev/stderr ] || exit 7\n"
        + per_message(True, False, True)
        + 'echo "Learned tokens from 2 message(s) (3 message(s) examined)"\nexit 0\n'
    )

    def no_temporary_file(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if spool == "pipe":
        monkeypatch.setattr(learners.tempfile, "TemporaryFile", no_temporary_file)
    data, result = ts.train_json(ts.train_config(tree, sa_learn=stand_in(tree, answer)))
    assert result.exit_code == 0, result.output
    assert data["spam_learned"] == 2 and data["skipped"] == {"known": 1}
    assert sum(p.exists() for p in paths) == 1


def test_one_content_per_message_id_in_a_call(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Different files under one Message-ID go to different sa-learn calls
    (later batches, then calls of their own, up to HELD_CALLS a run); the rest waits
    for the next run."""
    alice = tree.add_user("alice@example.test")
    mid = b"<one-id@spam.example>"
    shared = [ts.put(alice, "Junk", ts.with_id(ts.spam(f"s{n}"), mid)) for n in range(3)]
    others = [ts.put(alice, "Junk", ts.spam(f"o{n}")) for n in range(2)]
    log = ts.call_log(tree)
    program = stand_in(tree, f'echo "$*" >> {log}\n{ts.SAYS_LEARNED}exit 0\n')
    config = ts.train_config(tree, sa_learn=program)
    monkeypatch.setattr(batching, "HELD_CALLS", 1)
    data, result = ts.train_json(config)
    assert result.exit_code == 0, result.output
    calls = [line.split(" -- ")[1].split() for line in log.read_text().splitlines()]
    assert [len(c) for c in calls] == [3, 1]  # two others and one shared, then one shared
    for call in calls:
        assert sum(p in call for p in map(str, shared)) == 1
    assert data["skipped"] == {"held back": 1} and data["deleted"] == 4
    assert sum(p.exists() for p in shared) == 1 and not any(p.exists() for p in others)
    monkeypatch.setattr(batching, "HELD_CALLS", 20)
    data, result = ts.train_json(config)
    assert data["deleted"] == 1 and not any(p.exists() for p in shared)


def test_spamc_already_learned_is_not_proof_without_the_ledger(tree: sandbox.Tree) -> None:
    """spamc -L exits 0 for both answers: "Message successfully un/learned"
    deletes, "Message was already un/learned" deletes only bytes the ledger
    (~/.spamassassin/quarantine-ledger of the learning uid) saw learned, no
    answer deletes nothing."""
    alice = tree.add_user("alice@example.test")
    learned = ts.put(alice, "Junk", ts.spam("learned"))
    copy = ts.put(alice, "Junk", ts.spam("learned"), age=ts.DAY)
    known = ts.put(alice, "Junk", ts.spam("known"))
    silent = ts.put(alice, "Junk", ts.spam("silent"))
    home = tree.vpopmail_home / ".spamassassin"
    home.mkdir()
    ts.chown(home)
    seen = tree.root / "spamc-seen"
    seen.mkdir(mode=0o777)
    seen.chmod(0o777)
    spamc = ts.script(
        tree.root / "spamc-says",
        "#!/bin/sh\nmsg=$(cat)\n"
        'case "$msg" in *spam-silent@*) exit 0 ;; *spam-known@*) '
        'echo "Message was already un/learned"; exit 0 ;; esac\n'
        f'if [ -e {seen}/learned ]; then echo "Message was already un/learned"; '
        f'else touch {seen}/learned; echo "Message successfully un/learned"; fi\n',
    )
    config = ts.train_config(tree, backend="spamc", spamc=spamc, spamc_user="vpopmail")
    data, result = ts.train_json(config)
    assert result.exit_code == 1
    assert not learned.exists() and known.exists() and silent.exists()
    assert data["skipped"]["known"] == 1 and data["failed"] == 1
    assert "gave no answer" in result.stderr
    ts.age(copy)
    data, result = ts.train_json(config)
    assert not copy.exists()  # "already learned", and the ledger saw these bytes learned
    assert known.exists() and silent.exists()


def test_read_answer_maps_lines_to_files_still_there(tmp_path: Path) -> None:
    paths = [str(tmp_path / name) for name in "abcd"]
    for path in paths[:3]:
        Path(path).write_text("x")
    lines = (
        b"Dec  1 03:30:00.000 [7] dbg: bayes: learned 'k1@sa_generated', atime: 5\n"
        b"Dec  1 03:30:00.000 [7] dbg: bayes: header tokens for To = learned 'x', atime: 1\n"
        b"Dec  1 03:30:00.000 [7] dbg: bayes: <k2@x> already learnt correctly, not learning twice\n"
        b"archive-iterator: no access to /d: No such file or directory\n"
        b"Dec  1 03:30:00.000 [7] dbg: bayes: learned 'k3@sa_generated', atime: 5\n"
    )
    count = b"Learned tokens from 2 message(s) (3 message(s) examined)\n"
    learned, skipped, problem = proof.read_answer(paths, count, lines)
    assert problem == ""
    assert learned == {paths[0]: "k1@sa_generated", paths[2]: "k3@sa_generated"}
    assert skipped == {paths[1]: "<k2@x>"}
    everything = b"Learned tokens from 3 message(s) (3 message(s) examined)\n"
    assert proof.read_answer(paths, everything, b"")[0] == dict.fromkeys(paths[:3], "")


def test_glob_quote_keeps_every_name_itself(tmp_path: Path) -> None:
    """Perl's glob() as sa-learn runs it, on names that would expand, split
    or lose a backslash (and with `a*b`, also match the others)."""
    names = ["a*b", "a[b]", "a{b,c}", "a\\b", "a\\ b", "p 'q r' s", 'a"b', "ab"]
    paths = [str(tmp_path / name) for name in names]
    for path in paths:
        Path(path).write_text("x")
    perl = (
        "for (@ARGV) { my $p = $_; $p =~ s/(?<!\\\\)(\\s)/\\\\$1/g; "
        'print join("|", glob($p)), "\\0" }'
    )
    quoted = [learners.glob_quote(p) for p in paths]
    out = subprocess.run(["perl", "-e", perl, *quoted], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == paths
