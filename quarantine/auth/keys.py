"""DKIM keys, a safe `dknewkey`: generate an RSA (2048 bits by default, never
under 1024) or ed25519 key into `<keydir>/<domain>/<selector>` (mode 0640,
group qmail when it exists, written atomically, never overwritten without
force) with its DNS record in `<selector>.pub`; derive the DNS record from a
private key file; list the selectors a domain has.

Keys are written as PKCS#8 PEM ("BEGIN PRIVATE KEY"), RSA and ed25519 alike:
what OpenSSL 3, OpenDKIM, Mail::DKIM and our signer all read. Existing keys
in PKCS#1 PEM or dkimpy's ed25519 form (the base64 seed) are still read.
Security: names are validated before they touch a path; the key is created
under umask 077 with O_EXCL|O_NOFOLLOW and only then given its group.
"""

from __future__ import annotations

import base64
import binascii
import errno
import grp
import os
import re
from dataclasses import dataclass

from quarantine.backup import TEMP_TAG
from quarantine.config import Config
from quarantine.fileio import fsync_dir

KEY_GROUP = "qmail"  # the group qmail-remote (qmailr) runs with; the key's group
KEY_MODE = 0o640
DIR_MODE = 0o750  # <keydir>/<domain>: the key group may enter, others not
PUB_MODE = 0o644
MIN_RSA_BITS = 1024  # RFC 8301: signers MUST use at least 1024 bits
MAX_RSA_BITS = 4096  # RFC 8301: verifiers need only handle keys up to 4096 bits
MAX_KEY_FILE = 64 * 1024
KEY_TYPES = ("rsa", "ed25519")

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")


class KeyFailure(Exception):
    """A key operation failed (exit 1)."""


class KeyUsage(KeyFailure):
    """A bad name, type or size: the request itself is wrong (exit 2)."""


class KeyExists(KeyFailure):
    """The key file is there already and force was not given (exit 1)."""


@dataclass(frozen=True)
class NewKey:
    """What keygen wrote."""

    path: str
    pub_path: str
    domain: str
    selector: str
    key_type: str
    bits: int  # RSA modulus size; 256 for ed25519
    record: str  # the DNS TXT value, as in the .pub file
    group: str | None  # the group the key file was given, None: left as root's


def check_name(name: str, what: str) -> str:
    """`name` (a domain or selector) as a lower-case DNS name, or KeyUsage:
    labels of letters, digits, `-` and `_`, no `/`, `..`, leading dot or NUL."""
    text = name.rstrip(".") if what == "domain" else name
    if not text or len(text) > 253:
        raise KeyUsage(f"{what} {name!r}: empty or longer than 253 characters")
    for label in text.split("."):
        if not _LABEL.match(label):
            raise KeyUsage(
                f"{what} {name!r}: not a DNS name (labels of letters, digits, '-' and '_')"
            )
    if what == "selector" and text.lower().endswith((".pub", ".active")):
        raise KeyUsage(
            f"selector {name!r}: must not end in .pub or .active (the public record's file, "
            "the pointer to the signing key)"
        )
    return text.lower()


def key_dir(cfg: Config, domain: str) -> str:
    """`<keydir>/<domain>`, with the domain checked first."""
    return os.path.join(cfg.dkim.keydir, check_name(domain, "domain"))


def keygen(
    cfg: Config,
    domain: str,
    selector: str | None = None,
    key_type: str | None = None,
    bits: int | None = None,
    force: bool = False,
) -> NewKey:
    """Generate a key and write it and its `.pub` record (see the module doc)."""
    domain = check_name(domain, "domain")
    selector = check_name(cfg.dkim.selector if selector is None else selector, "selector")
    key_type = (key_type or cfg.dkim.key_type).lower()
    if key_type not in KEY_TYPES:
        raise KeyUsage(f"key type {key_type!r}: rsa or ed25519")
    if key_type == "rsa":
        bits = cfg.dkim.bits if bits is None else bits
        if bits < MIN_RSA_BITS:
            raise KeyUsage(
                f"{bits}-bit RSA refused: RFC 8301 forbids signing with keys under "
                f"{MIN_RSA_BITS} bits and verifiers ignore them (the old dknewkey's 384-bit "
                "keys can be factored on a laptop); use 2048"
            )
        if bits > MAX_RSA_BITS:
            raise KeyUsage(
                f"{bits}-bit RSA refused: verifiers need only support up to {MAX_RSA_BITS} "
                "bits (RFC 8301), and the record would not fit a DNS answer well; use 2048"
            )
    elif bits is not None:
        raise KeyUsage("--bits is for RSA keys; ed25519 keys have a fixed size")
    return write_new_key(
        os.path.join(cfg.dkim.keydir, domain), domain, selector, key_type, bits, force
    )


