"""What verifying a DKIM-Signature needs beyond the message, written to give
dkimpy 1.1's results and messages (tag=value lists, the signature-field checks,
c= and header canonicalization, DER RSA keys, RSASSA-PKCS1-v1_5, the b= tag
rule), so that `quarantine-queue` need not import dkimpy (and with it logging,
about 10 ms) for each signed message. dkimpy still signs, and verifies ARC.
"""

from __future__ import annotations

import binascii
import re
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Message bodies above this are hashed by OpenSSL (hashlib), smaller ones by
# the interpreter's built-in SHA code: loading OpenSSL costs about as much as
# hashing half a megabyte the slower way.
BUILTIN_HASH_LIMIT = 512 * 1024

HASH_NAMES = {b"rsa-sha1": "sha1", b"rsa-sha256": "sha256", b"ed25519-sha256": "sha256"}

# RFC 5322 folding white space, and dkimpy's b= rule for the signature's own field.
FWS = rb"(?:(?:\s*\r?\n)?\s+)?"
RE_BTAG = re.compile(rb"([;\s]b" + FWS + rb"=)(?:" + FWS + rb"[a-zA-Z0-9+/=])*(?:\r?\n\Z)?")
_TAG_NAME = re.compile(rb"^[a-zA-Z](\w)*")  # a prefix match, as dkimpy does it
_BASE64ISH = re.compile(rb"[\s0-9A-Za-z+/]+[\s=]*$")
_SPACES = re.compile(rb"\s+")
_SPECIALS = re.compile(rb"[\(\)<>\[\]:;@\\,]")
_DIGITS = re.compile(rb"\d+$")
_LENGTH = re.compile(rb"\d{,76}$")
_WSP_RUN = re.compile(rb"[\t ]+")
_LINE_BREAK = re.compile(rb"\r?\n")
CLOCK_SLOP = 36000  # dkimpy's 10 hours for senders with inaccurate clocks


class InvalidTagValueList(Exception):
    """A tag=value list that is not one (a spec without `=`, a bad name, a tag twice)."""


class ValidationError(Exception):
    """A DKIM-Signature whose tags fail the checks (dkimpy's messages)."""


class InvalidCanonicalization(Exception):
    """A c= value naming no known canonicalization."""


class KeyFormatError(Exception):
    """DER that is no RSA public key."""


def base64_strict(value: bytes) -> bytes:
    """base64.b64decode(value, validate=True), without importing base64."""
    return binascii.a2b_base64(value, strict_mode=True)


def parse_tag_value(tag_list: bytes) -> dict[bytes, bytes]:
    """RFC 6376 §3.2 tag=value list (folding white space already removed)."""
    tags: dict[bytes, bytes] = {}
    specs = tag_list.strip().split(b";")
    if not specs[-1]:
        specs.pop()  # a trailing semicolon is allowed
    for spec in specs:
        key, eq, value = spec.partition(b"=")
        if not eq:
            raise InvalidTagValueList(spec)
        key, value = key.strip(), value.strip()
        if _TAG_NAME.match(key) is None:
            raise InvalidTagValueList(spec)
        if key in tags:
            raise InvalidTagValueList(key)
        tags[key] = value
    return tags


def validate_signature_fields(sig: dict[bytes, bytes], now: float | None = None) -> None:
    """A DKIM-Signature's tags checked as dkimpy's validate_signature_fields
    checks them (its texts too: callers map them to DKVERIFY letters), but for
    q= and i=, which the caller checks in the forms Mail::DKIM takes."""
    for name in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
        if name not in sig:
            raise ValidationError(f"missing {name!r}=")
    if sig[b"a"] not in HASH_NAMES:
        raise ValidationError(f"unknown signature algorithm: {sig[b'a']!r}")
    if _BASE64ISH.match(sig[b"b"]) is None or len(_SPACES.sub(b"", sig[b"b"])) % 4:
        raise ValidationError(f"b= value is not valid base64 ({sig[b'b']!r})")
    # dkimpy matches b= here where bh= is meant; the length test is bh='s own.
    if _BASE64ISH.match(sig[b"b"]) is None or len(_SPACES.sub(b"", sig[b"bh"])) % 4:
        raise ValidationError(f"bh= value is not valid base64 ({sig[b'bh']!r})")
    if sig[b"d"].isascii() and _SPECIALS.search(sig[b"d"]):
        raise ValidationError(f"d= value is not valid ({sig[b'd']!r})")
    if b"l" in sig and _LENGTH.match(sig[b"l"]) is None:
        raise ValidationError(f"l= value is not a decimal integer ({sig[b'l']!r})")
    clock = int(time.time() if now is None else now)
    signed = None
    if b"t" in sig:
        if _DIGITS.match(sig[b"t"]) is None:
            raise ValidationError(f"t= value is not a decimal integer ({sig[b't']!r})")
        signed = int(sig[b"t"])
        if signed > clock + CLOCK_SLOP:
            raise ValidationError(f"t= value is in the future ({sig[b't']!r})")
    if sig[b"v"] != b"1":
        raise ValidationError(f"v= value is not 1 ({sig[b'v']!r})")
    if b"x" in sig:
        if _DIGITS.match(sig[b"x"]) is None:
            raise ValidationError(f"x= value is not a decimal integer ({sig[b'x']!r})")
        expires = int(sig[b"x"])
        if expires < clock - CLOCK_SLOP:
            raise ValidationError(f"x= value is past ({sig[b'x']!r})")
        if signed and expires < signed:
            raise ValidationError(
                f"x= value is less than t= value (x={sig[b'x']!r} t={sig[b't']!r})"
            )


