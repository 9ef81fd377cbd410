"""quarantine-remote and DKIM signing: the wrapper run as qmail-rspawn runs it,
with a stand-in qmail-remote that records argv and stdin; signatures checked by
Perl Mail::DKIM (rsa-sha256, DomainKeys) against a real dnsmasq, and by dkimpy
for ed25519 (Debian's Mail::DKIM has no ed25519: it says `invalid`)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from quarantine import config
from quarantine.auth import resolver, sign

if TYPE_CHECKING:
    from collections.abc import Callable

    from dns_server import DnsServer, Records

REPO = Path(__file__).resolve().parent.parent
REMOTE = REPO / "bin" / "quarantine-remote"
VERIFY_PL = Path(__file__).parent / "data" / "mail_dkim_verify.pl"
ARGV = ["mx.example.org", "alice@example.test", "bob@example.org"]
REPORT = b"r\0Kok\n\0"

# qmail's queue format: LF line ends. A folded Subject, runs of spaces, a
# quoted display name with a comma and an @, trailing blank lines.
MESSAGE = (
    (
        b'From: "Smith, Alice (alice@elsewhere.example)" <alice@example.test>\n'
        b"To: Bob <bob@example.org>\n"
        b"Subject: a test\n"
        b"  of  folding\n"
        b"Date: Tue, 24 Nov 2026 08:00:00 +0000\n"
        b"Message-ID: <1.test@example.test>\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"Received: from localhost by mail.example.test\n"
        b"\n"
        b"Hello  Bob,\n"
        b"\n"
        b"a line with\ttabs and trailing spaces   \n"
        b"\n\n"
    )
    + b"x" * 70
    + b"\n"
)


class Keys:
    """Test keys: one RSA 2048 (PKCS#1 PEM, as keygen writes it) and one
    ed25519 (base64 seed, as dkimpy wants), with their DNS records."""

    def __init__(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        self.rsa_pkcs8 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.rsa_record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
        edkey = ed25519.Ed25519PrivateKey.generate()
        seed = edkey.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        self.ed_seed = base64.b64encode(seed) + b"\n"
        raw = edkey.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.ed_record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


class Rig:
    """A key directory, a stand-in qmail-remote and a config naming both."""

    def __init__(self, root: Path, keys: Keys) -> None:
        self.root = root
        self.keys = keys
        self.keydir = root / "domainkeys"
        self.keydir.mkdir()
        self.record = root / "record"
        self.record.mkdir()
        self.real = root / "qmail-remote.orig"
        self.write_real("printf 'r\\000Kok\\n\\000'")
        self.config = root / "quarantine.yaml"
        self.configure()

    def write_real(self, tail: str) -> None:
        """The stand-in: records its argv (NUL-separated) and stdin, then `tail`."""
        self.real.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\000' \"$@\" > {self.record}/argv\n"
            f"cat > {self.record}/stdin\n" + tail + "\n"
        )
        self.real.chmod(0o755)

    def configure(self, extra: str = "", dns: DnsServer | None = None) -> None:
        self.config.write_text(
            "dkim:\n"
            f"  keydir: {self.keydir}\n"
            f"  sign_template: {self.keydir}/%/default\n"
            f"  qmail_remote: {self.real}\n" + extra + (dns.config_yaml() if dns else "")
        )

    def add_key(self, domain: str, selector: str = "default", data: bytes | None = None) -> Path:
        path = self.keydir / domain / selector
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(self.keys.rsa_pem if data is None else data)
        return path

    def run(
        self, message: bytes, argv: list[str] = ARGV, stdin_file: bool = False
    ) -> subprocess.CompletedProcess[bytes]:
        """quarantine-remote as qmail-rspawn runs it: argv, message on stdin
        (a pipe, or with stdin_file a file as the queue gives it)."""
        env = {"PATH": os.environ["PATH"], "QUARANTINE_CONFIG": str(self.config)}
        command = [sys.executable, str(REMOTE), *argv]
        if stdin_file:
            src = self.root / "input.eml"
            src.write_bytes(message)
            with src.open("rb") as handle:
                return subprocess.run(
                    command, stdin=handle, capture_output=True, env=env, timeout=60, check=False
                )
        return subprocess.run(
            command, input=message, capture_output=True, env=env, timeout=60, check=False
        )

    def sent(self) -> bytes:
        return (self.record / "stdin").read_bytes()

    def argv(self) -> list[str]:
        return (self.record / "argv").read_bytes().decode().split("\0")[:-1]

    def ran(self) -> bool:
        return (self.record / "argv").exists()


@pytest.fixture
def rig(tmp_path: Path, keys: Keys) -> Rig:
    return Rig(tmp_path, keys)


def mail_dkim(message: bytes, server: DnsServer) -> str:
    """Perl Mail::DKIM's verdict on the message as it goes on the wire."""
    proc = subprocess.run(
        ["perl", str(VERIFY_PL)],
        input=message.replace(b"\n", b"\r\n"),
        capture_output=True,
        env={"PATH": os.environ["PATH"], "DNS_PORT": str(server.port)},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip()


def dkimpy_verify(message: bytes, index: int, server: DnsServer) -> bool:
    """dkimpy's verdict on the index-th DKIM-Signature, DNS from the server."""
    cfg = config.defaults().dns
    dns_cfg = type(cfg)({**cfg.as_dict(), "nameservers": ("127.0.0.1",), "port": server.port})
    lookup = resolver.dkim_dnsfunc(resolver.make_resolver(dns_cfg))
    try:
        return bool(dkim.DKIM(message.replace(b"\n", b"\r\n")).verify(index, dnsfunc=lookup))
    except dkim.ValidationError:  # dkimpy raises on a body hash mismatch
        return False


def assert_z(
    proc: subprocess.CompletedProcess[bytes], rig: Rig, words: str, status: str = "4.3.0"
) -> None:
    """Exactly one Z report with its status code, exit 0, nothing on stderr."""
    assert proc.returncode == 0
    assert proc.stderr == b""
    assert proc.stdout.startswith(b"Z"), proc.stdout
    assert proc.stdout.endswith(f" (#{status})\n\0".encode()), proc.stdout
    assert proc.stdout.count(b"\0") == 1 and proc.stdout.count(b"\n") == 1
    assert words.encode() in proc.stdout, proc.stdout


def signatures(message: bytes, name: bytes = b"DKIM-Signature:") -> int:
    head = message.split(b"\n\n", 1)[0]
    return sum(1 for line in head.split(b"\n") if line.startswith(name))


# ------------------------------------------------------------ the wrapper


def test_signed_message_passes_mail_dkim(
    rig: Rig, local_dns: Callable[[Records], DnsServer]
) -> None:
    rig.add_key("example.test")
    proc = rig.run(MESSAGE)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, REPORT, b"")
    assert rig.argv() == ARGV
    sent = rig.sent()
    assert sent.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
    assert sent.endswith(MESSAGE)
    assert b"\r" not in sent  # still qmail's LF format
    assert signatures(sent) == 1
    header = sent[: len(sent) - len(MESSAGE)].decode()
    assert "s=default;" in header
    # From oversigned; Received is not signed.
    h = header.split("h=", 1)[1].split(";", 1)[0].replace("\n", "").replace(" ", "")
    assert h.split(":").count("from") == 2
    assert "received" not in h and {"to", "subject", "date", "message-id"} <= set(h.split(":"))

    server = local_dns({"default._domainkey.example.test": rig.keys.rsa_record})
    assert mail_dkim(sent, server) == "pass"
    altered = sent.replace(b"Hello  Bob", b"Hello  Bot")
    assert mail_dkim(altered, server).startswith("fail")
    # A second From: added below is caught by the oversigning.
    added = sent.replace(b"To: Bob", b"From: mallory@example.test\nTo: Bob")
    assert mail_dkim(added, server).startswith("fail")


def test_dual_signing_ed25519_and_domainkeys(
    rig: Rig, local_dns: Callable[[Records], DnsServer]
) -> None:
    rig.add_key("example.test")
    rig.add_key("example.test", "ed", rig.keys.ed_seed)
    rig.configure(f"  ed25519_template: {rig.keydir}/%/ed\n  domainkeys: true\n")
    proc = rig.run(MESSAGE, stdin_file=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, REPORT, b"")
    sent = rig.sent()
    assert sent.endswith(MESSAGE)
    assert signatures(sent) == 2 and signatures(sent, b"DomainKey-Signature:") == 1
    server = local_dns(
        {
            "default._domainkey.example.test": rig.keys.rsa_record,
            "ed._domainkey.example.test": rig.keys.ed_record,
        }
    )
    # Topmost the rsa-sha256 signature, then ed25519-sha256.
    assert b"a=ed25519-sha256" in sent.split(b"DKIM-Signature:")[2]
    assert dkimpy_verify(sent, 0, server)
    assert dkimpy_verify(sent, 1, server)
    assert not dkimpy_verify(sent.replace(b"Hello", b"Jello"), 1, server)
    assert mail_dkim(sent, server) == "pass"
    # The DomainKey-Signature alone (DKIM-Signatures cut off): Mail::DKIM
    # verifies DomainKeys too.
    legacy = sent[sent.index(b"DomainKey-Signature:") :]
    assert mail_dkim(legacy, server) == "pass"
    assert mail_dkim(legacy.replace(b"Hello", b"Jello"), server).startswith("fail")


def test_parent_domain_key_signs_a_subdomain(
    rig: Rig, local_dns: Callable[[Records], DnsServer]
) -> None:
    rig.add_key("example.test")
    message = MESSAGE.replace(b"<alice@example.test>", b"<alice@mail.sub.example.test>")
    proc = rig.run(message)
    assert proc.stdout == REPORT
    sent = rig.sent()
    assert b" d=example.test;" in sent
    server = local_dns({"default._domainkey.example.test": rig.keys.rsa_record})
    assert mail_dkim(sent, server) == "pass"


def test_no_key_sends_unsigned_byte_identical(rig: Rig) -> None:
    rig.add_key("other.example")
    for stdin_file in (False, True):
        proc = rig.run(MESSAGE, stdin_file=stdin_file)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, REPORT, b"")
        assert rig.sent() == MESSAGE
        assert rig.argv() == ARGV


