"""Fault injection for the installed quarantine-remote and quarantine-queue:
every failure of the real program maps to qmail's documented outcome, never an
accidental bounce, and forged authentication results never sway `deliver`."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dns_server import DnsServer, free_port

from quarantine import verdict
from quarantine.message import read_head

if TYPE_CHECKING:
    from collections.abc import Iterator

BIN = Path(sys.executable).parent
REMOTE = BIN / "quarantine-remote"
QUEUE = BIN / "quarantine-queue"
DELIVER = BIN / "quarantine"
ARGV = ["example.org", "alice@example.test", "bob@example.org"]
REPORT = b"r\0Kexample.org accepted message./Remote host said: 250 ok\n\0"
BODY = b"".join(b"line %05d of the body, long enough to matter\n" % i for i in range(3000))
MESSAGE = (
    b"From: Alice <alice@example.test>\n"
    b"To: bob@example.org\n"
    b"Subject: faults\n"
    b"Date: Tue, 24 Nov 2026 08:00:00 +0000\n"
    b"Message-ID: <faults@example.test>\n"
    b"\n" + BODY
)
AUTHSERV = "mx.example.org"


def test_installed_commands() -> None:
    """The commands under test are the installed scripts, runnable."""
    for path in (REMOTE, QUEUE, DELIVER):
        assert path.is_file() and os.access(path, os.X_OK), path


# ------------------------------------------------ qmail-rspawn, as a function


def rspawn(returncode: int, s: bytes) -> bytes:
    """What notqmail's qmail-rspawn `report()` tells qmail-send for a
    qmail-remote that ended with `returncode` (minus a signal) after writing
    `s`: the first byte K (delivered), Z (retry later) or D (bounce)."""
    if returncode < 0:
        return b"Zqmail-remote crashed.\n"
    if returncode == 111:
        return b"ZUnable to run qmail-remote.\n"
    if returncode != 0:
        return b"DUnable to run qmail-remote.\n"
    if not s:
        return b"Zqmail-remote produced no output.\n"
    result, j = -1, 0
    for k, byte in enumerate(s):
        if byte == 0:
            first = s[j : j + 1]
            if first in (b"K", b"Z"):
                result = 1 if first == b"K" else 0
                break
            if first == b"D":
                break
            j = k + 1
    orr = {b"s": 0, b"h": -1}.get(s[:1], result)
    out = {1: b"K", 0: b"Z", -1: b"D"}[orr]
    end = s.find(b"\0", 1)
    if end >= 0:
        out += s[1:end]
        k = end + 1
        if result <= orr and k < len(s) and s[k : k + 1] in (b"Z", b"D", b"K"):
            out += s[k + 1 :].split(b"\0", 1)[0]
    return out


def test_rspawn_model() -> None:
    """The model above agrees with qmail-rspawn on the cases that matter here."""
    assert rspawn(0, REPORT)[:1] == b"K"
    assert rspawn(0, b"r\0") == b"D"  # a cut-short report bounces
    assert rspawn(0, b"h550 no\0DGiving up\n\0") == b"D550 noGiving up\n"
    assert rspawn(0, b"s451 later\0Kok\n\0")[:1] == b"Z"
    assert rspawn(0, b"")[:1] == rspawn(-9, b"")[:1] == rspawn(111, b"")[:1] == b"Z"
    assert rspawn(1, b"")[:1] == b"D"


# ------------------------------------------------------ quarantine-remote


@dataclass
class Key:
    pem: bytes
    record: bytes


@pytest.fixture(scope="module")
def key() -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        b"v=DKIM1; k=rsa; p=" + base64.b64encode(der),
    )


class Remote:
    """A stand-in qmail-remote.orig (a shell script that records its argv and
    stdin, then does what a case says), an optional DKIM key for
    example.test, and the config naming both."""

    def __init__(self, root: Path, key: Key | None) -> None:
        self.root = root
        self.real = root / "qmail-remote.orig"
        self.record = root / "record"
        self.record.mkdir()
        self.has_key = key is not None
        keydir = root / "domainkeys"
        keydir.mkdir()
        if key is not None:
            (keydir / "example.test").mkdir()
            (keydir / "example.test" / "default").write_bytes(key.pem)
        self.config = root / "quarantine.yaml"
        self.config.write_text(
            f"dkim:\n  sign_template: {keydir}/%/default\n  qmail_remote: {self.real}\n"
        )
        self.stand_in(f"cat > {self.record}/stdin\nprintf '{octal(REPORT)}'")

    def stand_in(self, body: str) -> None:
        self.real.write_text(
            f"#!/bin/sh\nprintf '%s\\000' \"$@\" > {self.record}/argv\n" + body + "\n"
        )
        self.real.chmod(0o755)

    def run(self, message: bytes, stdin_file: bool = False) -> subprocess.CompletedProcess[bytes]:
        """quarantine-remote as qmail-rspawn runs it: qmail-remote's argv, the
        message on fd 0 (a pipe, or with `stdin_file` a file as the queue
        gives it), stdout and stderr into one pipe."""
        env = {"PATH": "/usr/bin:/bin", "QUARANTINE_CONFIG": str(self.config)}
        source = self.root / "message.in"
        source.write_bytes(message)
        with source.open("rb") as handle:
            return subprocess.run(
                [str(REMOTE), *ARGV],
                stdin=handle if stdin_file else None,
                input=None if stdin_file else message,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=60,
                check=False,
            )

    def got(self, name: str = "stdin") -> bytes | None:
        path = self.record / name
        return path.read_bytes() if path.exists() else None


def octal(data: bytes) -> str:
    """`data` as a printf format string (every byte octal-escaped)."""
    return "".join(f"\\{byte:03o}" for byte in data)


def deferral(reason: str) -> bytes:
    return b"Zquarantine-remote: " + reason.encode() + b" (#4.3.0)\n\0"


def signed(sent: bytes, message: bytes, key: Key) -> bool:
    """`sent` is `message` under one DKIM-Signature that verifies on the wire."""
    assert sent.startswith(b"DKIM-Signature: ") and sent.endswith(message), sent[:200]
    head = sent[: len(sent) - len(message)]
    assert head.count(b"DKIM-Signature:") == 1 and head.endswith(b"\n")
    wire = sent.replace(b"\n", b"\r\n")
    return bool(dkim.verify(wire, dnsfunc=lambda name, timeout=5: key.record))


@pytest.fixture(params=[False, True], ids=["nokey", "key"])
def remote(request: pytest.FixtureRequest, tmp_path: Path, key: Key) -> Remote:
    return Remote(tmp_path, key if request.param else None)


REMOTE_FAULTS = {
    # name: (stand-in body after the argv record, the deferral's reason)
    "killed-mid-message": (
        "head -c 10 > {rec}/partial\nprintf 'r\\000'\nkill -9 $$",
        "{real} killed by signal 9",
    ),
    "exit-111": ("cat > /dev/null\nexit 111", "{real} exited 111"),
    "exit-100": ("cat > /dev/null\nprintf 'r\\000'\nexit 100", "{real} exited 100"),
    "exit-1": ("cat > /dev/null\nexit 1", "{real} exited 1"),
    "exit-2": ("exit 2", "{real} exited 2"),
    "exit-255": ("exit 255", "{real} exited 255"),
    "no-output": ("cat > /dev/null", "{real} exited 0 without a message report"),
    "recipient-only": ("printf 'r\\000'", "{real} exited 0 without a message report"),
    "unterminated": ("printf 'r\\000Kok'", "{real} exited 0 without a message report"),
    "text-no-nul": ("echo 'some error'", "{real} exited 0 without a message report"),
    "missing": ("", "cannot run {real}: No such file or directory"),
    "not-executable": ("", "cannot run {real}: Permission denied"),
    "not-a-program": ("", "cannot run {real}: Exec format error"),
}


@pytest.mark.parametrize("stdin_file", [False, True], ids=["pipe", "file"])
@pytest.mark.parametrize("fault", list(REMOTE_FAULTS))
def test_remote_fault_is_a_deferral(remote: Remote, fault: str, stdin_file: bool) -> None:
    """Whatever goes wrong with the real qmail-remote, quarantine-remote
    prints exactly one Z report and exits 0: qmail-send keeps the message."""
    body, reason = REMOTE_FAULTS[fault]
    remote.stand_in(body.format(rec=remote.record))
    if fault == "missing":
        remote.real.unlink()
    elif fault == "not-executable":
        remote.real.chmod(0o644)
    elif fault == "not-a-program":
        remote.real.write_bytes(b"\x7fELF garbage\n" * 10)
    proc = remote.run(MESSAGE, stdin_file)
    expected = deferral(reason.format(real=remote.real))
    assert (proc.returncode, proc.stdout) == (0, expected)
    assert rspawn(proc.returncode, proc.stdout)[:1] == b"Z"
    ran = fault not in ("missing", "not-executable", "not-a-program")
    assert (remote.got("argv") == "\0".join(ARGV).encode() + b"\0") is ran
    if fault == "killed-mid-message":
        # It was killed reading the message: signed first when there is a key.
        assert remote.got("partial") == (b"DKIM-Signa" if remote.has_key else MESSAGE[:10])


@pytest.mark.parametrize(
    "report",
    [
        REPORT,
        b"r\0Zexample.org does not like recipient.\n\0",
        b"h550 no such user\0DSorry, I couldn't find any host named example.org.\n\0",
        b"s451 try later\0Kok\n\0",
        b"r\0r\0Kok\n\0trailing bytes",
    ],
    ids=["K", "Z", "h-D", "s-K", "trailing"],
)
def test_remote_complete_report_passes_through(remote: Remote, report: bytes) -> None:
    """A report with a message report is the real one's word: passed on byte
    for byte, a bounce included."""
    remote.stand_in(f"cat > /dev/null\nprintf '{octal(report)}'")
    proc = remote.run(MESSAGE)
    assert (proc.returncode, proc.stdout) == (0, report)


def test_remote_killed_from_outside(remote: Remote) -> None:
    """The real one killed with SIGKILL by somebody else, mid-conversation."""
    pid_file = remote.record / "pid"
    remote.stand_in(f"head -c 100 > {remote.record}/partial\necho $$ > {pid_file}\nexec sleep 60")
    env = {"PATH": "/usr/bin:/bin", "QUARANTINE_CONFIG": str(remote.config)}
    with subprocess.Popen(
        [str(REMOTE), *ARGV],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(MESSAGE)
        proc.stdin.close()
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text().endswith("\n")):
            assert time.monotonic() < deadline, "the stand-in never started"
            time.sleep(0.01)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        out = proc.stdout.read()
        assert proc.wait(timeout=20) == 0
    assert out == deferral(f"{remote.real} killed by signal 9")
    assert len(remote.got("partial") or b"") == 100


@dataclass
class Shape:
    message: bytes
    signable: bool  # with a key for example.test, is it signed?


SHAPES = {
    "empty": Shape(b"", False),
    "headers-only": Shape(b"From: alice@example.test\nSubject: no body", True),
    "headers-only-lf": Shape(b"From: alice@example.test\nSubject: no body\n", True),
    "8bit": Shape(
        b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.test>\n"
        b"Subject: caf\xc3\xa9 \xff\xfe latin \xe9\n\n"
        + bytes(range(128, 256))
        + b"\n\xc3\xa9t\xc3\xa9\n",
        True,
    ),
    "nul-body": Shape(b"From: alice@example.test\nSubject: nul\n\nbefore\0after\n\0\0\n", True),
    "nul-header": Shape(b"From: alice@example.test\nSubject: n\0l\n\nbody\n", True),
    "crlf": Shape(MESSAGE.replace(b"\n", b"\r\n")[:2000] + b"\r\n", False),
}


@pytest.mark.parametrize("stdin_file", [False, True], ids=["pipe", "file"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_remote_message_shapes(remote: Remote, key: Key, shape: str, stdin_file: bool) -> None:
    """Odd messages reach the real qmail-remote intact: byte for byte when
    unsigned, under a signature that verifies on the wire when signed."""
    case = SHAPES[shape]
    proc = remote.run(case.message, stdin_file)
    assert (proc.returncode, proc.stdout) == (0, REPORT)
    sent = remote.got()
    assert sent is not None
    if remote.has_key and case.signable:
        assert signed(sent, case.message, key)
    else:
        assert sent == case.message


# ------------------------------------------------------- quarantine-queue

ENVELOPE = b"Falice@example.test\0Tbob@example.org\0Tcarol@example.org\0\0"
QUEUE_CODES = [0, 11, 31, 51, 52, 53, 54, 55, 56, 61, 62, 63, 64, 65, 66, 71, 72, 73, 74, 81, 91]

# The stand-in qmail-queue: reads fd 0 to its end, then fd 1 to its end,
# records both, checks the envelope as qmail-queue does (EOF before the final
# NUL: 54; a record not F or T: 91) and exits STANDIN_EXIT. STANDIN_MODE:
# `exit` (exit at once, reading nothing), `kill` (SIGKILL itself after 10
# bytes of the message), `message-only` (read the message, never the envelope).
QUEUE_STANDIN = """\
import os, signal, sys
out = os.environ["STANDIN_DIR"]
mode = os.environ.get("STANDIN_MODE", "")
code = int(os.environ.get("STANDIN_EXIT", "0"))
def save(name, data):
    with open(os.path.join(out, name), "wb") as handle:
        handle.write(data)
