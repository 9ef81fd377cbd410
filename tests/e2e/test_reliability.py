"""`quarantine deliver` under SIGKILL and under load (issue 5, Delivery): the
installed command run as qmail-local runs it (qmail's environment, the
domain's uid/gid 89 when the tests run as root, the domain directory as cwd),
many at a time against the same Maildirs.

Sizes come from the environment so a long run can go further than CI:
QUARANTINE_CRASH_RUNS (default 300), QUARANTINE_LOAD_RUNS (default 200),
QUARANTINE_SEED (default: random, printed); `pytest --long` sets the long sizes
(tests/conftest.py). Run with `-s` to see the figures.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from quarantine import sandbox

from .helpers import RPLINE, SENDER, files, size_in_name

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CRASH_RUNS = int(os.environ.get("QUARANTINE_CRASH_RUNS", "300"))
LOAD_RUNS = int(os.environ.get("QUARANTINE_LOAD_RUNS", "200"))
LOAD_USERS = 20
PARALLEL = 8
KILL_DELAY = 0.030  # seconds after the start; alone, a whole delivery takes about 30 ms
OUR_LINE = b"X-Quarantine: junk; rule="
MAILDIR_ENTRIES = {"tmp", "new", "cur", ".Junk", "courierimapsubscribed", "subscriptions",
                   "maildirsize", "quarantine-hamledger.junk"}  # fmt: skip


@pytest.fixture
def vtree() -> Iterator[sandbox.Tree]:
    """An empty vpopmail tree with the domain example.test (owned by 89 under root)."""
    if os.geteuid() == 0:
        made = sandbox.make_tree()
    else:
        made = sandbox.make_tree(uid=os.getuid(), gid=os.getgid())
    try:
        made.add_domain(DOMAIN)
        yield made
    finally:
        sandbox.remove(made)


def spam(rng: random.Random, number: int, size: int) -> bytes:
    """A distinct spam (its own Message-ID and body) of about `size` bytes,
    as SpamAssassin leaves it; no preline lines, so `deliver` adds RPLINE and
    DTLINE itself."""
    head = (
        f"From: Spammer <spammer@spam.example>\n"
        f"To: someone@{DOMAIN}\n"
        f"Subject: offer {number}\n"
        f"Message-ID: <{number}.{rng.getrandbits(64):016x}@spam.example>\n"
        f"X-Spam-Flag: YES\n"
        f"X-Spam-Status: Yes, score=15.0 required=5.0 tests=GTUBE autolearn=no\n\n"
    ).encode()
    raw = base64.b64encode(rng.randbytes(size * 3 // 4 + 57))
    body = b"\n".join(raw[i : i + 76] for i in range(0, len(raw), 76)) + b"\n"
    return head + body


def message_id(data: bytes) -> bytes | None:
    for line in data.split(b"\n\n", 1)[0].split(b"\n"):
        if line.lower().startswith(b"message-id: "):
            return line[12:]
    return None


def spawn(
    quarantine_bin: Path, tree: sandbox.Tree, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """`quarantine deliver --config CFG` as qmail-local starts it: qmail's
    environment, the domain directory as cwd, and (under root) the domain's
    uid/gid 89 with no supplementary groups."""
    ids: dict[str, Any] = {}
    if os.geteuid() == 0:
        ids = {"user": tree.uid, "group": tree.gid, "extra_groups": []}
    return subprocess.Popen(
        [str(quarantine_bin), "deliver", "--config", str(tree.config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=tree.domains[DOMAIN],
        **ids,
    )


def run(
    quarantine_bin: Path,
    tree: sandbox.Tree,
    env: Mapping[str, str],
    message: bytes,
    kill_after: float | None = None,
) -> tuple[int, bytes]:
    """Deliver `message`, SIGKILLing the process `kill_after` seconds after its
    start if it is still running. Returns (exit status, -9 when killed; output)."""
    proc = spawn(quarantine_bin, tree, env)
    timer = None
    if kill_after is not None:
        timer = threading.Timer(kill_after, proc.send_signal, (signal.SIGKILL,))
        timer.start()
    try:
        out, _ = proc.communicate(message, timeout=60)
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


def junk_files(maildir: Path) -> dict[bytes, list[bytes]]:
    """The files of .Junk/new by the Message-ID of the message in them."""
    found: dict[bytes, list[bytes]] = {}
    for path in files(maildir / ".Junk" / "new"):
        data = path.read_bytes()
        assert size_in_name(path) == len(data), path
        found.setdefault(message_id(data) or b"", []).append(data)
    return found


def assert_complete(data: bytes, message: bytes, dtline: bytes) -> None:
    """A Junk file is RPLINE, DTLINE, our X-Quarantine line, then exactly `message`."""
    return_path, delivered_to, ours, rest = data.split(b"\n", 3)
    assert return_path + b"\n" == RPLINE
    assert delivered_to + b"\n" == dtline
    assert ours.startswith(OUR_LINE), ours
    assert rest == message, f"partial or altered: {len(rest)} bytes of {len(message)}"


def assert_complete_folder(maildir: Path) -> None:
    junk = maildir / ".Junk"
    assert sorted(p.name for p in junk.iterdir()) == ["cur", "maildirfolder", "new", "tmp"]
    assert all(
        (junk / sub).is_dir() and not (junk / sub).is_symlink() for sub in ("tmp", "new", "cur")
    )
    assert (junk / "maildirfolder").is_file()


def debris(maildir: Path) -> list[Path]:
    return files(maildir / "tmp") + files(maildir / ".Junk" / "tmp")


def kill_span(quarantine_bin: Path, tree: sandbox.Tree, rng: random.Random) -> float:
    """How long, from its start, a delivery runs here with PARALLEL others
    (measured on bob, 1.25 x the median): kills spread over it land before
    the folder exists, mid-write and after the link. Never under KILL_DELAY."""
    tree.add_user(BOB)
    env = sandbox.qmail_env(tree, BOB, SENDER, None)
    samples = [spam(rng, 10_000 + n, 200_000 if n % 5 == 4 else 5_000) for n in range(2 * PARALLEL)]

    def timed(message: bytes) -> float:
        start = time.monotonic()
        code, out = run(quarantine_bin, tree, env, message)
        assert code == 99, out
        return time.monotonic() - start

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        durations = sorted(pool.map(timed, samples))
    return max(KILL_DELAY, 1.25 * durations[len(durations) // 2])


def test_sigkill_at_random_moments_loses_and_half_writes_nothing(
    vtree: sandbox.Tree, quarantine_bin: Path, seed: int
) -> None:
    """SIGKILL at random moments, 8 in parallel: each 99 filed once, whole; debris only in tmp/."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    maildir = vtree.add_user(ALICE)
    env = sandbox.qmail_env(vtree, ALICE, SENDER, None)
    dtline = env["DTLINE"].encode()
    messages = [
        spam(rng, n, 200_000 if n % 5 == 4 else rng.randrange(2_000, 8_000))
        for n in range(CRASH_RUNS)
    ]
    span = kill_span(quarantine_bin, vtree, rng)
    kills = [rng.uniform(0, span) if rng.random() < 0.5 else None for _ in messages]
    by_id = {message_id(m): n for n, m in enumerate(messages)}
    assert len(by_id) == len(messages)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        outcomes = list(
            pool.map(
                lambda n: run(quarantine_bin, vtree, env, messages[n], kills[n]), range(CRASH_RUNS)
            )
        )
    elapsed = time.monotonic() - started
    codes = [code for code, _ in outcomes]
    unkilled = [outcomes[n] for n in range(CRASH_RUNS) if kills[n] is None]
    assert all(code == 99 for code, _ in unkilled), [o for o in unkilled if o[0] != 99]
    assert set(codes) <= {99, -signal.SIGKILL}, outcomes

    # Before any retry: what is in new/ is whole, and every 99 is there once.
    found = junk_files(maildir)
    assert set(found) <= set(by_id), "a file in .Junk/new has no known Message-ID"
    for mid, copies in found.items():
        for data in copies:
            assert_complete(data, messages[by_id[mid]], dtline)
    killed_after_link = 0
    for n, message in enumerate(messages):
        copies = len(found.get(message_id(message), []))
        if codes[n] == 99:
            assert copies == 1, (n, copies)
        else:
            assert copies <= 1, (n, copies)
            killed_after_link += copies
    assert files(maildir / "new") == [] and files(maildir / "cur") == []
    assert set(os.listdir(maildir)) <= MAILDIR_ENTRIES, os.listdir(maildir)
    subscription = maildir / "courierimapsubscribed"
    if (maildir / ".Junk").exists():
        assert_complete_folder(maildir)
        assert files(maildir / ".Junk" / "cur") == []
        # Subscribed before the folder appears (maildir.ensure_folder).
        assert subscription.read_bytes() == b"INBOX.Junk\n"
    elif subscription.exists():
        assert subscription.read_bytes() == b"INBOX.Junk\n"
    debris_before = len(debris(maildir))

    # qmail retries every delivery that did not exit 99.
    retried = [n for n in range(CRASH_RUNS) if codes[n] != 99]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        again = list(pool.map(lambda n: run(quarantine_bin, vtree, env, messages[n]), retried))
    assert all(code == 99 for code, _ in again), again

    found = junk_files(maildir)
    duplicates = 0
    for n, message in enumerate(messages):
        copies = found.get(message_id(message), [])
        for data in copies:
            assert_complete(data, message, dtline)
        assert 1 <= len(copies) <= (1 if codes[n] == 99 else 2), (n, len(copies))
        duplicates += len(copies) - 1
    assert duplicates == killed_after_link
    assert_complete_folder(maildir)
    assert subscription.read_bytes() == b"INBOX.Junk\n"
    assert files(maildir / "new") == [] and files(maildir / "cur") == []
    assert files(maildir / ".Junk" / "cur") == []
    assert set(os.listdir(maildir)) <= MAILDIR_ENTRIES, os.listdir(maildir)
    left = debris(maildir)
    print(
        f"crash: runs={CRASH_RUNS} parallel={PARALLEL} "
        f"kill-scheduled={sum(k is not None for k in kills)} "
        f"killed={codes.count(-signal.SIGKILL)} exited-99={codes.count(99)} "
        f"killed-after-link={killed_after_link} retried={len(retried)} duplicates={duplicates} "
        f"debris-before-retry={debris_before} debris={len(left)} "
        f"({sum(p.name.startswith('.folder-') for p in left)} folder builds) "
        f"kill-span={span * 1000:.0f}ms time={elapsed:.1f}s"
    )


