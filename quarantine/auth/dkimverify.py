"""Verifying a message's DKIM-Signatures (RFC 6376, RFC 8301, RFC 8463) at a
bounded cost. dkimcore supplies the tag parser, the signature-field checks, the
header canonicalization and the RSA primitive as dkimpy has them; this module
adds what dkimpy leaves out: keys are judged before any arithmetic (RSA over 8192 bits, or with
an exponent that is not a small odd number, is a key error), the body is hashed
in chunks and once per canonicalization (memory stays near the message's own
size), header fields are found through one index (cost linear in the header),
and the RFC 6376 rules are applied: a signature without From in h= is ignored
(6.1.1), a t=s key binds i= to d= exactly (3.6.1), a key that cannot be
decoded is a key error, `Name : value` (obsolete syntax) is read as relaxed
canonicalization reads it, and q=, i= and key s= take the forms Mail::DKIM takes.
"""

from __future__ import annotations

import binascii
import re

from quarantine.auth import dkimcore
from quarantine.auth import resolver as dnsres
from quarantine.auth.budget import Exhausted
from quarantine.verdict import PARTIAL

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from quarantine.auth.budget import Budget

MAX_SIGNATURES = 8  # verified per message; RFC 6376 §6.1 lets a verifier limit them
MAX_SIGNED_FIELDS = 200  # names in one h=
MIN_RSA_BITS = 1024  # RFC 8301 §3.2
MAX_RSA_BITS = 8192  # beyond it the arithmetic is an attacker's lever (RFC 8301 asks for 1024-4096)
MAX_EXPONENT_BITS = 64  # OpenSSL's bound for moduli over 3072 bits (RSA_MAX_PUBEXP_BITS)
CHUNK = 1 << 16  # body bytes canonicalized at a time
_QP = re.compile(rb"=([0-9A-Fa-f]{2})")
_SAFE_TOKEN = re.compile(rb"[^A-Za-z0-9._+@=/-]")
_H_SPLIT = re.compile(rb"\s*:\s*")
_LINE_END = re.compile(rb"\r?\n")
_NOT_SPACE = re.compile(rb"[^ \t\r]")


class DkimResult:
    """One DKIM-Signature's outcome: RFC 8601 result, DKVERIFY letter, why.
    `partial`: it passed over a body cut at l=; `exhausted`: it was not
    verified because the message's budget ran out (a temporary condition)."""

    __slots__ = ("b", "domain", "exhausted", "letter", "partial", "reason", "result", "selector")

    def __init__(
        self,
        result: str,
        letter: str,
        reason: str = "",
        domain: str = "",
        selector: str = "",
        b: str = "",
    ) -> None:
        self.result = result
        self.letter = letter
        self.reason = reason
        self.domain = domain
        self.selector = selector
        self.b = b
        self.partial = False
        self.exhausted = False

    def __repr__(self) -> str:
        return f"DkimResult({self.result!r}, {self.letter!r}, {self.reason!r}, d={self.domain!r})"


def exhausted_result(reason: str, domain: str = "", selector: str = "", b: str = "") -> DkimResult:
    """A signature left unverified because the budget ran out."""
    res = DkimResult("temperror", "K", f"not verified: {reason}", domain, selector, b)
    res.exhausted = True
    return res


def b64(value: bytes) -> bytes:
    """A base64 tag value (b=, bh=, p=) with its folding white space removed,
    decoded; ValueError when it is not base64."""
    return dkimcore.base64_strict(re.sub(rb"\s+", b"", value))


def token(raw: bytes, limit: int = 253) -> str:
    """A header property value from message data: safe characters only."""
    return _SAFE_TOKEN.sub(b"", raw)[:limit].decode("ascii")


# --- header fields -----------------------------------------------------------


