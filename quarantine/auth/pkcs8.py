"""PKCS#8 private keys (`BEGIN PRIVATE KEY`) read with the standard library
alone, for the mail path: the RSA key inside as a PKCS#1 PEM (what dkimpy
loads), or the ed25519 seed in base64 (dkimpy's ed25519 form).
"""

from __future__ import annotations

import base64
import binascii

RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 rsaEncryption
ED25519_OID = bytes.fromhex("2b6570")  # 1.3.101.112 id-Ed25519
MAX_DER = 64 * 1024

BEGIN = b"-----BEGIN PRIVATE KEY-----"
END = b"-----END PRIVATE KEY-----"


class NotPkcs8(ValueError):
    """The bytes are not an unencrypted PKCS#8 RSA or ed25519 private key."""


def _item(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER item at `pos`."""
    if pos + 2 > len(data):
        raise NotPkcs8("DER item cut short")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 0 < count <= 3 or pos + count > len(data):
            raise NotPkcs8("DER length out of range")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise NotPkcs8("DER value runs past the data")
    return tag, pos, pos + length


def _items(data: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    """The (tag, value) items between `start` and `end`."""
    out: list[tuple[int, bytes]] = []
    pos = start
    while pos < end:
        tag, value_start, value_end = _item(data, pos)
        if value_end > end:
            raise NotPkcs8("DER item runs past its container")
        out.append((tag, data[value_start:value_end]))
        pos = value_end
    return out


def pem_body(pem: bytes) -> bytes:
    """The DER inside a `BEGIN PRIVATE KEY` PEM."""
    text = pem.replace(b"\r\n", b"\n").strip()
    if not text.startswith(BEGIN) or END not in text:
        raise NotPkcs8("not a PKCS#8 PEM")
    inner = text[len(BEGIN) : text.index(END)]
    try:
        der = base64.b64decode(b"".join(inner.split()), validate=True)
    except (binascii.Error, ValueError):
        raise NotPkcs8("PEM body is not base64") from None
    if not der or len(der) > MAX_DER:
        raise NotPkcs8("PEM body empty or too large")
    return der


def unwrap(pem: bytes) -> tuple[str, bytes]:
    """("rsa", PKCS#1 PEM) or ("ed25519", base64 seed) for a PKCS#8 PEM."""
    der = pem_body(pem)
    tag, start, end = _item(der, 0)
    if tag != 0x30 or end != len(der):
        raise NotPkcs8("not a DER SEQUENCE")
    parts = _items(der, start, end)
    if len(parts) < 3 or parts[0][0] != 0x02 or parts[1][0] != 0x30 or parts[2][0] != 0x04:
        raise NotPkcs8("not a PrivateKeyInfo (version, algorithm, key)")
    algorithm = _items(parts[1][1], 0, len(parts[1][1]))
    if not algorithm or algorithm[0][0] != 0x06:
        raise NotPkcs8("no algorithm identifier")
    oid, key = algorithm[0][1], parts[2][1]
    if oid == RSA_OID:
        lines = [base64.b64encode(key[i : i + 48]) for i in range(0, len(key), 48)]
        body = b"\n".join(lines)
        return (
            "rsa",
            b"-----BEGIN RSA PRIVATE KEY-----\n" + body + b"\n-----END RSA PRIVATE KEY-----\n",
        )
    if oid == ED25519_OID:
        tag, seed_start, seed_end = _item(key, 0)
        if tag != 0x04 or seed_end - seed_start != 32:
            raise NotPkcs8("ed25519 key is not a 32-byte string")
        return "ed25519", base64.b64encode(key[seed_start:seed_end])
    raise NotPkcs8("neither an RSA nor an ed25519 key")