def test_concurrent_first_deliveries_to_twenty_users_with_quota(
    vtree: sandbox.Tree, quarantine_bin: Path, seed: int
) -> None:
    """Spam to 20 users at once, no Junk yet: all 99, one folder/subscription each, exact quota."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    users = [f"user{u:02d}@{DOMAIN}" for u in range(LOAD_USERS)]
    for user in users:
        vtree.add_user(user, quota="100000000S")
    jobs = [
        (users[n % LOAD_USERS], spam(rng, n, rng.randrange(1_000, 6_000))) for n in range(LOAD_RUNS)
    ]
    rng.shuffle(jobs)
    envs = {user: sandbox.qmail_env(vtree, user, SENDER, None) for user in users}

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(
            pool.map(lambda job: run(quarantine_bin, vtree, envs[job[0]], job[1]), jobs)
        )
    elapsed = time.monotonic() - started
    assert [code for code, _ in outcomes] == [99] * LOAD_RUNS, [o for o in outcomes if o[0] != 99]

    for user in users:
        maildir = vtree.maildir(user)
        sent = [message for to, message in jobs if to == user]
        found = junk_files(maildir)
        assert sorted(found) == sorted(message_id(m) for m in sent), user
        for message in sent:
            [data] = found[message_id(message)]
            assert_complete(data, message, envs[user]["DTLINE"].encode())
        assert_complete_folder(maildir)
        assert [p.name for p in maildir.iterdir() if p.name.startswith(".")] == [".Junk"]
        assert (maildir / "courierimapsubscribed").read_bytes() == b"INBOX.Junk\n"
        assert files(maildir / "tmp") == [] and files(maildir / ".Junk" / "tmp") == []
        assert files(maildir / "new") == [] and files(maildir / ".Junk" / "cur") == []
        limits, *usage = (maildir / "maildirsize").read_text().splitlines()
        assert limits == "100000000S"
        total = [sum(int(line.split()[i]) for line in usage) for i in (0, 1)]
        sizes = [p.stat().st_size for p in files(maildir / ".Junk" / "new")]
        assert total == [sum(sizes), len(sent)], user
    print(
        f"load: runs={LOAD_RUNS} users={LOAD_USERS} workers=16 all-99 "
        f"time={elapsed:.1f}s ({LOAD_RUNS / elapsed:.0f} deliveries/s)"
    )