class Fields:
    """The raw header fields of a message (as `message.header_fields` gives
    them) with an index from lower-case name to positions, built only for the
    names asked for (`want`): selecting the fields of an h= list then costs
    one dictionary lookup per name, and a header of 100,000 distinct names
    costs no 100,000 index entries. A name followed by spaces before its
    colon (RFC 5322 obsolete syntax) is indexed without them, as Mail::DKIM
    and OpenDKIM read it."""

    __slots__ = ("done", "index", "raw")

    def __init__(self, raw: list[bytes]) -> None:
        self.raw = raw
        self.index: dict[bytes, list[int]] = {}
        self.done: set[bytes] = set()  # names indexed so far

    def want(self, names: Iterable[bytes]) -> None:
        """Index `names` (lower case): one pass over the fields for all the
        names not indexed yet."""
        new = set(names) - self.done
        if not new:
            return
        self.done |= new
        for position, field in enumerate(self.raw):
            name = field_key(field)
            if name in new:
                self.index.setdefault(name, []).append(position)

    def named(self, name: bytes) -> list[int]:
        """Positions of the fields called `name` (lower case), top to bottom."""
        self.want((name,))
        return self.index.get(name, [])

    def select(self, names: list[bytes]) -> list[int]:
        """RFC 6376 §5.4.2: for each name in turn the lowest instance not yet
        taken; a name with no instance left selects nothing."""
        self.want(names)
        taken: dict[bytes, int] = {}
        out: list[int] = []
        for name in names:
            positions = self.index.get(name)
            used = taken.get(name, 0)
            if positions and used < len(positions):
                out.append(positions[-1 - used])
                taken[name] = used + 1
        return out

    def pair(self, position: int) -> tuple[bytes, bytes]:
        """(name as written, value with CRLF line ends) for canonicalization."""
        raw = self.raw[position]
        colon = raw.find(b":")
        value = _LINE_END.sub(b"\r\n", raw[colon + 1 :])
        return raw[:colon], value if value.endswith(b"\n") else value + b"\r\n"


def field_key(raw: bytes) -> bytes | None:
    """A field's name in lower case, spaces before the colon dropped; None
    for a line that is no header field (an mbox From_ line, junk)."""
    colon = raw.find(b":")
    if colon <= 0:
        return None
    name = raw[:colon].rstrip(b" \t")
    if not name or any(byte < 33 or byte > 126 for byte in name):
        return None
    return name.lower()


# --- the body ------------------------------------------------------------------


BODY_FORMS = ("simple", "relaxed", "dk-simple", "dk-nofws")


def body_hash(message: bytes, start: int, form: str, algorithm: str, limit: int | None) -> bytes:
    """The digest of the body `message[start:]` in canonical `form`, cut at
    `limit` bytes of it (l=); see `hash_body`."""
    hasher = dkimcore.new_hash(algorithm, len(message) - start)
    hash_body(hasher, message, start, form, limit)
    digest: bytes = hasher.digest()
    return digest


def hash_body(hasher: Any, message: bytes, start: int, form: str, limit: int | None) -> None:
    """Feed `hasher` the body `message[start:]` (LF or CRLF line ends) in
    canonical `form`: DKIM's `simple` or `relaxed` (RFC 6376 §3.4.3/3.4.4),
    or DomainKeys' `dk-simple` / `dk-nofws` (RFC 4870 §3.4, as Mail::DKIM
    reads it: the empty line that ends the header first, spaces and tabs
    removed by nofws, and no line end added to a last line without one).
    Trailing empty lines are dropped in every form.

    Worked in chunks that end after a byte that is neither a space, a tab nor
    CR, so no run of white space and no CRLF is split; empty lines are held
    back until content follows them. Memory stays one chunk above the
    message (a single run of white space is the only chunk that can be long)."""
    view = memoryview(message)
    end = len(message)
    relaxed = form == "relaxed"
    nofws = form == "dk-nofws"
    domainkeys = form.startswith("dk-")
    left = limit  # canonical bytes still to hash under l=
    pending = 1 if domainkeys else 0  # empty lines held back
    line_open = False  # content emitted whose line end is still to come
    anything = False

    def emit(data: bytes) -> None:
        nonlocal left, anything
        anything = True
        if left is not None:
            data = data[:left]
            left -= len(data)
        hasher.update(data)

    def emit_line_ends(count: int) -> None:
        block = b"\r\n" * min(count, CHUNK)
        while count > 0 and (left is None or left > 0):
            emit(block[: 2 * min(count, CHUNK)])
            count -= CHUNK

    pos = start
    while pos < end and (left is None or left > 0):
        cut = _chunk_end(message, pos, end)
        text = _LINE_END.sub(b"\r\n", view[pos:cut])
        pos = cut
        if relaxed:
            text = re.sub(rb"[ \t]+\r\n", b"\r\n", text)
            text = re.sub(rb"[ \t]+", b" ", text)
        elif nofws:
            text = text.translate(None, b" \t")
        ends = _trailing_line_ends(text)
        content = len(text) - 2 * ends
        if content == 0:
            if line_open and ends:
                emit(b"\r\n")
                line_open = False
                ends -= 1
            pending += ends
            continue
        if pending:
            emit_line_ends(pending)
        if ends:
            emit(text[: content + 2])
            pending, line_open = ends - 1, False
        else:
            emit(text)
            pending, line_open = 0, True
    if domainkeys:
        return  # a last line keeps what it had; an empty body is empty
    if line_open:
        emit(b"\r\n")  # a last line without its line end gets one
    elif not anything and not relaxed:
        emit(b"\r\n")  # simple: an empty body is one CRLF; relaxed: nothing


