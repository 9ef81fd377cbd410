"""Verification end to end: `quarantine-queue` between a message and a
stand-in qmail-queue that records fd 0 and fd 1, with a real DNS server
(dnsmasq) and messages signed by Perl Mail::DKIM, an independent signer."""

from __future__ import annotations

import base64
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dns_server import DnsServer, Records, free_port

from quarantine import config, verdict
from quarantine.auth import dkimverify, verify

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
QUEUE_BIN = ROOT / "bin" / "quarantine-queue"
SIGNER = Path(__file__).parent / "data" / "mail_dkim_sign.pl"
PERL_VERIFIER = Path(__file__).parent / "data" / "mail_dkim_verify.pl"
DK_SIGNER = Path(__file__).parent / "data" / "mail_dk_sign.pl"
AUTHSERV = "mx.quarantine.test"
ENVELOPE = b"Falice@example.test\0Tbob@rcpt.test\0Tcarol@rcpt.test\0\0"
RECEIVED = (
    b"Received: from unknown (HELO mail.example.test) (127.0.0.1)\n"
    b"  by mx.quarantine.test with SMTP; 24 Nov 2026 08:00:00 -0000\n"
)
MESSAGE = (
    b"From: Alice <alice@example.test>\n"
    b"To: bob@rcpt.test\n"
    b"Subject: hello\n"
    b"Date: Tue, 24 Nov 2026 08:00:00 +0000\n"
    b"Message-ID: <1@example.test>\n"
    b"\n"
    b"Hello Bob,\n\nthis is a test.\n"
)
STANDIN = """\
import os, sys
def slurp(fd):
    out = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk
message = slurp(0)
envelope = slurp(1)
d = os.environ["STANDIN_DIR"]
open(os.path.join(d, "message"), "wb").write(message)
open(os.path.join(d, "envelope"), "wb").write(envelope)
sys.exit(int(os.environ.get("STANDIN_EXIT", "0")))
"""


