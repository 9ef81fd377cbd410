"""The digest's pieces: delivery times from Maildir names, summary lines of
hostile headers, the message's two parts, who gets one, and the Junk scan
(newest first, no symlink followed, only the listed messages read)."""

from __future__ import annotations

import email
import os
from pathlib import Path

import pytest

from quarantine import config, digest, digestmail, sandbox


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1700000000.M123456P42Q1.host,S=10", 1700000000.123456),
        ("1700000000.M5P42.host:2,S", 1700000000.000005),
        ("1700000000.12345_1.host", 1700000000.0),
        ("courier.Junk.x", 42.0),
        ("99999999999999.M1P1.h", 42.0),
        ("\u00b2\u0663.M1P1.h", 42.0),  # digits to isdigit(), not to float()
        ("1700000000.M12\u00b2P1.h", 1700000000.000012),
    ],
)
def test_arrival_from_the_maildir_name(name: str, expected: float) -> None:
    assert digest.arrival(name, 42.0) == pytest.approx(expected)


def test_summary_of_a_hostile_header() -> None:
    head = (
        b"Return-Path: <x@y>\n"
        b"X-Quarantine: junk; rule=spamassassin; spam=yes score=7.5 spf=none (h; d)\n"
        b"Subject: =?utf-8?b?bGluZTENCkJjYzogdmljdGltQGV4YW1wbGUub3Jn?=\n"
        b"From: =?utf-8?q?=E2=80=AEBoss=E2=80=8B?= <a@b.example>\n"
        b"X-Spam-Status: Yes, score=99.0\n"
        b"\nbody\n"
    )
    entry = digestmail.entry_of("1.M1P1.h", 1.0, head)
    assert entry.subject == "line1 Bcc: victim@example.org"
    assert entry.sender == "Boss <a@b.example>"
    assert (entry.score, entry.rule) == ("7.5", "spamassassin")


def test_summary_of_broken_and_missing_headers() -> None:
    entry = digestmail.entry_of("n", 1.0, b"Subject: =?bogus-charset?q?x?=\n\n")
    assert entry.subject == "=?bogus-charset?q?x?="
    assert (entry.sender, entry.score, entry.rule) == ("(no sender)", "-", "-")
    long = digestmail.entry_of("n", 1.0, b"Subject: " + b"A" * 5000 + b"\n\n")
    assert len(long.subject) == digestmail.FIELD_LIMIT and long.subject.endswith("\u2026")
    moved = digestmail.entry_of("n", 1.0, b"X-Spam-Status: Yes, score=6.1 required=5.0\n\n")
    assert (moved.score, moved.rule) == ("6.1", "spamassassin")


def test_message_has_text_and_html_and_counts_the_rest() -> None:
    entries = [digestmail.Entry(f"{i}.M1P1.h", 1e9 + i, "a <b@c>", f"s{i} <i>", "5", "r")
               for i in range(5)]  # fmt: skip
    data = digestmail.build("al@example.test", "pm@example.test", entries,
                            ["quarantine-release-x@example.test"] * 2, 5, 2e9, 1e9)  # fmt: skip
    message = email.message_from_bytes(data)
    assert message["Subject"] == "Junk summary: 5 messages held for al@example.test"
    assert message["Auto-Submitted"] == "auto-generated"
    text, html = (p.get_payload(decode=True).decode() for p in message.walk()
                  if p.get_content_maintype() == "text")  # fmt: skip
    assert text.count("Release: quarantine-release-x@example.test") == 2
    assert "... and 3 more in your Junk folder." in text
    assert "s0 &lt;i&gt;" in html and "<i>" not in html
    assert "and 3 more" in html