def slurp(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
def envelope_code(env):
    if not env:
        return 54
    if env[:1] != b"F":
        return 91
    pos = env.find(b"\\0")
    while pos >= 0:
        pos += 1
        if pos >= len(env):
            return 54
        if env[pos:pos + 1] == b"\\0":
            return 0
        if env[pos:pos + 1] != b"T":
            return 91
        pos = env.find(b"\\0", pos)
    return 54
save("ran", b"")
if mode == "exit":
    sys.exit(code)
if mode == "kill":
    save("partial", os.read(0, 10))
    os.kill(os.getpid(), signal.SIGKILL)
try:
    save("message", slurp(0))
except OSError:
    sys.exit(54)
if mode == "message-only":
    sys.exit(code)
try:
    envelope = slurp(1)
except OSError:
    sys.exit(54)
save("envelope", envelope)
sys.exit(envelope_code(envelope) or code)
"""


def qq_close(returncode: int, write_failed: bool) -> bytes:
    """What qmail-smtpd makes of its queue program's end (notqmail's
    `qmail_close`): b"" accepted, `Z...` 451 temporary, `D...` 554 permanent."""
    if returncode < 0:
        return b"Zqq crashed (#4.3.0)"
    if returncode == 0:
        return b"Zqq read error (#4.3.0)" if write_failed else b""
    if 11 <= returncode <= 40:
        return b"D" + str(returncode).encode()
    return b"Z" + str(returncode).encode()


@dataclass
class Queued:
    code: int
    smtpd: bytes  # qq_close's verdict
    stderr: str
    ran: bool
    message: bytes | None  # what the stand-in read on fd 0
    envelope: bytes | None  # ... and on fd 1
    partial: bytes | None


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    """dnsmasq with SPF for example.test (127.0.0.1), evil.test and
    bank.example (-all), and for `unknown`, the HELO name a bounce is checked
    under when the message has no Received line (answered here, not left to
    time out)."""
    server = DnsServer(
        {
            "example.test": "v=spf1 ip4:127.0.0.1 -all",
            "evil.test": "v=spf1 -all",
            "bank.example": "v=spf1 -all",
            "unknown": "v=spf1 -all",
            "_dmarc.example.test": "v=DMARC1; p=none",
        }
    )
    yield server
    server.stop()


class Queue:
    """A stand-in qmail-queue, its output directory and a config naming it."""

    def __init__(self, root: Path, dns: DnsServer) -> None:
        self.root = root
        self.real = root / "qmail-queue"
        self.real.write_text(f"#!{sys.executable} -S\n{QUEUE_STANDIN}")
        self.real.chmod(0o755)
        self.out = root / "out"
        self.out.mkdir()
        self.config = root / "quarantine.yaml"
        self.configure(dns)

    def configure(self, dns: DnsServer, extra: str = "") -> None:
        self.config.write_text(
            f"verify:\n  authserv_id: {AUTHSERV}\n  qmail_queue: {self.real}\n"
            + extra
            + dns.config_yaml()
            + "  timeout: 2\n"
        )

    def run(
        self,
        message: bytes | None,
        envelope: bytes | None = ENVELOPE,
        relay: bool = False,
        env: dict[str, str] | None = None,
    ) -> Queued:
        """quarantine-queue as qmail-smtpd runs it: the message written into a
        pipe on fd 0, then the envelope into a pipe on fd 1 (None: that
        descriptor closed); the exit code, and qmail_close's reading of it."""
        for leftover in self.out.iterdir():
            leftover.unlink()
        environ = {
            "PATH": "/usr/bin:/bin",
            "QUARANTINE_CONFIG": str(self.config),
            "STANDIN_DIR": str(self.out),
            "TCPREMOTEIP": "127.0.0.1",
            **({"RELAYCLIENT": ""} if relay else {}),
            **(env or {}),
        }
        pipes = {fd: os.pipe() for fd, data in ((0, message), (1, envelope)) if data is not None}
        closes = "".join(f" {fd}>&-" for fd in (0, 1) if fd not in pipes)
        command = ["/bin/sh", "-c", f'exec "$0"{closes}', str(QUEUE)] if closes else [str(QUEUE)]
        with subprocess.Popen(
            command,
            stdin=pipes[0][0] if 0 in pipes else None,
            stdout=pipes[1][0] if 1 in pipes else None,
            stderr=subprocess.PIPE,
            env=environ,
        ) as proc:
            for read_end, _ in pipes.values():
                os.close(read_end)
            failed: list[bool] = []

            def feed() -> None:
                # qmail-smtpd: the whole message, then the envelope.
                for fd, data in ((0, message), (1, envelope)):
                    if data is not None:
                        failed.append(write_all(pipes[fd][1], data))

            writer = threading.Thread(target=feed)
            writer.start()
            assert proc.stderr is not None
            stderr = proc.stderr.read().decode(errors="replace")
            code = proc.wait(timeout=60)
            writer.join(timeout=60)
        return Queued(
            code,
            qq_close(code, any(failed)),
            stderr,
            (self.out / "ran").exists(),
            self.read("message"),
            self.read("envelope"),
            self.read("partial"),
        )

    def read(self, name: str) -> bytes | None:
        path = self.out / name
        return path.read_bytes() if path.exists() else None


