"""The doctor's signing checks: every DKIM key the sign templates give a domain
(`key.size`: RSA under 1024 bits fails, under 2048 warns; `key.perms`: not
readable by others, readable by qmail-remote's user), the published records
(`dns.dkim` equal to the local key, `dns.spf`, `dns.dmarc`: through the same
resolver and checks as `quarantine dns check`), and `remote.wrapped`.
"""

from __future__ import annotations

import errno
import os
import stat

from quarantine import filterchain
from quarantine.health import access
from quarantine.health.findings import Finding, fail, ok, warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.config import Config

HEAD = 4096  # bytes of a wrapper script read to recognise it
WRAPPER = "quarantine-remote"
SYMLINK = "a symlink: not followed (the doctor runs as root), so not checked"


class SigningKey:
    """A private key file and the domain it signs for (d=) and selector (s=)."""

    __slots__ = ("domain", "path", "selector")

    def __init__(self, path: str, domain: str) -> None:
        self.path = path
        self.domain = domain
        self.selector = os.path.basename(path)


def signing_keys(cfg: Config, domains: list[str]) -> tuple[list[SigningKey], list[Finding]]:
    """The keys the sign templates (dkim.sign_template, dkim.ed25519_template)
    give `domains`: `%` replaced by each domain (a template without `%` is one
    key used for every domain), or the selector a `PATH.active` pointer of
    `quarantine keys` names, as quarantine-remote finds them; and a FAIL for
    a pointer it would refuse."""
    from quarantine.auth import sign

    found: list[SigningKey] = []
    broken: list[Finding] = []
    for template in (cfg.dkim.sign_template, cfg.dkim.ed25519_template):
        if not template:
            continue
        for domain in domains:
            path = template.replace("%", domain)
            try:
                selected = sign.active_path(path)
            except sign.KeyProblem as exc:
                broken.append(
                    fail(
                        "key.size",
                        path + sign.ACTIVE,
                        str(exc),
                        "quarantine keys status; quarantine keys rotate",
                    )
                )
                continue
            if selected is not None or os.path.lexists(path):
                found.append(SigningKey(selected or path, domain))
    return found, broken


def check_keys(cfg: Config, found: list[SigningKey]) -> list[Finding]:
    """key.size and key.perms for each key file (once per file)."""
    if not found:
        return [
            ok("key.size", cfg.dkim.sign_template, "no signing key: nothing is signed"),
        ]
    out: list[Finding] = []
    paths = list(dict.fromkeys(k.path for k in found))
    setting = cfg.doctor.remote_user
    remote = access.who(setting)
    readable = access.probe(remote, [(p, "r") for p in paths]) if remote else [None] * len(paths)
    for path, answer in zip(paths, readable, strict=True):
        out.append(key_size(path))
        out.append(key_perms(path, remote, setting, answer))
    return out


class Inspected:
    """What a key file holds: `kind` rsa or ed25519 (None: not a key), RSA
    modulus bits, and the DNS record of its public half ("" when unknown)."""

    __slots__ = ("bits", "error", "kind", "record")

    def __init__(self, kind: str | None, bits: int, record: str, error: str = "") -> None:
        self.kind = kind
        self.bits = bits
        self.record = record
        self.error = error


_INSPECTED: dict[tuple[str, int, int, int], Inspected] = {}