def test_enabled_per_user_domain_and_default(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(
        "digest:\n  enabled:\n    default: all\n    '@example.org': off\n"
        "    bob@example.org: opted-in\n"
    )
    cfg = config.load(str(path))
    assert digest.policy(cfg, "example.test", "alice") == "all"
    assert digest.policy(cfg, "example.org", "alice") == "off"
    assert digest.policy(cfg, "example.org", "bob") == "opted-in"
    assert digest.policy(config.defaults(), "example.test", "alice") == "opted-in"
    path.write_text("digest:\n  enabled: sometimes\n")
    with pytest.raises(config.ConfigError, match=r"digest\.enabled\.default: expected one of all"):
        config.load(str(path))


def junk_folder(tmp_path: Path) -> tuple[Path, int]:
    """An empty Maildir with a Junk folder (new/ and cur/), and its descriptor."""
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp", ".Junk/new", ".Junk/cur", ".Junk/tmp"):
        (maildir / sub).mkdir(parents=True)
    return maildir, os.open(maildir, os.O_RDONLY | os.O_DIRECTORY)


def put(maildir: Path, sub: str, when: int, subject: str) -> str:
    name = f"{when}.M1P1.host" + (":2,S" if sub == "cur" else "")
    (maildir / ".Junk" / sub / name).write_text(f"Subject: {subject}\n\nbody\n")
    return name


def test_junk_scan_takes_the_newest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More files than MAX_FILES: the newest are the ones looked at, in new/
    and cur/ alike, and the oldest left out."""
    maildir, top = junk_folder(tmp_path)
    names = [put(maildir, ("new", "cur")[i % 2], 1_700_000_000 + i, f"s{i}") for i in range(6)]
    monkeypatch.setattr(digest, "MAX_FILES", 3)
    try:
        entries, skipped = digest.junk_entries(top, "Junk", 0)
    finally:
        os.close(top)
    assert [e.name for e in entries] == names[:2:-1]
    assert [e.subject for e in entries] == ["s5", "s4", "s3"] and skipped == 0


def test_junk_scan_opens_only_the_listed_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the `heads` newest regular files are opened for their summary;
    the other new ones are counted (and recorded as seen), older ones never
    looked at, and a symlink (to a file or to nothing), a FIFO and a
    directory are lstat'ed, counted as left out and never opened."""
    maildir, top = junk_folder(tmp_path)
    names = [put(maildir, "new", 1_700_000_000 + i, f"s{i}") for i in range(5)]
    new = maildir / ".Junk" / "new"
    (tmp_path / "secret").write_text("Subject: bob's mail\n\n")
    (new / "1700000010.M1P1.link").symlink_to(tmp_path / "secret")
    (new / "1700000011.M1P1.dangling").symlink_to(tmp_path / "nothing")
    os.mkfifo(new / "1700000012.M1P1.fifo")
    (new / "1700000013.M1P1.dir").mkdir()
    opened: list[str] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None:
            opened.append(str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", spy)
    try:
        entries, skipped = digest.junk_entries(top, "Junk", 1_700_000_001, heads=2)
    finally:
        monkeypatch.undo()
        os.close(top)
    assert skipped == 4
    assert [e.name for e in entries] == [names[4], names[3], names[2], names[1]]
    assert [e.subject for e in entries] == ["s4", "s3", "", ""]
    assert sorted(n for n in opened if n not in (".Junk", "new", "cur")) == [names[3], names[4]]


def test_filter_users_reads_only_what_it_needs(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """filter_users is a generator over the users: nothing read before the
    first is asked for, each opted-in user's .qmail file read at their turn
    (.qmail-default once, for those without one), only the --user asked for
    when one is, and no file at all where digest.enabled is all."""
    from quarantine import discovery, qmailfile

    tree.add_user("carol@example.test")
    read: list[str] = []
    real_read = qmailfile.DomainDir.read

    def spy(self: qmailfile.DomainDir, name: str) -> tuple[str | None, object]:
        read.append(name)
        return real_read(self, name)

    monkeypatch.setattr(qmailfile.DomainDir, "read", spy)
    cfg = config.load(str(tree.config_path))
    (domain,) = discovery.domains_to_visit(cfg, discovery.Options())

    def users() -> list[str]:
        return [
            u for u, _home in digest.filter_users(cfg, domain, discovery.find_users(cfg, domain))
        ]

    found = digest.filter_users(cfg, domain, discovery.find_users(cfg, domain))
    assert read == []
    assert next(found)[0] == "alice" and read == [".qmail-alice"]
    assert list(found) == [] and read == [
        ".qmail-alice",
        ".qmail-bob",
        ".qmail-default",
        ".qmail-carol",
    ]
    read.clear()
    wanted = {"alice@example.test"}
    assert [
        u for u, _ in digest.filter_users(cfg, domain, discovery.find_users(cfg, domain), wanted)
    ] == ["alice"]
    assert read == [".qmail-alice"]
    read.clear()
    tree.write_config("digest:\n  enabled:\n    default: all\n    bob@example.test: off\n")
    cfg = config.load(str(tree.config_path))
    assert users() == ["alice", "carol"] and read == []
