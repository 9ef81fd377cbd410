"""`quarantine release` on its own: the mail path's imports, the exit codes
of its own failures, and the confirmation's header made safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from quarantine import config, release, releasetoken, sandbox

HEAVY = {"click", "yaml", "email", "re", "typing", "dataclasses", "subprocess", "logging",
         "dkim", "spf", "dns", "json"}  # fmt: skip


def junk_tree(root: Path, extra: str = "") -> tuple[sandbox.Tree, str, str]:
    """A tree (as the current uid) with alice's one Junk message; returns the
    tree, the message's name and a release token for it. `extra`: more lines
    of the config's digest section."""
    tree = sandbox.make_tree(root, uid=os.getuid(), gid=os.getgid())
    tree.add_domain("example.test")
    maildir = tree.add_user("alice@example.test")
    for sub in ("", "/new", "/cur", "/tmp"):
        Path(f"{maildir}/.Junk{sub}").mkdir()
    name = "1700000000.M1P1Q1.host,S=36"
    (maildir / ".Junk" / "new" / name).write_bytes(b"Subject: hi\nFrom: x@y\n\nhello\n")
    tree.write_config(
        f"digest:\n  qmail_inject: {tree.inject_path}\n  secret_file: {root}/digest.key\n" + extra
    )
    return tree, name, token_for(tree, name)


def token_for(tree: sandbox.Tree, name: str) -> str:
    key = releasetoken.ensure_key(str(tree.root / "digest.key"))
    return releasetoken.make(key, "example.test", "alice", name, time.time() + 600)


