"""Inbound verification for `quarantine-queue` and `quarantine verify`: every
DKIM signature (dkimpy, RFC 8301 enforced here), SPF (pyspf), DMARC, one
Authentication-Results header (authres), a Received-SPF header, and the
DKVERIFY / spfbehavior / DMARC policy mapped to qmail-queue exit codes.
"""

from __future__ import annotations

import email.utils
import os
import re

import authres
import authres.arc
import authres.dmarc

from quarantine.auth import resolver as dnsres
from quarantine.config import Config, authserv_id
from quarantine.message import field_name, field_value, header_fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

# dkimpy without dnspython's resolver (every lookup here passes a dnsfunc);
# pyspf is imported only when SPF is checked.
dkim = dnsres.import_dkim()

ACCEPT = 0
REJECT = 31  # qmail-queue: mail server permanently refuses to send the message
DEFER = 71  # qmail-queue: mail server temporarily refuses to send the message

MAX_SIGNATURES = 8
MAX_SIGNED_FIELDS = 200
_SAFE_TOKEN = re.compile(rb"[^A-Za-z0-9._+@=/-]")
_HELO_RE = re.compile(r"\(HELO ([^)\s]*)\)")
_FROM_RE = re.compile(r"^\s*from\s+(\S+)", re.IGNORECASE)


class DkimResult:
    """One DKIM-Signature's outcome: RFC 8601 result, DKVERIFY letter, why."""

    __slots__ = ("b", "domain", "letter", "reason", "result", "selector")

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

    def __repr__(self) -> str:
        return f"DkimResult({self.result!r}, {self.letter!r}, {self.reason!r}, d={self.domain!r})"


class Report:
    """Everything verification found, the headers to add and the verdict."""

    def __init__(self, authserv_id: str) -> None:
        self.authserv_id = authserv_id
        self.dkim: list[DkimResult] = []
        self.domainkeys = "none"
        self.domainkeys_letter = "C"
        self.domainkeys_domain = ""
        self.domainkeys_reason = ""
        self.arc = "none"  # only reported when the message carries an ARC set
        self.arc_reason = ""
        self.spf: str | None = None  # None: spfbehavior 0, not checked
        self.spf_comment = ""
        self.spf_identity = "mailfrom"
        self.spf_domain = ""
        self.dmarc = "none"
        self.dmarc_policy: str | None = None
        self.dmarc_reason = ""
        self.from_domain: str | None = None
        self.received_spf: str | None = None
        self.code = ACCEPT
        self.reason = ""

    def dkim_letters(self) -> set[str]:
        """The DKVERIFY status letters of the DKIM part for this message."""
        if not self.dkim:
            return {"N"}
        if any(r.result == "pass" for r in self.dkim):
            return {"A"}
        return {r.letter for r in self.dkim} | {"O"}

    def dk_letters(self) -> set[str]:
        """The DKVERIFY status letter of the DomainKeys part."""
        return {self.domainkeys_letter}

    def header_lines(self) -> bytes:
        """Authentication-Results and (when SPF was checked) Received-SPF."""
        out = b"Authentication-Results: " + self.authres_value().encode("ascii", "replace") + b"\n"
        if self.received_spf is not None:
            out += b"Received-SPF: " + self.received_spf.encode("ascii", "replace") + b"\n"
        return out

    def authres_value(self) -> str:
        results: list[object] = []
        if self.spf is not None:
            kw: dict[str, str] = {}
            if self.spf_identity == "helo":
                kw["smtp_helo"] = self.spf_domain or "unknown"
            else:
                kw["smtp_mailfrom"] = self.spf_domain or "unknown"
            results.append(
                authres.SPFAuthenticationResult(
                    result=self.spf, result_comment=_comment(self.spf_comment) or None, **kw
                )
            )
        for sig in self.dkim:
            props = []
            if sig.b:
                props.append(authres.core.AuthenticationResultProperty("header", "b", sig.b))
            results.append(
                authres.DKIMAuthenticationResult(
                    result=sig.result,
                    result_comment=_comment(sig.reason) or None,
                    header_d=sig.domain or None,
                    header_s=sig.selector or None,
                    properties=props or None,
                )
            )
        if not self.dkim:
            results.append(authres.DKIMAuthenticationResult(result="none"))
        if self.domainkeys != "none":
            results.append(
                authres.DomainKeysAuthenticationResult(
                    result=self.domainkeys,
                    result_comment=_comment(self.domainkeys_reason) or None,
                    header_d=self.domainkeys_domain or None,
                )
            )
        if self.arc != "none":
            results.append(
                authres.arc.ARCAuthenticationResult(
                    result=self.arc, result_comment=_comment(self.arc_reason) or None
                )
            )
        dmarc_comment = self.dmarc_reason
        if self.dmarc_policy:
            dmarc_comment = f"p={self.dmarc_policy}, {dmarc_comment}".strip(", ")
        results.append(
            authres.dmarc.DMARCAuthenticationResult(
                result=self.dmarc,
                result_comment=_comment(dmarc_comment) or None,
                header_from=self.from_domain or None,
                policy=self.dmarc_policy if self.dmarc in ("fail", "pass") else None,
            )
        )
        return ";\n\t".join([self.authserv_id] + [str(r) for r in results])

    def text(self) -> str:
        """The headers and the verdict, for `quarantine verify FILE`."""
        head = self.header_lines().decode("ascii", "replace")
        verdict = {ACCEPT: "accept", REJECT: "reject (31)", DEFER: "defer (71)"}[self.code]
        return head + f"verdict: {verdict}" + (f": {self.reason}" if self.reason else "") + "\n"


