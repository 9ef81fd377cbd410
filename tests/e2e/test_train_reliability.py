"""`quarantine train` made to fail (issue 5, Trainer): the installed command
SIGKILLed at random moments and rerun, checked by a recording stand-in learner
and by the real sa-learn; hostile files a user can plant in a Junk folder; and
the switch to the domain's uid/gid before any user file is opened.

Sizes come from the environment so a long run can go further than CI:
QUARANTINE_TRAIN_CRASH_RUNS (default 25, stand-in learner),
QUARANTINE_TRAIN_SA_CRASH_RUNS (default 2, real sa-learn),
QUARANTINE_SEED (default: random, printed). Run with `-s` to see the figures.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import train_support as ts

from quarantine import bayes, learners, ledger, sandbox
from quarantine import config as config_module
from quarantine import train as train_module

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

DOMAIN = "example.test"
USERS = [f"{name}@{DOMAIN}" for name in ("alice", "bob", "carol")]
CRASH_RUNS = int(os.environ.get("QUARANTINE_TRAIN_CRASH_RUNS", "25"))
SA_CRASH_RUNS = int(os.environ.get("QUARANTINE_TRAIN_SA_CRASH_RUNS", "2"))
SESSION_GONE = 120.0  # seconds a killed run's processes may take to be gone (an sa-learn
# call already started finishes its batch; on a loaded 2-core machine that took over 15 s)

# A stand-in for sa-learn that records each call as one JSON line: its
# credentials, argv, what each file it was given held (the Message-ID, or why
# it could not be read) and, after a short random pause, that it finished;
# then it prints sa-learn's count line for the files it could read.
RECORDER = r"""#!/usr/bin/python3 -I
import json, os, random, sys, time
LOG = {log!r}
DELAY = {delay!r}
def note(record):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND)
    os.write(fd, (json.dumps(record) + "\n").encode())
    os.close(fd)
def started():  # since boot, as CLOCK_BOOTTIME counts
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")
args = sys.argv[1:]
call = os.urandom(8).hex()  # pids are reused over a long run; this is not
record = {{"event": "begin", "call": call, "started": started(), "argv": args,
          "cred": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
          "groups": os.getgroups()}}
read = []
for path in (args[args.index("--") + 1:] if "--" in args else []):
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 20)
    except OSError as exc:
        read.append({{"path": path, "error": exc.strerror}})
        continue
    mid = None
    for line in head.split(b"\n\n")[0].split(b"\n"):
        if line.lower().startswith(b"message-id:"):
            mid = line[11:].strip().decode("latin-1")
            break
    read.append({{"path": path, "id": mid}})
record["files"] = read
with open("/proc/%d/status" % os.getppid()) as status:
    record["parent"] = [l.split(":", 1)[1].split() for l in status
                        if l.startswith(("Uid:", "Gid:", "Groups:"))]
note(record)
if DELAY:
    time.sleep(random.uniform(0, DELAY))