def write_all(fd: int, data: bytes) -> bool:
    """Write and close, as qmail-smtpd does; True when a write failed."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return False
    except BrokenPipeError:
        return True
    finally:
        os.close(fd)


@pytest.fixture
def queue(tmp_path: Path, dns: DnsServer) -> Queue:
    return Queue(tmp_path, dns)


PATHS = pytest.mark.parametrize("relay", [True, False], ids=["relayclient", "verify"])


def our_header(message: bytes) -> tuple[bytes, bytes]:
    """Split what quarantine-queue handed on into (its added header lines,
    the rest); asserts the added lines are our Authentication-Results and,
    when present, our Received-SPF."""
    ours = AUTHSERV.encode()
    added = b""
    for raw in read_head_bytes(message):
        if raw.startswith(b"Authentication-Results: " + ours + b";") or (
            raw.startswith(b"Received-SPF: ") and b" receiver=" + ours + b";" in raw
        ):
            added += raw
            continue
        break
    assert added.startswith(b"Authentication-Results: " + AUTHSERV.encode() + b";"), message[:300]
    return added, message[len(added) :]


def read_head_bytes(message: bytes) -> list[bytes]:
    """The raw header fields of `message` (continuation lines included)."""
    fields: list[bytes] = []
    for line in message.splitlines(keepends=True):
        if line in (b"\n", b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


@PATHS
@pytest.mark.parametrize("code", QUEUE_CODES)
def test_queue_exit_code_passes_through(queue: Queue, relay: bool, code: int) -> None:
    """Every qmail-queue(8) exit code of the real program reaches qmail-smtpd
    unchanged, after the message and envelope reached it intact."""
    run = queue.run(MESSAGE, relay=relay, env={"STANDIN_EXIT": str(code)})
    assert run.code == code, run.stderr
    assert run.smtpd[:1] == (b"" if code == 0 else b"D" if code in (11, 31) else b"Z")
    assert run.envelope == ENVELOPE
    assert run.message is not None
    if relay:
        assert run.message == MESSAGE
    else:
        assert our_header(run.message)[1] == MESSAGE


@PATHS
@pytest.mark.parametrize("fault", ["killed", "missing", "not-executable", "not-a-program"])
def test_queue_real_program_failure_is_temporary(queue: Queue, relay: bool, fault: str) -> None:
    """A real qmail-queue that dies or cannot run: a temporary outcome for
    qmail-smtpd (451), never 0 and never a permanent refusal."""
    if fault == "missing":
        queue.real.unlink()
    elif fault == "not-executable":
        queue.real.chmod(0o644)
    elif fault == "not-a-program":
        queue.real.write_bytes(b"\x7fELF garbage\n" * 10)
    run = queue.run(MESSAGE, relay=relay, env={"STANDIN_MODE": "kill"})
    assert run.smtpd.startswith(b"Z"), (run.code, run.stderr)
    if fault == "killed":
        assert run.partial == (MESSAGE[:10] if relay else b"Authentica")
        assert run.code == 81
        assert f"{queue.real} crashed (signal 9)" in run.stderr
    else:
        assert (run.code, run.ran) == (81, False)
        reason = {
            "missing": "No such file or directory",
            "not-executable": "Permission denied",
            "not-a-program": "Exec format error",
        }[fault]
        assert f"quarantine-queue: cannot run {queue.real}: " in run.stderr
        assert reason in run.stderr


BIG_ENVELOPE = (
    b"Falice@example.test\0"
    + b"".join(b"Trecipient-%05d@example.org\0" % i for i in range(4000))
    + b"\0"
)


@PATHS
@pytest.mark.parametrize("mode", ["exit", "message-only"])
def test_queue_real_program_that_stops_reading(queue: Queue, relay: bool, mode: str) -> None:
    """A real qmail-queue that exits 0 without reading its input (or without
    the envelope): qmail-smtpd's own rule (qmail_close: 0 after a failed
    write is `qq read error`) holds through the wrapper, so the sender retries.
    Message and envelope are larger than a pipe holds: the write must fail."""
    assert len(MESSAGE) > 65536 and len(BIG_ENVELOPE) > 65536
    run = queue.run(MESSAGE, BIG_ENVELOPE, relay=relay, env={"STANDIN_MODE": mode})
    assert run.ran and run.envelope is None
    # quarantine-queue wrote into the real one (on both paths) and saw the write fail.
    assert (run.code, run.smtpd) == (54, b"Z54"), run.stderr
    assert f"{queue.real} exited 0 but did not read" in run.stderr
    if mode == "message-only":
        assert run.message is not None and run.message.endswith(MESSAGE)


SHAPES_QUEUE = {
    "empty": b"",
    "headers-only": b"From: alice@example.test\nSubject: no body",
    "8bit": SHAPES["8bit"].message,
    "nul": b"From: alice@example.test\nSubject: n\0l\n\nbefore\0after\n\0",
    "crlf": SHAPES["crlf"].message,
}


@PATHS
@pytest.mark.parametrize("shape", list(SHAPES_QUEUE))
def test_queue_message_shapes(queue: Queue, relay: bool, shape: str) -> None:
    """Odd messages are queued (0) with the envelope byte for byte; the
    message is the original, under our header when verified."""
    message = SHAPES_QUEUE[shape]
    run = queue.run(message, relay=relay)
    assert run.code == 0, run.stderr
    assert run.envelope == ENVELOPE
    assert run.message is not None
    if relay:
        assert run.message == message
    else:
        added, rest = our_header(run.message)
        assert rest == message
        assert b"\0" not in added and b"\r" not in added


@PATHS
@pytest.mark.parametrize(
    ("envelope", "code"),
    [
        (b"Falice@example.test\0Tbob@example.org\0", 54),  # no final NUL
        (b"Falice@example.test\0Tbob@exam", 54),  # cut inside a recipient
        (b"Falice@exam", 54),  # cut inside the sender
        (b"", 54),
        (b"Xalice@example.test\0\0", 91),
        (b"Falice@example.test\0Ubob@example.org\0\0", 91),
    ],
    ids=["no-final-nul", "cut-recipient", "cut-sender", "empty", "not-F", "not-T"],
)
def test_queue_broken_envelope_reaches_the_real_one(
    queue: Queue, relay: bool, envelope: bytes, code: int
) -> None:
    """A truncated or malformed envelope is the real qmail-queue's to judge:
    it gets it byte for byte and its code (54, 91) comes back."""
    run = queue.run(MESSAGE, envelope, relay=relay)
    assert (run.code, run.envelope) == (code, envelope), run.stderr


@PATHS
@pytest.mark.parametrize("closed", [0, 1], ids=["fd0-closed", "fd1-closed"])
def test_queue_descriptor_closed(queue: Queue, relay: bool, closed: int) -> None:
    """No message or no envelope descriptor at all: 54 (cannot read the
    message or envelope), and nothing queued."""
    run = queue.run(None if closed == 0 else MESSAGE, None if closed == 1 else ENVELOPE, relay)
    assert run.code == 54, run.stderr
    assert run.smtpd.startswith(b"Z")
    assert run.envelope is None
    if not relay:
        assert not run.ran and "cannot read message or envelope" in run.stderr


def test_queue_dns_down(queue: Queue) -> None:
    """Every lookup failing (a DNS server port nobody answers on): the
    message is still queued (0) under `temperror` results, envelope byte for
    byte, within a few lookup timeouts; only a policy may turn it into 71."""
    dead = f"dns:\n  nameservers: [127.0.0.1]\n  port: {free_port()}\n  timeout: 0.3\n"
    queue.config.write_text(
        f"verify:\n  authserv_id: {AUTHSERV}\n  qmail_queue: {queue.real}\n{dead}"
    )
    started = time.monotonic()
    run = queue.run(MESSAGE)
    assert time.monotonic() - started < 10
    assert (run.code, run.envelope) == (0, ENVELOPE), run.stderr
    assert run.message is not None
    added, rest = our_header(run.message)
    assert rest == MESSAGE
    assert b"spf=temperror" in added and b"dmarc=temperror" in added
    assert queue.run(MESSAGE, env={"SPFBEHAVIOR": "2"}).code == 71


# ------------------------------------------------- forged authentication results

CLAIM = b"dkim=pass header.d=bank.example; spf=pass smtp.mailfrom=bank.example"
FORGED_AR = {
    "plain": b"Authentication-Results: mx.example.org; " + CLAIM + b"\n",
    "case": b"Authentication-Results: MX.Example.Org; " + CLAIM + b"\n",
    "trailing-dot": b"Authentication-Results: mx.example.org.; " + CLAIM + b"\n",
    "comment-first": b"Authentication-Results: (we checked) mx.example.org; " + CLAIM + b"\n",
    "version": b"Authentication-Results: mx.example.org 1; " + CLAIM + b"\n",
    "folded": b"Authentication-Results:\n mx.example.org;\n\tdkim=pass\n header.d=bank.example\n",
    "name-case": b"AUTHENTICATION-RESULTS:mx.example.org;" + CLAIM + b"\n",
    "crlf": b"Authentication-Results: mx.example.org; " + CLAIM + b"\r\n",
    "nbsp": b"Authentication-Results: mx.example.org\xa0; " + CLAIM + b"\n",
    "nbsp-first": b"Authentication-Results:\xa0mx.example.org; " + CLAIM + b"\n",
    "nel": b"Authentication-Results: mx.example.org\x85(x); " + CLAIM + b"\n",
    "received-spf": b"Received-SPF: pass (mx.example.org: forged) client-ip=192.0.2.1;\n",
    "received-spf-receiver": b"Received-SPF: pass (x) receiver=MX.EXAMPLE.ORG.; helo=x;\n",
    "received-spf-nbsp": b"Received-SPF: pass (x) receiver=mx.example.org\xa0; x=y\n",
}
SPAM = b"X-Spam-Status: Yes, score=9.0 required=5.0 tests=GTUBE autolearn=no\n"
DELIVER_RULES = """\
deliver:
  authserv_ids: [mx.example.org]
  trusted_domains: [bank.example]
  rules:
    - {name: trusted-dkim, dkim_trusted: true, action: inbox}
    - {name: spf-pass, spf: [pass], action: inbox}
    - {name: spamassassin, spam: true, action: junk}
