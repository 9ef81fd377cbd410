"""What an attacker with one message and a DNS zone can send to the MX, and a
runner that measures what `quarantine-queue` spent on it: CPU time and peak
memory of the process (wait4), the DNS queries the zone saw (dnsmasq's query
log), the exit code and what reached the stand-in qmail-queue."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dns_server import DnsServer, ZoneServer

ROOT = Path(__file__).resolve().parent.parent
QUEUE_BIN = ROOT / "bin" / "quarantine-queue"
ENVELOPE = b"Fmallory@attacker.test\0Tbob@rcpt.test\0\0"
BODY = b"Hello Bob,\n\nbuy now.\n"
# Reads the message and the envelope to their ends, keeps only their length
# and digest (a stand-in that held 10 MB would blur the memory figures).
STANDIN = """\
import hashlib, os, sys
out = []
head = b""
for fd in (0, 1):
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        if fd == 0 and len(head) < 1 << 18:
            head += chunk
        h.update(chunk)
        n += len(chunk)
    out.append(f"{n} {h.hexdigest()}")
open(os.environ["STANDIN_OUT"] + ".head", "wb").write(head[: 1 << 18])
open(os.environ["STANDIN_OUT"], "w").write("\\n".join(out))
"""
# Runs quarantine-queue in this interpreter and records the peak resident set
# of its own address space (VmHWM): wait4's figure would also hold the test
# process's, which the child carries until it execs.
PROBE = """\
import atexit, os, runpy, sys
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(os.environ["HWM_OUT"], "w").write(line.split()[1])
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# -- keys ---------------------------------------------------------------------


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 128:
        head = bytes((size,))
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        head = bytes((0x80 | len(raw),)) + raw
    return bytes((tag,)) + head + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def rsa_spki(modulus: int, exponent: int) -> bytes:
    """A DER SubjectPublicKeyInfo for any modulus and exponent (no key pair
    needed: an attacker publishes numbers, not keys)."""
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + _der(0x05, b""))
    public = _der(0x30, _der_int(modulus) + _der_int(exponent))
    return _der(0x30, algorithm + _der(0x03, b"\0" + public))


