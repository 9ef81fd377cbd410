"""`quarantine release` on its own: the mail path's imports, the exit codes
of its own failures, and the confirmation's header made safe."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from quarantine import config, release, releasetoken, sandbox

HEAVY = {"click", "yaml", "email", "re", "typing", "dataclasses", "subprocess", "logging",
         "dkim", "spf", "dns", "json"}  # fmt: skip


def junk_tree(root: Path) -> tuple[sandbox.Tree, str, str]:
    """A tree (as the current uid) with alice's one Junk message; returns the
    tree, the message's name and a release token for it."""
    tree = sandbox.make_tree(root, uid=os.getuid(), gid=os.getgid())
    tree.add_domain("example.test")
    maildir = tree.add_user("alice@example.test")
    for sub in ("", "/new", "/cur", "/tmp"):
        Path(f"{maildir}/.Junk{sub}").mkdir()
    name = "1700000000.M1P1Q1.host,S=36"
    (maildir / ".Junk" / "new" / name).write_bytes(b"Subject: hi\nFrom: x@y\n\nhello\n")
    tree.write_config(
        f"digest:\n  qmail_inject: {tree.inject_path}\n  secret_file: {root}/digest.key\n"
    )
    key = releasetoken.ensure_key(str(root / "digest.key"))
    token = releasetoken.make(key, "example.test", "alice", name, time.time() + 600)
    return tree, name, token


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
