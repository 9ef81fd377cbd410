"""The Junk log `deliver` appends to (quarantine/junklog.py): one parseable
line per message filed into Junk, whose identity is the ham ledger's; bounded;
never followed through a symlink; never raising (whatever goes wrong, deliver
still files the message and exits 99); hostile lines skipped."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from quarantine import deliver, junklog, sandbox
from quarantine import hamledger as hl

MESSAGE = b"Subject: s\nMessage-ID: <x@example.test>\n\nbody\r\nline\n"


def filed(tmp_path: Path, name: str = "1700000000.M1P1.host,S=50") -> Path:
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp", ".Junk/new", ".Junk/cur", ".Junk/tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    (maildir / ".Junk" / "new" / name).write_bytes(MESSAGE)
    return maildir


def test_one_line_per_message_with_the_ledgers_identity(tmp_path: Path) -> None:
    maildir = filed(tmp_path, "17.M1P1.host,S=50\nforged")
    junklog.note_junk(str(maildir), "Junk", "17.M1P1.host,S=50\nforged")
    (line,) = junklog.parse((maildir / junklog.LOG).read_bytes())
    folder, name, mid, body, blen, mtime = line
    assert (folder, name) == (".Junk", "17.M1P1.host,S=50\nforged")
    assert abs(mtime - (maildir / ".Junk" / "new" / name).stat().st_mtime) <= 1
    fd = os.open(maildir / ".Junk" / "new" / name, os.O_RDONLY)
    try:
        assert hl.identify(fd) == hl.Ident(mid, body, blen)
    finally:
        os.close(fd)
    assert mid == junklog.mid_digest(b"x@example.test")
    assert (maildir / junklog.LOG).stat().st_mode & 0o777 == 0o600
    assert (maildir / junklog.LOG).read_bytes().count(b"\n") == 1


def test_a_line_cut_short_by_a_killed_writer_costs_only_itself(tmp_path: Path) -> None:
    maildir = filed(tmp_path)
    (maildir / junklog.LOG).write_bytes(b".Junk\t6162\tm")  # killed mid-line
    junklog.note_junk(str(maildir), "Junk", "1700000000.M1P1.host,S=50")
    (line,) = junklog.parse((maildir / junklog.LOG).read_bytes())
    assert line[1] == "1700000000.M1P1.host,S=50"


def test_bounded_and_never_raising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    maildir = filed(tmp_path)
    monkeypatch.setattr(junklog, "LOG_LIMIT", 10)
    name = "1700000000.M1P1.host,S=50"
    junklog.note_junk(str(maildir), "Junk", name)
    junklog.note_junk(str(maildir), "Junk", name)  # the log is full: no second line
    assert len(junklog.parse((maildir / junklog.LOG).read_bytes())) == 1
    junklog.note_junk(str(maildir), "Junk", "missing")
    junklog.note_junk(str(tmp_path / "nowhere"), "Junk", name)


@pytest.mark.parametrize("failure", [RuntimeError("a bug"), MemoryError(), KeyError("x")])
def test_an_unexpected_failure_in_the_log_leaves_the_delivery_a_delivery(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    failure: Exception,
) -> None:
    """The message is in Junk when the log line is made: anything going wrong
    there (not only an OSError) must not make deliver exit 111, which would
    have qmail deliver it again."""
    tree = sandbox.make_tree(tmp_path / "t", uid=os.getuid(), gid=os.getgid())
    tree.add_domain("example.test")
    tree.add_user("alice@example.test")
    env = sandbox.qmail_env(tree, "alice@example.test", "spammer@spam.example", None)
    for key in list(os.environ):
        if key != "PATH":
            monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    def broken(*_: object) -> tuple[str, int, int]:
        raise failure

    monkeypatch.setattr(junklog, "read_head", broken)
    spam = b"Subject: buy\nX-Spam-Flag: YES\nX-Spam-Status: Yes, score=12.3\n\nbody\n"
    code = deliver.main(["--config", str(tree.config_path)], stdin=io.BytesIO(spam))
    out = capsys.readouterr().out
    assert code == 99, out
    assert "junk alice@example.test -> .Junk/new/" in out
    (filed,) = tree.messages("alice@example.test", "Junk")
    assert filed.read_bytes().endswith(spam)
    assert not (tree.maildir("alice@example.test") / junklog.LOG).exists()


def test_a_log_held_locked_costs_a_delivery_at_most_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl
    import time

    maildir = filed(tmp_path)
    monkeypatch.setattr(junklog, "LOCK_WAIT", 0.3)
    (maildir / junklog.LOG).write_bytes(b"")
    with open(maildir / junklog.LOG, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a trainer reading it (another open file)
        started = time.monotonic()
        junklog.note_junk(str(maildir), "Junk", "1700000000.M1P1.host,S=50")
        assert 0.3 <= time.monotonic() - started < 2
    assert (maildir / junklog.LOG).read_bytes() == b""


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    maildir = filed(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (maildir / junklog.LOG).symlink_to(target)
    junklog.note_junk(str(maildir), "Junk", "1700000000.M1P1.host,S=50")
    assert target.read_bytes() == b""
    (maildir / junklog.LOG).unlink()
    (maildir / ".Junk" / "new" / "link").symlink_to(
        maildir / ".Junk" / "new" / "1700000000.M1P1.host,S=50"
    )
    junklog.note_junk(str(maildir), "Junk", "link")
    assert not (maildir / junklog.LOG).exists()


def test_hostile_and_cut_lines_are_skipped() -> None:
    good = "\t".join([".Junk", b"abc".hex(), "m", "b", "3", "1700000000"])
    lines = [
        good,
        "\t".join(["Junk", b"abc".hex(), "m", "b", "3", "1"]),  # not a folder name
        "\t".join([".Junk", b"a/b".hex(), "m", "b", "3", "1"]),  # a slash in the name
        "\t".join([".Junk", b".dot".hex(), "m", "b", "3", "1"]),
        "\t".join([".Junk", "zz", "m", "b", "3", "1"]),  # not hex
        "\t".join([".Junk", b"abc".hex(), "m", "b", "x", "1"]),
        "\t".join(["..", b"abc".hex(), "m", "b", "3", "1"]),
        "too\tfew",
    ]
    data = ("\n".join(lines) + "\n" + good).encode() + b"\xff"  # the last one cut short
    assert junklog.parse(data) == [(".Junk", "abc", "m", "b", 3, 1700000000.0)]
