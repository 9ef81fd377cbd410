"""What the key roll-over tests share: a site (key directory with keys made by
`quarantine keygen`, a stand-in qmail-remote, a configuration), signing a
message through the real quarantine-remote, and the two verifiers: Perl
Mail::DKIM for RSA (one verdict per signature) and dkimpy for ed25519
(Debian's Mail::DKIM has no ed25519)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dkim

from quarantine import config
from quarantine.auth import keys, records, rotation
from quarantine.auth.records import Record

REPO = Path(__file__).resolve().parent.parent
REMOTE = REPO / "bin" / "quarantine-remote"
VERIFY_PL = Path(__file__).parent / "data" / "mail_dkim_verify.pl"
DAY = 86400.0
# Keys made now are this old at T0: past keys.max_age (180d), so due.
T0 = time.time() + 200 * DAY


def selector_at(when: float) -> str:
    return time.strftime("q%Y%m", time.gmtime(when))


class Site:
    """Keys for `domains` under root/domainkeys (RSA `default` and ed25519
    `ed`, as `quarantine keygen` makes them), signed by quarantine-remote."""

    def __init__(self, root: Path, domains: tuple[str, ...], ed25519: bool = True) -> None:
        self.root = root
        self.domains = domains
        self.ed25519 = ed25519
        self.keydir = root / "domainkeys"
        self.keydir.mkdir()
        self.real = root / "qmail-remote.orig"
        self.real.write_text(f"#!/bin/sh\ncat > {root}/sent\nprintf 'r\\000Kok\\n\\000'\n")
        self.real.chmod(0o755)
        self.state = root / "state" / "keys.json"
        self.config = root / "quarantine.yaml"
        self.dns_host = "127.0.0.1"
        self.dns_port = 53
        self.configure("")
        cfg = self.cfg()
        for domain in domains:
            keys.keygen(cfg, domain, "default", "rsa", 1024)
            if ed25519:
                keys.keygen(cfg, domain, "ed", "ed25519")
        self.counter = 0

    def configure(self, extra: str, host: str = "127.0.0.1", port: int = 53) -> None:
        self.dns_host, self.dns_port = host, port
        ed = f"  ed25519_template: {self.keydir}/%/ed\n" if self.ed25519 else ""
        self.config.write_text(
            "dkim:\n"
            f"  keydir: {self.keydir}\n"
            f"  sign_template: {self.keydir}/%/default\n"
            f"  qmail_remote: {self.real}\n"
            "  bits: 1024\n" + ed + "dns:\n"
            f"  nameservers: [{host}]\n"
            f"  port: {port}\n"
            "  timeout: 2.0\n"
            "  ttl: 60\n"
            "keys:\n"
            f"  state_file: {self.state}\n" + extra
        )

    def cfg(self) -> config.Config:
        return config.load_file(str(self.config), read_cache=False, write_cache=False)

    def zone_lines(self, domain: str) -> list[str]:
        """BIND lines for the domain's keys as they are now."""
        cfg = self.cfg()
        built = records.build(cfg, domain)
        return [records.bind_line(r, 60) for r in built.records if r.kind == "dkim"]

    def tinydns_lines(self, domain: str) -> list[str]:
        cfg = self.cfg()
        built = records.build(cfg, domain)
        return [records.tinydns_line(r, 60) for r in built.records if r.kind == "dkim"]

    def rotate(self, when: float, **kwargs: object) -> rotation.Report:
        report = rotation.rotate(self.cfg(), clock=lambda: when, **kwargs)  # type: ignore[arg-type]
        return report

    def sign(self, domain: str) -> bytes:
        """A message from `domain` through quarantine-remote, as sent."""
        self.counter += 1
        message = (
            f"From: Alice <alice@{domain}>\nTo: bob@example.org\n"
            f"Subject: roll-over test {self.counter}\n"
            f"Message-ID: <{self.counter}.{time.time()}@{domain}>\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\n\nHello.\n"
        ).encode()
        env = {"PATH": os.environ["PATH"], "QUARANTINE_CONFIG": str(self.config)}
        proc = subprocess.run(
            [sys.executable, str(REMOTE), "mx.example.org", f"alice@{domain}", "bob@example.org"],
            input=message,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert proc.stdout == b"r\0Kok\n\0", proc.stdout
        return (self.root / "sent").read_bytes()

    def pointer(self, domain: str, name: str = "default") -> str | None:
        try:
            return os.readlink(self.keydir / domain / f"{name}.active")
        except FileNotFoundError:
            return None

    def record(self, domain: str, selector: str) -> str:
        return keys.public_record(str(self.keydir / domain / selector))

    def bind_record(self, domain: str, selector: str) -> str:
        name = f"{selector}._domainkey.{domain}"
        return records.bind_line(Record("dkim", name, self.record(domain, selector)), 60)


def mail_dkim(message: bytes, host: str, port: int) -> dict[str, str]:
    """Perl Mail::DKIM's verdict per signature: {selector: result detail}."""
    proc = subprocess.run(
        ["perl", str(VERIFY_PL)],
        input=message.replace(b"\n", b"\r\n"),
        capture_output=True,
        env={
            "PATH": os.environ["PATH"],
            "DNS_PORT": str(port),
            "DNS_HOST": host,
            "DKIM_EACH": "1",
        },
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = {}
    for line in proc.stdout.decode().splitlines():
        selector, _, result = line.partition(" ")
        out[selector] = result
    return out


def dkimpy_verify(message: bytes, selector: str, host: str, port: int) -> bool:
    """dkimpy's verdict on the signature with s=`selector` (for ed25519)."""
    from quarantine.auth.resolver import Resolver, dkim_dnsfunc

    lookup = dkim_dnsfunc(Resolver([host], port, 2.0))
    wire = message.replace(b"\n", b"\r\n")
    fields: list[bytes] = []
    for line in wire.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    signatures = [f for f in fields if f.lower().startswith(b"dkim-signature:")]
    wanted = f"s={selector};".encode()
    found = [i for i, f in enumerate(signatures) if wanted in b"".join(f.split())]
    assert found, f"no signature with s={selector}"
    index = found[0]
    try:
        return bool(dkim.DKIM(wire).verify(index, dnsfunc=lookup))
    except dkim.ValidationError:
        return False
