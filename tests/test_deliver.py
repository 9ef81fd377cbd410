"""`quarantine deliver` in-process: lookup, verdict, filing, exit codes, one log line."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from quarantine import deliver, sandbox

SPAM = (
    b"Received: (qmail 1 invoked by uid 89); 24 Nov 2026 01:23:23 -0000\n"
    b"From: spammer@spam.example\nTo: alice@example.test\nSubject: buy\n"
    b"X-Spam-Flag: YES\n"
    b"X-Spam-Status: Yes, score=12.3 required=5.0 tests=GTUBE\n\tautolearn=no version=4.0.0\n"
    b"\nbody\n"
)
HAM = b"From: friend@ok.example\nSubject: hi\nX-Spam-Status: No, score=0.1\n\nhello\n"


@pytest.fixture
def tree(tmp_path: Path) -> sandbox.Tree:
    t = sandbox.make_tree(tmp_path / "t", uid=os.getuid(), gid=os.getgid())
    t.add_domain("example.test")
    t.add_user("alice@example.test")
    return t


def run(
    tree: sandbox.Tree,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    message: bytes,
    address: str = "alice@example.test",
    *args: str,
    preline: bool = True,
) -> tuple[int, str]:
    env = sandbox.qmail_env(tree, address, "spammer@spam.example", None)
    for key in list(os.environ):
        if key not in ("PATH",):
            monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = message
    if preline:
        data = (env["UFLINE"] + env["RPLINE"] + env["DTLINE"]).encode() + message
    code = deliver.main(["--config", str(tree.config_path), *args], stdin=io.BytesIO(data))
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    return code, out


Fixtures = tuple[sandbox.Tree, pytest.MonkeyPatch, pytest.CaptureFixture[str]]


@pytest.fixture
def ctx(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Fixtures:
    return tree, monkeypatch, capsys


def test_spam_is_filed_and_stops(ctx: Fixtures) -> None:
    tree = ctx[0]
    code, out = run(*ctx, SPAM)
    assert code == 99
    assert "junk alice@example.test -> .Junk/new/" in out
    [path] = tree.messages("alice@example.test", "Junk")
    data = path.read_bytes()
    lines = data.split(b"\n")
    assert lines[0] == b"Return-Path: <spammer@spam.example>"
    assert lines[1] == b"Delivered-To: example.test-alice@example.test"
    assert lines[2].startswith(b"X-Quarantine: junk; rule=spamassassin; spam=yes score=12.3 (")
    assert data.endswith(SPAM)
    assert path.name.endswith(f",S={len(data)}")
    assert tree.messages("alice@example.test") == []


def test_ham_is_left_for_next_line(ctx: Fixtures) -> None:
    code, out = run(*ctx, HAM)
    assert code == 0
    assert "inbox, left for the next line" in out
    assert not (ctx[0].maildir("alice@example.test") / ".Junk").exists()


def test_inbox_option_delivers_ham(ctx: Fixtures) -> None:
    code, _out = run(*ctx, HAM, "alice@example.test", "--inbox")
    assert code == 0
    [path] = ctx[0].messages("alice@example.test")
    assert b"X-Quarantine: inbox; rule=none" in path.read_bytes()


def test_not_behind_preline_gets_qmails_trace_lines(ctx: Fixtures) -> None:
    code, _ = run(*ctx, SPAM, preline=False)
    assert code == 99
    [path] = ctx[0].messages("alice@example.test", "Junk")
    assert path.read_bytes().startswith(
        b"Return-Path: <spammer@spam.example>\nDelivered-To: example.test-alice@example.test\n"
        b"X-Quarantine: junk"
    )


def test_extension_falls_back_to_user(ctx: Fixtures) -> None:
    code, out = run(*ctx, SPAM, "alice-news@example.test")
    assert code == 99
    assert "alice@example.test" in out


def test_unknown_user_is_left_alone(ctx: Fixtures) -> None:
    code, out = run(*ctx, SPAM, "nobody@example.test")
    assert code == 0
    assert "not a vpopmail user here" in out


def test_unknown_user_with_inbox_bounces(ctx: Fixtures) -> None:
    code, out = run(*ctx, HAM, "nobody@example.test", "--inbox")
    assert code == 100
    assert "(#5.1.1)" in out


def test_alias_domain_reaches_real_mailbox(ctx: Fixtures) -> None:
    tree = ctx[0]
    tree.add_alias("alias.test", "example.test")
    code, _out = run(*ctx, SPAM, "alice@alias.test")
    assert code == 99
    assert len(tree.messages("alice@example.test", "Junk")) == 1


def test_hashed_user_directory(ctx: Fixtures) -> None:
    tree = ctx[0]
    tree.add_user("carol@example.test", subdir="0")
    code, _ = run(*ctx, SPAM, "carol@example.test")
    assert code == 99
    assert "/0/carol/Maildir" in str(tree.messages("carol@example.test", "Junk")[0])


def test_hashed_domain_directory(ctx: Fixtures) -> None:
    tree = ctx[0]
    tree.add_domain("big.test", hashed=True)
    tree.add_user("dave@big.test")
    code, _ = run(*ctx, SPAM, "dave@big.test")
    assert code == 99
    assert "/domains/b/big.test/" in str(tree.messages("dave@big.test", "Junk")[0])


def test_user_dir_outside_tree_is_refused(ctx: Fixtures, tmp_path: Path) -> None:
    tree = ctx[0]
    vpasswd = tree.domains["example.test"] / "vpasswd"
    with open(vpasswd, "a") as handle:
        handle.write(f"eve:x:1:0::{tmp_path}/elsewhere:NOQUOTA\n")
    code, out = run(*ctx, SPAM, "eve@example.test")
    assert code == 111
    assert "outside the vpopmail tree" in out


def test_forged_x_quarantine_is_renamed(ctx: Fixtures) -> None:
    forged = b"X-Quarantine: inbox; rule=trusted\n" + SPAM
    assert run(*ctx, forged)[0] == 99
    data = ctx[0].messages("alice@example.test", "Junk")[0].read_bytes()
    assert data.count(b"\nX-Quarantine: ") == 1
    assert b"X-Quarantine-Untrusted: inbox; rule=trusted" in data


def test_bounce_rule(ctx: Fixtures) -> None:
    tree = ctx[0]
    tree.write_config("deliver:\n  rules:\n    - {score_at_least: 10, action: bounce}\n")
    code, out = run(*ctx, SPAM)
    assert code == 100
    assert "refused as spam" in out and "(#5.7.1)" in out


@pytest.mark.parametrize(("policy", "code"), [("deliver", 99), ("defer", 111), ("bounce", 100)])
def test_over_quota_policies(ctx: Fixtures, policy: str, code: int) -> None:
    tree = ctx[0]
    maildir = tree.maildir("alice@example.test")
    (maildir / "maildirsize").write_text("100S\n90 1\n")
    tree.write_config(f"deliver:\n  over_quota: {policy}\n")
    assert run(*ctx, SPAM)[0] == code
    junk = tree.messages("alice@example.test", "Junk")
    assert len(junk) == (1 if code == 99 else 0)
    assert list((maildir / ".Junk" / "tmp").iterdir()) == []
    quota_lines = (maildir / "maildirsize").read_text().splitlines()
    if code == 99:
        assert quota_lines[-1] == f"{junk[0].stat().st_size} 1"
    else:
        assert quota_lines == ["100S", "90 1"]


def test_bad_config_defers_naming_file(ctx: Fixtures) -> None:
    tree = ctx[0]
    tree.write_config("deliver:\n  junk_folder: [\n")
    code, out = run(*ctx, SPAM)
    assert code == 111
    assert str(tree.config_path) in out and "(#4.3.5)" in out


def test_missing_assign_defers(ctx: Fixtures) -> None:
    (ctx[0].qmail_home / "users" / "assign").unlink()
    code, out = run(*ctx, SPAM)
    assert code == 111
    assert "users/assign" in out


def test_unknown_option_defers(ctx: Fixtures) -> None:
    code, out = run(*ctx, SPAM, "alice@example.test", "--frobnicate")
    assert code == 111
    assert "unknown argument" in out


def test_log_file(ctx: Fixtures, tmp_path: Path) -> None:
    log = tmp_path / "deliver.log"
    ctx[0].write_config(f"deliver:\n  log_file: {log}\n")
    run(*ctx, SPAM)
    [line] = log.read_text().splitlines()
    assert "exit=99" in line and "junk alice@example.test" in line


def test_vuserinfo_is_used_when_configured(ctx: Fixtures, tmp_path: Path) -> None:
    tree = ctx[0]
    home = tree.maildir("alice@example.test").parent
    stub = tmp_path / "vuserinfo"
    stub.write_text(f'#!/bin/sh\n[ "$1 $2" = "-d alice@example.test" ] && echo {home} && exit 0\n'
                    'echo "no such user $2"; exit 1\n')  # fmt: skip
    stub.chmod(0o755)
    text = tree.config_path.read_text().replace("vpopmail:\n", f"vpopmail:\n  vuserinfo: {stub}\n")
    tree.config_path.write_text(text)
    assert run(*ctx, SPAM)[0] == 99
    assert run(*ctx, SPAM, "bob@example.test")[0] == 0


def test_message_without_header_keeps_its_body(ctx: Fixtures) -> None:
    ctx[0].write_config("deliver:\n  rules:\n    - {spam: false, action: junk}\n")
    assert run(*ctx, b"just text, no header\nsecond line\n")[0] == 99
    data = ctx[0].messages("alice@example.test", "Junk")[0].read_bytes()
    head, body = data.split(b"\n\n", 1)
    assert head.split(b"\n")[-1].startswith(b"X-Quarantine: junk")
    assert body == b"just text, no header\nsecond line\n"


class FailingStream(io.BytesIO):
    """Gives the header, then fails like a broken pipe while the body streams."""

    def read(self, size: int | None = -1) -> bytes:
        raise OSError(5, "Input/output error")


def test_read_error_mid_body_leaves_nothing(ctx: Fixtures, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = ctx[0]
    env = sandbox.qmail_env(tree, "alice@example.test", "s@x.example", None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stream = FailingStream(env["RPLINE"].encode() + SPAM)
    code = deliver.main(["--config", str(tree.config_path)], stdin=stream)
    out = ctx[2].readouterr().out
    assert code == 111
    assert "Input/output error" in out
    junk = tree.maildir("alice@example.test") / ".Junk"
    assert list((junk / "new").iterdir()) == []
    assert list((junk / "tmp").iterdir()) == []


def test_leading_dash_user_never_reaches_vuserinfo(ctx: Fixtures, tmp_path: Path) -> None:
    """`-x` is not a vpopmail user: exit 0 without running vuserinfo as `-d -x@...`."""
    tree = ctx[0]
    marker = tmp_path / "ran"
    stub = tmp_path / "vuserinfo"
    stub.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    stub.chmod(0o755)
    text = tree.config_path.read_text().replace("vpopmail:\n", f"vpopmail:\n  vuserinfo: {stub}\n")
    tree.config_path.write_text(text)
    assert run(*ctx, SPAM, "-x@example.test")[0] == 0
    assert not marker.exists()


def test_vuserinfo_not_executable_defers(ctx: Fixtures, tmp_path: Path) -> None:
    tree = ctx[0]
    text = tree.config_path.read_text().replace(
        "vpopmail:\n", f"vpopmail:\n  vuserinfo: {tmp_path}/absent\n"
    )
    tree.config_path.write_text(text)
    code, out = run(*ctx, SPAM)
    assert code == 111
    assert "is not executable" in out


def test_stuck_vuserinfo_defers(
    ctx: Fixtures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quarantine import vpopmail

    monkeypatch.setattr(vpopmail, "VUSERINFO_TIMEOUT", 0.5)
    tree = ctx[0]
    stub = tmp_path / "vuserinfo"
    stub.write_text("#!/bin/sh\nexec sleep 30\n")
    stub.chmod(0o755)
    text = tree.config_path.read_text().replace("vpopmail:\n", f"vpopmail:\n  vuserinfo: {stub}\n")
    tree.config_path.write_text(text)
    code, out = run(*ctx, SPAM)
    assert code == 111
    assert "timed out" in out