# --- canonicalization (RFC 6376 §3.4) ---------------------------------------


def canonicalization(c: bytes | None) -> tuple[str, str]:
    """(header form, body form) of a c= value: `simple` or `relaxed` each."""
    parts = (c if c is not None else b"simple/simple").split(b"/")
    if len(parts) not in (1, 2):
        raise InvalidCanonicalization(c)
    if len(parts) == 1:
        parts.append(b"simple")
    if not all(part in (b"simple", b"relaxed") for part in parts):
        raise InvalidCanonicalization(c)
    return parts[0].decode(), parts[1].decode()


def canonical_header(form: str, name: bytes, value: bytes) -> bytes:
    """One header field, `name:value` (value with its CRLF), in `form`."""
    if form == "simple":
        return name + b":" + value
    value = _WSP_RUN.sub(b" ", _LINE_BREAK.sub(b"", value)).strip()
    return name.lower().rstrip() + b":" + value + b"\r\n"


# --- RSA ----------------------------------------------------------------------

_SEQUENCE, _INTEGER, _BIT_STRING, _NULL, _OID = 0x30, 0x02, 0x03, 0x05, 0x06
_SPKI = ((_SEQUENCE, ((_SEQUENCE, ((_OID, ()), (_NULL, ()))), (_BIT_STRING, ()))),)
_RSA_PUBLIC = ((_SEQUENCE, ((_INTEGER, ()), (_INTEGER, ()))),)


def _der(template: tuple[tuple[int, tuple[Any, ...]], ...], data: bytes) -> list[Any]:
    """dkimpy's asn1_parse: the values `template` names, in order, with its
    leniency kept (trailing bytes ignored, only an INTEGER's truncation noticed)."""
    out: list[Any] = []
    i = 0
    try:
        for tag, inner in template:
            if data[i] != tag:
                raise KeyFormatError(f"unexpected tag {data[i]:02x}, expecting {tag:02x}")
            length = data[i + 1]
            i += 2
            if length & 0x80:
                count, length = length & 0x7F, 0
                for _ in range(count):
                    length = (length << 8) | data[i]
                    i += 1
            if tag == _INTEGER:
                if i + length > len(data):
                    raise IndexError
                out.append(int.from_bytes(data[i : i + length], "big"))
            elif tag == _NULL:
                if length:
                    raise KeyFormatError("NULL with content")
                out.append(None)
                continue
            elif tag == _SEQUENCE:
                out.append(_der(inner, data[i : i + length]))
            else:
                out.append(data[i : i + length])
            i += length
    except IndexError:
        raise KeyFormatError(f"data truncated at byte {i}") from None
    return out


def parse_public_key(der: bytes) -> tuple[int, int]:
    """(modulus, exponent) of a SubjectPublicKeyInfo or a bare RSAPublicKey."""
    try:
        spki = _der(_SPKI, der)
        numbers = _der(_RSA_PUBLIC, spki[0][1][1:])  # after the unused-bits byte
    except KeyFormatError:
        numbers = _der(_RSA_PUBLIC, der)
    return numbers[0][0], numbers[0][1]


# RFC 8017 §9.2, note 1: the DigestInfo prefix of each hash.
_DIGEST_INFO = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
}


def rsa_verify(modulus: int, exponent: int, hasher: Any, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 verification (RFC 8017 §8.2.2) of `hasher`'s digest."""
    length = (modulus.bit_length() + 7) // 8
    digest: bytes = hasher.digest()
    info = _DIGEST_INFO[hasher.name.lower()] + digest
    if len(info) + 11 > length:
        return False
    expected = b"\x00\x01" + b"\xff" * (length - len(info) - 3) + b"\x00" + info
    value = pow(int.from_bytes(signature, "big"), exponent, modulus)
    return value.to_bytes(length, "big") == expected


# --- hashes -------------------------------------------------------------------


def new_hash(name: str, size: int = 0) -> Any:
    """A sha1 or sha256 object for hashing about `size` bytes: the built-in
    implementation when small (no OpenSSL load), hashlib's otherwise."""
    if size <= BUILTIN_HASH_LIMIT:
        for module in (f"_{name}", "_sha2"):  # Python 3.11, 3.12+
            try:
                return getattr(__import__(module), name)()
            except (ImportError, AttributeError):
                continue
    import hashlib

    return hashlib.new(name)