def _comment(text: str) -> str:
    """Attacker-influenced text made safe for a header comment."""
    cleaned = "".join(c if " " <= c <= "~" and c not in "()\\" else " " for c in text)
    return " ".join(cleaned.split())[:200]


def _token(raw: bytes, limit: int = 253) -> str:
    """A header property value from message data: safe characters only."""
    return _SAFE_TOKEN.sub(b"", raw)[:limit].decode("ascii")


# --- the message -----------------------------------------------------------


def helo_from_received(fields: list[bytes]) -> str | None:
    """qmail-smtpd's `Received: from HOST (HELO name) (...)`, topmost Received."""
    for raw in fields:
        if field_name(raw) == "received":
            value = field_value(raw)
            match = _HELO_RE.search(value)
            if match:
                return match.group(1) or None
            match = _FROM_RE.match(value)
            return match.group(1) if match else None
    return None


def from_domains(fields: list[bytes]) -> list[str]:
    """The domains of the From: header(s)' addresses, lower-cased, unique."""
    values = [field_value(raw) for raw in fields if field_name(raw) == "from"]
    domains: list[str] = []
    for _, address in email.utils.getaddresses(values):
        if "@" not in address:
            continue
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if domain and domain not in domains:
            domains.append(domain)
    return domains


# --- DKIM ------------------------------------------------------------------


_FIELD_NAME = re.compile(rb"([\x21-\x7e]+?):")


