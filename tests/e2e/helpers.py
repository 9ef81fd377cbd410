"""Helpers shared by the end-to-end tests: running `quarantine deliver` the
way qmail-local does (or with a crafted environment), reading a Maildir, and
checking that a delivered message is the one that was sent."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from quarantine import sandbox

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

ALICE = "alice@example.test"
BOB = "bob@example.test"
SENDER = "someone@sender.example"
RPLINE = f"Return-Path: <{SENDER}>\n".encode()
ALICE_DTLINE = b"Delivered-To: example.test-alice@example.test\n"


def qmail_env(tree: sandbox.Tree, address: str = ALICE, **overrides: str | None) -> dict[str, str]:
    """qmail-local's environment for `address`, with some variables replaced
    (or removed, when given None)."""
    env = sandbox.qmail_env(tree, address, SENDER, None)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class Ran(NamedTuple):
    """How a direct run of `quarantine deliver` ended. `read_all` is False
    when it exited before reading all of its input: behind qmail's real
    preline that kills preline with SIGPIPE, and qmail-local reports a crash
    and defers the message."""

    returncode: int
    stdout: bytes
    read_all: bool


def with_preline(env: Mapping[str, str], message: bytes) -> bytes:
    """What preline writes into the filter: From_, Return-Path, Delivered-To, message."""
    lines = env.get("UFLINE", "") + env.get("RPLINE", "") + env.get("DTLINE", "")
    return lines.encode("latin-1", "replace") + message


def spawn_deliver(
    quarantine_bin: Path,
    tree: sandbox.Tree,
    env: Mapping[str, str],
    *args: str,
    config: bool = True,
    drop_root: bool = True,
) -> subprocess.Popen[bytes]:
    """Start `quarantine deliver [--config tree's] ARGS` directly (no shell) as
    the domain's uid/gid (unless `drop_root` is False), in the domain
    directory, with exactly `env`; stdin and stdout are pipes."""
    argv = [str(quarantine_bin), "deliver"]
    if config:
        argv += ["--config", str(tree.config_path)]

    def drop() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        if drop_root and os.geteuid() == 0:
            os.setgroups([])
            os.setgid(tree.gid)
            os.setuid(tree.uid)

    return subprocess.Popen(
        [*argv, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=tree.domains["example.test"],
        preexec_fn=drop,
        bufsize=0,
    )


def run_deliver(
    quarantine_bin: Path,
    tree: sandbox.Tree,
    message: bytes,
    env: Mapping[str, str],
    *args: str,
    preline: bool = True,
    config: bool = True,
    drop_root: bool = True,
) -> Ran:
    """Run `spawn_deliver(...)` on `message` (behind preline's three lines
    unless `preline` is False) and wait for it."""
    data = with_preline(env, message) if preline else message
    proc = spawn_deliver(quarantine_bin, tree, env, *args, config=config, drop_root=drop_root)
    assert proc.stdin is not None and proc.stdout is not None
    broken: list[bool] = []

    def feed() -> None:
        assert proc.stdin is not None
        view = memoryview(data)
        try:
            while view:
                view = view[proc.stdin.write(view) or 0 :]
        except BrokenPipeError:
            broken.append(True)
        finally:
            proc.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        out = proc.stdout.read()
        proc.stdout.close()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        feeder.join()
    return Ran(code, out, not broken)


def one_line(output: bytes | str) -> str:
    """The single log line a delivery program must print (qmail logs it)."""
    text = output.decode("latin-1") if isinstance(output, bytes) else output
    assert "Traceback" not in text, text
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    return text[:-1]


def files(directory: Path) -> list[Path]:
    """Entries of a directory (empty when it does not exist)."""
    return sorted(directory.iterdir()) if directory.is_dir() else []


def snapshot(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `roots` (symlinks not followed) with its type/mode,
    size and mtime: compare two to see whether anything was touched."""
    seen: dict[str, tuple[int, int, int]] = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            seen[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


def size_in_name(path: Path) -> int:
    """The `,S=<size>` of a Maildir++ file name."""
    base = path.name.split(":", 1)[0]
    [size] = [part[2:] for part in base.split(",")[1:] if part.startswith("S=")]
    return int(size)


def split_junk_file(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """A file `deliver` filed into Junk behind preline: (Return-Path line,
    Delivered-To line, X-Quarantine line, the rest)."""
    return_path, delivered_to, ours, rest = data.split(b"\n", 3)
    return return_path + b"\n", delivered_to + b"\n", ours + b"\n", rest


def assert_junk_of(tree: sandbox.Tree, address: str, message: bytes, dtline: bytes) -> Path:
    """`message` was filed, intact, into `address`'s Junk and nowhere else."""
    assert tree.messages(address) == []
    [path] = tree.messages(address, "Junk")
    return_path, delivered_to, ours, rest = split_junk_file(path.read_bytes())
    assert return_path == RPLINE
    assert delivered_to == dtline
    assert ours.startswith(b"X-Quarantine: junk; rule=")
    assert rest == message
    assert size_in_name(path) == path.stat().st_size
    return path


def assert_inbox_of(tree: sandbox.Tree, address: str, message: bytes, dtline: bytes) -> Path:
    """`message` was delivered, intact, into `address`'s inbox and nowhere else."""
    assert tree.messages(address, "Junk") == []
    [path] = tree.messages(address)
    assert path.read_bytes() == RPLINE + dtline + message
    return path


def header_names(data: bytes) -> list[bytes]:
    """Names of the header fields of a message, top to bottom."""
    head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return [line.split(b":", 1)[0] for line in head.split(b"\n") if line[:1] not in (b" ", b"\t")]


def insert_headers(message: bytes, lines: Iterable[bytes]) -> bytes:
    """`message` with header `lines` put on top (as a later hop would add them)."""
    return b"".join(lines) + message
