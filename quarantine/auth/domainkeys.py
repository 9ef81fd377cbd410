"""DomainKeys (RFC 4870, historic: rsa-sha1, `simple` or `nofws`), both
ways: the legacy DomainKey-Signature for sites whose partners still check it,
and the verification of the topmost one in incoming mail, with the header
selection, the signing identity and the canonicalization Perl Mail::DKIM uses.
dkimpy has no DomainKeys, so this is here; the RSA step is dkimpy's when
signing, dkimcore's (the same arithmetic) when verifying.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def nofws_line(raw: bytes) -> bytes:
    """One header field as `nofws` presents it: every space, tab, CR and LF
    removed, then CRLF."""
    return raw.translate(None, b" \t\r\n") + b"\r\n"


def canonical(fields: list[tuple[str, bytes]], body: bytes, names: list[str]) -> bytes:
    """What is hashed, as the receiver sees the message (CRLF line ends): the
    fields named in h= grouped in h= order, each with every space, tab, CR and
    LF removed plus CRLF; then the blank line and the body with spaces and
    tabs removed, trailing empty lines dropped."""
    out: list[bytes] = []
    for name in names:
        for field_name, raw in fields:
            if field_name == name:
                out.append(nofws_line(raw))
    if body and not body.endswith(b"\n"):
        body += b"\n"  # qmail-remote ends the last line
    text = (b"\n" + body).replace(b"\n", b"\r\n").translate(None, b" \t")
    # A CR not before LF (a CR inside a line; a LF is always after CR here).
    text = text.replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")
    text = text.rstrip(b"\r\n")
    if text:
        out.append(text + b"\r\n")
    return b"".join(out)


def signature(
    private_key: bytes,
    domain: str,
    selector: str,
    fields: list[tuple[str, bytes]],
    body: bytes,
    signed: list[str],
) -> bytes:
    """The DomainKey-Signature field (LF line ends) by `private_key` (PEM)
    for d=`domain` s=`selector`, placed directly above the original header
    so that every original field follows it (RFC 4870 signs only fields
    after the signature)."""
    from quarantine.auth.resolver import import_dkim

    import_dkim()  # dkimpy as this package loads it (see there), before dkim.crypto
    import base64
    import hashlib

    from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key

    names: list[str] = []
    for name, _ in fields:
        if name in signed and name not in names:
            names.append(name)
    digest = hashlib.sha1(canonical(fields, body, names))  # noqa: S324 (RFC 4870 is SHA-1)
    value = base64.b64encode(RSASSA_PKCS1_v1_5_sign(digest, parse_pem_private_key(private_key)))
    folded = b"\n\t".join(value[i : i + 72] for i in range(0, len(value), 72))
    return b"DomainKey-Signature: a=rsa-sha1; c=nofws; d=%s; s=%s; q=dns;\n\th=%s;\n\tb=%s\n" % (
        domain.encode(),
        selector.encode(),
        ":".join(names).encode(),
        folded,
    )


# --- verifying ------------------------------------------------------------------


class Outcome:
    """The verdict on the topmost DomainKey-Signature: RFC 8601 result, the
    old patch's DomainKeys letter, why, and d=. `exhausted`: not verified
    because the message's budget ran out (temporary)."""

    __slots__ = ("domain", "exhausted", "letter", "reason", "result")

    def __init__(self, result: str, letter: str, reason: str = "", domain: str = "") -> None:
        self.result = result
        self.letter = letter
        self.reason = reason
        self.domain = domain
        self.exhausted = False


NONE = Outcome("none", "C")


