"""Legacy DomainKeys signing (RFC 4870: rsa-sha1, `nofws` canonicalization),
for sites whose partners still check DomainKey-Signature. dkimpy has no
DomainKeys, so the canonicalization is here and the RSA step is dkimpy's.
"""

from __future__ import annotations

import base64
import hashlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.auth.sign import Key


def canonical(fields: list[tuple[str, bytes]], body: bytes, names: list[str]) -> bytes:
    """What is hashed, as the receiver sees the message (CRLF line ends): the
    fields named in h= grouped in h= order, each with every space, tab, CR and
    LF removed plus CRLF; then the blank line and the body with spaces and
    tabs removed, trailing empty lines dropped."""
    out: list[bytes] = []
    for name in names:
        for field_name, raw in fields:
            if field_name == name:
                out.append(raw.translate(None, b" \t\r\n") + b"\r\n")
    if body and not body.endswith(b"\n"):
        body += b"\n"  # qmail-remote ends the last line
    text = (b"\n" + body).replace(b"\n", b"\r\n").translate(None, b" \t")
    # A CR not before LF (a CR inside a line; a LF is always after CR here).
    text = text.replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")
    text = text.rstrip(b"\r\n")
    if text:
        out.append(text + b"\r\n")
    return b"".join(out)


def signature(key: Key, fields: list[tuple[str, bytes]], body: bytes, signed: list[str]) -> bytes:
    """The DomainKey-Signature field (LF line ends), placed directly above the
    original header so that every original field follows it (RFC 4870 signs
    only fields after the signature)."""
    from quarantine.auth.resolver import import_dkim

    import_dkim()  # dkimpy as this package loads it (see there), before dkim.crypto
    from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key

    names: list[str] = []
    for name, _ in fields:
        if name in signed and name not in names:
            names.append(name)
    digest = hashlib.sha1(canonical(fields, body, names))  # noqa: S324 (RFC 4870 is SHA-1)
    value = base64.b64encode(RSASSA_PKCS1_v1_5_sign(digest, parse_pem_private_key(key.data)))
    folded = b"\n\t".join(value[i : i + 72] for i in range(0, len(value), 72))
    return b"DomainKey-Signature: a=rsa-sha1; c=nofws; d=%s; s=%s; q=dns;\n\th=%s;\n\tb=%s\n" % (
        key.domain.encode(),
        key.selector.encode(),
        ":".join(names).encode(),
        folded,
    )
