"""DKIM signing for outbound mail: pick the signing domain (Sender:, else From:),
find its key through the `dkim.sign_template` (parent domains too), and prepend
DKIM-Signature headers (rsa-sha256, optionally ed25519-sha256) and optionally a
legacy DomainKey-Signature. dkimpy is imported only when there is a key.
"""

from __future__ import annotations

import os

from quarantine.config import Config, DkimConfig
from quarantine.qmail import TempFail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# A header block larger than this is not scanned: such a message is sent
# unsigned (it cannot become signable by retrying, so deferring it would only
# delay the bounce by the queue lifetime).
MAX_HEADER = 256 * 1024
MAX_FIELDS = 1000  # header fields; more is not mail a person sent (and dkimpy is O(n^2))
MAX_KEY = 64 * 1024  # a private key file larger than this is not a key
MIN_RSA_BITS = 1024  # RFC 8301: verifiers ignore shorter keys

# Signed when present, as many times as present; From once more (oversigned),
# so that no second From: can be added without breaking the signature.
DEFAULT_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
)
NEVER_SIGNED = ("dkim-signature", "domainkey-signature")
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_SELECTOR = _LDH | frozenset("._")
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class SignError(TempFail):
    """Signing failed: the message stays queued (`Z` from quarantine-remote)."""

    status = "4.3.0"


class KeyProblem(SignError):
    """A key file exists but cannot be read, parsed or used."""


class Key:
    """One private key found through a template: `kind` is `rsa` (data: a
    PKCS#1 PEM, as dkimpy wants) or `ed25519` (data: the base64 seed)."""

    __slots__ = ("data", "domain", "first", "kind", "path", "selector")

    def __init__(self, path: str, domain: str, kind: str, data: bytes) -> None:
        self.path = path
        self.domain = domain
        self.selector = os.path.basename(path)
        self.kind = kind
        self.data = data
        self.first = True  # found for the first choice of domain

    def __repr__(self) -> str:
        return f"Key({self.path!r}, d={self.domain}, s={self.selector}, {self.kind})"


class Outcome:
    """What signing did: the message to send (signed, or the input unchanged)
    and one line saying why."""

    __slots__ = ("message", "reason", "signed")

    def __init__(self, message: bytes, signed: bool, reason: str) -> None:
        self.message = message
        self.signed = signed
        self.reason = reason


# ---------------------------------------------------------------- headers


def split_header(message: bytes) -> tuple[list[tuple[str, bytes]], int] | None:
    """The header fields of an LF message as (lowercase name, raw bytes of the
    whole field with its continuation lines and final LF), and the offset of
    the body (after the blank line). None when the header block is malformed
    (a line that is neither a field nor a continuation), over MAX_HEADER
    bytes or over MAX_FIELDS fields."""
    if message.startswith(b"\n"):
        return [], 1
    end = message.find(b"\n\n", 0, MAX_HEADER + 1)
    if end >= 0:
        head, body_at = message[: end + 1], end + 2
    elif len(message) <= MAX_HEADER:
        head, body_at = message, len(message)  # headers only, no body
    else:
        return None
    fields: list[tuple[str, bytes]] = []
    name = ""
    start = 0
    pos = 0
    while pos < len(head):
        eol = head.find(b"\n", pos)
        line = head[pos:] if eol < 0 else head[pos : eol + 1]
        if line[:1] in (b" ", b"\t"):
            if not name:
                return None
        else:
            if name:
                fields.append((name, head[start:pos]))
            colon = line.find(b":")
            if colon <= 0 or any(c <= 32 or c >= 127 for c in line[:colon]):
                return None
            name = line[:colon].decode("ascii").lower()
            start = pos
            if len(fields) >= MAX_FIELDS:
                return None
        pos += len(line)
    if name:
        fields.append((name, head[start:pos]))
    return fields, body_at


def field_value(raw: bytes) -> bytes:
    """The unfolded value of a raw field (after the colon)."""
    value = raw[raw.index(b":") + 1 :]
    return value.replace(b"\r", b"").replace(b"\n", b"")


def valid_domain(name: str) -> bool:
    """An ASCII host name (letters, digits, hyphens; labels of 1-63, at most
    253 in all): the only kind that may reach a key path."""
    if not name or len(name) > 253:
        return False
    for label in name.split("."):
        if not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not _LDH.issuperset(label):
            return False
    return True


