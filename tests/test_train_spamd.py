"""The spamc backend against a real spamd (`--allow-tell`) on 127.0.0.1 and a
free high port, started and stopped (by its PID) by the test, with a throwaway
Bayes database that spamd's own user (debian-spamd) can write."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import sandbox

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow
SPAMD = "/usr/sbin/spamd"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Spamd:
    def __init__(self, port: int, db: Path) -> None:
        self.port = port
        self.db = db


@pytest.fixture(scope="module")
def spamd() -> Iterator[Spamd]:
    """spamd as rig.md starts it; waits until it answers, kills it by PID."""
    top = Path(tempfile.mkdtemp(prefix="quarantine-spamd-"))
    top.chmod(0o755)
    home, db = top / "home", top / "bayes"
    home.mkdir()
    db.mkdir()
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
                    ["spamc", "-d", "127.0.0.1", "-p", str(port), "-K"],
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


def test_spamc_backend_learns_through_spamd(spamd: Spamd) -> None:
    tree = ts.new_tree()
    try:
        tree.add_domain("example.test")
        alice = tree.add_user("alice@example.test")
        bob = tree.add_user("bob@example.test")
        learned = [ts.put(alice, "Junk", ts.spam(f"s{i}")) for i in range(4)]
        campaign = ts.spam("campaign")
        learned += [ts.put(alice, "Junk", campaign), ts.put(bob, "Junk", campaign)]
        young = ts.put(bob, "Junk", ts.spam("young"), age=60)
        rescued = ts.put(bob, "NotJunk", ts.ham("h1"), flags="S")
        config = ts.train_config(
            tree,
            backend="spamc",
            spamd_port=spamd.port,
            spamc_user="vpopmail",  # uid 89 has no passwd entry here
            workers=2,
            ham_folder="NotJunk",
        )
        result = ts.invoke(config, "train", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["spam_learned"] == 5 and data["copies"] == 1 and data["deleted"] == 6
        assert data["ham_learned"] == 1 and data["moved"] == 1
        assert data["calls"] == 6  # one spamc per distinct message, no sync
        counts = ts.magic(spamd.db / "bayes")
        assert counts["nspam"] == 5
        assert counts["nham"] == 1
        assert not any(p.exists() for p in learned)
        assert young.exists()
        assert (bob / "cur" / rescued.name).exists()
    finally:
        sandbox.remove(tree)
