"""The digest's pieces: delivery times from Maildir names, summary lines of
hostile headers, the message's two parts, and who gets one."""

from __future__ import annotations

import email
from pathlib import Path

import pytest

from quarantine import config, digest, digestmail


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1700000000.M123456P42Q1.host,S=10", 1700000000.123456),
        ("1700000000.M5P42.host:2,S", 1700000000.000005),
        ("1700000000.12345_1.host", 1700000000.0),
        ("courier.Junk.x", 42.0),
        ("99999999999999.M1P1.h", 42.0),
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