"""
SPAM_MESSAGE = (
    b"Received: from unknown (HELO mail.evil.test) (192.0.2.1)\n"
    b"  by mx.example.org with SMTP; 24 Nov 2026 08:00:00 -0000\n"
    b"From: Bank <alerts@bank.example>\n"
    b"To: bob@example.org\n"
    b"Subject: your account\n"
    b"\n"
    b"Authentication-Results: mx.example.org; " + CLAIM + b"\n"
    b"click here\n"
)


def deliver(queued: bytes, root: Path, config: Path) -> tuple[int, str]:
    """`quarantine deliver --maildir` on the queued message as qmail-local
    hands it over (qmail-queue's Received line on top) after SpamAssassin
    marked it spam: its exit code and log line."""
    maildir = root / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(DELIVER), "deliver", "--config", str(config), "--maildir", str(maildir)],
        input=SPAM + b"Received: (qmail 4242 invoked by uid 89); 24 Nov 2026\n" + queued,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(errors="replace")


@pytest.mark.parametrize("spf_level", ["1", "0"])
@pytest.mark.parametrize(
    "forms", [[f] for f in FORGED_AR] + [list(FORGED_AR)], ids=[*FORGED_AR, "all"]
)
def test_forged_results_never_change_the_verdict(
    queue: Queue, dns: DnsServer, forms: list[str], spf_level: str
) -> None:
    """Forged Authentication-Results / Received-SPF in our name, in any
    spelling, anywhere in the header (top, middle, bottom) or in the body:
    after quarantine-queue only its own header carries our authserv-id, and
    `deliver` files the spam as spam (a forged dkim=pass of a trusted domain
    or spf=pass would have put it in the inbox)."""
    forged = [FORGED_AR[f] for f in forms]
    lines = SPAM_MESSAGE.split(b"\n", 6)  # two Received lines, From, To, Subject, blank
    head = b"\n".join(lines[:5]) + b"\n"
    # Spread them: before everything, after From:, and at the end of the header.
    third = (len(forged) + 2) // 3
    top, middle, bottom = forged[:third], forged[third : 2 * third], forged[2 * third :]
    message = (
        b"".join(top)
        + head.replace(b"To: ", b"".join(middle) + b"To: ", 1)
        + b"".join(bottom)
        + b"\n"
        + lines[6]
    )
    queue.configure(dns, DELIVER_RULES)
    run = queue.run(
        message,
        b"Fmallory@evil.test\0Tbob@example.org\0\0",
        env={"TCPREMOTEIP": "192.0.2.1", "SPFBEHAVIOR": spf_level},
    )
    assert run.code == 0, run.stderr
    assert run.message is not None
    added, rest = our_header(run.message)
    assert added.count(b"Authentication-Results:") == 1 and b"X-Original" not in added
    # Only renames: the forged fields are still there, as X-Original-...
    assert rest.replace(b"X-Original-", b"") == message
    assert rest.count(b"\nX-Original-") + rest.startswith(b"X-Original-") == len(forged)
    # Read the way deliver reads it: exactly one field in our name, ours.
    with (queue.root / "queued").open("wb+") as handle:
        handle.write(run.message)
        handle.seek(0)
        fields = read_head(handle, 1 << 20).headers
    claims = [
        value
        for name, value in fields
        if (
            name == "authentication-results"
            and (verdict.auth_results(value) or ("",))[0] == AUTHSERV
        )
        or (name == "received-spf" and verdict.received_spf(value)[1] == AUTHSERV)
    ]
    assert len(claims) == (2 if spf_level == "1" else 1), claims
    facts = verdict.gather(fields, [AUTHSERV], True)
    assert facts.dkim == [("none", "")]
    assert facts.spf == ("fail" if spf_level == "1" else None)
    assert facts.dmarc == "none"
    code, line = deliver(run.message, queue.root, queue.config)
    assert code == 99, line
    assert "(spamassassin: " in line