def test_unparsable_key_defers_without_running_qmail_remote(rig: Rig) -> None:
    rig.add_key("example.test", data=b"-----BEGIN RSA PRIVATE KEY-----\nnot a key\n")
    proc = rig.run(MESSAGE)
    assert_z(proc, rig, "example.test/default")
    assert not rig.ran()


def test_key_that_is_a_directory_defers(rig: Rig) -> None:
    (rig.keydir / "example.test" / "default").mkdir(parents=True)
    proc = rig.run(MESSAGE)
    assert_z(proc, rig, "not a regular file")
    assert not rig.ran()


def test_weak_rsa_key_defers(rig: Rig) -> None:
    """A 512-bit key (dknewkey's old defaults were 384 and 512) signs nothing
    a receiver accepts (RFC 8301): the mail waits for a new key."""
    weak = subprocess.run(
        ["openssl", "genrsa", "-traditional", "512"], capture_output=True, check=True, timeout=60
    ).stdout
    rig.add_key("example.test", data=weak)
    assert_z(rig.run(MESSAGE), rig, "512 bits")
    assert not rig.ran()


def test_bad_ed25519_key_defers(rig: Rig) -> None:
    rig.add_key("example.test")
    rig.add_key("example.test", "ed", b"c2hvcnQ=\n")
    rig.configure(f"  ed25519_template: {rig.keydir}/%/ed\n")
    assert_z(rig.run(MESSAGE), rig, "example.test/ed")
    assert not rig.ran()