def dkim_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's `rfc822_parse`, in linear time: dkimpy appends each
    continuation line to a bytes value, quadratic in a folded field (3.5 s
    for one 2 MB field). Same result: [name, value] pairs with CRLF line
    ends, and the body joined with CRLF."""
    lines = re.split(rb"\r?\n", message)
    parsed: list[tuple[bytes, list[bytes]]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            break
        if line[0] in (9, 32):
            if not parsed:
                raise dkim.MessageFormatError("continuation line before any header field")
            parsed[-1][1].append(line + b"\r\n")
            continue
        match = _FIELD_NAME.match(line)
        if match is not None:
            parsed.append((match.group(1), [line[match.end(0) :] + b"\r\n"]))
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError("unexpected characters in a header line")
    return [[name, b"".join(parts)] for name, parts in parsed], b"\r\n".join(lines[i:])


def verify_dkim(
    message: bytes, fields: list[bytes], dnsfunc: Callable[..., bytes]
) -> list[DkimResult]:
    """Every DKIM-Signature, top to bottom."""
    sigs = [raw for raw in fields if field_name(raw) == "dkim-signature"]
    if not sigs:
        return []
    # A sender could attach thousands of signatures, each a DNS lookup: the
    # first few are verified (RFC 6376 §6.1 lets a verifier limit them).
    sigs = sigs[:MAX_SIGNATURES]
    try:
        verifier = dkim.DKIM(None, minkey=1024)
        verifier.headers, verifier.body = dkim_parse(message)
    except Exception as exc:  # hostile input
        return [DkimResult("permerror", "C", f"unparsable message: {exc}") for _ in sigs]
    return [_verify_one(verifier, idx, raw, dnsfunc) for idx, raw in enumerate(sigs)]


def _verify_one(verifier: Any, idx: int, raw: bytes, dnsfunc: Callable[..., bytes]) -> DkimResult:
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    try:
        sig = dkim.util.parse_tag_value(re.sub(rb"\r?\n", b"", value))
    except dkim.util.InvalidTagValueList as exc:
        return DkimResult("permerror", "C", f"bad signature syntax: {exc!r}")
    res = DkimResult(
        "permerror",
        "C",
        domain=_token(sig.get(b"d", b"")),
        selector=_token(sig.get(b"s", b""), 63),
        b=_token(re.sub(rb"\s+", b"", sig.get(b"b", b"")), 12),
    )
    try:
        dkim.validate_signature_fields(sig)
    except dkim.ValidationError as exc:
        text = str(exc)
        res.reason = text
        if "x= value is past" in text:
            res.letter = "F"
        elif "unknown signature algorithm" in text:
            res.letter = "Q"
        elif "v= value" in text:
            res.letter = "R"
        return res
    if sig[b"h"].count(b":") >= MAX_SIGNED_FIELDS:
        # dkimpy looks each name up by scanning the whole header: a signature
        # naming thousands of fields over thousands of fields costs minutes.
        res.reason = f"more than {MAX_SIGNED_FIELDS} signed header fields"
        return res
    algorithm = sig[b"a"]
    if algorithm == b"rsa-sha1":
        res.letter, res.reason = "Q", "rsa-sha1 is not acceptable (RFC 8301)"
        return res
    if len(sig[b"d"]) > 253:
        res.letter, res.reason = "J", "domain too long"
        return res
    name = sig[b"s"] + b"._domainkey." + sig[b"d"]
    try:
        record = dnsfunc(name)
    except dnsres.DnsTempError:
        res.result, res.letter, res.reason = "temperror", "K", "key lookup failed"
        return res
    if not record:
        res.letter, res.reason = "L", "no key record"
        return res
    problem = _key_problem(record, algorithm)
    if problem:
        res.letter, res.reason = problem
        return res
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:  # checked by _key_problem
        tags = {}
    testing = b"y" in [f.strip() for f in tags.get(b"t", b"").split(b":")]
    try:
        ok = verifier.verify(idx, dnsfunc=lambda _name, timeout=5: record)
    except dkim.ValidationError as exc:
        res.reason = str(exc)
        if "body hash mismatch" in res.reason:
            res.result, res.letter, res.reason = (
                "fail",
                "E" if testing else "P",
                "body hash mismatch",
            )
        return res
    except dkim.KeyFormatError as exc:
        res.letter, res.reason = "M", str(exc)
        return res
    except dkim.DKIMException as exc:
        res.reason = str(exc)
        return res
    except Exception as exc:  # dkimpy on input it did not expect: not a crash
        res.reason = f"unverifiable: {type(exc).__name__}"
        return res
    if ok:
        res.result, res.letter, res.reason = "pass", "A", ""
    else:
        res.result, res.letter, res.reason = (
            "fail",
            "E" if testing else "D",
            "signature did not verify",
        )
    return res


def _key_problem(record: bytes, algorithm: bytes) -> tuple[str, str] | None:
    """What RFC 6376 §3.6.1 / RFC 8301 make of the key record: (letter, reason)."""
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:
        return "G", "unparsable key record"
    if b"v" in tags and tags[b"v"] != b"DKIM1":
        return "G", "key record version is not DKIM1"
    if b"p" not in tags:
        return "G", "key record has no p="
    if not tags[b"p"].strip():
        return "I", "key revoked (empty p=)"
    key_type = tags.get(b"k", b"rsa")
    if key_type not in (b"rsa", b"ed25519"):
        return "M", "unknown key type"
    if algorithm.split(b"-")[0] != key_type:
        return "Q", "signature algorithm does not match the key type"
    if b"h" in tags:
        allowed = [h.strip() for h in tags[b"h"].split(b":")]
        if algorithm.split(b"-")[-1] not in allowed:
            return "Q", "key h= does not allow the signature's hash"
    return None


# --- DomainKeys ------------------------------------------------------------


def verify_domainkeys(
    message: bytes, fields: list[bytes], dnsfunc: Callable[..., bytes]
) -> tuple[str, str, str, str]:
    """The topmost DomainKey-Signature (RFC 4870, historic): (result, letter
    of the old patch's DomainKeys table, reason, d=). Canonicalization as
    Perl Mail::DKIM does it: the header fields below the signature (those
    named by h= when present), then the body after the empty line, trailing
    empty lines removed; `nofws` drops every space, tab, CR and LF from the
    header fields and every space and tab from the body."""
    index = next(
        (i for i, raw in enumerate(fields) if field_name(raw) == "domainkey-signature"), None
    )
    if index is None:
        return "none", "C", "", ""
    value = fields[index].split(b":", 1)[1]
    try:
        tags = dkim.util.parse_tag_value(re.sub(rb"\r?\n", b"", value))
    except dkim.util.InvalidTagValueList:
        return "permerror", "G", "bad signature syntax", ""
    domain = _token(tags.get(b"d", b""))
    if not all(tags.get(t) for t in (b"b", b"d", b"s")):
        return "permerror", "C", "signature misses b=, d= or s=", domain
    method = tags.get(b"c", b"simple")
    if tags.get(b"a", b"rsa-sha1") != b"rsa-sha1" or method not in (b"simple", b"nofws"):
        return "permerror", "G", "unknown a= or c=", domain
    signed = fields[index + 1 :]
    sender = [f for f in signed if field_name(f) == "sender"] or [
        f for f in signed if field_name(f) == "from"
    ]
    if not sender:
        return "permerror", "C", "no signed From: or Sender:", domain
    addresses = email.utils.getaddresses([field_value(sender[0])])
    sender_domain = addresses[0][1].rpartition("@")[2].lower() if addresses else ""
    d = tags[b"d"].decode("ascii", "replace").lower()
    if not (sender_domain == d or sender_domain.endswith("." + d)):
        return "fail", "B", "d= is not the sender's domain", domain
    if b"h" in tags:
        names = {n.strip().lower() for n in tags[b"h"].split(b":")}
        signed = [f for f in signed if field_name(f).encode() in names]
    try:
        record = dnsfunc(tags[b"s"] + b"._domainkey." + tags[b"d"])
    except dnsres.DnsTempError:
        return "temperror", "F", "key lookup failed", domain
    if not record:
        return "permerror", "D", "no key record", domain
    try:
        key_tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:
        return "permerror", "E", "unparsable key record", domain
    if b"p" in key_tags and not key_tags[b"p"].strip():
        return "permerror", "J", "key revoked (empty p=)", domain
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        import base64

        public = serialization.load_der_public_key(base64.b64decode(key_tags.get(b"p", b"")))
        signature = base64.b64decode(re.sub(rb"\s+", b"", tags[b"b"]))
    except Exception:
        return "permerror", "E", "unusable key or signature", domain
    if not isinstance(public, rsa.RSAPublicKey) or public.key_size < 1024:
        return "permerror", "E", "not an RSA key of 1024 bits or more", domain
    header_lines = [re.sub(rb"\r?\n", b"\r\n", f) for f in signed]
    rest = message[sum(len(f) for f in fields) :]
    rest = rest[2:] if rest.startswith(b"\r\n") else rest[1:]  # the empty line
    body = b"\r\n" + re.sub(rb"\r?\n", b"\r\n", rest)
    if method == b"nofws":
        header_lines = [re.sub(rb"[ \t\r\n]", b"", f) + b"\r\n" for f in header_lines]
        body = re.sub(rb"[ \t]", b"", body)
    while body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    if body == b"\r\n":
        body = b""
    try:
        data = b"".join(header_lines) + body
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - RFC 4870
    except InvalidSignature:
        return "fail", "B", "signature did not verify", domain
    except Exception:
        return "permerror", "E", "unusable key", domain
    return "pass", "A", "rsa-sha1, historic", domain


# --- ARC -------------------------------------------------------------------


def check_arc(report: Report, message: bytes, dnsfunc: Callable[..., bytes]) -> None:
    """The ARC chain (RFC 8617), reported only; no policy depends on it."""
    try:
        arc = dkim.ARC(None, minkey=1024)
        arc.headers, arc.body = dkim_parse(message)
        cv, _results, reason = arc.verify(dnsfunc=dnsfunc)
    except dnsres.DnsTempError:
        report.arc, report.arc_reason = "temperror", "key lookup failed"
        return
    except Exception as exc:  # dkimpy raises more than DKIMException on junk
        report.arc, report.arc_reason = "fail", f"unverifiable: {type(exc).__name__}"
        return
    report.arc = {b"pass": "pass", b"none": "none"}.get(cv, "fail")
    report.arc_reason = "" if report.arc == "pass" else str(reason)


# --- SPF -------------------------------------------------------------------


def check_spf(
    report: Report, ip: str | None, sender: str, helo: str | None, timeout: float
) -> None:
    """RFC 7208 for MAIL FROM (or postmaster@HELO for a bounce)."""
    host = report.authserv_id
    domain = sender.rpartition("@")[2] if sender else (helo or "")
    report.spf_identity = "mailfrom" if sender else "helo"
    report.spf_domain = _token(domain.encode("utf-8", "replace"))
    if not ip:
        report.spf, report.spf_comment = "none", "no client IP address"
        return
    if not sender and not helo:
        # A bounce with no HELO name to check: nothing to look up.
        report.spf, report.spf_comment = "none", "no sender and no HELO name"
        return
    if ip.lower().startswith("::ffff:") and "." in ip:
        ip = ip[7:]  # tcpserver on an IPv6 socket: an IPv4-mapped address
    try:
        # querytime bounds the whole evaluation (RFC 7208 §4.6.4 suggests
        # 20 s); each lookup is bounded by the resolver's own timeout.
        spf = dnsres.import_spf()
        query = spf.query(
            i=ip, s=sender, h=helo or "unknown", receiver=host, querytime=max(20.0, timeout)
        )
        result, _code, _explanation = query.check()
        comment = query.get_header_comment(result)
    except Exception as exc:  # pyspf raises its own and ValueError on bad input
        result, comment = "permerror", f"cannot evaluate: {exc}"
    report.spf = str(result)
    report.spf_comment = f"{host}: {comment}"
    envelope = _quoted(sender) if sender else '""'
    report.received_spf = (
        f"{report.spf} ({_comment(report.spf_comment)}) client-ip={_quoted(ip)}; "
        f"envelope-from={envelope}; helo={_quoted(helo or 'unknown')}; receiver={host};"
    )


def _quoted(text: str) -> str:
    safe = "".join(c if "!" <= c <= "~" and c not in '"\\;' else "?" for c in text)[:300]
    return f'"{safe}"' if any(c in safe for c in "()<>,:[]") else safe


# --- DMARC -----------------------------------------------------------------

_PSL: object = None


def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 §3.2) from the public suffix list."""
    global _PSL
    if _PSL is None:
        from publicsuffixlist import PublicSuffixList

        _PSL = PublicSuffixList()
    org = _PSL.privatesuffix(domain)  # type: ignore[attr-defined]
    return str(org) if org else domain


def _dmarc_record(resolver: dnsres.Resolver, name: str) -> dict[str, str] | None:
    records = [r for r in dnsres.txt(resolver, "_dmarc." + name) if r.startswith("v=DMARC1")]
    if len(records) != 1:
        return None
    tags: dict[str, str] = {}
    for part in records[0].split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    return tags


def check_dmarc(report: Report, fields: list[bytes], resolver: dnsres.Resolver) -> None:
    domains = from_domains(fields)
    if not domains:
        report.dmarc, report.dmarc_reason = "none", "no From: domain"
        return
    if len(domains) > 1:
        report.dmarc, report.dmarc_reason = "permerror", "more than one From: domain"
        return
    from_domain = domains[0]
    report.from_domain = _token(from_domain.encode("utf-8", "replace")) or None
    try:
        tags = _dmarc_record(resolver, from_domain)
        policy_key = "p"
        if tags is None and org_domain(from_domain) != from_domain:
            tags = _dmarc_record(resolver, org_domain(from_domain))
            policy_key = "sp"
    except dnsres.DnsTempError as exc:
        report.dmarc, report.dmarc_reason = "temperror", f"DMARC record lookup failed: {exc}"
        return
    if tags is None:
        report.dmarc, report.dmarc_reason = "none", "no DMARC record"
        return
    policy = tags.get(policy_key, tags.get("p", "")).lower()
    if policy not in ("none", "quarantine", "reject"):
        policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        # RFC 7489 §6.6.3: with a reporting address, act as p=none; without
        # one, no DMARC processing at all.
        if "mailto:" not in tags.get("rua", "").lower():
            report.dmarc, report.dmarc_reason = "none", "DMARC record has no valid p="
            return
        policy = "none"
    report.dmarc_policy = policy

    def aligned(domain: str, mode: str) -> bool:
        # The public suffix list (40 ms to load) only when the names differ.
        domain = domain.lower().rstrip(".")
        if domain == from_domain or mode == "s" or not domain:
            return domain == from_domain
        return org_domain(domain) == org_domain(from_domain)

    dkim_mode = tags.get("adkim", "r").lower()
    spf_mode = tags.get("aspf", "r").lower()
    if any(r.result == "pass" and aligned(r.domain, dkim_mode) for r in report.dkim):
        report.dmarc, report.dmarc_reason = "pass", "DKIM aligned"
    elif report.spf == "pass" and aligned(report.spf_domain, spf_mode):
        report.dmarc, report.dmarc_reason = "pass", "SPF aligned"
    else:
        report.dmarc, report.dmarc_reason = "fail", "no aligned DKIM or SPF pass"


# --- policy ----------------------------------------------------------------


def dkverify_policy(cfg: Config, environ: Mapping[str, str]) -> str | None:
    """The DKVERIFY letters: the environment wins when set (even empty)."""
    if "DKVERIFY" in environ:
        return environ["DKVERIFY"]
    return cfg.verify.dkverify


def spf_behavior(cfg: Config, environ: Mapping[str, str]) -> int:
    """qmail-spf's level 0-6: $SPFBEHAVIOR wins when it is a number."""
    text = environ.get("SPFBEHAVIOR", "").strip()
    if text.isdigit():
        return min(int(text), 6)
    return max(0, min(cfg.verify.spfbehavior, 6))


def apply_policy(report: Report, cfg: Config, environ: Mapping[str, str], behavior: int) -> None:
    """Set report.code/reason: permanent refusals win over temporary ones."""
    permanent: list[str] = []
    temporary: list[str] = []
    letters = dkverify_policy(cfg, environ)
    if letters:
        dk_part, comma, dkim_part = letters.partition(",")
        for part, status, what in (
            (dk_part, report.dk_letters(), "DomainKeys"),
            (dkim_part if comma else "", report.dkim_letters(), "DKIM"),
        ):
            for letter in sorted(status):
                if letter in part:
                    permanent.append(f"{what} status {letter}")
                elif letter.lower() in part:
                    temporary.append(f"{what} status {letter}")
    if report.spf is not None and report.received_spf is not None:  # evaluated
        refused = {3: {"fail"}, 4: {"fail", "softfail"}, 5: {"fail", "softfail", "neutral"}}
        refused[6] = refused[5] | {"none", "permerror"}
        if report.spf in refused.get(behavior, set()):
            permanent.append(f"SPF {report.spf}")
        elif behavior >= 2 and report.spf == "temperror":
            temporary.append("SPF lookup failure")
    if cfg.verify.dmarc_reject and report.dmarc == "fail" and report.dmarc_policy == "reject":
        permanent.append(f"DMARC fail for {report.from_domain} (p=reject)")
    if permanent:
        report.code, report.reason = REJECT, "; ".join(permanent) + " (#5.7.1)"
    elif temporary:
        report.code, report.reason = DEFER, "; ".join(temporary) + " (#4.7.0)"


# --- the whole check -------------------------------------------------------


def _cached(lookup: Callable[..., bytes]) -> Callable[..., bytes]:
    """One lookup per key name per message (DKIM and ARC share selectors)."""
    answers: dict[bytes, bytes] = {}

    def cached(name: bytes, timeout: int = 5) -> bytes:
        if name not in answers:
            answers[name] = lookup(name, timeout=timeout)
        return answers[name]

    return cached


def verify_message(
    cfg: Config,
    message: bytes,
    sender: str,
    ip: str | None,
    environ: Mapping[str, str] | None = None,
) -> Report:
    """Verify `message` received from `ip` with envelope `sender`."""
    env = os.environ if environ is None else environ
    report = Report(authserv_id=authserv_id(cfg))
    fields, _ = header_fields(message)
    resolver = dnsres.make_resolver(cfg.dns)
    dnsfunc = _cached(dnsres.dkim_dnsfunc(resolver))
    report.dkim = verify_dkim(message, fields, dnsfunc)
    if any(field_name(raw) == "arc-seal" for raw in fields):
        check_arc(report, message, dnsfunc)
    (
        report.domainkeys,
        report.domainkeys_letter,
        report.domainkeys_reason,
        report.domainkeys_domain,
    ) = verify_domainkeys(message, fields, dnsfunc)
    behavior = spf_behavior(cfg, env)
    if behavior > 0:
        # use_for_pyspf() sets pyspf's lookup function, a module global: put
        # it back so that `quarantine verify` leaves no trace in a process.
        previous = dnsres.use_for_pyspf(resolver)
        try:
            check_spf(report, ip, sender, helo_from_received(fields), cfg.dns.timeout)
        finally:
            dnsres.import_spf().DNSLookup = previous
    check_dmarc(report, fields, resolver)
    apply_policy(report, cfg, env, behavior)
    return report


def verify_file(cfg: Config, path: str) -> tuple[int, str]:
    """`quarantine verify FILE`: the exit code quarantine-queue would give
    and the headers and verdict as text. The sender is the file's
    Return-Path:, the client IP $TCPREMOTEIP."""
    with open(path, "rb") as handle:
        message = handle.read()
    fields, _ = header_fields(message)
    sender = ""
    for raw in fields:
        if field_name(raw) == "return-path":
            sender = field_value(raw).strip("<> ")
            break
    report = verify_message(cfg, message, sender, os.environ.get("TCPREMOTEIP") or None)
    return report.code, report.text()