def write_new_key(
    directory: str, domain: str, selector: str, key_type: str, bits: int | None, force: bool
) -> NewKey:
    """Generate a key of `key_type` into `directory/selector` and its record
    into `selector.pub` (the checks on names and sizes are the caller's)."""
    path = os.path.join(directory, selector)
    if os.path.lexists(path) and not force:
        raise KeyExists(f"{path} exists: not overwritten (give --force to replace the key)")
    if key_type == "rsa":
        assert bits is not None
        data, size = _rsa_key(bits), bits
    else:
        data, size = _ed25519_key(), 256
    record = record_from_key(data, path)
    group = _key_group()
    _make_dir(directory, group)
    _write(path, data, KEY_MODE, group, replace=force)
    pub_path = path + ".pub"
    _write(pub_path, record.encode("ascii") + b"\n", PUB_MODE, None, replace=True)
    fsync_dir(directory)
    return NewKey(
        path, pub_path, domain, selector, key_type, size, record, KEY_GROUP if group else None
    )


def _rsa_key(bits: int) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ed25519_key() -> bytes:
    """An ed25519 key as PKCS#8 PEM (OpenDKIM reads it; dkimpy's bare seed it does not)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_group() -> int | None:
    try:
        return grp.getgrnam(KEY_GROUP).gr_gid
    except KeyError:
        return None


def _make_dir(directory: str, group: int | None) -> None:
    parent = os.path.dirname(directory)
    if not os.path.isdir(parent):
        os.makedirs(parent, 0o755, exist_ok=True)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        if os.path.islink(directory) or not os.path.isdir(directory):
            raise KeyFailure(f"{directory}: not a directory (a symlink or a file)") from None
        return
    if group is not None and os.geteuid() == 0:
        os.chown(directory, -1, group)
    os.chmod(directory, DIR_MODE)


def _write(path: str, data: bytes, mode: int, group: int | None, replace: bool) -> None:
    """Write `data` to a temporary file beside `path` (umask 077, O_EXCL,
    O_NOFOLLOW), set group and mode, fsync, then put it in place: rename when
    replacing, link otherwise (which fails if `path` appeared meanwhile)."""
    directory, name = os.path.split(path)
    temp = os.path.join(directory, f".{name}.tmp{os.getpid()}.{os.urandom(4).hex()}")
    old_umask = os.umask(0o077)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    finally:
        os.umask(old_umask)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if group is not None and os.geteuid() == 0:
                os.fchown(fd, -1, group)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise KeyExists(f"{path} exists: not overwritten") from None
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


def read_key_file(path: str) -> bytes:
    """The bytes of a private key file (not following a final symlink is not
    needed here: the admin's key directory is trusted); KeyFailure when absent,
    unreadable or absurdly large."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFailure(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFailure(f"{path}: larger than {MAX_KEY_FILE} bytes, not a key")
    return data


def public_record(private_key_path: str) -> str:
    """The DNS TXT value (`v=DKIM1; k=rsa|ed25519; p=...`) for a private key file."""
    return record_from_key(read_key_file(private_key_path), private_key_path)


def record_from_key(data: bytes, where: str = "key") -> str:
    """The DNS TXT value for private key bytes: an RSA or ed25519 PEM (PKCS#1
    or PKCS#8), or dkimpy's ed25519 base64 seed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text + b"\n", password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFailure(f"{where}: not a usable PEM private key ({exc})") from None
        if isinstance(key, rsa.RSAPrivateKey):
            der = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return _ed25519_record(key)
        raise KeyFailure(f"{where}: neither an RSA nor an ed25519 key")
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise KeyFailure(f"{where}: not an RSA PEM or dkimpy ed25519 key")
    return _ed25519_record(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def _ed25519_record(key: object) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"


def find_keys(cfg: Config, domain: str) -> list[str]:
    """The selectors with a private key file in `<keydir>/<domain>`, sorted."""
    directory = key_dir(cfg, domain)
    try:
        names = os.listdir(directory)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return []
        raise KeyFailure(f"{directory}: cannot list: {exc.strerror}") from None
    selectors = []
    for name in names:
        if name.startswith(".") or name.endswith((".pub", ".active")) or TEMP_TAG in name:
            continue  # (TEMP_TAG: a file or link being replaced, not a key)
        try:
            check_name(name, "selector")
        except KeyUsage:
            continue
        if os.path.isfile(os.path.join(directory, name)):
            selectors.append(name)
    return sorted(selectors)


def key_record(cfg: Config, domain: str, selector: str) -> str:
    """The DNS record for a local key: derived from the private key, or, when
    that cannot be read (not root), taken from its `.pub` file."""
    path = os.path.join(key_dir(cfg, domain), check_name(selector, "selector"))
    try:
        return public_record(path)
    except KeyFailure as first:
        if os.access(path, os.R_OK):
            raise
        try:
            with open(path + ".pub", encoding="ascii") as handle:
                text = handle.read(MAX_KEY_FILE).strip()
        except (OSError, UnicodeDecodeError):
            raise first from None
        if not text.startswith("v=DKIM1"):
            raise first from None
        return text


def dkim_tags(record: str) -> dict[str, str]:
    """The tags of a DKIM key record (`k=rsa; p=...`), names lower-cased,
    values with folding whitespace removed."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), "".join(value.split()))
    return tags