def test_missing_real_qmail_remote_defers(rig: Rig) -> None:
    rig.add_key("example.test")
    rig.real.chmod(0o644)
    assert_z(rig.run(MESSAGE), rig, "Permission denied")
    rig.real.unlink()
    assert_z(rig.run(MESSAGE), rig, "cannot run")
    assert_z(rig.run(b"From: a@nokey.example\n\nunsigned\n"), rig, "No such file")


@pytest.mark.parametrize(
    ("tail", "words"),
    [("exit 3", "exited 3"), ("kill -9 $$", "killed by signal 9"), ("exit 111", "exited 111")],
)
def test_real_qmail_remote_failing_defers(rig: Rig, tail: str, words: str) -> None:
    rig.add_key("example.test")
    rig.write_real("printf 'r\\000'\n" + tail)
    proc = rig.run(MESSAGE)
    assert_z(proc, rig, words)
    assert rig.ran()  # it was run, and its partial output is not passed on


def test_real_report_and_argv_pass_through_unchanged(rig: Rig) -> None:
    rig.write_real("printf 'h550 no such user\\000DGiving up.\\n\\000'")
    argv = ["mx.example.org", "", "a@example.org", "b c@example.org"]
    proc = rig.run(MESSAGE, argv=argv)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        b"h550 no such user\0DGiving up.\n\0",
        b"",
    )
    assert rig.argv() == argv