def _chunk_end(message: bytes, pos: int, end: int) -> int:
    """Where the chunk starting at `pos` ends: after the first byte, at least
    CHUNK bytes on, that is not a space, tab or CR (or at the end)."""
    probe = pos + CHUNK
    while probe < end:
        if message[probe - 1] not in (32, 9, 13):
            return probe
        match = _NOT_SPACE.search(message, probe)
        if match is None:
            return end
        probe = match.end()
    return end


def _trailing_line_ends(text: bytes) -> int:
    """How many CRLF pairs end `text` (canonical, so every LF follows a CR).
    A CR before them that is no line end is content (`x\\r\\r\\n`)."""
    run = len(text) - len(text.rstrip(b"\r\n"))
    if not run or not text.endswith(b"\n"):
        return 0
    tail = text[len(text) - run :]
    doubled = tail.rfind(b"\r\r")
    if doubled >= 0:
        return (len(tail) - doubled - 1) // 2
    return len(tail) // 2


# --- keys ----------------------------------------------------------------------


class PublicKey:
    """A key record judged usable: RSA (modulus, exponent) or ed25519 (32
    bytes), with its t= flags."""

    __slots__ = ("ed25519", "exponent", "kind", "modulus", "strict", "testing")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.modulus = 0
        self.exponent = 0
        self.ed25519 = b""
        self.testing = False  # t=y
        self.strict = False  # t=s: i= must be in d= itself, not a subdomain


class KeyProblem(Exception):
    """The key record cannot verify this signature: DKVERIFY letter and reason."""

    def __init__(self, letter: str, reason: str) -> None:
        super().__init__(reason)
        self.letter = letter
        self.reason = reason


def read_key(record: bytes, algorithm: bytes) -> PublicKey:
    """The key in a `._domainkey` TXT record, checked against the signature's
    algorithm before any arithmetic (RFC 6376 §3.6.1, RFC 8301, RFC 8463)."""
    try:
        tags = dkimcore.parse_tag_value(record)
    except dkimcore.InvalidTagValueList:
        raise KeyProblem("G", "unparsable key record") from None
    if b"v" in tags and tags[b"v"] != b"DKIM1":
        raise KeyProblem("G", "key record version is not DKIM1")
    if b"p" not in tags:
        raise KeyProblem("G", "key record has no p=")
    data = re.sub(rb"\s+", b"", tags[b"p"])
    if not data:
        raise KeyProblem("I", "key revoked (empty p=)")
    kind = tags.get(b"k", b"rsa").strip()
    if kind not in (b"rsa", b"ed25519"):
        raise KeyProblem("M", "unknown key type")
    if algorithm.split(b"-")[0] != kind:
        raise KeyProblem("Q", "signature algorithm does not match the key type")
    if b"h" in tags:
        allowed = [h.strip() for h in tags[b"h"].split(b":")]
        if algorithm.split(b"-")[-1] not in allowed:
            raise KeyProblem("Q", "key h= does not allow the signature's hash")
    if b"s" in tags:
        services = [s.strip() for s in tags[b"s"].split(b":")]
        if b"*" not in services and b"email" not in services:
            raise KeyProblem("G", "key s= does not allow email")
    try:
        der = dkimcore.base64_strict(data)
    except (binascii.Error, ValueError):
        raise KeyProblem("M", "key p= is not base64") from None
    key = PublicKey(kind.decode())
    flags = [f.strip() for f in tags.get(b"t", b"").split(b":")]
    key.testing = b"y" in flags
    key.strict = b"s" in flags
    if kind == b"ed25519":
        if len(der) != 32:
            raise KeyProblem("M", f"ed25519 key of {len(der)} bytes, not 32")
        key.ed25519 = der
        return key
    key.modulus, key.exponent = rsa_numbers(der, "M")
    return key


def rsa_numbers(der: bytes, letter: str) -> tuple[int, int]:
    """(modulus, exponent) of a DER RSA public key (SubjectPublicKeyInfo or
    bare RSAPublicKey), judged before any arithmetic: KeyProblem(`letter`)
    when it cannot be decoded, is under MIN_RSA_BITS or over MAX_RSA_BITS,
    or its exponent is not a small odd number."""
    try:
        modulus, exponent = dkimcore.parse_public_key(der)
    except Exception:  # any undecodable DER is the same key error
        raise KeyProblem(letter, "RSA key cannot be decoded") from None
    bits = modulus.bit_length()
    if bits < MIN_RSA_BITS:
        raise KeyProblem(letter, f"RSA key of {bits} bits, under {MIN_RSA_BITS} (RFC 8301)")
    if bits > MAX_RSA_BITS:
        raise KeyProblem(letter, f"RSA key of {bits} bits, over {MAX_RSA_BITS}: not used")
    if exponent < 3 or not exponent & 1 or exponent.bit_length() > MAX_EXPONENT_BITS:
        raise KeyProblem(letter, "RSA exponent is not a small odd number: not used")
    return modulus, exponent