def fake_key_record(bits: int, exponent_bits: int = 17) -> str:
    """A DKIM key record with an odd `bits`-bit modulus and an odd exponent
    of `exponent_bits` bits (17: 65537)."""
    top = 1 << (bits - 1)
    modulus = top | int.from_bytes(os.urandom(bits // 8), "big") % top | 1
    exponent = 65537 if exponent_bits == 17 else (1 << (exponent_bits - 1)) | 1
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(rsa_spki(modulus, exponent)).decode()


# -- messages -----------------------------------------------------------------


def relaxed_body_hash(body: bytes) -> str:
    """bh= for `body` (LF line ends, no trailing spaces) under relaxed."""
    canonical = body.replace(b"\n", b"\r\n").rstrip(b"\r\n") + b"\r\n"
    return base64.b64encode(hashlib.sha256(canonical).digest()).decode()


def forged_signature(selector: str, domain: str = "attacker.test", sig_bytes: int = 2048) -> bytes:
    """A DKIM-Signature whose body hash is right, so a verifier goes on to
    the key and the RSA step; b= is `sig_bytes` random bytes."""
    b = base64.b64encode(os.urandom(sig_bytes)).decode()
    return (
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector};\n"
        f"\th=from:to:subject; bh={relaxed_body_hash(BODY)};\n\tb={b}\n"
    ).encode()


def plain_head(domain: str = "attacker.test") -> bytes:
    return (
        f"From: Mallory <mallory@{domain}>\nTo: bob@rcpt.test\nSubject: offer\n"
        f"Date: Tue, 24 Nov 2026 08:00:00 +0000\nMessage-ID: <m1@{domain}>\n"
    ).encode()


def arc_chain(sets: int, domain: str = "attacker.test") -> bytes:
    """`sets` ARC sets, each naming its own selector (a lookup each)."""
    out = []
    bh = relaxed_body_hash(BODY)
    b = base64.b64encode(os.urandom(256)).decode()
    for i in range(sets, 0, -1):
        cv = "none" if i == 1 else "pass"
        out.append(f"ARC-Seal: i={i}; a=rsa-sha256; cv={cv}; d={domain}; s=as{i}; b={b}\n")
        out.append(
            f"ARC-Message-Signature: i={i}; a=rsa-sha256; c=relaxed/relaxed; d={domain};"
            f" s=ams{i}; h=from:to:subject; bh={bh}; b={b}\n"
        )
        out.append(f"ARC-Authentication-Results: i={i}; mx{i}.{domain}; dkim=pass\n")
    return "".join(out).encode()


# -- running quarantine-queue ---------------------------------------------------


@dataclass
class Spent:
    code: int
    stderr: str
    cpu: float  # user + system seconds of quarantine-queue (and its children)
    maxrss: int  # peak resident set of quarantine-queue itself, bytes
    delivered: str | None  # "LENGTH DIGEST" of the message the stand-in got, or None
    head: bytes  # the start of what the stand-in got (our headers on top)

    def results(self) -> str:
        """Our Authentication-Results value, unfolded."""
        from quarantine.message import field_name, field_value, header_fields

        fields, _ = header_fields(self.head)
        for raw in fields:
            if field_name(raw) == "authentication-results":
                return field_value(raw)
        raise AssertionError(f"no Authentication-Results: {self.head[:300]!r} {self.stderr}")


def run_queue(
    message: bytes,
    dns: DnsServer | ZoneServer,
    env: dict[str, str] | None = None,
    extra_config: str = "",
    limit_as: int | None = None,
) -> Spent:
    """quarantine-queue on `message` (a qmail-smtpd Received line is put on
    top), DNS from `dns`, a stand-in qmail-queue; `limit_as` sets
    RLIMIT_AS as `softlimit -a` does."""
    work = Path(tempfile.mkdtemp(prefix="quarantine-mx-"))
    standin = work / "qmail-queue"
    standin.write_text(f"#!{sys.executable}\n{STANDIN}")
    standin.chmod(0o755)
    cfg = work / "quarantine.yaml"
    cfg.write_text(
        f"verify:\n  authserv_id: mx.quarantine.test\n  qmail_queue: {standin}\n"
        + extra_config
        + dns.config_yaml()
        + "  timeout: 2\n"
    )
    received = b"Received: from unknown (HELO mail.attacker.test) (127.0.0.1)\n  by mx\n"
    (work / "message").write_bytes(received + message)
    (work / "envelope").write_bytes(ENVELOPE)
    out = work / "out"
    environ = {
        "PATH": "/usr/bin:/bin",
        "QUARANTINE_CONFIG": str(cfg),
        "STANDIN_OUT": str(out),
        "HWM_OUT": str(work / "hwm"),
        "TCPREMOTEIP": "127.0.0.1",
        **(env or {}),
    }

    def limits() -> None:
        if limit_as is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    with (work / "message").open("rb") as fd0, (work / "envelope").open("rb") as fd1:
        proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(QUEUE_BIN)],
            stdin=fd0,
            stdout=fd1,
            stderr=subprocess.PIPE,
            env=environ,
            cwd=work,
            preexec_fn=limits if limit_as else None,
        )
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        proc.stderr.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    delivered = out.read_text().splitlines()[0] if out.exists() else None
    head = (work / "out.head").read_bytes() if delivered else b""
    return Spent(
        os.waitstatus_to_exitcode(status),
        stderr.decode(errors="replace"),
        usage.ru_utime + usage.ru_stime,
        int((work / "hwm").read_text()) * 1024 if (work / "hwm").exists() else 0,
        delivered,
        head,
    )