@dataclass
class Key:
    path: Path
    record: str  # the DKIM TXT record


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("key") / "s1"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(path, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")


def perl_sign(script: Path, key: Key, selector: str, *args: str, message: bytes) -> bytes:
    """The message signed by a Perl Mail::DKIM script (DKIM or DomainKeys)."""
    proc = subprocess.run(
        ["perl", str(script), str(key.path), "example.test", selector, *args],
        input=message,
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert proc.stdout.startswith((b"DKIM-Signature:", b"DomainKey-Signature:")), proc.stderr
    return proc.stdout


def sign(key: Key, message: bytes = MESSAGE, selector: str = "s1", *algorithm: str) -> bytes:
    signed = perl_sign(SIGNER, key, selector, *algorithm, message=message)
    assert signed.startswith(b"DKIM-Signature:")
    return signed


def records(key: Key, extra: Records | None = None) -> Records:
    """The DKIM key, SPF for 127.0.0.1 and DMARC p=reject for example.test."""
    base: Records = {
        "s1._domainkey.example.test": key.record,
        "example.test": "v=spf1 ip4:127.0.0.1 -all",
        "_dmarc.example.test": "v=DMARC1; p=reject",
    }
    base.update(extra or {})
    return base


@dataclass
class Run:
    code: int
    stderr: str
    message: bytes | None  # what the stand-in qmail-queue got on fd 0
    envelope: bytes | None

    def results(self) -> dict[str, list[tuple[str, dict[str, str], str]]]:
        """Our Authentication-Results, parsed the way `deliver` parses it."""
        assert self.message is not None
        fields, _ = verify.header_fields(self.message)
        ours = [
            verify.field_value(f)
            for f in fields
            if verify.field_name(f) == "authentication-results"
        ]
        assert ours, self.message[:500]
        parsed = verdict.auth_results(ours[0])
        assert parsed is not None
        assert parsed[0] == AUTHSERV
        out: dict[str, list[tuple[str, dict[str, str], str]]] = {}
        for method, result, props, comments in parsed[1]:
            out.setdefault(method, []).append((result, props, comments))
        return out

    def result(self, method: str) -> str:
        return self.results()[method][0][0]


@pytest.fixture
def queue(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer], key: Key
) -> Callable[..., Run]:
    """`queue(message, dns=records or None, env={...})` runs quarantine-queue."""
    standin = tmp_path / "qmail-queue"
    standin.write_text(f"#!{sys.executable}\n{STANDIN}")
    standin.chmod(0o755)
    servers: dict[str, DnsServer] = {}

    def run(
        message: bytes,
        dns: Records | None = None,
        env: dict[str, str] | None = None,
        envelope: bytes = ENVELOPE,
        dns_yaml: str | None = None,
        received: bytes = RECEIVED,
    ) -> Run:
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        for leftover in out.iterdir():
            leftover.unlink()
        if dns_yaml is None:
            wanted = dns if dns is not None else records(key)
            cache_key = repr(sorted(wanted.items()))
            if cache_key not in servers:
                servers[cache_key] = local_dns(wanted)
            dns_yaml = servers[cache_key].config_yaml() + "  timeout: 2\n"
        cfg = tmp_path / "quarantine.yaml"
        cfg.write_text(f"verify:\n  authserv_id: {AUTHSERV}\n  qmail_queue: {standin}\n" + dns_yaml)
        (tmp_path / "message.in").write_bytes(received + message)
        (tmp_path / "envelope.in").write_bytes(envelope)
        environ = {
            "PATH": "/usr/bin:/bin",
            "QUARANTINE_CONFIG": str(cfg),
            "STANDIN_DIR": str(out),
            "TCPREMOTEIP": "127.0.0.1",
        }
        environ.update(env or {})
        with (
            (tmp_path / "message.in").open("rb") as fd0,
            (tmp_path / "envelope.in").open("rb") as fd1,
        ):
            proc = subprocess.run(
                [sys.executable, str(QUEUE_BIN)],
                stdin=fd0,
                stdout=fd1,
                stderr=subprocess.PIPE,
                env=environ,
                timeout=30,
                check=False,
            )
        got = out / "message"
        got_env = out / "envelope"
        return Run(
            proc.returncode,
            proc.stderr.decode(errors="replace"),
            got.read_bytes() if got.exists() else None,
            got_env.read_bytes() if got_env.exists() else None,
        )

    return run


# --- the qmail-queue protocol ------------------------------------------------


def test_signed_message_passes_and_envelope_is_untouched(
    queue: Callable[..., Run], key: Key
) -> None:
    signed = sign(key)
    run = queue(signed)
    assert run.code == 0, run.stderr
    assert run.envelope == ENVELOPE
    assert run.message is not None
    assert run.message.startswith(b"Authentication-Results: " + AUTHSERV.encode())
    assert run.message.endswith(RECEIVED + signed)
    results = run.results()
    dkim_result, props, _ = results["dkim"][0]
    assert dkim_result == "pass"
    assert props["header.d"] == "example.test"
    assert props["header.s"] == "s1"
    assert props["header.b"]
    assert results["spf"][0][0] == "pass"
    assert results["spf"][0][1]["smtp.mailfrom"] == "example.test"
    assert results["dmarc"][0][0] == "pass"
    assert b"\nReceived-SPF: pass (" + AUTHSERV.encode() + b": " in run.message
    spf_line = run.message.split(b"\nReceived-SPF: ", 1)[1].split(b"\n", 1)[0]
    assert verdict.received_spf(spf_line.decode()) == ("pass", AUTHSERV)
    assert b"client-ip=127.0.0.1;" in spf_line
    assert b"helo=mail.example.test;" in spf_line
    assert b"envelope-from=alice@example.test;" in spf_line


def test_deliver_rules_see_our_results(queue: Callable[..., Run], key: Key) -> None:
    altered = sign(key).replace(b"this is a test", b"this is a forgery")
    run = queue(altered, env={"TCPREMOTEIP": "192.0.2.9"})
    assert run.code == 0, run.stderr
    assert run.message is not None
    headers = [
        (verify.field_name(f), verify.field_value(f)) for f in verify.header_fields(run.message)[0]
    ]
    facts = verdict.gather(headers, [AUTHSERV], True)
    assert facts.spf == "fail"
    assert facts.dkim == [("fail", "example.test")]
    assert facts.dmarc == "fail"
    assert facts.dmarc_policy == "reject"
    assert facts.from_domain == "example.test"


@pytest.mark.parametrize("code", [0, 31, 54, 71, 81, 91])
def test_exit_code_of_the_real_qmail_queue_passes_through(
    queue: Callable[..., Run], key: Key, code: int
) -> None:
    run = queue(sign(key), env={"STANDIN_EXIT": str(code)})
    assert run.code == code
    assert run.envelope == ENVELOPE


def test_relayclient_skips_verification(queue: Callable[..., Run], key: Key) -> None:
    run = queue(MESSAGE, env={"RELAYCLIENT": "", "DKVERIFY": "N,N", "SPFBEHAVIOR": "6"})
    assert run.code == 0, run.stderr
    assert run.message == RECEIVED + MESSAGE
    assert run.envelope == ENVELOPE


def test_relayclient_renames_forged_results(queue: Callable[..., Run], key: Key) -> None:
    """Authenticated senders are not verified, but a field they forged in our
    name is renamed all the same: `quarantine deliver` trusts our id."""
    forged = (
        f"Authentication-Results: {AUTHSERV}; dkim=pass header.d=trusted.example\n"
        f"Received-SPF: pass ({AUTHSERV}: forged) receiver={AUTHSERV};\n"
        "Authentication-Results: other.example; dkim=pass\n"
    ).encode()
    run = queue(forged + MESSAGE, env={"RELAYCLIENT": ""})
    assert run.code == 0, run.stderr
    assert (
        run.message
        == RECEIVED
        + b"X-Original-"
        + forged.replace(b"\nReceived-SPF", b"\nX-Original-Received-SPF")
        + MESSAGE
    )
    assert run.envelope == ENVELOPE


def test_relayclient_does_not_load_dkimpy_or_pyspf(tmp_path: Path) -> None:
    probe = (
        "import sys, os\n"
        "from quarantine import queue\n"
        "def stand_in(path, message, envelope):\n"
        "    names = ('dkim', 'spf', 'dns', 'authres', 'subprocess')\n"
        "    heavy = [m for m in names if m in sys.modules]\n"
        "    sys.stderr.write(repr((b''.join(message), envelope, heavy)))\n"
        "    return 0\n"
        "queue.run_qmail_queue = stand_in\n"
        "sys.exit(queue.queue([]))\n"
    )
    envelope = tmp_path / "envelope"
    envelope.write_bytes(ENVELOPE)
    env = {"PATH": "/usr/bin:/bin", "RELAYCLIENT": "", "QUARANTINE_CONFIG": ""}
    with envelope.open("rb") as fd1:
        proc = subprocess.run(
            [sys.executable, "-c", probe],
            input=MESSAGE,
            stdout=fd1,
            stderr=subprocess.PIPE,
            env=env,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode() == repr((MESSAGE, ENVELOPE, []))


def test_missing_real_qmail_queue_is_temporary(tmp_path: Path) -> None:
    cfg = tmp_path / "q.yaml"
    cfg.write_text(f"verify:\n  qmail_queue: {tmp_path}/absent\n")
    envelope = tmp_path / "envelope"
    envelope.write_bytes(ENVELOPE)
    env = {"PATH": "/usr/bin:/bin", "RELAYCLIENT": "", "QUARANTINE_CONFIG": str(cfg)}
    with envelope.open("rb") as fd1:
        proc = subprocess.run(
            [sys.executable, str(QUEUE_BIN)],
            input=b"",
            stdout=fd1,
            stderr=subprocess.PIPE,
            env=env,
            timeout=30,
            check=False,
        )
    assert proc.returncode == 81
    assert b"absent" in proc.stderr


def test_forged_results_with_our_id_are_renamed(queue: Callable[..., Run], key: Key) -> None:
    forged = (
        f"Authentication-Results: {AUTHSERV}; dkim=pass header.d=bank.test; dmarc=pass\n"
        f"Authentication-Results: other.test; spf=pass smtp.mailfrom=x.test\n"
        f"Received-SPF: pass ({AUTHSERV}: forged) client-ip=1.2.3.4;\n"
    ).encode()
    run = queue(forged + MESSAGE)
    assert run.code == 0, run.stderr
    assert run.message is not None
    assert f"\nX-Original-Authentication-Results: {AUTHSERV}; dkim=pass".encode() in run.message
    assert b"\nAuthentication-Results: other.test; spf=pass" in run.message
    assert f"\nX-Original-Received-SPF: pass ({AUTHSERV}: forged)".encode() in run.message
    fields = verify.header_fields(run.message)[0]
    ours = [f for f in fields if verify.field_name(f) == "authentication-results"]
    assert len([f for f in ours if AUTHSERV.encode() in f.split(b";")[0]]) == 1
    assert run.result("dkim") == "none"


# --- DKIM ---------------------------------------------------------------------


def test_altered_body_fails(queue: Callable[..., Run], key: Key) -> None:
    run = queue(sign(key).replace(b"Hello Bob", b"Hello Eve"))
    assert run.code == 0
    result, props, comment = run.results()["dkim"][0]
    assert (result, props["header.d"]) == ("fail", "example.test")
    assert "body hash" in comment


def test_same_outcome_as_mail_dkim(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    """Perl Mail::DKIM, an independent verifier, against the same DNS."""
    server = local_dns(records(key, {"h256._domainkey.example.test": key.record + "; h=sha256"}))
    cfg = _config(server, "")
    signed = sign(key)
    sha1 = sign(key, MESSAGE, "h256", "rsa-sha1")
    cases = {
        "signed": (signed, "pass"),
        "body altered": (signed.replace(b"Hello Bob", b"Hello Eve"), "fail"),
        "subject altered": (signed.replace(b"Subject: hello", b"Subject: HELLO!"), "fail"),
        "rsa-sha1, key h=sha256": (sha1, "permerror"),
    }
    for name, (message, ours) in cases.items():
        theirs = perl_verify(message, server)
        report = verify.verify_message(cfg, message, "", None, {})
        assert report.dkim[0].result == ours, name
        assert (theirs.split()[0] == "pass") == (ours == "pass"), (name, theirs)


def perl_verify(message: bytes, server: DnsServer) -> str:
    """What Perl Mail::DKIM (tests/data/mail_dkim_verify.pl) says of
    `message`, with DNS from `server`: its result word first."""
    perl = subprocess.run(
        ["perl", str(PERL_VERIFIER)],
        input=message,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "DNS_PORT": str(server.port)},
        check=True,
        timeout=30,
    )
    return perl.stdout.decode()


def dk_sign(key: Key, *args: str, message: bytes = MESSAGE) -> bytes:
    signed = perl_sign(DK_SIGNER, key, "s1", *args, message=message)
    assert signed.startswith(b"DomainKey-Signature:")
    return signed


@pytest.mark.parametrize("args", [(), ("simple",), ("nofws", "from:subject"), ("simple", "from")])
def test_domainkeys_signed_by_mail_dkim(
    key: Key, local_dns: Callable[[Records], DnsServer], args: tuple[str, ...]
) -> None:
    server = local_dns(records(key))
    cfg = _config(server, "")
    body = MESSAGE.replace(b"this is a test.\n", b"this  is a\ttest.\n\n\n")
    signed = dk_sign(key, *args, message=body)
    altered = signed.replace(b"Hello Bob", b"Hello Eve")
    for message, ours, letter in ((signed, "pass", "A"), (altered, "fail", "B")):
        report = verify.verify_message(cfg, RECEIVED + message, "", None, {})
        assert (report.domainkeys, report.dk_letters()) == (ours, {letter}), (
            report.domainkeys_reason
        )
        assert f"domainkeys={ours}" in report.authres_value()
        theirs = perl_verify(message, server)
        assert theirs.split()[0] == ours, theirs
    # nofws ignores added spaces; simple does not.
    spaced = signed.replace(b"Hello Bob,", b"Hello  Bob, ")
    expected = "pass" if (args or ("nofws",))[0] == "nofws" else "fail"
    assert verify.verify_message(cfg, spaced, "", None, {}).domainkeys == expected


@pytest.mark.parametrize(
    ("record", "result", "letter"),
    [
        (None, "permerror", "D"),
        ("k=rsa; p=", "permerror", "J"),
        ("k=rsa; p=bm90IGEga2V5", "permerror", "E"),
        ("k=rsa; p=;;;=", "permerror", "E"),
    ],
)
def test_domainkeys_key_problems(
    key: Key,
    local_dns: Callable[[Records], DnsServer],
    record: str | None,
    result: str,
    letter: str,
) -> None:
    dns = records(key)
    del dns["s1._domainkey.example.test"]
    if record is not None:
        dns["s1._domainkey.example.test"] = record
    cfg = _config(local_dns(dns), "  dkverify: 'DEGIJKfh,'\n")
    report = verify.verify_message(cfg, dk_sign(key), "", None, {})
    assert (report.domainkeys, report.domainkeys_letter) == (result, letter)
    assert report.code == 31


def test_domainkeys_policy_letters(key: Key, queue: Callable[..., Run]) -> None:
    signed = dk_sign(key)
    assert queue(signed, env={"DKVERIFY": "A,"}).code == 31
    assert queue(signed.replace(b"Hello", b"Jello"), env={"DKVERIFY": "b,"}).code == 71
    assert queue(MESSAGE, env={"DKVERIFY": "B,"}).code == 0  # unsigned is C
    run = queue(signed.replace(b"alice@example.test>", b"alice@other.test>"))
    assert run.results()["domainkeys"][0][0] == "fail"  # d= is not the sender's domain
    garbage = b"DomainKey-Signature: a=rsa-sha1; d=example.test; ===\n" + MESSAGE
    assert queue(garbage, env={"DKVERIFY": "G,"}).code == 31


def test_rsa_sha1_is_not_a_pass(queue: Callable[..., Run], key: Key) -> None:
    run = queue(sign(key, MESSAGE, "s1", "rsa-sha1"))
    result, _, comment = run.results()["dkim"][0]
    assert result == "permerror"
    assert "RFC 8301" in comment


def test_key_h_tag_excluding_the_hash_fails(queue: Callable[..., Run], key: Key) -> None:
    run = queue(
        sign(key), dns=records(key, {"s1._domainkey.example.test": key.record + "; h=sha1"})
    )
    result, _, comment = run.results()["dkim"][0]
    assert result == "permerror"
    assert "h=" in comment


def test_revoked_key(queue: Callable[..., Run], key: Key) -> None:
    run = queue(
        sign(key),
        dns=records(key, {"s1._domainkey.example.test": "v=DKIM1; k=rsa; p="}),
        env={"DKVERIFY": ",I"},
    )
    assert run.code == 31
    assert "DKIM status I" in run.stderr
    assert run.message is None


def _dkimpy_signed(private: bytes, selector: bytes, algorithm: bytes) -> bytes:
    import dkim

    header = dkim.sign(
        MESSAGE,
        selector,
        b"example.test",
        private,
        signature_algorithm=algorithm,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject"],
    )
    return bytes(header).replace(b"\r\n", b"\n") + MESSAGE


def test_ed25519_and_expiry(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    """dkimpy signs here (Debian's Mail::DKIM has no ed25519, rig.md)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    ed_record = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    cfg = _config(local_dns(records(key, {"ed._domainkey.example.test": ed_record})), "")
    signed = _dkimpy_signed(base64.b64encode(seed), b"ed", b"ed25519-sha256")
    report = verify.verify_message(cfg, signed, "", None, {})
    assert [(r.result, r.selector) for r in report.dkim] == [("pass", "ed")]
    # The ed25519 signature checked against the RSA key: wrong key type.
    wrong = signed.replace(b"s=ed;", b"s=s1;")
    assert [(r.result, r.letter) for r in verify.verify_message(cfg, wrong, "", None, {}).dkim] == [
        ("permerror", "Q")
    ]
    rsa_signed = _dkimpy_signed(key.path.read_bytes(), b"s1", b"rsa-sha256")
    assert verify.verify_message(cfg, rsa_signed, "", None, {}).dkim[0].result == "pass"
    expired = rsa_signed.replace(b"DKIM-Signature: ", b"DKIM-Signature: x=1000000000; ", 1)
    result = verify.verify_message(cfg, expired, "", None, {}).dkim[0]
    assert (result.result, result.letter) == ("permerror", "F")


def test_garbage_signature_tags(queue: Callable[..., Run]) -> None:
    garbage = b"DKIM-Signature: v=1; a=rsa-sha256; ;;; = ; d=\x01\xff; b=%%%; s\n"
    run = queue(garbage + MESSAGE)
    assert run.code == 0, run.stderr
    assert run.result("dkim") == "permerror"
    run = queue(garbage + MESSAGE, env={"DKVERIFY": ",C"})
    assert run.code == 31
    assert run.message is None


def test_no_signature(queue: Callable[..., Run]) -> None:
    run = queue(MESSAGE)
    assert run.code == 0
    assert run.result("dkim") == "none"
    assert run.result("dmarc") == "pass"  # SPF aligned


# --- DKVERIFY letters ------------------------------------------------------


@pytest.mark.parametrize(
    ("dkverify", "code"),
    [
        (",N", 31),  # no signature: permanent
        (",n", 71),  # no signature: temporary
        ("DEGIJKfh,CGHIJMQRkl", 0),  # the old recommended value: unsigned is fine
        ("", 0),  # set but empty: annotate only
        ("C,", 31),  # no DomainKey-Signature: permanent
        ("c", 71),  # no comma: DomainKeys letters only
        ("n", 0),  # ... so a DKIM letter there does nothing
    ],
)
def test_dkverify_letters(queue: Callable[..., Run], dkverify: str, code: int) -> None:
    run = queue(MESSAGE, env={"DKVERIFY": dkverify})
    assert run.code == code, run.stderr
    if code:
        assert run.message is None
        assert "quarantine-queue:" in run.stderr
        assert ("#5.7.1" if code == 31 else "#4.7.0") in run.stderr
    else:
        assert run.result("dkim") == "none"


def test_dkverify_letters_on_signed_mail(queue: Callable[..., Run], key: Key) -> None:
    signed = sign(key)
    assert queue(signed, env={"DKVERIFY": ",A"}).code == 31  # a pass, refused: letters work
    assert queue(signed.replace(b"Hello Bob", b"Hello Eve"), env={"DKVERIFY": ",p"}).code == 71


def test_dkverify_config_value(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    server = local_dns(records(key))
    cfg = _config(server, "  dkverify: ',N'\n")
    report = verify.verify_message(cfg, MESSAGE, "alice@example.test", "127.0.0.1", {})
    assert report.code == 31
    report = verify.verify_message(
        cfg, MESSAGE, "alice@example.test", "127.0.0.1", {"DKVERIFY": ""}
    )
    assert report.code == 0


# --- SPF and DMARC -----------------------------------------------------------


def test_spf_fail_for_another_address(queue: Callable[..., Run]) -> None:
    run = queue(MESSAGE, env={"TCPREMOTEIP": "192.0.2.1"})
    assert run.code == 0
    assert run.result("spf") == "fail"
    dmarc_result, props, comment = run.results()["dmarc"][0]
    assert dmarc_result == "fail"
    assert props["header.from"] == "example.test"
    assert props["policy.dmarc"] == "reject"
    assert "p=reject" in comment


@pytest.mark.parametrize(
    ("behavior", "ip", "spf_record", "code"),
    [
        ("3", "192.0.2.1", "v=spf1 ip4:127.0.0.1 -all", 31),
        ("2", "192.0.2.1", "v=spf1 ip4:127.0.0.1 -all", 0),
        ("3", "192.0.2.1", "v=spf1 ip4:127.0.0.1 ~all", 0),
        ("4", "192.0.2.1", "v=spf1 ip4:127.0.0.1 ~all", 31),
        ("5", "192.0.2.1", "v=spf1 ?all", 31),
        ("6", "192.0.2.1", "v=spf1 bogus -all", 31),
        ("3", "127.0.0.1", "v=spf1 ip4:127.0.0.1 -all", 0),
    ],
)
def test_spfbehavior(
    queue: Callable[..., Run], key: Key, behavior: str, ip: str, spf_record: str, code: int
) -> None:
    run = queue(
        MESSAGE,
        dns=records(key, {"example.test": spf_record}),
        env={"SPFBEHAVIOR": behavior, "TCPREMOTEIP": ip},
    )
    assert run.code == code, run.stderr
    if code:
        assert "SPF" in run.stderr


def test_spfbehavior_from_config(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    cfg = _config(local_dns(records(key)), "  spfbehavior: 3\n")
    report = verify.verify_message(cfg, MESSAGE, "alice@example.test", "192.0.2.1", {})
    assert (report.spf, report.code) == ("fail", 31)
    assert "verdict: reject (31): SPF fail" in report.text()
    # A non-numeric $SPFBEHAVIOR is ignored; a number wins over the config.
    env = {"SPFBEHAVIOR": "yes"}
    assert verify.verify_message(cfg, MESSAGE, "alice@example.test", "192.0.2.1", env).code == 31
    env = {"SPFBEHAVIOR": "1"}
    assert verify.verify_message(cfg, MESSAGE, "alice@example.test", "192.0.2.1", env).code == 0


def test_spfbehavior_0_does_not_look(queue: Callable[..., Run]) -> None:
    run = queue(MESSAGE, env={"SPFBEHAVIOR": "0", "TCPREMOTEIP": "192.0.2.1"})
    assert run.code == 0
    assert "spf" not in run.results()
    assert run.message is not None
    assert b"Received-SPF:" not in run.message


def test_dmarc_reject_enforced(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    cfg = _config(local_dns(records(key)), "  dmarc_reject: true\n")
    report = verify.verify_message(cfg, MESSAGE, "alice@example.test", "192.0.2.1", {})
    assert (report.dmarc, report.dmarc_policy, report.code) == ("fail", "reject", 31)
    assert "DMARC" in report.reason
    report = verify.verify_message(cfg, MESSAGE, "alice@example.test", "127.0.0.1", {})
    assert (report.dmarc, report.code) == ("pass", 0)


def test_dmarc_org_domain_and_alignment(
    key: Key, local_dns: Callable[[Records], DnsServer]
) -> None:
    dns = records(key, {"_dmarc.example.test": "v=DMARC1; p=reject; sp=quarantine; aspf=s"})
    dns["news.example.test"] = "v=spf1 ip4:127.0.0.1 -all"
    cfg = _config(local_dns(dns), "")
    sub = MESSAGE.replace(b"alice@example.test", b"alice@news.example.test")
    # From: news.example.test has no record: the org domain's sp= applies;
    # SPF passes for the same domain (strict alignment holds).
    report = verify.verify_message(cfg, sub, "alice@news.example.test", "127.0.0.1", {})
    assert (report.dmarc, report.dmarc_policy) == ("pass", "quarantine")
    # SPF for the parent only: relaxed would align, aspf=s does not.
    report = verify.verify_message(cfg, sub, "alice@example.test", "127.0.0.1", {})
    assert (report.spf, report.dmarc) == ("pass", "fail")


def test_arc_chain(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    import dkim

    cfg = _config(local_dns(records(key)), "")
    relayed = b"Authentication-Results: relay.test; spf=pass smtp.mailfrom=example.test\n" + MESSAGE
    seal = b"".join(
        dkim.arc_sign(relayed, b"s1", b"example.test", key.path.read_bytes(), b"relay.test")
    ).replace(b"\r\n", b"\n")
    report = verify.verify_message(cfg, seal + relayed, "", None, {})
    assert report.arc == "pass", report.arc_reason
    assert "\tarc=pass;" in report.authres_value()
    report = verify.verify_message(cfg, seal + relayed.replace(b"Hello", b"Jello"), "", None, {})
    assert report.arc == "fail"
    assert verify.verify_message(cfg, MESSAGE, "", None, {}).arc == "none"


def test_hostile_headers_give_defined_results(
    key: Key, local_dns: Callable[[Records], DnsServer]
) -> None:
    cfg = _config(local_dns(records(key)), "")
    hostile = [
        b"DKIM-Signature: \n",
        b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.test; s=s1; h=from; bh=AA==; b=AA==\n",
        b"DKIM-Signature: v=2; a=rsa-sha256; d=example.test; s=s1; h=from; bh=AA==; b=AA==\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s1; h=; bh=; b=\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d="
        + b"a" * 300
        + b"; s=s1; h=from; bh=AA==; b=AA==\n",
        b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.test; s=s1; b=AA==\n",
        b"From: <@>, \xff\xfe@\n",
        b"From: a@example.test\nFrom: b@other.test\n",
        b"From: undisclosed-recipients\n",
        b"From: a@exa..mple.test\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=a..b; s="
        + b"x" * 70
        + b"; h=from; bh=AA==; b=AA==\n",
    ]
    for head in hostile:
        report = verify.verify_message(cfg, head + MESSAGE, "x@example.test", "127.0.0.1", {})
        assert report.code == 0
        assert "temperror" not in (report.dmarc, *(r.result for r in report.dkim)), head
        value = report.authres_value()
        assert verdict.auth_results(value) is not None
        assert all(r.result in ("pass", "fail", "permerror", "temperror") for r in report.dkim)
        assert "\n" not in value.replace("\n\t", "")


def test_signature_naming_too_many_fields(
    key: Key, local_dns: Callable[[Records], DnsServer]
) -> None:
    cfg = _config(local_dns(records(key)), "")
    names = b":".join(b"x-%d" % i for i in range(5000))
    sig = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=s1; h=from:" + names
    sig += b"; bh=AA==; b=AA==\n"
    filler = b"".join(b"X-F-%d: y\n" % i for i in range(5000))
    report = verify.verify_message(cfg, sig + filler + MESSAGE, "", None, {})
    assert (report.dkim[0].result, report.dkim[0].letter) == ("permerror", "C")
    assert "signed header fields" in report.dkim[0].reason


def test_many_signatures_are_capped(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    cfg = _config(local_dns(records(key)), "")
    one = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=nokey; h=from; bh=AA==; b=AA==\n"
    report = verify.verify_message(cfg, one * 500 + MESSAGE, "", None, {})
    assert len(report.dkim) == dkimverify.MAX_SIGNATURES
    assert {(r.result, r.letter) for r in report.dkim} == {("permerror", "L")}
    assert report.dkim_letters() == {"L", "O"}


def test_pyspf_globals_restored(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    import dns.resolver
    import spf

    before = spf.DNSLookup, dns.resolver.default_resolver
    cfg = _config(local_dns(records(key)), "")
    report = verify.verify_message(cfg, MESSAGE, "alice@example.test", "127.0.0.1", {})
    assert report.spf == "pass"
    assert (spf.DNSLookup, dns.resolver.default_resolver) == before


def test_no_client_address_is_not_an_spf_refusal(
    key: Key, local_dns: Callable[[Records], DnsServer]
) -> None:
    cfg = _config(local_dns(records(key)), "")
    report = verify.verify_message(cfg, MESSAGE, "alice@example.test", None, {"SPFBEHAVIOR": "6"})
    assert (report.spf, report.code, report.received_spf) == ("none", 0, None)


@pytest.mark.parametrize(
    ("record", "dmarc", "policy"),
    [
        ("v=DMARC1; p=bogus", "none", None),
        ("v=DMARC1; p=bogus; rua=mailto:d@example.test", "fail", "none"),
        ("v=DMARC1; p=quarantine", "fail", "quarantine"),
        ("v=spf1 -all", "none", None),  # not a DMARC record
        (["v=DMARC1; p=reject", "v=DMARC1; p=none"], "none", None),  # two: none applies
    ],
)
def test_dmarc_records(
    key: Key,
    local_dns: Callable[[Records], DnsServer],
    record: str | list[str],
    dmarc: str,
    policy: str | None,
) -> None:
    cfg = _config(local_dns(records(key, {"_dmarc.example.test": record})), "")
    report = verify.verify_message(cfg, MESSAGE, "alice@example.test", "192.0.2.1", {})
    assert (report.dmarc, report.dmarc_policy) == (dmarc, policy), report.dmarc_reason


def test_message_without_from(queue: Callable[..., Run]) -> None:
    run = queue(b"Subject: no from\n\nbody\n")
    assert run.code == 0, run.stderr
    results = run.results()
    assert results["dmarc"][0][0] == "none"
    assert "From" in results["dmarc"][0][2]


# --- failures ----------------------------------------------------------------


def test_dns_timeout_is_temperror(queue: Callable[..., Run], key: Key) -> None:
    closed = f"dns:\n  nameservers: [127.0.0.1]\n  port: {free_port()}\n  timeout: 0.5\n"
    run = queue(sign(key), dns_yaml=closed)
    assert run.code == 0, run.stderr
    results = run.results()
    assert results["dkim"][0][0] == "temperror"
    assert results["spf"][0][0] == "temperror"
    assert results["dmarc"][0][0] == "temperror"
    run = queue(sign(key), dns_yaml=closed, env={"DKVERIFY": ",k"})
    assert run.code == 71
    run = queue(MESSAGE, dns_yaml=closed, env={"SPFBEHAVIOR": "2"})
    assert run.code == 71
    assert "SPF lookup failure" in run.stderr


def test_huge_header_block(queue: Callable[..., Run], key: Key) -> None:
    filler = b"".join(b"X-Filler-%06d: %s\n" % (i, b"y" * 60) for i in range(28000))
    assert len(filler) > 2_000_000
    signed = sign(key)
    run = queue(filler + signed)
    assert run.code == 0, run.stderr
    assert run.result("dkim") == "pass"
    assert run.message is not None
    assert run.message.endswith(RECEIVED + filler + signed)


def test_header_fields() -> None:
    message = b"A: 1\n  2\nB: 3\r\n\t4\r\n\r\nbody\n\nC: no\n"
    fields, body = verify.header_fields(message)
    assert fields == [b"A: 1\n  2\n", b"B: 3\r\n\t4\r\n"]
    assert message[body:] == b"body\n\nC: no\n"
    assert verify.header_fields(b"  lead\nA: 1") == ([b"  lead\n", b"A: 1"], 11)
    assert verify.header_fields(b"") == ([], 0)
    assert verify.header_fields(b"\nbody") == ([], 1)


@pytest.mark.parametrize(
    "message",
    [
        MESSAGE,
        b"From x  Tue\nA: 1\r\n  2\nB:3\n\nbody\r\nline\n",
        b"A: 1\nB: 2",
        b"A: 1\n\n",
        b"",
    ],
)
def test_fields_and_body_read_as_dkimpy_does(message: bytes) -> None:
    """The header fields and the canonical body the verifier hashes are
    those dkimpy's own parser and canonicalization give."""
    import hashlib

    import dkim
    from dkim.canonicalization import Relaxed, Simple

    headers, body = dkim.rfc822_parse(message)
    raw, start = verify.header_fields(message)
    fields = dkimverify.Fields(raw)
    ours = [list(fields.pair(i)) for i, f in enumerate(raw) if dkimverify.field_key(f)]
    assert ours == headers
    for form, canon in (("simple", Simple), ("relaxed", Relaxed)):
        want = hashlib.sha256(canon.canonicalize_body(body)).digest()
        assert dkimverify.body_hash(message, start, form, "sha256", None) == want


def test_one_huge_folded_header(queue: Callable[..., Run], key: Key) -> None:
    folded = b"X-Folded: start\n" + b"\tcontinued line of a long folded header field\n" * 45000
    assert len(folded) > 2_000_000
    run = queue(folded + sign(key))
    assert run.code == 0, run.stderr
    assert run.result("dkim") == "pass"


def test_bounce_uses_helo_identity(queue: Callable[..., Run], key: Key) -> None:
    dns = records(key, {"mail.example.test": "v=spf1 ip4:127.0.0.1 -all"})
    run = queue(MESSAGE, dns=dns, envelope=b"F\0Tbob@rcpt.test\0\0")
    assert run.code == 0, run.stderr
    result, props, _ = run.results()["spf"][0]
    assert (result, props["smtp.helo"]) == ("pass", "mail.example.test")
    assert run.envelope == b"F\0Tbob@rcpt.test\0\0"


def test_verify_file(key: Key, local_dns: Callable[[Records], DnsServer], tmp_path: Path) -> None:
    cfg = _config(local_dns(records(key)), "")
    path = tmp_path / "m.eml"
    path.write_bytes(b"Return-Path: <alice@example.test>\n" + sign(key))
    code, text = verify.verify_file(cfg, str(path))
    assert code == 0
    assert text.startswith(f"Authentication-Results: {AUTHSERV};")
    assert "dkim=pass" in text
    assert text.endswith("verdict: accept\n")


def _config(server: DnsServer, verify_extra: str) -> config.Config:
    path = Path(server.dir) / "q.yaml"
    path.write_text(f"verify:\n  authserv_id: {AUTHSERV}\n{verify_extra}" + server.config_yaml())
    return config.load_file(str(path), read_cache=False, write_cache=False)


def test_bounce_without_helo_is_spf_none_without_a_lookup() -> None:
    """An empty sender and no HELO name in qmail-smtpd's Received line: there
    is nothing to check (pyspf would otherwise look up the name `unknown`)."""
    report = verify.Report("mx.quarantine.test")
    verify.check_spf(report, "192.0.2.1", "", None, 1.0)
    assert (report.spf, report.spf_comment) == ("none", "no sender and no HELO name")