def address_domain(value: bytes) -> str | None:
    """The domain of the first mailbox in an address header value (quoted
    strings and comments skipped, `<...>` preferred), lowercased; None when
    there is no valid host name there."""
    text = value.decode("latin-1")
    clean: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            continue
        if char == "\\" and (quoted or depth):
            escaped = True
            continue
        if quoted:
            if char == '"':
                quoted = False
                clean.append('""')
            continue
        if depth:
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
            continue
        if char == '"':
            quoted = True
        elif char == "(":
            depth += 1
            clean.append(" ")
        else:
            clean.append(char)
    plain = "".join(clean)
    if "<" in plain:
        address = plain.split("<", 1)[1].split(">", 1)[0]
    else:
        address = plain.split(",", 1)[0]
        if ":" in address:  # group syntax: "name: a@b.example;"
            address = address.split(":", 1)[1]
        address = address.split(";", 1)[0]
    if "@" not in address:
        return None
    domain = address.rsplit("@", 1)[1].strip().rstrip(".").lower()
    return domain if valid_domain(domain) else None


def signing_domains(fields: Iterable[tuple[str, bytes]]) -> list[str]:
    """The domains to sign for, in order: that of Sender: when it has one,
    then that of the first From: (tried when the first has no key)."""
    sender = author = None
    for name, raw in fields:
        if name == "sender" and sender is None:
            sender = address_domain(field_value(raw)) or ""
        elif name == "from" and author is None:
            author = address_domain(field_value(raw)) or ""
    domains: list[str] = []
    for domain in (sender, author):
        if domain and domain not in domains:
            domains.append(domain)
    return domains


# ---------------------------------------------------------------- keys


def key_candidates(template: str, domain: str) -> list[tuple[str, str]]:
    """(path, d=) pairs to try: the domain, then its parents. A template
    without `%` names one key for every domain (d= the sender's domain)."""
    if "%" not in template:
        return [(template, domain)]
    labels = domain.split(".")
    return [
        (template.replace("%", ".".join(labels[i:])), ".".join(labels[i:]))
        for i in range(len(labels))
    ]


def find_key(template: str, domain: str) -> Key | None:
    """The first key that exists for the domain or a parent; None if none
    does. KeyProblem when one exists but cannot be used. Where `quarantine
    keys` rolls the keys, `PATH.active` (a symlink, replaced atomically)
    names the selector that signs; the key file beside it is read by that
    name, so the selector and the key always belong together."""
    for path, d in key_candidates(template, domain):
        selected = active_path(path)
        if selected is not None:
            data = read_key(selected)
            if data is None:
                raise KeyProblem(f"DKIM key {path}{ACTIVE}: names {selected}, which is missing")
            return parse_key(selected, d, data)
        data = read_key(path)
        if data is not None:
            return parse_key(path, d, data)
    return None


ACTIVE = ".active"


def active_path(path: str) -> str | None:
    """The key file `PATH.active` points at (a selector beside it), None when
    there is no such pointer. KeyProblem for a pointer that is not a symlink
    to a plain selector name."""
    try:
        target = os.readlink(path + ACTIVE)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise KeyProblem(
            f"DKIM key {path}{ACTIVE}: not a selector pointer: {exc.strerror}"
        ) from None
    if not target or "/" in target or target.startswith(".") or len(target) > 200:
        raise KeyProblem(f"DKIM key {path}{ACTIVE}: points at {target!r}, not a selector")
    if not _SELECTOR.issuperset(target.lower()):
        raise KeyProblem(f"DKIM key {path}{ACTIVE}: points at {target!r}, not a selector")
    return os.path.join(os.path.dirname(path), target)


def first_key(template: str, domains: list[str]) -> Key | None:
    """The key of the first domain (or parent) that has one; `first` says
    whether it belongs to the first domain (Sender:, else From:)."""
    for i, domain in enumerate(domains):
        key = find_key(template, domain)
        if key is not None:
            key.first = i == 0
            return key
    return None