def release_in_a_fresh_python(tree: sandbox.Tree, token: str) -> tuple[str, str]:
    """(the log line, the heavy modules loaded) of one release.main run."""
    env = {"DEFAULT": token, "HOST": "example.test", "EXT": f"quarantine-release-{token}"}
    code = (
        "import sys; before = set(sys.modules)\n"
        "from quarantine import release\n"
        f"code = release.main(['--config', {str(tree.config_path)!r}], {env!r})\n"
        f"print(code, sorted(set({sorted(HEAVY)!r}) & (set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    line, loaded = out.splitlines()
    return line, loaded


def test_release_imports_nothing_heavy(tmp_path: Path) -> None:
    """A dropped token loads no click, YAML (the config's compiled cache is
    read), email, re, json...; a real release (file moved, ham ledger noted,
    confirmation injected) adds only what the ham ledger imports (json, re, typing)."""
    tree, name, token = junk_tree(tmp_path / "t")
    config.load(str(tree.config_path))  # writes the compiled cache beside it
    forged = token[:-1] + ("a" if token[-1] != "a" else "b")
    line, loaded = release_in_a_fresh_python(tree, forged)
    assert "dropped" in line and loaded == "0 []", (line, loaded)
    line, loaded = release_in_a_fresh_python(tree, token)
    assert loaded == "0 ['json', 're', 'typing']", (line, loaded)
    assert line.endswith("-> new/1700000000.M1P1Q1.host,S=36"), line
    assert (tree.maildir("alice@example.test") / "new" / name).is_file()
    assert "alice@example.test success" in tree.inject_log.read_text()
    ledger = (tree.maildir("alice@example.test") / "quarantine-hamledger").read_text()
    assert "release/1700000000.M1P1Q1.host,S=36" in ledger


def test_own_failures_defer_with_one_line(tmp_path: Path) -> None:
    """A key file that is gone is ours to fix: 111, so qmail keeps the mail."""
    tree, _name, token = junk_tree(tmp_path / "t")
    (tmp_path / "t" / "digest.key").unlink()
    env = {"DEFAULT": token, "HOST": "example.test"}
    assert release.main(["--config", str(tree.config_path)], env) == 111
    assert release.main(["--bogus"], env) == 111


def test_header_value_is_one_printable_line() -> None:
    header = (
        b"Received: x\nSubject: =?utf-8?q?a?= \r\n\tBcc: evil@x\x00\x1b[31m\xff\nFrom: someone\n"
    )
    value = release.header_value(header, b"subject")
    assert value == "=?utf-8?q?a?= Bcc: evil@x [31m"
    assert release.header_value(header, b"to") == ""
    assert len(release.header_value(b"Subject: " + b"x" * 1000, b"subject")) == 160


# --- refusals, the Junk scan, the confirmation's process ----------------------


def run_release(tree: sandbox.Tree, token: str) -> str:
    """release.run for `token`: its log line, or `dropped: REASON`."""
    env = {"DEFAULT": token, "HOST": "example.test"}
    try:
        return release.run(config.load(str(tree.config_path)), env, time.time())
    except release.Dropped as exc:
        return f"dropped: {exc}"


def second_message(tree: sandbox.Tree) -> tuple[str, str]:
    """Another Junk message of alice's: its name and token."""
    name = "1700000001.M2P2Q2.host,S=36"
    junk = tree.maildir("alice@example.test") / ".Junk" / "new"
    (junk / name).write_bytes(b"Subject: two\nFrom: x@y\n\nhello\n")
    return name, token_for(tree, name)


def spy_on_find(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each Junk scan from now on, by Maildir."""
    scans: list[str] = []
    real = release._find

    def find(maildir: str, folder: str, match: Callable[[str], bool]) -> release.Found | None:
        scans.append(maildir)
        return real(maildir, folder, match)

    monkeypatch.setattr(release, "_find", find)
    return scans


def test_a_replay_is_refused_before_junk_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, name, token = junk_tree(tmp_path / "t")
    assert run_release(tree, token).endswith(f"-> new/{name}")
    scans = spy_on_find(monkeypatch)
    assert run_release(tree, token) == "dropped: alice@example.test: token used before"
    assert scans == []


def test_a_mailbox_over_its_rate_is_refused_before_junk_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, name, token = junk_tree(tmp_path / "t", "  release_rate: 1\n")
    other, other_token = second_message(tree)
    assert run_release(tree, token).endswith(f"-> new/{name}")
    scans = spy_on_find(monkeypatch)
    line = run_release(tree, other_token)
    assert line == (
        "dropped: alice@example.test: 1 releases in the last hour (digest.release_rate 1)"
    )
    assert scans == []
    assert (tree.maildir("alice@example.test") / ".Junk" / "new" / other).is_file()


def interleave(monkeypatch: pytest.MonkeyPatch, tree: sandbox.Tree, first: str) -> None:
    """The next release runs the release of `first` to its end between its
    own Junk scan and its lock: two deliveries at once."""
    real = release._find

    def find(maildir: str, folder: str, match: Callable[[str], bool]) -> release.Found | None:
        found = real(maildir, folder, match)
        monkeypatch.setattr(release, "_find", real)
        assert run_release(tree, first).startswith("quarantine release: alice@example.test: ")
        return found

    monkeypatch.setattr(release, "_find", find)


def test_a_release_meanwhile_is_seen_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusals are checked again under the Maildir lock: a release that
    ran after this one's scan counts (rate), and the same token twice at
    once releases once."""
    tree, name, token = junk_tree(tmp_path / "t", "  release_rate: 1\n")
    other, other_token = second_message(tree)
    interleave(monkeypatch, tree, token)
    line = run_release(tree, other_token)
    assert line.startswith("dropped: alice@example.test: 1 releases in the last hour"), line
    inbox = tree.maildir("alice@example.test") / "new"
    assert (inbox / name).is_file() and not (inbox / other).exists()
    assert (tree.maildir("alice@example.test") / ".Junk" / "new" / other).is_file()

    tree, name, token = junk_tree(tmp_path / "u")
    interleave(monkeypatch, tree, token)
    assert run_release(tree, token) == "dropped: alice@example.test: token used before"
    assert tree.inject_log.read_text().count("alice@example.test success") == 1


def test_the_junk_scan_is_bounded_in_time_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Junk folder of many files: at most MAX_SCAN names are looked at, and
    the folder's names are never all in memory at once."""
    tree, _name, _token = junk_tree(tmp_path / "t")
    junk = tree.maildir("alice@example.test") / ".Junk"
    for index in range(3_000):
        os.close(os.open(junk / "cur" / f"17000{index:05d}.M{index}P1Q1.host,S=36:2,", os.O_CREAT))
    monkeypatch.setattr(release, "MAX_SCAN", 100)
    looked: list[str] = []

    def match(name: str) -> bool:
        looked.append(name)
        return False

    maildir = str(tree.maildir("alice@example.test"))
    release._find(maildir, "Junk", match)  # the modules it loads, loaded
    looked.clear()
    tracemalloc.start()
    try:
        found = release._find(maildir, "Junk", match)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is None
    assert len(looked) == 100
    assert peak < 50_000, peak  # the 3,000 names as a list: about 270 KB


def test_a_symlinked_junk_folder_is_no_message(tmp_path: Path) -> None:
    """A symlink where .Junk should be (ELOOP under O_NOFOLLOW) is not
    followed: the token names no message, exit 0, nothing moves."""
    tree, name, token = junk_tree(tmp_path / "t")
    maildir = tree.maildir("alice@example.test")
    (maildir / ".Junk").rename(maildir / ".Elsewhere")
    (maildir / ".Junk").symlink_to(maildir / ".Elsewhere")
    line = run_release(tree, token)
    assert line.startswith("dropped: no message in example.test"), line
    assert (maildir / ".Elsewhere" / "new" / name).is_file()


def test_qmail_inject_runs_with_sigpipe_at_its_default(tmp_path: Path) -> None:
    """This process ignores SIGPIPE (Python does); qmail-inject must not
    inherit that, as no program started from a shell would."""
    status = tmp_path / "status"
    program = tmp_path / "qmail-inject"
    program.write_text(f"#!/bin/sh\ncat >/dev/null\nexec cat /proc/self/status >{status}\n")
    program.chmod(0o755)
    release.inject(str(program), "postmaster@example.test", "alice@example.test", b"x\n")
    ignored = next(
        int(line.split()[1], 16)
        for line in status.read_text().splitlines()
        if line.startswith("SigIgn:")
    )
    assert not ignored & 1 << (signal.SIGPIPE - 1), f"{ignored:x}"