def test_unreadable_config_defers(rig: Rig) -> None:
    rig.config.write_text("dkim:\n  no_such_key: 1\n")
    proc = rig.run(MESSAGE)
    assert_z(proc, rig, "no_such_key", "4.3.5")  # a configuration error
    assert not rig.ran()


def test_huge_header_block_is_sent_unsigned(rig: Rig) -> None:
    """A 2 MB header block is not scanned (MAX_HEADER): sent unsigned, as
    received, because retrying could never make it signable."""
    rig.add_key("example.test")
    huge = b"X-Filler: " + b"y" * 70 + b"\n"
    message = MESSAGE.replace(b"Received:", huge * (2_000_000 // len(huge)) + b"Received:")
    assert message.index(b"\n\n") > 2_000_000
    for stdin_file in (True, False):
        proc = rig.run(message, stdin_file=stdin_file)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, REPORT, b"")
        assert rig.sent() == message


def test_header_only_message_is_signed(rig: Rig, local_dns: Callable[[Records], DnsServer]) -> None:
    rig.add_key("example.test")
    server = local_dns({"default._domainkey.example.test": rig.keys.rsa_record})
    head = MESSAGE.split(b"\n\n", 1)[0] + b"\n"
    for stdin_file in (True, False):
        proc = rig.run(head, stdin_file=stdin_file)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, REPORT, b"")
        assert rig.sent().endswith(head) and mail_dkim(rig.sent(), server) == "pass"


def test_no_from_is_sent_unsigned(rig: Rig) -> None:
    """DKIM must sign From:; without one there is nothing to sign for."""
    rig.add_key("example.test")
    message = MESSAGE.replace(b"From:", b"Reply-To:", 1)
    proc = rig.run(message)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, REPORT, b"")
    assert rig.sent() == message


# ------------------------------------------------------------ the signer


def dkim_cfg(rig: Rig, **changes: object) -> config.DkimConfig:
    return config.DkimConfig({**config.load_file(str(rig.config)).dkim.as_dict(), **changes})


def test_sender_preferred_over_from(rig: Rig) -> None:
    rig.add_key("example.test")
    rig.add_key("lists.example.org")
    message = b"Sender: owner@lists.example.org\n" + MESSAGE
    outcome = sign.sign(dkim_cfg(rig), message)
    assert outcome.signed and "d=lists.example.org" in outcome.reason
    assert b" d=lists.example.org;" in outcome.message
    # A Sender: without a usable address falls back to From:.
    outcome = sign.sign(dkim_cfg(rig), b"Sender: undisclosed\n" + MESSAGE)
    assert "d=example.test" in outcome.reason
    # A Sender: domain with no key: From's key signs; DomainKeys, whose d=
    # must be Sender's domain, is left out.
    message = b"Sender: owner@nokey.example\n" + MESSAGE
    outcome = sign.sign(dkim_cfg(rig, domainkeys=True), message)
    assert outcome.signed and outcome.reason == "signed d=example.test s=default a=rsa-sha256"
    outcome = sign.sign(dkim_cfg(rig, domainkeys=True), MESSAGE)
    assert "domainkeys d=example.test" in outcome.reason


def test_configured_header_list(rig: Rig) -> None:
    rig.add_key("example.test")
    outcome = sign.sign(dkim_cfg(rig, sign_headers=("Subject", "Received", "X-Absent")), MESSAGE)
    head = outcome.message[: len(outcome.message) - len(MESSAGE)].decode()
    h = head.split("h=", 1)[1].split(";", 1)[0].replace("\n", "").replace(" ", "")
    assert h == "from:from:subject:received"
    with pytest.raises(sign.SignError, match="not a header name"):
        sign.sign(dkim_cfg(rig, sign_headers=("Bad Name",)), MESSAGE)


