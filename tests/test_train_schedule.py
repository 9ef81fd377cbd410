"""`quarantine schedule` as a service manager runs it: a real process with
APScheduler that starts, logs one line per run, and stops cleanly on SIGTERM
or SIGINT, letting a run in progress finish its batch first."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import sandbox

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    yield from ts.example_tree()


# The commands on the real group.
LAUNCH = "import sys\nfrom quarantine import cli\nsys.exit(cli.main(sys.argv[1:]))\n"


class Service:
    """A `quarantine schedule` process whose stderr is read line by line."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "--config", str(config), "schedule", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stderr, selectors.EVENT_READ)
        self.lines: list[str] = []
        self.buffer = b""

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The first log line (seen so far or to come) containing `text`."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if text in line:
                    return line
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} in {self.lines}"
            if self.selector.select(left):
                assert self.proc.stderr is not None
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                assert chunk or self.proc.poll() is None, f"exited: {self.lines} {self.buffer!r}"
                self.buffer += chunk
                *done, self.buffer = self.buffer.split(b"\n")
                self.lines += [d.decode() for d in done]
                if not chunk:
                    time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.stderr is not None
        rest = self.buffer + self.proc.stderr.read()
        self.lines += [line.decode() for line in rest.split(b"\n") if line]
        self.selector.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def test_starts_runs_now_and_stops_on_sigterm(tree: sandbox.Tree) -> None:
    alice = tree.add_user("alice@example.test")
    paths = [ts.put(alice, "Junk", ts.spam(f"s{i}")) for i in range(2)]
    stub = ts.script(tree.root / "sa-learn-ok", f"#!/bin/sh\n{ts.SAYS_LEARNED}exit 0\n")
    config = ts.train_config(tree, sa_learn=stub, schedule="'0 4 * * *'")
    service = Service(config, "--now")
    try:
        started = service.wait_for("started")
        assert "train.schedule '0 4 * * *', next run" in started and "04:00" in started
        line = service.wait_for("run exit 0")
        assert "learned 2 messages as spam" in line
        runs = [x for x in service.lines if "run exit" in x]
        assert len(runs) == 1
    finally:
        code = service.stop()
    assert code == 0, service.lines
    assert "stopped" in service.lines[-1]
    assert not any(p.exists() for p in paths)


def test_each_run_also_cleans_tmp_debris(tree: sandbox.Tree) -> None:
    """After the trainer, the scheduled job removes tmp/ debris older than
    cleanup.tmp_age (1 s here; a file's ctime cannot be set back) and logs it."""
    alice = tree.add_user("alice@example.test")
    debris = alice / "tmp" / "1700000000.M1P2.host"
    debris.write_bytes(b"Subject: half a message")
    tree.chown(debris)
    stub = ts.script(tree.root / "sa-learn-ok", f"#!/bin/sh\n{ts.SAYS_LEARNED}exit 0\n")
    config = ts.train_config(tree, sa_learn=stub, schedule="'0 4 * * *'")
    config.write_text(config.read_text() + "cleanup:\n  tmp_age: 1s\n")
    time.sleep(1.2)
    service = Service(config, "--now")
    try:
        line = service.wait_for("cleanup exit 0")
        assert "removed 1" in line, line
    finally:
        assert service.stop() == 0, service.lines
    assert not debris.exists()
    assert sorted(p.name for p in alice.iterdir()) == ["cur", "new", "tmp"]


def test_sigint_also_stops_it(tree: sandbox.Tree) -> None:
    config = ts.train_config(
        tree, sa_learn=ts.script(tree.root / "ok", f"#!/bin/sh\n{ts.SAYS_LEARNED}exit 0\n")
    )
    service = Service(config)
    service.wait_for("started")
    assert service.stop(signal.SIGINT) == 0
    assert not [x for x in service.lines if "run exit" in x]


def test_sigterm_during_a_run_finishes_the_batch_first(tree: sandbox.Tree) -> None:
    alice = tree.add_user("alice@example.test")
    paths = [ts.put(alice, "Junk", ts.spam(f"s{i}")) for i in range(4)]
    marks = tree.root / "marks"
    marks.mkdir(mode=0o777)
    marks.chmod(0o777)  # the stub runs as the domain uid
    began = marks / "began"
    slow = ts.script(
        tree.root / "sa-learn-slow",
        f'#!/bin/sh\n[ "$1" = --sync ] && exit 0\ntouch {began}\nsleep 2\n'
        f"{ts.SAYS_LEARNED}exit 0\n",
    )
    config = ts.train_config(tree, sa_learn=slow, batch_size=2)
    service = Service(config, "--now")
    try:
        service.wait_for("started")
        deadline = time.monotonic() + 30
        while not began.exists():
            assert time.monotonic() < deadline, service.lines
            time.sleep(0.05)
    finally:
        code = service.stop()
    assert code == 0, service.lines
    run = next(x for x in service.lines if "run exit" in x)
    assert "run exit 1" in run and "STOPPED early" in run and "deleted 2" in run
    assert sum(p.exists() for p in paths) == 2  # the second batch is left for next time
    assert "stopped" in service.lines[-1]


def test_a_bad_schedule_is_a_config_error(tree: sandbox.Tree) -> None:
    config = ts.train_config(tree, sa_learn="/bin/true", schedule="'every night'")
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH, "--config", str(config), "schedule"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert b"train.schedule" in proc.stderr


def test_digest_schedule_is_announced_and_checked(tree: sandbox.Tree) -> None:
    """With digest.schedule set, the service names the next digest at start;
    a digest.schedule that is not cron syntax is a configuration error (2)."""
    stub = ts.script(tree.root / "ok", f"#!/bin/sh\n{ts.SAYS_LEARNED}exit 0\n")
    config = ts.train_config(tree, sa_learn=stub, schedule="'0 4 * * *'")
    base = config.read_text()
    config.write_text(base + "digest:\n  schedule: '0 7 * * *'\n")
    service = Service(config)
    try:
        line = service.wait_for("next digest")
        assert "digest.schedule '0 7 * * *', next digest" in line and "07:00" in line
    finally:
        assert service.stop() == 0, service.lines
    config.write_text(base + "digest:\n  schedule: 'every morning'\n")
    bad = Service(config)
    assert bad.proc.wait(timeout=30) == 2
    assert bad.proc.stderr is not None
    assert b"digest.schedule" in bad.proc.stderr.read()
    bad.stop()
