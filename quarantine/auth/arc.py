"""ARC (RFC 8617) on incoming mail, reported only: dkimpy's ARC verifier, shown
only the ARC fields and those an ARC-Message-Signature can select, with keys
judged and the body hashed by dkimverify. Imported only for a message that
carries an ARC-Seal: dkimpy (and its logging) costs about 10 ms to load.
"""

from __future__ import annotations

import re

from quarantine.auth import dkimverify
from quarantine.auth import resolver as dnsres

dkim = dnsres.import_dkim()

MAX_ARC_SETS = 50  # RFC 8617 §4.2.1: i= runs from 1 to 50
ARC_NAMES = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_ARC_INSTANCE = re.compile(rb"(?:^|[\s;])i\s*=\s*(\d+)")


class _Arc(dkim.ARC):  # type: ignore[misc,name-defined]
    """dkimpy's ARC verifier over the fields the chain can reach, with the
    body hashed by dkimverify (in chunks, once per form) instead of whole."""

    def __init__(self, msg: dkimverify.Message) -> None:
        super().__init__(None, minkey=1024)
        self.msg = msg
        self.body = b""

    def verify_sig_process(
        self, sig: dict[bytes, bytes], include: list[bytes], header: object, dnsfunc: object
    ) -> bool:
        if b"bh" in sig:
            policy = dkim.canonicalization.CanonicalizationPolicy.from_c_value(sig.get(b"c"))
            form = policy.body_algorithm.name.decode()
            limit = int(sig[b"l"]) if sig.get(b"l", b"").isdigit() else None
            algorithm = sig[b"a"].split(b"-")[-1].decode()
            if algorithm not in ("sha1", "sha256"):
                raise dkim.ValidationError("unknown hash")
            digest = self.msg.body_digest(form, algorithm, limit)
            if digest != dkimverify.b64(sig[b"bh"]):
                raise dkim.ValidationError("body hash mismatch")
            sig = {k: v for k, v in sig.items() if k != b"bh"}
        return bool(super().verify_sig_process(sig, include, header, dnsfunc))


def check(msg: dkimverify.Message) -> tuple[str, str]:
    """The ARC chain (RFC 8617) as (result, reason), reported only; no policy depends on it. At
    most MAX_ARC_SETS sets and three fields each; dkimpy is shown only the
    ARC fields and those an ARC-Message-Signature can select, and keys are
    judged (size, exponent) before dkimpy may do arithmetic with them."""
    fields = msg.fields
    positions = sorted(p for name in ARC_NAMES for p in fields.named(name))
    if len(positions) > 3 * MAX_ARC_SETS:
        return "fail", f"more than {3 * MAX_ARC_SETS} ARC fields"
    wanted: dict[bytes, int] = {}
    for position in positions:
        raw = fields.raw[position]
        found = _ARC_INSTANCE.search(raw.split(b":", 1)[1])
        if found is None or not 1 <= int(found.group(1)) <= MAX_ARC_SETS:
            return "fail", "ARC instance missing or not 1 to 50"
        if dkimverify.field_key(raw) == b"arc-message-signature":
            tags = re.search(rb"(?:^|[\s;])h\s*=([^;]*)", raw)
            counts: dict[bytes, int] = {}
            for name in re.split(rb"\s*:\s*", tags.group(1).strip() if tags else b""):
                name = name.strip().lower()
                counts[name] = counts.get(name, 0) + 1
            for name, count in counts.items():
                wanted[name] = max(wanted.get(name, 0), count)
    keep = set(positions)
    for name, count in wanted.items():
        keep.update(fields.named(name)[-count:])
    arc = _Arc(msg)
    arc.headers = []
    for position in sorted(keep):
        name, value = fields.pair(position)
        arc.headers.append([name.rstrip(b" \t"), value])

    def judged(name: bytes, timeout: int = 5) -> bytes:
        record = msg.dnsfunc(name)
        try:
            dkimverify.read_key(record, b"rsa-sha256")
        except dkimverify.KeyProblem:
            return b""  # dkimpy then fails the set without arithmetic
        return record

    try:
        cv, _results, reason = arc.verify(dnsfunc=judged)
    except dnsres.DnsTempError:
        return "temperror", "key lookup failed"
    except Exception as exc:  # dkimpy raises more than DKIMException on junk
        return "fail", f"unverifiable: {type(exc).__name__}"
    result = {b"pass": "pass", b"none": "none"}.get(cv, "fail")
    return result, "" if result == "pass" else str(reason)
