"""Shared by the trainer's tests: real SpamAssassin sample messages made
distinct, a sandbox vpopmail tree with Junk folders filled and aged, the
`train`/`stats`/`schedule` commands on a click group of their own,
`sa-learn --dump magic` read back, and a spamd of the test's own."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import click
from click.testing import CliRunner, Result

from quarantine import sandbox
from quarantine.cli import train as cli_train
from quarantine.cli.group import Context

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

EXAMPLES = Path("/usr/share/doc/spamassassin/examples")
SPAM = (EXAMPLES / "sample-spam.txt").read_bytes()
HAM = (EXAMPLES / "sample-nonspam.txt").read_bytes()
SA_LEARN = "/usr/bin/sa-learn"
SPAMD, SPAMC = "/usr/sbin/spamd", "/usr/bin/spamc"
DAY = 86400
UID = 89 if os.geteuid() == 0 else os.getuid()
GID = 89 if os.geteuid() == 0 else os.getgid()
_names = itertools.count(1)


def spam(tag: str) -> bytes:
    """The sample spam with its own Message-ID and words, so Bayes counts it apart."""
    words = f"{tag}alpha {tag}bravo {tag}charlie".encode()
    return (
        SPAM.replace(b"<GTUBE1.1010101@example.net>", f"<spam-{tag}@spam.example>".encode())
        .replace(b"Subject: Test spam mail (GTUBE)", b"Subject: Offer " + words)
        .replace(b"This is the GTUBE", b"This is the GTUBE " + words)
    )


def ham(tag: str) -> bytes:
    """The sample non-spam, made distinct the same way."""
    words = f"{tag}delta {tag}echo".encode()
    return HAM.replace(
        b"<v0421010eb70653b14e06@[208.192.102.193]>", f"<ham-{tag}@ham.example>".encode()
    ).replace(b"\n\n", b"\n\n" + words + b"\n", 1)


def make_folder(maildir: Path, folder: str) -> Path:
    path = maildir / f".{folder}"
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    (path / "maildirfolder").touch()
    chown(path)
    return path


def put(
    maildir: Path,
    folder: str | None,
    data: bytes,
    *,
    age: float = 10 * DAY,
    sub: str = "cur",
    flags: str = "S",
    name: str | None = None,
) -> Path:
    """A message file in `folder` (None: the inbox), `age` seconds old by mtime."""
    base = make_folder(maildir, folder) if folder else maildir
    if name is None:
        name = f"{1700000000 + next(_names)}.M{next(_names)}P4242.test,S={len(data)}"
        if sub == "cur":
            name += f":2,{flags}"
    path = base / sub / name
    path.write_bytes(data)
    when = time.time() - age
    os.utime(path, (when, when))
    chown(path)
    return path


def chown(path: Path) -> None:
    """Hand a path (and what is under it) to the domain uid, as vpopmail owns it."""
    if os.geteuid() != 0:
        return
    os.chown(path, UID, GID, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for sub in path.rglob("*"):
            os.chown(sub, UID, GID, follow_symlinks=False)


def new_tree() -> sandbox.Tree:
    """A sandbox tree in a fresh /tmp directory the domain uid can traverse."""
    return sandbox.make_tree(uid=UID, gid=GID)


def example_tree() -> Iterator[sandbox.Tree]:
    """A sandbox tree with the domain example.test, removed afterwards (the
    body of the test modules' `tree` fixture: `yield from ts.example_tree()`)."""
    made = new_tree()
    made.add_domain("example.test")
    try:
        yield made
    finally:
        sandbox.remove(made)


def bayes_dir(tree: sandbox.Tree, name: str = "bayes") -> Path:
    path = tree.root / name
    path.mkdir()
    chown(path)
    return path


def train_config(tree: sandbox.Tree, **keys: object) -> Path:
    """The tree's config with a train section: lock and state inside the tree."""
    values: dict[str, object] = {
        "lock_file": tree.root / "train.lock",
        "state_file": tree.root / "state" / "train.json",
    }
    values.update(keys)
    lines = []
    for key, value in values.items():
        if isinstance(value, list | tuple):
            lines.append(f"  {key}: [{', '.join(str(v) for v in value)}]")
        elif isinstance(value, bool):
            lines.append(f"  {key}: {'true' if value else 'false'}")
        else:
            lines.append(f"  {key}: {value}")
    return tree.write_config("train:\n" + "\n".join(lines) + "\n")


# The line sa-learn prints last, which the trainer reads (its exit code alone
# proves nothing): a stand-in says it learned every file given after "--".
SAYS_LEARNED = (
    'n=0; f=; for a do [ -n "$f" ] && n=$((n + 1)); [ "$a" = -- ] && f=1; done\n'
    'echo "Learned tokens from $n message(s) ($n message(s) examined)"\n'
)


def script(path: Path, text: str) -> Path:
    """An executable stand-in program (for failure cases and call logs)."""
    path.write_text(text)
    path.chmod(0o755)
    return path


def call_log(tree: sandbox.Tree) -> Path:
    """A log file the domain uid can append to."""
    log = tree.root / "calls.log"
    log.touch()
    log.chmod(0o666)
    return log


def logging_sa_learn(tree: sandbox.Tree, log: Path) -> Path:
    """The real sa-learn behind a wrapper that records each call's arguments."""
    return script(
        tree.root / "sa-learn-logged",
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {SA_LEARN} "$@"\n',
    )


def magic(dbpath: Path) -> dict[str, int]:
    """nspam, nham ... from `sa-learn --dbpath D --dump magic` (third column)."""
    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run(
            [SA_LEARN, "--dbpath", str(dbpath), "--dump", "magic"],
            capture_output=True,
            text=True,
            env={"HOME": home, "PATH": "/usr/bin:/bin", "LANG": "C"},
            check=True,
        ).stdout
    values = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and "non-token" in line:
            values[fields[-1]] = int(fields[2])
    return values


@click.group()
@click.option("--config", "config_path")
@click.pass_context
def group(ctx: click.Context, config_path: str | None) -> None:
    """The trainer's commands on a group of the tests' own."""
    ctx.obj = Context(config_path)


cli_train.add_to(group)


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(group, ["--config", str(config), *args], catch_exceptions=False)


def train_json(config: Path) -> tuple[dict[str, object], Result]:
    """`train --json`: its summary and the click result."""
    result = invoke(config, "train", "--json")
    return json.loads(result.stdout), result


def with_id(message: bytes, mid: bytes) -> bytes:
    """`message` (made by spam()) under another Message-ID."""
    start = message.index(b"<spam-")
    return message[:start] + mid + message[message.index(b">", start) + 1 :]


def age(*paths: Path) -> None:
    """Make the files ten days old (due for learning)."""
    when = time.time() - 10 * DAY
    for path in paths:
        os.utime(path, (when, when))


def as_the_uid(tree: sandbox.Tree, argv: list[str]) -> None:
    """Run `argv` as the domain uid, HOME in the tree."""
    env = {"HOME": str(tree.root), "PATH": "/usr/bin:/bin", "LANG": "C"}
    subprocess.run(
        argv, env=env, user=UID, group=GID, extra_groups=[], capture_output=True, check=True
    )


def learn_directly(tree: sandbox.Tree, dbpath: Path, message: bytes) -> None:
    """Learn `message` into the store as something else than the trainer
    would (spamd's autolearn, an admin's sa-learn), synced."""
    path = tree.root / "learned-elsewhere.eml"
    path.write_bytes(message)
    path.chmod(0o644)
    as_the_uid(tree, [SA_LEARN, "--dbpath", str(dbpath), "--spam", str(path)])


def finishes_within(seconds: float, work: Callable[[], object]) -> object:
    """`work`'s result (or the exception it raised), run in a thread that
    must be done within `seconds`: a wait that never ends fails the test
    instead of hanging it."""
    out: list[object] = []

    def target() -> None:
        try:
            out.append(work())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    return out[0]


def files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under root with its mode, size and mtime (not following symlinks)."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


class Spamd:
    """A running spamd: its port and its Bayes directory (bayes_path DB/bayes)."""

    def __init__(self, port: int, db: Path) -> None:
        self.port = port
        self.db = db

    def spamc(self, *args: str, message: bytes) -> bytes:
        """`spamc -d 127.0.0.1 -p PORT ARGS` with `message` on stdin: its output."""
        argv = [SPAMC, "-d", "127.0.0.1", "-p", str(self.port), *args]
        return subprocess.run(argv, input=message, capture_output=True, check=True).stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def running_spamd() -> Iterator[Spamd]:
    """spamd as rig.md starts it, with a Bayes directory its user
    (debian-spamd) and the domain uid can both write; waits until it
    answers, stops it by PID."""
    top = Path(tempfile.mkdtemp(prefix="quarantine-spamd-"))
    top.chmod(0o755)
    home, db = top / "home", top / "bayes"
    home.mkdir()
    db.mkdir()
    db.chmod(0o777)
    user = pwd.getpwnam("debian-spamd") if os.geteuid() == 0 else None
    if user is not None:
        for path in (home, db):
            os.chown(path, user.pw_uid, user.pw_gid)
    port = free_port()
    pidfile = top / "spamd.pid"
    argv = [SPAMD, "--allow-tell", "-i", "127.0.0.1", "-p", str(port), "-x", "-H", str(home)]
    argv += [f"--cf=bayes_path {db}/bayes", "--cf=bayes_file_mode 0777"]
    argv += ["-m", "2", "--min-children=1", "--min-spare=1", "-s", "stderr"]
    argv += ["-r", str(pidfile), "-d"]
    if user is not None:
        argv += ["-u", "debian-spamd"]
    log = (top / "spamd.log").open("wb")
    subprocess.run(argv, stdout=log, stderr=log, check=True, timeout=60)
    pid = None
    try:
        deadline = time.monotonic() + 60
        while True:
            if pidfile.exists() and pidfile.read_text().strip().isdigit():
                pid = int(pidfile.read_text())
                ping = subprocess.run(
                    [SPAMC, "-d", "127.0.0.1", "-p", str(port), "-K"],
                    capture_output=True,
                    check=False,
                )
                if ping.returncode == 0:
                    break
            assert time.monotonic() < deadline, (top / "spamd.log").read_text()
            time.sleep(0.2)
        yield Spamd(port, db)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        log.close()
        subprocess.run(["rm", "-rf", str(top)], check=False)