def test_signature_holds_on_the_wire_with_a_stray_cr(rig: Rig, keys: Keys) -> None:
    """A CR before a LF in the queue goes out as CR CR LF (qmail-remote turns
    each LF into CRLF); the signature covers exactly that."""
    rig.add_key("example.test")
    message = MESSAGE.replace(b"Hello  Bob,\n", b"Hello  Bob,\r\n")
    outcome = sign.sign(dkim_cfg(rig), message)
    wire = outcome.message.replace(b"\n", b"\r\n")
    assert b"Bob,\r\r\n" in wire
    record = keys.rsa_record.encode()
    assert dkim.verify(wire, dnsfunc=lambda name, timeout=5: record)
    assert not dkim.verify(
        wire.replace(b"Bob,\r\r\n", b"Bob,\r\n"), dnsfunc=lambda n, timeout=5: record
    )


def test_pkcs8_key_is_accepted(rig: Rig) -> None:
    rig.add_key("example.test", data=rig.keys.rsa_pkcs8)
    assert sign.sign(dkim_cfg(rig), MESSAGE).signed


def test_sign_file(rig: Rig, tmp_path: Path) -> None:
    rig.add_key("example.test")
    eml = tmp_path / "m.eml"
    eml.write_bytes(MESSAGE.replace(b"\n", b"\r\n"))
    code, data = sign.sign_file(config.load_file(str(rig.config)), str(eml))
    assert code == 0 and data.startswith(b"DKIM-Signature:") and data.endswith(MESSAGE)
    eml.write_bytes(MESSAGE.replace(b"example.test>", b"nokey.example>"))
    code, data = sign.sign_file(config.load_file(str(rig.config)), str(eml))
    assert code == 1 and b"no key for nokey.example" in data
    code, data = sign.sign_file(config.load_file(str(rig.config)), str(tmp_path / "absent"))
    assert code == 1 and b"cannot read" in data