def read_key(path: str) -> bytes | None:
    """The key file's bytes; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise KeyProblem(f"DKIM key {path}: cannot open: {exc.strerror}") from None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyProblem(f"DKIM key {path}: not a regular file")
        data = os.read(fd, MAX_KEY + 1)
    except OSError as exc:
        raise KeyProblem(f"DKIM key {path}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY:
        raise KeyProblem(f"DKIM key {path}: over {MAX_KEY} bytes, not a key")
    return data


def parse_key(path: str, domain: str, data: bytes) -> Key:
    """Recognise the key: a PKCS#1 or PKCS#8 PEM (RSA or ed25519), or dkimpy's
    ed25519 format (the base64 32-byte seed). KeyProblem for anything else."""
    text = data.replace(b"\r\n", b"\n").strip()
    if text.startswith(b"-----BEGIN RSA PRIVATE KEY-----"):
        return Key(path, domain, "rsa", check_rsa(path, text + b"\n"))
    if text.startswith(b"-----BEGIN PRIVATE KEY-----"):
        return pkcs8_key(path, domain, text)
    if text and _B64.issuperset(text) and len(text) < 100:
        import base64
        import binascii

        try:
            seed = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            seed = b""
        if len(seed) == 32:
            return Key(path, domain, "ed25519", text)
    raise KeyProblem(f"DKIM key {path}: not an RSA PEM or ed25519 key")


def check_rsa(path: str, pem: bytes) -> bytes:
    """The PKCS#1 PEM, once dkimpy can parse it and it is long enough."""
    from quarantine.auth.resolver import import_dkim

    import_dkim()  # dkimpy as this package loads it (see there), before dkim.crypto
    from dkim.crypto import UnparsableKeyError, parse_pem_private_key

    try:
        parsed = parse_pem_private_key(pem)
    except (UnparsableKeyError, ValueError, IndexError, TypeError) as exc:
        raise KeyProblem(f"DKIM key {path}: unparsable RSA key: {exc}") from None
    bits = int(parsed["modulus"]).bit_length()
    if bits < MIN_RSA_BITS:
        raise KeyProblem(
            f"DKIM key {path}: RSA key of {bits} bits, receivers ignore keys under"
            f" {MIN_RSA_BITS} (make a new one: quarantine keygen)"
        )
    return pem


def pkcs8_key(path: str, domain: str, pem: bytes) -> Key:
    """A PKCS#8 PEM (what keygen and OpenSSL 3 write), unwrapped with the
    standard library (auth/pkcs8.py): no cryptography import per message."""
    from quarantine.auth import pkcs8

    try:
        kind, data = pkcs8.unwrap(pem)
    except pkcs8.NotPkcs8 as exc:
        raise KeyProblem(f"DKIM key {path}: unparsable PEM key: {exc}") from None
    if kind == "rsa":
        return Key(path, domain, "rsa", check_rsa(path, data))
    return Key(path, domain, "ed25519", data)


# ---------------------------------------------------------------- signing


def header_list(fields: list[tuple[str, bytes]], wanted: Iterable[str]) -> list[str]:
    """The h= list: each wanted name as often as it is present, From once more."""
    counts: dict[str, int] = {}
    for name, _ in fields:
        counts[name] = counts.get(name, 0) + 1
    names: list[str] = []
    for name in wanted:
        if name in NEVER_SIGNED or name in names:
            continue
        names += [name] * (counts.get(name, 0) + (name == "from"))
    return names


def sign_names(cfg: DkimConfig) -> list[str]:
    """The configured header names (From always included), or the built-in set."""
    if not cfg.sign_headers:
        return list(DEFAULT_HEADERS)
    names = ["from"]
    for name in cfg.sign_headers:
        low = name.strip().lower()
        if not low or any(not 32 < ord(c) < 127 or c == ":" for c in low):
            raise SignError(f"dkim.sign_headers: {name!r} is not a header name")
        if low not in names:
            names.append(low)
    return names


class Plan:
    """What the header block decides: the keys to sign with (none: send
    unsigned, `reason` says why), the fields and where the body starts."""

    __slots__ = ("body_at", "fields", "keys", "reason")

    def __init__(
        self, keys: list[Key], reason: str, fields: list[tuple[str, bytes]], body_at: int
    ) -> None:
        self.keys = keys
        self.reason = reason
        self.fields = fields
        self.body_at = body_at


def plan(cfg: DkimConfig, head: bytes) -> Plan:
    """Decide from the start of the message (the whole header block and the
    blank line, or more than MAX_HEADER bytes, or all of it): which keys sign.
    KeyProblem when a key exists but cannot be used."""
    parsed = split_header(head)
    if parsed is None:
        return Plan(
            [], "not signed: header block malformed, over 256 KiB or over 1000 fields", [], 0
        )
    fields, body_at = parsed
    if not any(name == "from" for name, _ in fields):
        return Plan([], "not signed: no From: header", fields, body_at)
    domains = signing_domains(fields)
    if not domains:
        return Plan([], "not signed: no domain in Sender: or From:", fields, body_at)
    keys: list[Key] = []
    primary = first_key(cfg.sign_template, domains)
    if primary is not None:
        keys.append(primary)
    if cfg.ed25519_template:
        second = first_key(cfg.ed25519_template, domains)
        if second is not None:
            keys.append(second)
    if not keys:
        where = ", ".join(key_candidates(cfg.sign_template, d)[0][0] for d in domains)
        return Plan([], f"not signed: no key for {' or '.join(domains)} ({where})", fields, 0)
    return Plan(keys, "", fields, body_at)


