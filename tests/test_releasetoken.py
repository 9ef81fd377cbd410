"""Release tokens: their form (an address local part in any case), what they
bind (domain, mailbox, Maildir name, expiry), and the key file's safety."""

from __future__ import annotations

import base64
import hmac
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quarantine import releasetoken as rt

KEY = bytes(range(32))
NAME = "1700000000.M123456P42Q1R0011223344556677.host,S=1234"


def test_form_is_32_lower_case_base32_characters() -> None:
    token = rt.make(KEY, "example.test", "alice", NAME, 1_900_000_000)
    assert len(token) == rt.LENGTH == 32
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert len(f"quarantine-release-{token}") <= 64  # RFC 5321's local-part limit


def test_binds_domain_mailbox_name_and_expiry() -> None:
    token = rt.make(KEY, "example.test", "alice", NAME, 1_900_000_000)
    parsed = rt.parse(token)
    assert parsed is not None
    assert parsed.expires == 1_900_000_000 // 60 * 60
    assert parsed.tag == rt.mailbox_tag(KEY, "example.test", "alice")
    assert rt.matches(KEY, parsed, "example.test", "alice", NAME)
    assert rt.matches(KEY, parsed, "Example.TEST", "Alice", NAME + ":2,S")  # flags set by IMAP
    assert not rt.matches(KEY, parsed, "example.org", "alice", NAME)
    assert not rt.matches(KEY, parsed, "example.test", "bob", NAME)
    assert not rt.matches(KEY, parsed, "example.test", "alice", NAME.replace("1234", "1235"))
    assert not rt.matches(bytes(32), parsed, "example.test", "alice", NAME)


def test_matcher_agrees_with_matches() -> None:
    """The matcher for a mailbox says what matches() says of each name, a
    name that is not UTF-8 (surrogate-escaped, as os.scandir gives it) too."""
    odd = "1700000000.M1P1Q1.h\udcffst,S=12"
    for made_for in (NAME, odd):
        token = rt.parse(rt.make(KEY, "example.test", "alice", made_for, 1_900_000_000))
        assert token is not None
        match = rt.matcher(KEY, token, "Example.Test", "ALICE")
        assert match is not None
        names = [NAME, NAME + ":2,S", NAME.replace("1234", "1235"), odd, odd + ":2,", "", "."]
        got = [match(name) for name in names]
        assert got == [rt.matches(KEY, token, "example.test", "alice", n) for n in names]
        assert got.count(True) == 2 and got[names.index(made_for)]


def test_matcher_checks_the_tag_once_and_hashes_only_the_name_per_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another mailbox's tag: None, no name is looked at. Per name, no new
    HMAC is keyed: the state after the fixed prefix is copied."""
    token = rt.parse(rt.make(KEY, "example.test", "alice", NAME, 1_900_000_000))
    assert token is not None
    assert rt.matcher(KEY, token, "example.test", "bob") is None
    keyed: list[bytes] = []
    real = hmac.new

    def counting(key: bytes, msg: bytes | None, digestmod: Callable[[], Any]) -> hmac.HMAC:
        keyed.append(msg or b"")
        return real(key, msg, digestmod)

    monkeypatch.setattr(hmac, "new", counting)
    match = rt.matcher(KEY, token, "example.test", "alice")
    assert match is not None
    found = [name for index in range(1000) if match(name := f"{index}.M1P1Q1.host,S=9")]
    assert found == [] and match(NAME)
    assert len(keyed) == 2  # the mailbox tag, the prefix


def test_read_in_any_case() -> None:
    token = rt.make(KEY, "example.test", "alice", NAME, 1_900_000_000)
    parsed = rt.parse(token.upper())
    assert parsed is not None and rt.matches(KEY, parsed, "example.test", "alice", NAME)


def test_a_later_expiry_written_in_is_a_forgery() -> None:
    """The expiry is under the MAC: pushing it forward breaks the token."""
    token = rt.make(KEY, "example.test", "alice", NAME, 1_800_000_000)
    raw = bytearray(base64.b32decode(token.upper()))
    raw[1:5] = (1_900_000_000 // 60).to_bytes(4, "big")
    forged = rt.parse(base64.b32encode(bytes(raw)).decode().lower())
    assert forged is not None and forged.expires > 1_800_000_000
    assert not rt.matches(KEY, forged, "example.test", "alice", NAME)


@pytest.mark.parametrize(
    "text",
    ["", "a" * 31, "a" * 33, "1" * 32, "a" * 31 + "!", "a" * 31 + "\n", "é" * 32, "a" * 32],
    ids=["empty", "short", "long", "digit-1", "punct", "newline", "non-ascii", "version-0"],
)
def test_not_a_token(text: str) -> None:
    assert rt.parse(text) is None  # "a"*32 decodes to version 0


def test_every_changed_character_breaks_the_token() -> None:
    token = rt.make(KEY, "example.test", "alice", NAME, 1_900_000_000)
    for index in range(len(token)):
        other = "b" if token[index] != "b" else "c"
        forged = rt.parse(token[:index] + other + token[index + 1 :])
        ok = forged is not None and rt.matches(KEY, forged, "example.test", "alice", NAME)
        assert not ok, index


def test_key_made_once_0600_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "digest.key"
    key = rt.ensure_key(str(path))
    assert len(key) == rt.KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert rt.ensure_key(str(path)) == key
    assert rt.read_key(str(path)) == key
    assert [p.name for p in path.parent.iterdir()] == ["digest.key"]  # no temp file left


def test_key_through_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    real.write_text(os.urandom(32).hex())
    real.chmod(0o600)
    link = tmp_path / "digest.key"
    link.symlink_to(real)
    with pytest.raises(rt.KeyProblem, match="cannot read"):
        rt.ensure_key(str(link))


def test_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "digest.key"
    path.write_text(os.urandom(32).hex())
    path.chmod(0o644)
    with pytest.raises(rt.KeyProblem, match="open to other users"):
        rt.read_key(str(path))
    path.chmod(0o640)  # a group the domains' uids share may read it
    assert len(rt.read_key(str(path))) == 32


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_root_hands_the_new_key_to_the_release_uid(tmp_path: Path) -> None:
    path = tmp_path / "digest.key"
    rt.ensure_key(str(path), (89, 89))
    assert (path.stat().st_uid, path.stat().st_gid) == (89, 89)