def test_sign_command_writes_bytes_that_verify(
    rig: Rig, tmp_path: Path, local_dns: Callable[[Records], DnsServer], quarantine_bin: Path
) -> None:
    """`quarantine sign FILE` prints the message byte for byte: a Latin-1
    body byte (not UTF-8) stays as it was, and Mail::DKIM passes the output
    (it failed when the output was decoded as UTF-8 with replacement)."""
    rig.add_key("example.test")
    eml = tmp_path / "latin1.eml"
    eml.write_bytes(MESSAGE.replace(b"Hello", b"H\xe9llo \xff"))
    proc = subprocess.run(
        [str(quarantine_bin), "--config", str(rig.config), "sign", str(eml)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith(eml.read_bytes())
    server = local_dns({"default._domainkey.example.test": rig.keys.rsa_record})
    assert mail_dkim(proc.stdout, server) == "pass"


@pytest.mark.parametrize(
    ("value", "domain"),
    [
        (b" alice@Example.TEST", "example.test"),
        (b' "Smith, A (x@y.example)" <alice@example.test>', "example.test"),
        (b" alice@example.test (Alice <a@b.example>)", "example.test"),
        (b' "a@b"@example.test', "example.test"),
        (b" <@route.example:alice@example.test>", "example.test"),
        (b" friends: alice@example.test, bob@example.org;", "example.test"),
        (b" Alice <alice@example.test.>", "example.test"),
        (b" alice@../../etc", None),
        (b" alice@exa/mple.test", None),
        (b" alice@[192.0.2.1]", None),
        (b" <>", None),
        (b" undisclosed-recipients:;", None),
        (b" alice@-bad.example", None),
        (b" alice@" + b"a" * 64 + b".example", None),
        (b" alice@\xc3\xa9xample.test", None),
    ],
)
def test_address_domain(value: bytes, domain: str | None) -> None:
    assert sign.address_domain(value) == domain


def test_split_header() -> None:
    fields, body_at = sign.split_header(b"A: 1\nB: 2\n  more\n\nbody\n") or ([], -1)
    assert fields == [("a", b"A: 1\n"), ("b", b"B: 2\n  more\n")]
    assert body_at == len(b"A: 1\nB: 2\n  more\n\n")
    assert sign.split_header(b"A: 1\nnot a field\n\nbody") is None
    assert sign.split_header(b" leading continuation\n\n") is None
    assert sign.split_header(b"Bad Name: x\n\n") is None
    assert sign.split_header(b"\nbody\n") == ([], 1)
    assert sign.split_header(b"A: 1") == ([("a", b"A: 1")], 4)
    assert len((sign.split_header(b"To: x\n" * 1000 + b"\n") or ([], 0))[0]) == 1000
    assert sign.split_header(b"To: x\n" * 1001 + b"\n") is None


def test_key_candidates_walk_parents() -> None:
    assert [d for _, d in sign.key_candidates("/k/%/s", "a.b.example")] == [
        "a.b.example",
        "b.example",
        "example",
    ]
    assert sign.key_candidates("/k/one", "a.example") == [("/k/one", "a.example")]


def test_header_list_oversigns_from_only() -> None:
    fields = [("from", b""), ("to", b""), ("to", b""), ("received", b"")]
    assert sign.header_list(fields, sign.DEFAULT_HEADERS) == ["from", "from", "to", "to"]


def test_keys_from_keygen_and_records_from_dns(
    rig: Rig, local_dns: Callable[[Records], DnsServer]
) -> None:
    """The real chain: `quarantine keygen` writes the keys, DNS serves exactly
    the records `quarantine dns` builds, quarantine-remote signs with them."""
    from quarantine.auth import keys, records

    rig.configure(f"  ed25519_template: {rig.keydir}/%/ed\n  domainkeys: true\n")
    cfg = config.load_file(str(rig.config))
    keys.keygen(cfg, "example.test")
    keys.keygen(cfg, "example.test", "ed", "ed25519")
    built = records.build(cfg, "example.test", legacy=True)
    server = local_dns({record.name: record.text for record in built.records})
    proc = rig.run(MESSAGE)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, REPORT, b"")
    sent = rig.sent()
    assert mail_dkim(sent, server) == "pass"
    assert dkimpy_verify(sent, 0, server) and dkimpy_verify(sent, 1, server)
    assert mail_dkim(sent[sent.index(b"DomainKey-Signature:") :], server) == "pass"


@pytest.mark.parametrize(("key", "loaded"), [(True, "dkim"), (False, "")])
def test_mail_path_imports_stay_lean(rig: Rig, key: bool, loaded: str) -> None:
    """dkimpy only when there is a key, and never dnspython's resolver (the
    wrapper asks no DNS): about 60 ms a message otherwise."""
    if key:
        rig.add_key("example.test")
    config.load_file(str(rig.config))  # compiles it (CFG.cache): no YAML parse on the mail path
    probe = (
        "import sys\n"
        "from quarantine import remote\n"
        "out, code = remote.run(sys.argv[1:])\n"
        "heavy = ('dkim', 'dns.resolver', 'nacl.bindings', 'yaml', 'email.parser', 'subprocess')\n"
        "sys.stderr.write(repr((out, code, [m for m in heavy if m in sys.modules])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, *ARGV],
        input=MESSAGE,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "QUARANTINE_CONFIG": str(rig.config)},
        timeout=60,
        check=False,
    )
    assert proc.stderr.decode() == repr((REPORT, 0, [loaded] if loaded else []))


def test_large_message_signed(rig: Rig, local_dns: Callable[[Records], DnsServer]) -> None:
    """5 MB of body with blank lines, tabs and trailing blank lines."""
    rig.add_key("example.test")
    chunk = b"line\twith  spaces \n\n" + b"z" * 900 + b"\n"
    message = MESSAGE + chunk * (5_000_000 // len(chunk)) + b"\n\n\n"
    proc = rig.run(message, stdin_file=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, REPORT, b"")
    server = local_dns({"default._domainkey.example.test": rig.keys.rsa_record})
    assert rig.sent().endswith(message) and mail_dkim(rig.sent(), server) == "pass"
