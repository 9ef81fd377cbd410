"""Fixtures for the end-to-end tests: the installed `quarantine` command, a
sandbox vpopmail tree with alice opted in, real SpamAssassin output, a
Courier imapd or Dovecot imap session on a Maildir, and a real DNS server
(dnsmasq)."""

from __future__ import annotations

import imaplib
import os
import random
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from dns_server import DnsServer, Records, ZoneServer

from quarantine import sandbox

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DATA = Path(__file__).parent / "data"
SA_EXAMPLES = Path("/usr/share/doc/spamassassin/examples")
# Courier's IMAP server. /usr/sbin/imapd is the init script that starts the
# TCP daemon; the program that serves one session on stdin/stdout is this one.
IMAPD = "/usr/bin/imapd"
# Dovecot's imap binary, unpacked (not installed) by scripts/lib.sh ensure_dovecot.
DOVECOT = Path(os.environ.get("QUARANTINE_DOVECOT") or "/var/tmp/quarantine-dovecot")
DOMAIN = "example.test"

# `pytest --long`: the sizes of the long runs whose figures docs/reliability.md
# quotes. Each stays overridable by its own variable; CI runs the defaults.
LONG_SIZES = {
    "QUARANTINE_CRASH_RUNS": "1000",
    "QUARANTINE_LOAD_RUNS": "1000",
    "QUARANTINE_FUZZ_RUNS": "30000",
    "QUARANTINE_PROPERTY_EXAMPLES": "5000",
    "QUARANTINE_TRAIN_CRASH_RUNS": "400",
    "QUARANTINE_TRAIN_SA_CRASH_RUNS": "60",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="run the reliability loops at their long sizes (see docs/reliability.md)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Before the test modules are imported (they read their sizes then)."""
    if config.getoption("--long"):
        for name, value in LONG_SIZES.items():
            os.environ.setdefault(name, value)


@pytest.fixture
def seed() -> int:
    """The random seed of a reliability loop ($QUARANTINE_SEED to replay one),
    printed so that a failing run can be replayed."""
    value = int(os.environ.get("QUARANTINE_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nQUARANTINE_SEED={value}")
    return value


@pytest.fixture(scope="session")
def quarantine_bin() -> Path:
    """The installed `quarantine` script ($QUARANTINE_BIN, else beside this Python)."""
    path = Path(os.environ.get("QUARANTINE_BIN") or Path(sys.executable).parent / "quarantine")
    assert path.is_file(), f"quarantine is not installed at {path}"
    assert os.access(path, os.X_OK), f"{path} is not executable"
    # A stale or broken install would make every test below fail obscurely.
    probe = subprocess.run(
        [str(path), "deliver", "--help"], capture_output=True, check=False, timeout=30
    )
    assert probe.returncode == 0, f"{path} deliver --help: {probe.stdout!r} {probe.stderr!r}"
    return path


def opt_in(tree: sandbox.Tree, target: str, quarantine_bin: Path) -> Path:
    """Opt `user@domain` (or a bare `domain`, the whole domain) in the way an
    admin does: the installed `quarantine optin`, which writes the marker and
    the filter line (preline, absolute paths, the config on the line) first in
    `.qmail-USER` or `.qmail-default`. Returns the file it wrote."""
    user, _, domain = target.rpartition("@")
    proc = subprocess.run(
        [str(quarantine_bin), "--config", str(tree.config_path), "optin", f"{user}@{domain}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tree.domains[domain] / (f".qmail-{user}" if user else ".qmail-default")


@pytest.fixture
def opt_in_user(tree: sandbox.Tree, quarantine_bin: Path) -> Callable[[str], Path]:
    """`opt_in_user(address or domain)` opts another user, or a whole domain, in."""
    return lambda address: opt_in(tree, address, quarantine_bin)


@pytest.fixture
def tree(quarantine_bin: Path) -> Iterator[sandbox.Tree]:
    """A throwaway vpopmail tree: example.test with alice (opted in) and bob."""
    if os.geteuid() == 0:
        made = sandbox.make_tree()
    else:
        made = sandbox.make_tree(uid=os.getuid(), gid=os.getgid())
    try:
        made.add_domain(DOMAIN)
        made.add_user(f"alice@{DOMAIN}")
        made.add_user(f"bob@{DOMAIN}")
        opt_in(made, f"alice@{DOMAIN}", quarantine_bin)
        yield made
    finally:
        sandbox.remove(made)


def _spamassassin(source: Path, home: Path) -> subprocess.Popen[bytes]:
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C"}
    with source.open("rb") as stdin:
        return subprocess.Popen(
            ["spamassassin", "-L"],  # local tests only: no DNS, no network
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )


def _header_block(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[0]


@pytest.fixture(scope="session")
def sa_messages() -> dict[str, bytes]:
    """Messages as SpamAssassin leaves them: `spam` (its sample spam, GTUBE),
    `ham` (its sample non-spam) and `gtube` (tests/data/gtube.eml)."""
    sources = {
        "spam": SA_EXAMPLES / "sample-spam.txt",
        "ham": SA_EXAMPLES / "sample-nonspam.txt",
        "gtube": DATA / "gtube.eml",
    }
    with tempfile.TemporaryDirectory(prefix="quarantine-sa-") as tmp:
        # Started together: each costs a second or two of SpamAssassin startup.
        procs = {name: _spamassassin(path, Path(tmp) / name) for name, path in sources.items()}
        out = {}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"spamassassin on {name}: {stderr.decode()}"
            out[name] = stdout
    for name in ("spam", "gtube"):
        assert b"\nX-Spam-Status: Yes, score=" in _header_block(out[name]), name
        assert b"\nX-Spam-Flag: YES\n" in _header_block(out[name]), name
    assert b"\nX-Spam-Status: No, score=" in _header_block(out["ham"])
    assert b"X-Spam-Flag" not in _header_block(out["ham"])
    return out


def log_out(sessions: list[imaplib.IMAP4_stream]) -> None:
    """Log out every IMAP session still open (shut down one that fails to)."""
    for session in sessions:
        if session.state != "LOGOUT":
            try:
                session.logout()
            except (imaplib.IMAP4.error, OSError):
                session.shutdown()


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., imaplib.IMAP4_stream]]:
    """`imap(maildir, user="alice")` opens Courier's imapd, pre-authenticated,
    on a pipe for `maildir`, as the Maildir's owner (imapd checks it). Every
    session still open is logged out afterwards."""
    sessions: list[imaplib.IMAP4_stream] = []

    def connect(maildir: Path, user: str = "alice") -> imaplib.IMAP4_stream:
        command = f"{IMAPD} {shlex.quote(str(maildir))}"
        if os.geteuid() == 0:
            st = maildir.stat()
            command = f"setpriv --reuid {st.st_uid} --regid {st.st_gid} --clear-groups {command}"
        with monkeypatch.context() as env:
            env.setenv("AUTHENTICATED", user)
            env.setenv("MAILDIR", str(maildir))
            session = imaplib.IMAP4_stream(command)
        sessions.append(session)
        if session.state == "NONAUTH" and "PREAUTH" in session.untagged_responses:
            # For a uid with no passwd entry (vpopmail's 89 here) Courier's
            # gamin/FAM start fails and imapd greets with an [ALERT] line
            # first; its `* PREAUTH` follows, which imaplib does not look for.
            session.state = "AUTH"
        assert session.state == "AUTH", session.welcome
        return session

    yield connect
    log_out(sessions)


@pytest.fixture
def dovecot() -> Iterator[Callable[[Path], imaplib.IMAP4_stream]]:
    """`dovecot(maildir)`: Dovecot's imap binary (unpacked by lib.sh's
    ensure_dovecot, not installed) serving one pre-authenticated session on a
    pipe, with no config file, as the Maildir's owner. Every session still
    open is logged out afterwards."""
    imap = DOVECOT / "usr/lib/dovecot/imap"
    assert os.access(imap, os.X_OK), f"{imap} missing: scripts/lib.sh ensure_dovecot unpacks it"
    sessions: list[imaplib.IMAP4_stream] = []

    def connect(maildir: Path) -> imaplib.IMAP4_stream:
        st = maildir.stat()
        argv = [
            "env", "-i", f"LD_LIBRARY_PATH={DOVECOT}/usr/lib/dovecot", "USER=alice",
            f"HOME={maildir.parent}", str(imap), "-O",
            "-o", f"mail_location=maildir:{maildir}", "-o", f"mail_home={maildir.parent}",
            "-o", f"mail_uid={st.st_uid}", "-o", f"mail_gid={st.st_gid}",
            "-o", "first_valid_uid=1", "-o", "first_valid_gid=1",
        ]  # fmt: skip
        session = imaplib.IMAP4_stream(shlex.join(argv))
        sessions.append(session)
        assert session.state == "AUTH", session.welcome
        return session

    yield connect
    log_out(sessions)


@pytest.fixture
def local_dns() -> Iterator[Callable[[Records], DnsServer]]:
    """`local_dns({name: txt or [txt, ...]})` starts dnsmasq on 127.0.0.1 and a
    free port serving those TXT records; every server is stopped afterwards."""
    servers: list[DnsServer] = []

    def start(records: Records) -> DnsServer:
        server = DnsServer(records)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def zone() -> Iterator[Callable[[Callable[[str], str | None]], ZoneServer]]:
    """`zone(answer)` starts an attacker's DNS server of the tests' own on
    127.0.0.1 (dns_server.ZoneServer): TXT from `answer(name)`, None for
    NXDOMAIN, every query counted; stopped afterwards."""
    servers: list[ZoneServer] = []

    def start(answer: Callable[[str], str | None]) -> ZoneServer:
        server = ZoneServer(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