def sign(cfg: DkimConfig, message: bytes, decided: Plan | None = None) -> Outcome:
    """Sign an LF message as qmail-remote will send it (LF becomes CRLF on the
    wire). Returns the message to send; SignError (KeyProblem) when a key that
    exists cannot be used or signing fails. `decided` is plan() of its start."""
    todo = plan(cfg, message) if decided is None else decided
    if not todo.keys:
        return Outcome(message, False, todo.reason)
    fields, body = todo.fields, message[todo.body_at :]
    names = header_list(fields, sign_names(cfg))
    wire = wire_form(fields, body, names)  # (header fields, body), CRLF
    added: list[bytes] = []
    notes: list[str] = []
    for key in todo.keys:
        added.append(dkim_signature(key, *wire, names))
        notes.append(f"d={key.domain} s={key.selector} a={key.kind}-sha256")
    primary = todo.keys[0]
    # DomainKeys binds d= to the Sender: (else From:) domain: only its own key.
    if cfg.domainkeys and primary.kind == "rsa" and primary.first:
        import quarantine.auth.domainkeys as domainkeys

        key = primary
        added.append(domainkeys.signature(key.data, key.domain, key.selector, fields, body, names))
        notes.append(f"domainkeys d={primary.domain} s={primary.selector}")
    return Outcome(b"".join(added) + message, True, "signed " + ", ".join(notes))


def wire_form(
    fields: list[tuple[str, bytes]], body: bytes, names: list[str]
) -> tuple[bytes, bytes]:
    """The message as the receiver will see it (CRLF line ends), as (header,
    body), the header cut down to the fields the signature covers: the others
    do not enter the hash, and dkimpy then never parses a huge or odd
    unsigned header."""
    wanted = set(names)
    head = b"".join(
        raw if raw.endswith(b"\n") else raw + b"\n" for name, raw in fields if name in wanted
    )
    return head.replace(b"\n", b"\r\n"), body.replace(b"\n", b"\r\n")


def dkim_signature(key: Key, head: bytes, body: bytes, names: list[str]) -> bytes:
    """One DKIM-Signature field, relaxed/relaxed, folded with LF (qmail's
    queue format). dkimpy parses only the header; the body is given as the
    `body` it would have split into lines and joined again (identical bytes,
    a second and 100 MB less for a 50 MB message)."""
    from quarantine.auth.resolver import import_dkim

    dkim = import_dkim()

    algorithm = b"rsa-sha256" if key.kind == "rsa" else b"ed25519-sha256"
    try:
        signer = dkim.DKIM(head + b"\r\n", signature_algorithm=algorithm, linesep=b"\n")
        signer.body = body
        signer.should_not_sign = {n.encode() for n in NEVER_SIGNED}
        header = signer.sign(
            key.selector.encode("ascii", "replace"),
            key.domain.encode("ascii"),
            key.data,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[n.encode("ascii") for n in names],
        )
    except dkim.KeyFormatError as exc:
        raise KeyProblem(f"DKIM key {key.path}: {exc}") from None
    except dkim.DKIMException as exc:
        raise SignError(f"DKIM signing with {key.path} failed: {exc}") from None
    header = bytes(header)
    if not header.endswith(b"\n"):
        header += b"\n"
    return header.replace(b"\r\n", b"\n")


def sign_file(cfg: Config | DkimConfig, path: str) -> tuple[int, bytes]:
    """`quarantine sign FILE`: (0, the signed message as bytes, exactly what
    quarantine-remote would send) or (1, why it was not signed, one line). A
    file with CRLF line ends is read as LF, as qmail queues it."""
    dkim_cfg = cfg.dkim if isinstance(cfg, Config) else cfg
    try:
        with open(path, "rb") as handle:
            message = handle.read()
    except OSError as exc:
        return 1, f"{path}: cannot read: {exc.strerror}".encode()
    message = message.replace(b"\r\n", b"\n")
    try:
        outcome = sign(dkim_cfg, message)
    except SignError as exc:
        return 1, f"{path}: {exc.line()}".encode()
    if not outcome.signed:
        return 1, f"{path}: {outcome.reason}".encode()
    return 0, outcome.message
