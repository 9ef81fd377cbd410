"""Fuzzing `quarantine deliver` in-process: random recipients (valid, unknown,
hostile) and random messages; the only outcomes are 0, 99 or 111 with one log
line, nothing escapes the sandbox tree, and every junk file is complete.

Exit 100 cannot occur here: the tree's config keeps the default rules (no
bounce action) and `--inbox` is not passed, so no unknown-user bounce either.

QUARANTINE_FUZZ_RUNS sets the number of runs (default 10000), QUARANTINE_FUZZ_SEED
the seed (default fixed, printed for reproduction).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from pathlib import Path

import pytest

from quarantine import deliver, sandbox

RUNS = int(os.environ.get("QUARANTINE_FUZZ_RUNS", "10000"))
SEED = int(os.environ.get("QUARANTINE_FUZZ_SEED", "20261124"))
DOMAIN = "example.test"
ENV_KEYS = ("EXT", "HOST", "RPLINE", "DTLINE")


class World:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.tree = sandbox.make_tree(base / "tree", uid=os.getuid(), gid=os.getgid())
        self.tree.add_domain(DOMAIN)
        self.tree.add_user(f"alice@{DOMAIN}")
        self.tree.add_user(f"bob@{DOMAIN}")
        # A lookalike of a domain directory outside the tree, for hostile HOSTs.
        self.sentinel = base / "sentinel"
        (self.sentinel / "victim" / "Maildir" / "new").mkdir(parents=True)
        (self.sentinel / "victim" / "Maildir" / "cur").mkdir()
        (self.sentinel / "victim" / "Maildir" / "tmp").mkdir()
        (self.sentinel / "vpasswd").write_text(
            f"victim:x:1:0:victim:{self.sentinel / 'victim'}:NOQUOTA\n"
        )

    def outside(self) -> set[str]:
        """Every path under the base directory that is not in the tree."""
        tree = str(self.tree.root)
        found = set()
        for dirpath, dirnames, filenames in os.walk(self.base):
            if dirpath == tree or dirpath.startswith(tree + os.sep):
                dirnames[:] = []
                continue
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if path != tree:
                    found.add(path)
        return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("fuzz-deliver"))


def recipient(rng: random.Random, world: World) -> tuple[str | None, str | None]:
    """(EXT, HOST); None leaves the variable unset."""
    users = ["alice", "bob", "Alice", "alice-news", "bob-a-b", "nobody", "", "victim"]
    hostile_users = [
        "../bob",
        "../../../etc/passwd",
        "/",
        "alice/../bob",
        "alice;rm -rf /",
        "$(id)",
        "`id`",
        "a|b",
        "alice\nbob",
        "alice\x00",
        "ålice",
        "\u202ealice",
        "a" * rng.choice((64, 255, 4096)),
        ".",
        "..",
        "-",
        "alice ",
        "*",
    ]
    hosts = [DOMAIN, DOMAIN.upper(), "unknown.test", "", "example.test."]
    hostile_hosts = [
        "..",
        "../..",
        "../../sentinel",
        "../../../sentinel",
        str(world.sentinel),
        "/",
        "/etc",
        f"{DOMAIN}/../{DOMAIN}",
        f"{DOMAIN};id",
        "$(id).test",
        "ëxample.test",
        "x" * rng.choice((64, 256, 5000)),
        f"{DOMAIN}\n",
        f"{DOMAIN}\x00",
        "*",
    ]
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(("alice", "bob", "alice-news")), rng.choice((DOMAIN, DOMAIN.upper()))
    ext = rng.choice(users) if roll < 0.7 else rng.choice(hostile_users)
    host = rng.choice(hosts) if rng.random() < 0.7 else rng.choice(hostile_hosts)
    if rng.random() < 0.02:
        ext = None
    if rng.random() < 0.02:
        host = None
    return ext, host


def random_text(rng: random.Random, size: int) -> bytes:
    alphabet = rng.choice(
        (b"abc xyz:;=()\"'\\,.-", bytes(range(256)), b" \t\r\n", b"Yes No score=5.0")
    )
    return bytes(rng.choice(alphabet) for _ in range(size))


def header(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:
        word = rng.choice(["Yes", "No", "yes", "YES", " Yes ", "no", "Maybe", "", "Yes;"])
        score = rng.choice(["7.2", "-1", "nan", "inf", "-inf", "1e400", "x", "", "5,0"])
        return f"X-Spam-Status: {word}, score={score} required=5.0 tests=A".encode()
    if kind == 1:
        return b"X-Spam-Flag: " + rng.choice([b"YES", b"NO", b"yes", b""])
    if kind == 2:
        serv = rng.choice(["mx.example.test", "evil.example", "", "(x) y", '"q;"'])
        res = rng.choice(["dkim=pass header.d=x", "spf=fail", "dmarc=fail policy.dmarc=reject"])
        return f"Authentication-Results: {serv}; {res}".encode()
    if kind == 3:
        return b"Received-SPF: " + rng.choice([b"pass (mx: x)", b"fail", b"", b"(((("])
    if kind == 4:
        return b"X-Quarantine: inbox; forged"
    if kind == 5:
        return b"Return-Path: <x@y>"
    if kind == 6:
        return b"Subject: " + random_text(rng, rng.randrange(0, 200))
    if kind == 7:
        return random_text(rng, rng.randrange(0, 80))  # maybe not a header at all
    return b"\tfolded " + random_text(rng, rng.randrange(0, 40))


def message(rng: random.Random) -> bytes:
    shape = rng.randrange(10)
    if shape == 0:
        return b""
    if shape == 1:
        return random_text(rng, rng.randrange(0, 2000))  # no header structure at all
    eol = rng.choice([b"\n", b"\r\n", b"\r"])
    lines = [header(rng) for _ in range(rng.randrange(0, 12))]
    if shape == 2:
        lines.insert(0, b"From someone@sender.example Tue Nov 24 01:00:00 2026")
    if rng.random() < 0.5:
        lines.insert(rng.randrange(len(lines) + 1), b"X-Spam-Status: Yes, score=9.9")
    head = eol.join(lines)
    if shape == 3:
        return head  # ends inside the header
    body = random_text(rng, rng.choice((0, 10, 500, 5000)))
    if rng.random() < 0.1:
        body += b"\x00" * 100 + bytes(range(256))
    return head + eol + eol + body


def run_once(world: World, rng: random.Random) -> tuple[int, str, str]:
    """One delivery; returns (exit code, output, the input for a failure report)."""
    ext, host = recipient(rng, world)
    data = message(rng)
    shown = f"EXT={ext!r} HOST={host!r} stdin={data[:300]!r}"
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    try:
        for key, value in (("EXT", ext), ("HOST", host)):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value.replace("\x00", "")  # the kernel cannot pass a NUL
        os.environ["RPLINE"] = "Return-Path: <someone@sender.example>\n"
        os.environ["DTLINE"] = f"Delivered-To: {DOMAIN}-{ext}@{host}\n".replace("\x00", "")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = deliver.main(["--config", str(world.tree.config_path)], stdin=io.BytesIO(data))
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
    return code, out.getvalue(), shown


SIZE = re.compile(r",S=(\d+)")


def test_fuzz_deliver_outcomes(world: World) -> None:
    """Random recipients and messages: exit 0/99/111, one line, nothing escapes."""
    print(f"fuzz seed {SEED}, {RUNS} runs")
    rng = random.Random(SEED)  # noqa: S311 - reproducible fuzzing, not crypto
    before = world.outside()
    codes: dict[int, int] = {}
    for number in range(RUNS):
        code, out, shown = run_once(world, rng)
        where = f"run {number} (seed {SEED}) {shown}"
        assert code in (0, 99, 111), f"{where}: exit {code}: {out!r}"
        assert out.endswith("\n") and out.count("\n") == 1, f"{where}: {out!r}"
        assert not out.startswith("quarantine: unexpected"), f"{where}: {out!r}"
        codes[code] = codes.get(code, 0) + 1
    print(f"exit codes: {codes}")
    assert world.outside() == before
    assert not list((world.sentinel / "victim" / "Maildir" / "new").iterdir())
    assert codes.get(99, 0) > 0 and codes.get(0, 0) > 0  # the fuzz reached both paths
    junk = 0
    for user in ("alice", "bob"):
        for folder in (".Junk/new", "new"):
            directory = world.tree.maildir(f"{user}@{DOMAIN}") / folder
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                match = SIZE.search(path.name)
                assert match, path
                assert path.stat().st_size == int(match.group(1)), path
                junk += folder == ".Junk/new"
    assert junk == codes.get(99, 0)