def selected(raw: list[bytes], start: int, names: list[bytes] | None) -> list[int]:
    """Positions of the fields DomainKeys hashes, in hashing order: every
    field from `start` (the one after the signature) on, or, with h=, as
    Mail::DKIM reads RFC 4870 §3.3: fields grouped by name in h= order; a name
    listed n times takes its last instances one by one from the bottom and,
    at its first listing, all the instances left."""
    from quarantine.auth.dkimverify import field_key

    below = range(start, len(raw))
    if names is None:
        return list(below)
    groups: dict[bytes, list[int]] = {}
    for position in below:
        name = field_key(raw[position])
        if name is not None:
            groups.setdefault(name, []).append(position)
    counts: dict[bytes, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    chosen: list[list[int]] = []
    for name in reversed(names):
        counts[name] -= 1
        group = groups.get(name, [])
        if counts[name] > 0:
            chosen.append(group[-1:])
            del group[-1:]
        else:
            chosen.append(list(group))
            group.clear()
    return [position for part in reversed(chosen) for position in part]


def verify(
    message: bytes,
    raw: list[bytes],
    body_start: int,
    dnsfunc: Callable[..., bytes],
) -> Outcome:
    """The topmost DomainKey-Signature of `message` (`raw`: its header
    fields, `body_start`: where its body begins)."""
    import binascii

    from quarantine.auth import dkimcore, dkimverify
    from quarantine.auth.resolver import DnsTempError

    index = next(
        (i for i, f in enumerate(raw) if dkimverify.field_key(f) == b"domainkey-signature"),
        None,
    )
    if index is None:
        return NONE
    value = raw[index].split(b":", 1)[1]
    try:
        tags = dkimcore.parse_tag_value(re.sub(rb"\r?\n", b"", value))
    except dkimcore.InvalidTagValueList:
        return Outcome("permerror", "G", "bad signature syntax")
    domain = dkimverify.token(tags.get(b"d", b""))
    if not all(tags.get(t) for t in (b"b", b"d", b"s")):
        return Outcome("permerror", "C", "signature misses b=, d= or s=", domain)
    method = tags.get(b"c", b"simple").lower()
    if tags.get(b"a", b"rsa-sha1").lower() != b"rsa-sha1" or method not in (b"simple", b"nofws"):
        return Outcome("permerror", "G", "unknown a= or c=", domain)
    names = None
    if b"h" in tags:
        names = [n.strip().lower() for n in tags[b"h"].split(b":") if n.strip()]
    positions = selected(raw, index + 1, names)
    identity = _identity([raw[p] for p in positions])
    if identity is None:
        return Outcome("permerror", "C", "no signed From: or Sender:", domain)
    d = tags[b"d"].decode("ascii", "replace").lower()
    if not (identity == d or identity.endswith("." + d)):
        return Outcome("fail", "B", "d= is not the signed sender's domain", domain)
    try:
        record = dnsfunc(tags[b"s"] + b"._domainkey." + tags[b"d"])
    except DnsTempError:
        return Outcome("temperror", "F", "key lookup failed", domain)
    if not record:
        return Outcome("permerror", "D", "no key record", domain)
    try:
        key_tags = dkimcore.parse_tag_value(record)
    except dkimcore.InvalidTagValueList:
        return Outcome("permerror", "E", "unparsable key record", domain)
    data = re.sub(rb"\s+", b"", key_tags.get(b"p", b""))
    if b"p" in key_tags and not data:
        return Outcome("permerror", "J", "key revoked (empty p=)", domain)
    try:
        der = dkimcore.base64_strict(data)
        signature = binascii.a2b_base64(re.sub(rb"\s+", b"", tags[b"b"]))
        modulus, exponent = dkimverify.rsa_numbers(der, "E")
    except dkimverify.KeyProblem as exc:
        return Outcome("permerror", "E", exc.reason, domain)
    except ValueError:
        return Outcome("permerror", "E", "unusable key or signature", domain)
    hasher = dkimcore.new_hash("sha1", len(message))  # RFC 4870 is SHA-1
    for position in positions:
        line = re.sub(rb"\r?\n", b"\r\n", raw[position])
        hasher.update(nofws_line(line) if method == b"nofws" else line)
    form = "dk-nofws" if method == b"nofws" else "dk-simple"
    dkimverify.hash_body(hasher, message, body_start, form, None)
    if not dkimverify.rsa_verify(modulus, exponent, hasher, signature):
        return Outcome("fail", "B", "signature did not verify", domain)
    return Outcome("pass", "A", "rsa-sha1, historic", domain)


def _identity(signed: list[bytes]) -> str | None:
    """The domain of the signing identity: the address of the last signed
    Sender:, else of the last signed From: (Mail::DKIM's reading)."""
    from quarantine.auth.dkimverify import field_key
    from quarantine.message import addresses, field_value

    found: dict[bytes, bytes] = {}
    for field in signed:
        name = field_key(field)
        if name in (b"sender", b"from"):
            found[name] = field
    chosen = found.get(b"sender") or found.get(b"from")
    if chosen is None:
        return None
    found_addresses = addresses([field_value(chosen)])
    if not found_addresses or "@" not in found_addresses[0][1]:
        return ""
    return found_addresses[0][1].rpartition("@")[2].lower().rstrip(".")