note({{"event": "done", "call": call}})
n = sum("error" not in item for item in read)  # as sa-learn counts them, on stdout
print("Learned tokens from %d message(s) (%d message(s) examined)" % (n, n))
"""


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    made = ts.new_tree()
    try:
        made.add_domain(DOMAIN)
        for user in USERS:
            maildir = made.add_user(user, quota="100000000S")
            ts.make_folder(maildir, "Junk")
        yield made
    finally:
        sandbox.remove(made)


def recorder(tree: sandbox.Tree, delay: float = 0.0) -> tuple[Path, Path]:
    """The recording stand-in learner and its log."""
    log = ts.call_log(tree)
    program = ts.script(tree.root / "learner-recorder", RECORDER.format(log=str(log), delay=delay))
    return program, log


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


@dataclass
class Calls:
    """The recorder's log read back: which Message-IDs were in a call that
    finished (by class), and every file any call was given."""

    done: dict[str, set[str]] = field(default_factory=lambda: {"spam": set(), "ham": set()})
    learn_calls: int = 0
    unfinished: int = 0
    syncs: int = 0
    paths: list[str] = field(default_factory=list)
    learned_per_id: dict[str, int] = field(default_factory=dict)
    begins: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, log: Path) -> Calls:
        calls = cls()
        finished = {r["call"] for r in records(log) if r["event"] == "done"}
        for record in records(log):
            if record["event"] != "begin":
                continue
            calls.begins.append(record)
            if "--sync" in record["argv"]:
                calls.syncs += 1
                continue
            calls.learn_calls += 1
            kind = "spam" if "--spam" in record["argv"] else "ham"
            calls.paths += [f["path"] for f in record["files"]]
            if record["call"] not in finished:
                calls.unfinished += 1
                continue
            for item in record["files"]:
                if item.get("id"):
                    calls.done[kind].add(item["id"])
                    calls.learned_per_id[item["id"]] = calls.learned_per_id.get(item["id"], 0) + 1
        return calls


@dataclass
class Planted:
    """A message file the test put in a folder, and what must become of it."""

    path: Path
    mid: str
    kind: str  # spam, ham or young
    inbox: Path | None = None  # ham: where it must end up


class Mailboxes:
    """The messages planted so far, and the checks of what became of them."""

    def __init__(self, tree: sandbox.Tree, rng: random.Random) -> None:
        self.tree = tree
        self.rng = rng
        self.planted: list[Planted] = []
        self.number = 0
        self.campaigns: list[tuple[bytes, str]] = []

    def plant(self, count: int) -> None:
        """`count` more messages: mostly aged spam (some copies of an earlier
        campaign in another user's Junk), a few young ones, a few rescued hams;
        each counted in its Maildir's maildirsize, as a delivery is."""
        for _ in range(count):
            self._plant_one()
            item = self.planted[-1]
            maildir = item.path.parents[2]
            with open(maildir / "maildirsize", "a") as quota:
                quota.write(f"{item.path.stat().st_size} 1\n")

    def _plant_one(self) -> None:
        self.number += 1
        tag = f"r{self.number}"
        maildir = self.tree.maildir(self.rng.choice(USERS))
        roll = self.rng.random()
        sub = self.rng.choice(["new", "cur"])
        if roll < 0.1:
            data = ts.spam(tag)
            path = ts.put(maildir, "Junk", data, age=3600, sub=sub)
            self.planted.append(Planted(path, f"<spam-{tag}@spam.example>", "young"))
        elif roll < 0.2:
            data = ts.ham(tag)
            path = ts.put(maildir, "NotJunk", data, sub=sub)
            name = path.name if sub == "cur" else path.name + ":2,"
            self.planted.append(
                Planted(path, f"<ham-{tag}@ham.example>", "ham", maildir / "cur" / name)
            )
        else:
            if self.campaigns and roll < 0.35:
                data, mid = self.rng.choice(self.campaigns)
            else:
                data, mid = ts.spam(tag), f"<spam-{tag}@spam.example>"
                self.campaigns.append((data, mid))
            path = ts.put(maildir, "Junk", data, sub=sub)
            self.planted.append(Planted(path, mid, "spam"))

    def check(self, calls: Calls) -> None:
        """Nothing gone that was not learned: a spam file is deleted only when a
        learning call that finished held its Message-ID; a ham file leaves the
        rescue folder only into the inbox; young mail stays."""
        for item in self.planted:
            if item.kind == "young":
                assert item.path.exists(), item.path
            elif item.kind == "spam":
                if not item.path.exists():
                    assert item.mid in calls.done["spam"], f"deleted, never learned: {item}"
            else:
                assert item.inbox is not None
                assert item.path.exists() or item.inbox.exists(), f"ham lost: {item}"
                if item.inbox.exists():
                    assert item.mid in calls.done["ham"], f"moved, never learned: {item}"

    def quota_drift(self) -> tuple[int, int]:
        """Bytes and messages maildirsize counts beyond what the Maildirs hold,
        summed over the users. Never negative: a deletion is recorded after
        the unlink, so a kill between the two over-counts, never under."""
        drift = [0, 0]
        for user in USERS:
            maildir = self.tree.maildir(user)
            lines = (maildir / "maildirsize").read_text().splitlines()[1:]
            recorded = [sum(int(line.split()[i]) for line in lines) for i in (0, 1)]
            held = [0, 0]
            for folder in [maildir, *maildir.glob(".*")]:
                for sub in ("new", "cur"):
                    for path in (folder / sub).iterdir() if (folder / sub).is_dir() else ():
                        held[0] += path.stat().st_size
                        held[1] += 1
            assert recorded[0] >= held[0] and recorded[1] >= held[1], (user, recorded, held)
            drift[0] += recorded[0] - held[0]
            drift[1] += recorded[1] - held[1]
        return drift[0], drift[1]

    def check_finished(self) -> None:
        """After a run that completed: every aged message dealt with, once."""
        for item in self.planted:
            if item.kind == "young":
                assert item.path.exists(), item.path
            elif item.kind == "spam":
                assert not item.path.exists(), f"not deleted: {item}"
            else:
                assert item.inbox is not None
                assert not item.path.exists() and item.inbox.is_file(), item
        for user in USERS:
            maildir = self.tree.maildir(user)
            for sub in ("new", "cur"):
                left = {p.name for p in (maildir / ".Junk" / sub).iterdir()}
                young = {
                    p.path.name
                    for p in self.planted
                    if p.kind == "young" and p.path.parent == maildir / ".Junk" / sub
                }
                assert left == young, (user, sub, left - young)


def session_alive(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            alive.append(int(entry))
    return alive


def wait_session_gone(sid: int) -> float:
    """Wait for every process of a killed run to end; returns how long it took."""
    started = time.monotonic()
    while session_alive(sid):
        waited = time.monotonic() - started
        assert waited < SESSION_GONE, f"run {sid}: {session_alive(sid)} alive after {waited:.1f}s"
        time.sleep(0.01)
    return time.monotonic() - started


def lock_is_free(lock: Path) -> bool:
    if not lock.exists():
        return True
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@dataclass
class Ran:
    code: int | None  # None: killed
    stdout: str
    stderr: str
    seconds: float
    dead_at: float | None = None  # CLOCK_BOOTTIME once the killed main process was reaped


def train(
    quarantine_bin: Path,
    config: Path,
    kill_after: float | None = None,
    group: bool = False,
    timeout: float = 300,
) -> Ran:
    """`quarantine --config C train --json` in a session of its own (cwd: the
    config's directory), SIGKILLed (the main process only, or with `group`
    every process of the run) after `kill_after` seconds if still running; a
    run that takes over `timeout` seconds fails the test. Its output goes to
    files, not pipes, so a process it leaves behind cannot hold up the wait."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [str(quarantine_bin), "--config", str(config), "train", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env={"PATH": "/usr/bin:/bin", "LANG": "C", "HOME": "/root"},
            start_new_session=True,
            cwd=config.parent,
        )
        dead_at = None
        try:
            proc.wait(timeout=kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail(f"quarantine train still running after {timeout} s")
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()
            dead_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        seconds = time.monotonic() - started
        if dead_at is None:
            assert proc.returncode >= 0, f"died of signal {-proc.returncode}"
        else:
            wait_session_gone(proc.pid)
        out.seek(0)
        err.seek(0)
        return Ran(
            None if dead_at is not None else proc.returncode,
            out.read().decode(),
            err.read().decode(),
            seconds,
            dead_at,
        )


def test_sigkill_at_random_moments_deletes_only_what_was_learned(
    tree: sandbox.Tree, quarantine_bin: Path, seed: int
) -> None:
    """SIGKILL (the main process, or the whole run) at random moments, again and
    again, with new Junk mail arriving between runs: nothing deleted that a
    finished call did not learn, the lock free once the run's processes are
    gone, and a last run finishes the job."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    program, log = recorder(tree, delay=0.02)
    config = ts.train_config(tree, sa_learn=program, batch_size=3, ham_folder="NotJunk")
    lock = tree.root / "train.lock"
    boxes = Mailboxes(tree, rng)

    # How long a run over one round's worth of new mail takes here.
    boxes.plant(12)
    first = train(quarantine_bin, config)
    assert first.code == 0, first.stderr
    boxes.check_finished()
    span = 1.3 * first.seconds

    kills = {"main": 0, "group": 0}
    completed = late_learn_calls = 0
    started = time.monotonic()
    for _ in range(CRASH_RUNS):
        boxes.plant(rng.randrange(4, 14))
        group = rng.random() < 0.5
        ran = train(quarantine_bin, config, rng.uniform(0, span), group)
        calls = Calls.read(log)
        boxes.check(calls)
        boxes.quota_drift()  # asserts that maildirsize never under-counts
        assert lock_is_free(lock), "the lock outlived the run"
        if ran.code is None:
            kills["group" if group else "main"] += 1
            assert ran.dead_at is not None
            if not group:
                # The worker finishes the batch it had started and syncs; at
                # most one call can have been on its way as the signal came.
                late = [
                    b
                    for b in calls.begins
                    if b["started"] > ran.dead_at and "--sync" not in b["argv"]
                ]
                assert len(late) <= 1, f"learning went on after the run was killed: {len(late)}"
                late_learn_calls += len(late)
        else:
            completed += 1
            assert ran.code == 0, ran.stdout + ran.stderr
    elapsed = time.monotonic() - started

    last = train(quarantine_bin, config)
    assert last.code == 0, last.stdout + last.stderr
    calls = Calls.read(log)
    boxes.check(calls)
    boxes.check_finished()
    again = train(quarantine_bin, config)
    assert again.code == 0 and json.loads(again.stdout)["calls"] == 0, again.stdout
    drift = boxes.quota_drift()
    assert sorted(os.listdir(tree.root / "state")) == ["train.json"]  # no temp files left
    aged = {p.mid for p in boxes.planted if p.kind in ("spam", "ham")}
    assert aged <= calls.done["spam"] | calls.done["ham"]
    twice = sum(n > 1 for n in calls.learned_per_id.values())
    deleted = sum(p.kind == "spam" for p in boxes.planted)
    print(
        f"train crash: runs={CRASH_RUNS} killed-main={kills['main']} "
        f"killed-group={kills['group']} completed={completed} "
        f"messages={len(boxes.planted)} (aged distinct={len(aged)}) deleted={deleted} "
        f"learn-calls={calls.learn_calls} unfinished-calls={calls.unfinished} "
        f"syncs={calls.syncs} learned-more-than-once={twice} "
        f"late-calls-after-main-kill={late_learn_calls} "
        f"maildirsize-over-count={drift[1]} messages/{drift[0]} bytes "
        f"kill-span={span * 1000:.0f}ms time={elapsed:.1f}s"
    )


def test_a_ham_move_cut_short_by_a_kill_is_finished_by_the_next_run(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """Killed between the link into the inbox and the unlink from the rescue
    folder, a run leaves the message in both: the next run completes the move
    (exit 0) instead of failing on it night after night."""
    program, log = recorder(tree)
    config = ts.train_config(tree, sa_learn=program, ham_folder="NotJunk")
    bob = tree.maildir(USERS[1])
    halfway = ts.put(bob, "NotJunk", ts.ham("halfway"), flags="FS")
    os.link(halfway, bob / "cur" / halfway.name)
    other = ts.put(bob, "NotJunk", ts.ham("clash"), sub="new")
    clash = bob / "cur" / f"{other.name}:2,"
    clash.write_bytes(b"Subject: another message under the same name\n\nhello\n")
    ran = train(quarantine_bin, config)
    assert ran.code == 1, ran.stdout + ran.stderr
    assert not halfway.exists() and (bob / "cur" / halfway.name).is_file()
    assert b"<ham-halfway@ham.example>" in (bob / "cur" / halfway.name).read_bytes()
    # A different file under the target name is not overwritten: reported, kept.
    assert f"{other}: learned as ham, cannot move: {clash} is another file" in ran.stderr
    assert other.exists() and clash.read_bytes().startswith(b"Subject: another")
    assert json.loads(ran.stdout)["failed_folders"] == [f"{USERS[1]}/.NotJunk"]
    assert {p.name for p in (bob / ".NotJunk" / "cur").iterdir()} == set()
    assert len(Calls.read(log).done["ham"]) == 2


def test_sigkill_with_the_real_sa_learn_then_a_rerun_learns_everything(
    tree: sandbox.Tree, quarantine_bin: Path, seed: int
) -> None:
    """The same with Debian's sa-learn on a throwaway Bayes database, the whole
    run (sa-learn too) or its main process SIGKILLed at random moments: every
    file deleted was in a sa-learn call that exited 0, a last run finishes, and
    Bayes counts every distinct message exactly once (a journal left by a kill
    is synced before the next run learns, so nothing is counted twice)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    log = ts.call_log(tree)
    wrapper = ts.script(
        tree.root / "sa-learn-recorded",
        f'#!/bin/sh\n{ts.SA_LEARN} "$@"\ncode=$?\n'
        f'printf "%s %s\\n" "$code" "$*" >> {log}\nexit $code\n',
    )
    db = ts.bayes_dir(tree)
    config = ts.train_config(
        tree, sa_learn=wrapper, dbpath=db / "bayes", batch_size=4, ham_folder="NotJunk"
    )
    lock = tree.root / "train.lock"
    boxes = Mailboxes(tree, rng)
    boxes.plant(8)
    first = train(quarantine_bin, config)
    assert first.code == 0, first.stdout + first.stderr
    span = 1.3 * first.seconds

    def learned() -> Calls:
        """The wrapper's log as the recorder's: the Message-IDs of the files
        given to sa-learn calls that exited 0, by class."""
        calls = Calls()
        mids = {str(p.path): p.mid for p in boxes.planted}
        for line in log.read_text().splitlines():
            code, _, args = line.partition(" ")
            if " -- " not in args:
                calls.syncs += 1
                continue
            calls.learn_calls += 1
            if code != "0":
                calls.unfinished += 1
                continue
            kind = "spam" if args.startswith("--spam") else "ham"
            calls.done[kind].update(mids[p] for p in args.split(" -- ", 1)[1].split(" "))
        return calls

    kills = {"main": 0, "group": 0}
    completed = 0
    notes: list[str] = []
    started = time.monotonic()
    for round_ in range(SA_CRASH_RUNS):
        boxes.plant(rng.randrange(3, 9))
        group = rng.random() < 0.7
        # Killed runs delete nothing past their last sync, so work piles up:
        # every fifth run is left to finish, and sets the span anew.
        kill_after = None if round_ % 5 == 4 else rng.uniform(0, span)
        ran = train(quarantine_bin, config, kill_after, group)
        boxes.check(learned())
        assert lock_is_free(lock), "the lock outlived the run"
        if ran.code is None:
            kills["group" if group else "main"] += 1
        else:
            completed += 1
            assert ran.code == 0, ran.stdout + ran.stderr
            notes += json.loads(ran.stdout)["notes"]
            if kill_after is None:
                span = 1.3 * ran.seconds
    elapsed = time.monotonic() - started
    last = train(quarantine_bin, config)
    assert last.code == 0, last.stdout + last.stderr
    notes += json.loads(last.stdout)["notes"]
    calls = learned()
    boxes.check(calls)
    boxes.check_finished()
    spam = {p.mid for p in boxes.planted if p.kind == "spam"}
    ham = {p.mid for p in boxes.planted if p.kind == "ham"}
    assert calls.done["spam"] >= spam and calls.done["ham"] >= ham
    counts = ts.magic(db / "bayes")
    assert counts["nspam"] == len(spam) and counts["nham"] == len(ham)
    assert all("a Bayes lock left by sa-learn pid" in note for note in notes), notes
    print(
        f"train crash, real sa-learn: runs={SA_CRASH_RUNS} killed-main={kills['main']} "
        f"killed-group={kills['group']} completed={completed} messages={len(boxes.planted)} "
        f"distinct-aged spam={len(spam)} ham={len(ham)} nspam={counts['nspam']} "
        f"nham={counts['nham']} deleted={sum(p.kind == 'spam' for p in boxes.planted)} "
        f"sa-learn-calls={calls.learn_calls} (non-zero exit {calls.unfinished}) "
        f"syncs={calls.syncs} stale-bayes-locks-removed={len(notes)} "
        f"kill-span={span:.1f}s time={elapsed:.1f}s"
    )


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    return proc.pid


def stale_lock(path: Path, pid: int, host: str | None = None) -> Path:
    """A Bayes lock as SpamAssassin's NFS-safe locker writes it (`HOST.PID`,
    once per retry), owned by the domain uid."""
    host = host or socket.gethostname()
    path.write_text(f"{host}.{pid}\n{host}.{pid}\n")
    ts.chown(path)
    return path


def test_a_bayes_lock_left_by_a_killed_sa_learn_does_not_stall_the_next_run(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """A SIGKILLed sa-learn leaves SpamAssassin's bayes.lock behind; without
    help the next run's sa-learn waits five minutes for it, then fails (measured:
    `--sync` 5 min then `lock failed`, learning into a new database the same,
    exit 17). The trainer removes a lock whose holder is gone and says so."""
    paths = [ts.put(tree.maildir(USERS[0]), "Junk", ts.spam(f"s{i}")) for i in range(3)]
    db = ts.bayes_dir(tree)
    lock = stale_lock(db / "bayes.lock", dead_pid())
    config = ts.train_config(tree, dbpath=db / "bayes", timeout="20s")
    ran = train(quarantine_bin, config)
    assert ran.code == 0, ran.stdout + ran.stderr
    assert ran.seconds < 20
    assert f"note: removed {lock}: a Bayes lock left by sa-learn pid" in ran.stderr
    assert json.loads(ran.stdout)["notes"] == [ran.stderr.split("note: ", 1)[1].strip()]
    assert not any(p.exists() for p in paths)
    assert ts.magic(db / "bayes")["nspam"] == 3


def test_only_a_lock_whose_holder_is_gone_is_removed(tmp_path: Path) -> None:
    live = stale_lock(tmp_path / "live.lock", os.getpid())
    elsewhere = stale_lock(tmp_path / "elsewhere.lock", dead_pid(), "another-host.example")
    garbage = tmp_path / "garbage.lock"
    garbage.write_text("not a lock\n")
    target = stale_lock(tmp_path / "target", dead_pid())
    link = tmp_path / "link.lock"
    link.symlink_to(target)
    for path in (live, elsewhere, garbage, link):
        assert bayes.break_stale_lock(str(path)) is None, path
        assert os.path.lexists(path), path
    assert bayes.break_stale_lock(str(tmp_path / "missing.lock")) is None
    gone = stale_lock(tmp_path / "gone.lock", dead_pid())
    assert "no longer runs" in (bayes.break_stale_lock(str(gone)) or "")
    assert not gone.exists() and target.exists()


NASTY_NAMES = [
    "1700000101.M1P1.a\nb,S=1:2,S",  # a newline
    "$(touch pwned-dollar)",
    "x;touch pwned-semicolon;:2,S",
    "`touch pwned-backtick`",
    "with spaces in it:2,S",
    "-rf",
    "--dbpath=pwned-option",
    "| touch pwned-pipe",
]


def plant_nasty_names(maildir: Path) -> list[Planted]:
    """Aged spam under file names a shell or an option parser would act on."""
    out = []
    for n, name in enumerate(NASTY_NAMES):
        sub = "cur" if ":2," in name else "new"
        path = ts.put(maildir, "Junk", ts.spam(f"nasty{n}"), sub=sub, name=name)
        out.append(Planted(path, f"<spam-nasty{n}@spam.example>", "spam"))
    return out


def assert_no_shell_ran(*places: Path) -> None:
    for place in places:
        assert not [p for p in place.rglob("pwned*")], list(place.rglob("pwned*"))


def test_hostile_files_in_junk_are_not_followed_not_read_and_reported(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """What a user can plant in their own Junk folder: symlinks to a root-only
    file, /etc/shadow and another user's mail; the folder, or its cur/, a
    symlink to / or to another user's Maildir; a FIFO; a 2 GB sparse file; a
    directory for a message; names with newlines, shell syntax and leading
    dashes. None is followed, read or deleted, the run does not hang, each is
    counted in the report (folders named), and the rest is learned."""
    program, log = recorder(tree)
    config = ts.train_config(tree, sa_learn=program)
    alice, bob, carol = (tree.maildir(u) for u in USERS)
    dave = tree.add_user(f"dave@{DOMAIN}")
    erin = tree.add_user(f"erin@{DOMAIN}")
    secret = tree.root / "root-only"
    secret.write_bytes(ts.spam("secret"))
    secret.chmod(0o600)
    bobs_inbox = ts.put(bob, None, ts.spam("bobs-inbox"))
    junk = alice / ".Junk"
    links = {
        junk / "new" / "1700000201.M1P1.l1,S=100": secret,
        junk / "cur" / "1700000202.M1P1.l2,S=100:2,S": Path("/etc/shadow"),
        junk / "cur" / "1700000203.M1P1.l3,S=100:2,S": bobs_inbox,
    }
    for link, target in links.items():
        link.symlink_to(target)
        os.lchown(link, ts.UID, ts.GID)
    fifo = junk / "new" / "1700000204.M1P1.fifo"
    os.mkfifo(fifo)
    sparse = junk / "cur" / "1700000205.M1P1.sparse,S=2147483648:2,S"
    with open(sparse, "wb") as handle:
        handle.truncate(2 << 30)
    as_dir = junk / "cur" / "1700000206.M1P1.dir:2,S"
    as_dir.mkdir()
    (as_dir / "inside").write_bytes(ts.spam("inside-a-dir"))
    for odd in (fifo, sparse, as_dir):
        ts.chown(odd)
        os.utime(odd, (time.time() - 10 * ts.DAY,) * 2, follow_symlinks=False)
    learned = [
        Planted(
            ts.put(alice, "Junk", ts.spam(f"plain{n}")), f"<spam-plain{n}@spam.example>", "spam"
        )
        for n in range(2)
    ]
    learned += plant_nasty_names(alice)
    # Whole folders pointing elsewhere: carol's Junk at /, dave's at bob's
    # Maildir; erin's Junk is real but its cur/ is bob's inbox.
    bobs_junk = ts.put(bob, "Junk", ts.spam("bobs-junk"), age=3600)
    for sub in ("tmp", "new", "cur"):
        (carol / ".Junk" / sub).rmdir()
    (carol / ".Junk" / "maildirfolder").unlink()
    (carol / ".Junk").rmdir()
    (carol / ".Junk").symlink_to("/")
    (dave / ".Junk").symlink_to(bob)
    ts.make_folder(erin, "Junk")
    (erin / ".Junk" / "cur").rmdir()
    (erin / ".Junk" / "cur").symlink_to(bob / "cur")
    learned.append(
        Planted(
            ts.put(erin, "Junk", ts.spam("erin"), sub="new"), "<spam-erin@spam.example>", "spam"
        )
    )
    for link in (carol / ".Junk", dave / ".Junk", erin / ".Junk" / "cur"):
        os.lchown(link, ts.UID, ts.GID)
    before = {p: p.read_bytes() for p in (secret, bobs_inbox, bobs_junk)}

    ran = train(quarantine_bin, config, timeout=60)
    assert ran.code == 0, ran.stdout + ran.stderr
    data = json.loads(ran.stdout)
    assert data["spam_learned"] == len(learned) and data["deleted"] == len(learned)
    assert data["skipped"] == {
        "symlink": 3,
        "not a regular file": 2,
        "too big": 1,
        "symlinked folder": 3,
        "young": 1,  # bob's own, in his real Junk
    }
    assert sorted(data["notes"]) == [
        f"carol@{DOMAIN}/.Junk: a symlink, not followed",
        f"dave@{DOMAIN}/.Junk: a symlink, not followed",
        f"erin@{DOMAIN}/.Junk/cur: a symlink, not followed",
    ]
    for note in data["notes"]:
        assert f"quarantine train: note: {note}" in ran.stderr
    state = json.loads((tree.root / "state" / "train.json").read_text())
    assert (
        "3 symlinks" in state["summary"] and "that are symlinks, not followed" in state["summary"]
    )

    calls = Calls.read(log)
    assert calls.done["spam"] == {p.mid for p in learned}
    given = sorted(calls.paths)
    assert given == sorted(str(p.path) for p in learned)
    for record in calls.begins:
        if "--sync" in record["argv"]:
            continue
        options, files = record["argv"][: record["argv"].index("--")], record["files"]
        # One call: the last, so it syncs itself (no --no-sync, no --sync after).
        assert options == ["--spam", "-D", "bayes", "--max-size=512000"]
        assert all(item["path"].startswith("/") and "error" not in item for item in files)
    for item in learned:
        assert not item.path.exists(), item
    for link, target in links.items():
        assert link.is_symlink() and os.readlink(link) == str(target)
    assert fifo.exists() and sparse.stat().st_size == 2 << 30 and (as_dir / "inside").exists()
    assert {p: p.read_bytes() for p in before} == before
    assert (carol / ".Junk").is_symlink() and (erin / ".Junk" / "cur").is_symlink()
    assert_no_shell_ran(tree.root, Path.cwd())


def test_names_with_shell_syntax_and_dashes_with_the_real_sa_learn(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """The same names through Debian's sa-learn: each learned as a file (Bayes
    counts them all), none taken as an option, no shell run, all deleted."""
    planted = plant_nasty_names(tree.maildir(USERS[0]))
    db = ts.bayes_dir(tree)
    config = ts.train_config(tree, dbpath=db / "bayes")
    ran = train(quarantine_bin, config, timeout=120)
    assert ran.code == 0, ran.stdout + ran.stderr
    assert json.loads(ran.stdout)["spam_learned"] == len(NASTY_NAMES)
    assert ts.magic(db / "bayes")["nspam"] == len(NASTY_NAMES)
    assert not any(p.path.exists() for p in planted)
    assert_no_shell_ran(tree.root, Path.cwd())


def test_started_as_root_every_user_file_is_opened_as_the_domain_uid(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """Run as root (as cron does), the worker that reads the Maildirs and the
    learner it starts are uid/gid 89 with no supplementary groups (seen from
    the learner: its own credentials and its parent's, in /proc); a root-only
    message file and a root-only new/ cannot be read by it, so they stay
    unread and untouched, are reported, and the rest is still learned."""
    assert os.geteuid() == 0, "run as root: the switch to uid 89 is what this proves"
    program, log = recorder(tree)
    config = ts.train_config(tree, sa_learn=program)
    alice = tree.maildir(USERS[0])
    erin = tree.add_user(f"erin@{DOMAIN}")
    rest = [ts.put(alice, "Junk", ts.spam(f"rest{n}")) for n in range(3)]
    rootonly = ts.put(alice, "Junk", ts.spam("rootonly"))
    os.chown(rootonly, 0, 0)
    rootonly.chmod(0o600)
    linked = alice / ".Junk" / "new" / "1700000301.M1P1.link,S=10"
    linked.symlink_to(rootonly)
    os.lchown(linked, ts.UID, ts.GID)
    erins = ts.put(erin, "Junk", ts.spam("erins"))
    hidden = ts.put(erin, "Junk", ts.spam("hidden"), sub="new")
    os.chown(hidden.parent, 0, 0)
    hidden.parent.chmod(0o700)

    ran = train(quarantine_bin, config, timeout=60)
    assert ran.code == 1, ran.stdout + ran.stderr
    assert f"quarantine train: {rootonly}: cannot read: Permission denied" in ran.stderr
    assert f"quarantine train: erin@{DOMAIN}/.Junk/new: cannot list: Permission denied" in (
        ran.stderr
    )
    data = json.loads(ran.stdout)
    assert sorted(data["failed_folders"]) == [f"alice@{DOMAIN}/.Junk", f"erin@{DOMAIN}/.Junk"]
    assert data["spam_learned"] == 4 and data["skipped"] == {"symlink": 1}
    assert not any(p.exists() for p in [*rest, erins])
    assert rootonly.read_bytes() == ts.spam("rootonly") and hidden.exists()

    calls = Calls.read(log)
    assert calls.learn_calls == 1 and calls.syncs == 0  # the one call synced itself
    assert sorted(calls.paths) == sorted(str(p) for p in [*rest, erins])
    for record in calls.begins:
        assert record["cred"] == [89, 89, 89, 89] and record["groups"] == [], record
        uid, gid, groups = record["parent"]
        assert uid == gid == ["89"] * 4 and groups == [], record["parent"]


def test_a_sync_killed_half_way_deletes_nothing_it_was_applying(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """A sync (`--sync`, or the last call, which syncs itself) retires the
    journal (renames it bayes_journal.old) before applying it, and the next
    sync overwrites that file: killed in between, everything learned since
    the last sync is lost to Bayes. So a batch's messages are deleted only
    after a sync that covers it exited 0; here the first run's syncing call
    dies that way, nothing is deleted, and the next run learns them all
    again (Bayes counts each exactly once)."""
    alice = tree.maildir(USERS[0])
    paths = [ts.put(alice, "Junk", ts.spam(f"k{n}")) for n in range(5)]
    db = ts.bayes_dir(tree)
    dying = ts.script(
        tree.root / "sa-learn-sync-dies",
        f'#!/bin/sh\ncase " $* " in *" --no-sync "*) ;;\n'
        f"*) mv {db}/bayes_journal {db}/bayes_journal.old; kill -9 $$ ;;\nesac\n"
        f'exec {ts.SA_LEARN} "$@"\n',
    )
    config = ts.train_config(tree, sa_learn=dying, dbpath=db / "bayes", batch_size=2)
    first = train(quarantine_bin, config, timeout=120)
    assert first.code == 1, first.stdout + first.stderr
    assert "killed by signal 9" in first.stderr
    assert json.loads(first.stdout)["deleted"] == 0
    assert all(p.exists() for p in paths)
    assert (db / "bayes_journal.old").exists()

    config = ts.train_config(tree, dbpath=db / "bayes", batch_size=2)
    second = train(quarantine_bin, config, timeout=120)
    assert second.code == 0, second.stdout + second.stderr
    assert not any(p.exists() for p in paths)
    assert ts.magic(db / "bayes")["nspam"] == len(paths)


def test_learned_batches_wait_for_a_sync_at_most_sync_every_batches(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """One sync after every SYNC_EVERY learned batches (so a long run does
    not hold its deletions back for hours); the last call syncs itself."""
    alice = tree.maildir(USERS[0])
    paths = [ts.put(alice, "Junk", ts.spam(f"e{n}")) for n in range(learners.SYNC_EVERY + 2)]
    log = ts.call_log(tree)
    stub = ts.script(
        tree.root / "sa-learn-stub", f'#!/bin/sh\necho "$1" >> {log}\n{ts.SAYS_LEARNED}exit 0\n'
    )
    config = ts.train_config(tree, sa_learn=stub, batch_size=1)
    ran = train(quarantine_bin, config, timeout=60)
    assert ran.code == 0, ran.stdout + ran.stderr
    every = ["--spam"] * learners.SYNC_EVERY + ["--sync"]
    assert log.read_text().split() == [*every, "--spam", "--spam"]
    assert not any(p.exists() for p in paths)


def test_a_journal_left_by_a_killed_run_is_synced_before_learning_again(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """A run killed after its batches but before its sync leaves their
    messages in Junk, their learning in bayes_journal and their digests in the
    ledger as given to sa-learn. The next run syncs that journal first, so
    sa-learn knows them and Bayes counts each once (without it: twice, as
    sa-learn does not look into an unsynced journal), and the ledger proves
    the messages it now skips were learned from these very files."""
    paths = [ts.put(tree.maildir(USERS[0]), "Junk", ts.spam(f"j{n}")) for n in range(3)]
    db = ts.bayes_dir(tree)
    config = ts.train_config(tree, dbpath=db / "bayes")
    learner = learners.SaLearn(config_module.load(str(config)).train, {})
    where = learner.ledger(learners.Store(str(db / "bayes")))
    assert where is not None
    killed_ledger = ledger.Ledger(*where, time.time())
    killed_ledger.give("spam", [train_module.read_message(str(p))[0] for p in paths])
    ts.chown(Path(where[0]))
    killed_run = subprocess.run(
        [ts.SA_LEARN, "--dbpath", str(db / "bayes"), "--spam", "--no-sync", *map(str, paths)],
        env={"HOME": str(tree.root), "PATH": "/usr/bin:/bin", "LANG": "C"},
        user=ts.UID,
        group=ts.GID,
        extra_groups=[],
        capture_output=True,
        check=True,
    )
    assert b"Learned tokens from 3 message(s)" in killed_run.stdout
    assert (db / "bayes_journal").stat().st_size > 0
    log = ts.call_log(tree)
    config = ts.train_config(tree, sa_learn=ts.logging_sa_learn(tree, log), dbpath=db / "bayes")
    ran = train(quarantine_bin, config, timeout=120)
    assert ran.code == 0, ran.stdout + ran.stderr
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["--sync", "--spam"]
    assert "--no-sync" not in lines[1].split()  # the last call syncs itself
    assert not any(p.exists() for p in paths)
    assert ts.magic(db / "bayes")["nspam"] == 3