def inspect(path: str) -> Inspected:
    """The key file read and loaded once per version of it (size and record
    serve key.size and dns.dkim alike). Opened as quarantine-remote reads
    it, but never through a symlink and without waiting: the doctor runs as
    root, and a FIFO or device planted as a key is refused, not read."""
    from quarantine.auth import sign

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Inspected(None, 0, "", SYMLINK)
        return Inspected(None, 0, "", f"cannot read: {exc.strerror}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Inspected(None, 0, "", "not a regular file: quarantine-remote refuses it")
        stamp = (path, st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp not in _INSPECTED:
            data = os.read(fd, sign.MAX_KEY + 1)
            if len(data) > sign.MAX_KEY:
                return Inspected(None, 0, "", f"over {sign.MAX_KEY} bytes: not a key")
            _INSPECTED[stamp] = _load(data)
        return _INSPECTED[stamp]
    except OSError as exc:
        return Inspected(None, 0, "", f"cannot read: {exc.strerror}")
    finally:
        os.close(fd)


def _load(data: bytes) -> Inspected:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from quarantine.auth import keys

    text = data.replace(b"\r\n", b"\n").strip()
    if not text.startswith(b"-----BEGIN"):
        try:
            return Inspected("ed25519", 256, keys.record_from_key(text))
        except keys.KeyFailure:
            return Inspected(None, 0, "", "not an RSA or ed25519 private key")
    try:
        # Only the public half and the size are wanted: the (slow) check of
        # the private numbers is left to the signer, which refuses a bad key.
        key = serialization.load_pem_private_key(
            text + b"\n", password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError):
        bits = _small_rsa(text)
        return Inspected("rsa", bits, "") if bits else _not_a_key()
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return Inspected("rsa", key.key_size, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return Inspected("ed25519", 256, keys.record_from_key(text))
    return _not_a_key()


def _not_a_key() -> Inspected:
    return Inspected(None, 0, "", "not an RSA or ed25519 private key")


def key_size(path: str) -> Finding:
    found = inspect(path)
    if found.error == SYMLINK:
        return warn("key.size", path, SYMLINK, "put the key file itself in place of the link")
    if found.kind is None:
        return fail("key.size", path, found.error, "make one: quarantine keygen DOMAIN")
    if found.kind == "ed25519":
        return ok("key.size", path, "ed25519")
    bits = found.bits
    if bits < 1024:
        return fail(
            "key.size",
            path,
            f"{bits}-bit RSA: receivers ignore it (RFC 8301) and it can be factored",
            "quarantine keygen --bits 2048 with a new selector, publish it, then switch",
        )
    if bits < 2048:
        return warn(
            "key.size",
            path,
            f"{bits}-bit RSA: under the 2048 bits RFC 8301 asks for",
            "roll over to a 2048-bit key (quarantine keygen, new selector)",
        )
    return ok("key.size", path, f"{bits}-bit RSA")


def _small_rsa(pem: bytes) -> int:
    """The modulus size of a PKCS#1 key the cryptography library will not
    load (some builds refuse the old dknewkey's 384-bit keys); 0: none."""
    from quarantine.auth.resolver import import_dkim

    import_dkim()
    from dkim.crypto import UnparsableKeyError, parse_pem_private_key

    try:
        parsed = parse_pem_private_key(pem + b"\n")
    except (UnparsableKeyError, ValueError, IndexError, TypeError):
        return 0
    return int(parsed["modulus"]).bit_length()


def key_perms(path: str, remote: access.Who | None, setting: str, answer: str | None) -> Finding:
    try:
        st = os.stat(path)
    except OSError as exc:
        return fail("key.perms", path, f"cannot stat: {exc.strerror}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return fail(
            "key.perms",
            path,
            f"readable by every user ({filterchain.mode_text(st)}): anyone here can sign as you",
            f"chmod 0640 {path}; chgrp qmail {path}",
        )
    if remote is None:
        return warn(
            "key.perms",
            path,
            f"no user {setting!r} here: cannot tell whether qmail-remote can read it",
            "set doctor.remote_user to the user qmail-remote runs as",
        )
    if answer is not None:
        return fail(
            "key.perms",
            path,
            f"{remote.label}, which qmail-remote runs as, cannot read it: {answer}"
            " (quarantine-remote defers every message)",
            f"chgrp {remote.gid} {path}; chmod 0640 {path} (and g+x on its directory)",
        )
    return ok("key.perms", path, f"{filterchain.mode_text(st)}, readable by {remote.label} only")


def check_dns(cfg: Config, found: list[SigningKey]) -> list[Finding]:
    """dns.dkim per key, dns.spf and dns.dmarc per signing domain."""
    from quarantine.auth import dnscheck, keys, records
    from quarantine.auth.resolver import make_resolver

    resolver = make_resolver(cfg.dns)
    out: list[Finding] = []
    for key in found:
        name = f"{key.selector}._domainkey.{key.domain}"
        inspected = inspect(key.path)
        if not inspected.record:
            said = f"cannot derive the record of {key.path}"
            if inspected.error == SYMLINK:
                out.append(warn("dns.dkim", name, f"{said}: {SYMLINK}"))
            else:
                out.append(fail("dns.dkim", name, said))
            continue
        record = records.Record("dkim", name, inspected.record, key.selector)
        finding = dnscheck.check_dkim_record(resolver, name, inspected.record)
        out.append(_dns_finding("dns.dkim", finding, records.bind_line(record, cfg.dns.ttl)))
    for domain in dict.fromkeys(k.domain for k in found):
        try:
            findings = dnscheck.check(cfg, domain, resolver=resolver, kinds=("spf", "dmarc"))
        except (keys.KeyFailure, records.RecordProblem) as exc:
            out.append(fail("dns.spf", domain, str(exc)))
            continue
        for finding in findings:
            out.append(_dns_finding(f"dns.{finding.kind}", finding, finding.publish))
    return out


def _dns_finding(check: str, finding: object, publish: str) -> Finding:
    from quarantine.auth import dnscheck

    assert isinstance(finding, dnscheck.Finding)
    text = finding.detail or finding.status
    if finding.status == dnscheck.PUBLISHED:
        return ok(check, finding.name, text)
    if finding.status == dnscheck.TEMPERROR:
        return warn(check, finding.name, text, "try again later")
    fix = f"publish {publish}" if publish else None
    if check == "dns.dmarc" and finding.status == dnscheck.DIFFERENT:
        return warn(check, finding.name, text, fix)
    return fail(check, finding.name, f"{finding.status}: {text}", fix)


def check_remote(cfg: Config, found: list[SigningKey]) -> Finding:
    """remote.wrapped: with keys to sign with, qmail's qmail-remote must be
    quarantine-remote, and the real one (dkim.qmail_remote) executable."""
    installed = os.path.join(cfg.qmail.home, "bin", "qmail-remote")
    real = cfg.dkim.qmail_remote
    if not found:
        return ok("remote.wrapped", installed, "no signing key: nothing to wrap")
    if not is_wrapper(installed):
        return fail(
            "remote.wrapped",
            installed,
            f"not {WRAPPER}: outgoing mail leaves unsigned",
            f"mv {installed} {real}; ln -s $(command -v {WRAPPER}) {installed}",
        )
    if is_wrapper(real) or not (os.path.isfile(real) and os.access(real, os.X_OK)):
        return fail(
            "remote.wrapped",
            real,
            f"dkim.qmail_remote {real} is not the real qmail-remote: {WRAPPER} "
            "defers every message",
            f"point dkim.qmail_remote at qmail's own qmail-remote (moved to {real})",
        )
    return ok("remote.wrapped", installed, f"runs {WRAPPER}, which runs {real}")


def is_wrapper(path: str) -> bool:
    """A symlink to quarantine-remote, or a script that runs it."""
    if os.path.basename(os.path.realpath(path)) == WRAPPER:
        return True
    try:  # not blocking on a FIFO planted there, and only a regular file's head
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            head = os.read(fd, HEAD) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        finally:
            os.close(fd)
    except OSError:
        return False
    return head.startswith(b"#!") and (WRAPPER.encode() in head or b"quarantine.remote" in head)