def rsa_verify(modulus: int, exponent: int, hasher: Any, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 (as dkimpy has it), after RFC 8017 §8.2.2's length check."""
    if len(signature) != (modulus.bit_length() + 7) // 8:
        return False
    return dkimcore.rsa_verify(modulus, exponent, hasher, signature)


def _signature_ok(key: PublicKey, hasher: Any, signature: bytes) -> bool:
    if key.kind == "ed25519":
        import nacl.exceptions
        import nacl.signing

        try:
            nacl.signing.VerifyKey(key.ed25519).verify(hasher.digest(), signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True
    return rsa_verify(key.modulus, key.exponent, hasher, signature)


# --- one signature ---------------------------------------------------------------


class Message:
    """What every signature of one message is checked against: the message,
    where its body starts, its indexed header fields, the key lookup, the
    budget, and the body digests already computed."""

    def __init__(
        self,
        message: bytes,
        body_start: int,
        fields: Fields,
        dnsfunc: Callable[..., bytes],
        budget: Budget | None = None,
    ) -> None:
        self.message = message
        self.body_start = body_start
        self.fields = fields
        self.dnsfunc = dnsfunc
        self.budget = budget
        self.digests: dict[tuple[str, str, int | None], bytes] = {}

    def body_digest(self, form: str, algorithm: str, limit: int | None) -> bytes:
        key = (form, algorithm, limit)
        if key not in self.digests:
            self.digests[key] = body_hash(self.message, self.body_start, form, algorithm, limit)
        return self.digests[key]


def verify_all(msg: Message) -> list[DkimResult]:
    """Every DKIM-Signature, top to bottom (the first MAX_SIGNATURES). Once
    the budget is spent, the rest are `exhausted_result`s."""
    results: list[DkimResult] = []
    positions = msg.fields.named(b"dkim-signature")[:MAX_SIGNATURES]
    names = {b"from"}  # every field any signature may select, indexed in one pass
    for position in positions:
        tags = _tags(msg.fields.raw[position]) or {}
        names.update(
            n.strip().lower() for n in _H_SPLIT.split(tags.get(b"h", b""))[:MAX_SIGNED_FIELDS]
        )
    msg.fields.want(names)
    for position in positions:
        raw = msg.fields.raw[position]
        try:
            if msg.budget is not None:
                msg.budget.check()
            results.append(verify_one(msg, raw))
        except Exhausted as exc:
            results.append(_unverified(raw, exc.reason))
        except MemoryError:
            reason = msg.budget.out_of_memory().reason if msg.budget else "out of memory"
            results.append(_unverified(raw, reason))
        except Exception as exc:  # input no check above foresaw: not a crash
            results.append(DkimResult("permerror", "C", f"unverifiable: {type(exc).__name__}"))
    return results


def _unverified(raw: bytes, reason: str) -> DkimResult:
    tags = _tags(raw) or {}
    return exhausted_result(
        reason,
        token(tags.get(b"d", b"")),
        token(tags.get(b"s", b""), 63),
        token(re.sub(rb"\s+", b"", tags.get(b"b", b"")), 12),
    )


def _tags(raw: bytes) -> dict[bytes, bytes] | None:
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    try:
        tags = dkimcore.parse_tag_value(_LINE_END.sub(b"", value))
    except dkimcore.InvalidTagValueList:
        return None
    return tags


def verify_one(msg: Message, raw: bytes) -> DkimResult:
    """One DKIM-Signature field: its result and DKVERIFY letter."""
    sig = _tags(raw)
    if sig is None:
        return DkimResult("permerror", "C", "bad signature syntax")
    res = DkimResult(
        "permerror",
        "C",
        domain=token(sig.get(b"d", b"")),
        selector=token(sig.get(b"s", b""), 63),
        b=token(re.sub(rb"\s+", b"", sig.get(b"b", b"")), 12),
    )
    try:
        _check_fields(sig)
    except KeyProblem as exc:
        res.letter, res.reason = exc.letter, exc.reason
        return res
    names = [n.strip().lower() for n in _H_SPLIT.split(sig[b"h"])]
    algorithm = sig[b"a"]
    domain = sig[b"d"].lower()
    try:
        record = msg.dnsfunc(sig[b"s"] + b"._domainkey." + sig[b"d"])
    except dnsres.DnsTempError:
        res.result, res.letter, res.reason = "temperror", "K", "key lookup failed"
        return res
    if not record:
        res.letter, res.reason = "L", "no key record"
        return res
    try:
        key = read_key(record, algorithm)
        identity = _identity_domain(sig)
        if key.strict and identity is not None and identity != domain:
            raise KeyProblem("G", "key t=s: i= must be in d= itself, not a subdomain")
    except KeyProblem as exc:
        res.letter, res.reason = exc.letter, exc.reason
        return res
    header_form, body_form = dkimcore.canonicalization(sig.get(b"c"))
    hash_name = algorithm.split(b"-")[-1].decode()
    limit = int(sig[b"l"]) if b"l" in sig else None
    digest = msg.body_digest(body_form, hash_name, limit)
    if digest != b64(sig[b"bh"]):
        res.result = "fail"
        res.letter = "E" if key.testing else "P"
        res.reason = "body hash mismatch"
        return res
    hasher = dkimcore.new_hash(hash_name, msg.body_start)
    fields = msg.fields
    # The From fields one more time than h= names them (dkimpy's rule too): a
    # From added above the signed one breaks the signature.
    for position in fields.select([*names, b"from"]):
        hasher.update(dkimcore.canonical_header(header_form, *fields.pair(position)))
    colon = raw.find(b":")
    own = dkimcore.RE_BTAG.sub(b"\\1", _LINE_END.sub(b"\r\n", raw[colon + 1 :]))
    hasher.update(dkimcore.canonical_header(header_form, raw[:colon], own).rstrip())
    signature = b64(sig[b"b"])
    if _signature_ok(key, hasher, signature):
        res.result, res.letter, res.reason = "pass", "A", ""
        if limit is not None:
            res.partial = True
            res.reason = f"{PARTIAL}: l={limit}"
    else:
        res.result = "fail"
        res.letter = "E" if key.testing else "D"
        res.reason = "signature did not verify"
    return res


def _check_fields(sig: dict[bytes, bytes]) -> None:
    """The signature's own tags (RFC 6376 §3.5, §6.1.1); KeyProblem with the
    DKVERIFY letter otherwise. q= and i= are checked here, not by dkimpy: q=
    may list several methods, i= is dkim-quoted-printable."""
    checked = {k: v for k, v in sig.items() if k not in (b"q", b"i")}
    try:
        dkimcore.validate_signature_fields(checked)
    except dkimcore.ValidationError as exc:
        text = str(exc)
        letter = "C"
        if "x= value is past" in text:
            letter = "F"
        elif "unknown signature algorithm" in text:
            letter = "Q"
        elif "v= value" in text:
            letter = "R"
        raise KeyProblem(letter, text) from None
    if b"q" in sig and b"dns/txt" not in [m.strip().lower() for m in sig[b"q"].split(b":")]:
        raise KeyProblem("C", "q= names no dns/txt query method")
    identity = _identity_domain(sig)
    domain = sig[b"d"].lower()
    if identity is not None and identity != domain and not identity.endswith(b"." + domain):
        raise KeyProblem("C", "i= is not in d= or a subdomain of it")
    names = _H_SPLIT.split(sig[b"h"].strip())
    if len(names) > MAX_SIGNED_FIELDS:
        raise KeyProblem("C", f"more than {MAX_SIGNED_FIELDS} signed header fields")
    if b"from" not in [n.strip().lower() for n in names]:
        raise KeyProblem("C", "From is not signed: signature ignored (RFC 6376 6.1.1)")
    if sig[b"a"] == b"rsa-sha1":
        raise KeyProblem("Q", "rsa-sha1 is not acceptable (RFC 8301)")
    if len(sig[b"d"]) > 253:
        raise KeyProblem("J", "domain too long")
    try:
        dkimcore.canonicalization(sig.get(b"c"))
    except dkimcore.InvalidCanonicalization:
        raise KeyProblem("C", "unknown c= canonicalization") from None


def _identity_domain(sig: dict[bytes, bytes]) -> bytes | None:
    """The domain part of i= (dkim-quoted-printable decoded), lower case;
    None without i= (then it is d=)."""
    if b"i" not in sig:
        return None
    identity = _QP.sub(lambda m: bytes((int(m.group(1), 16),)), sig[b"i"])
    if b"@" not in identity:
        return b""
    return identity.rpartition(b"@")[2].lower()
