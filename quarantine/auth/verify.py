"""Inbound verification for `quarantine-queue` and `quarantine verify`: every
DKIM signature (dkimverify), the topmost DomainKey-Signature (domainkeys),
ARC (dkimpy), SPF (pyspf), DMARC, one Authentication-Results header (authres),
a Received-SPF header, and the DKVERIFY / spfbehavior / DMARC policy mapped to
qmail-queue exit codes. The whole check runs inside one message's budget
(budget.py): past it, what is left is `temperror`, never a permanent verdict.
"""

from __future__ import annotations

import os
import re

import authres
import authres.arc
import authres.dmarc

from quarantine.auth import dkimverify, domainkeys
from quarantine.auth import resolver as dnsres
from quarantine.auth.budget import Budget, Exhausted
from quarantine.auth.dkimverify import DkimResult, Fields, exhausted_result, token
from quarantine.config import Config, authserv_id
from quarantine.message import (
    addresses,
    body_offset,
    field_count,
    field_name,
    field_value,
    fields_named,
    header_fields,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

ACCEPT = 0
REJECT = 31  # qmail-queue: mail server permanently refuses to send the message
DEFER = 71  # qmail-queue: mail server temporarily refuses to send the message

MAX_FIELDS = 100_000  # a header with more fields is not verified (see docs/queue.md)
_HELO_RE = re.compile(r"\(HELO ([^)\s]*)\)")
_FROM_RE = re.compile(r"^\s*from\s+(\S+)", re.IGNORECASE)


class Report:
    """Everything verification found, the headers to add and the verdict."""

    def __init__(self, authserv_id: str) -> None:
        self.authserv_id = authserv_id
        self.dkim: list[DkimResult] = []
        self.domainkeys = "none"
        self.domainkeys_letter = "C"
        self.domainkeys_domain = ""
        self.domainkeys_reason = ""
        self.domainkeys_exhausted = False
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

    def dkim_exhausted(self) -> bool:
        """Some signature went unverified for want of budget, none passed:
        every DKIM letter is then only a reason to try again later."""
        return any(r.exhausted for r in self.dkim) and not any(
            r.result == "pass" for r in self.dkim
        )

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
    for _, address in addresses(values):
        if "@" not in address:
            continue
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if domain and domain not in domains:
            domains.append(domain)
    return domains


# --- ARC -------------------------------------------------------------------


def check_arc(report: Report, msg: dkimverify.Message) -> None:
    """The ARC chain, reported only (arc.py; dkimpy is loaded only here)."""
    from quarantine.auth import arc

    report.arc, report.arc_reason = arc.check(msg)


# --- SPF -------------------------------------------------------------------


def check_spf(
    report: Report, ip: str | None, sender: str, helo: str | None, timeout: float
) -> None:
    """RFC 7208 for MAIL FROM (or postmaster@HELO for a bounce)."""
    host = report.authserv_id
    domain = sender.rpartition("@")[2] if sender else (helo or "")
    report.spf_identity = "mailfrom" if sender else "helo"
    report.spf_domain = token(domain.encode("utf-8", "replace"))
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
    report.from_domain = token(from_domain.encode("utf-8", "replace")) or None
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
        for part, status, what, unfinished in (
            (dk_part, report.dk_letters(), "DomainKeys", report.domainkeys_exhausted),
            (dkim_part if comma else "", report.dkim_letters(), "DKIM", report.dkim_exhausted()),
        ):
            for letter in sorted(status):
                if letter not in part and letter.lower() not in part:
                    continue
                # A check the budget cut short proves nothing: at most a deferral.
                refusals = permanent if letter in part and not unfinished else temporary
                refusals.append(f"{what} status {letter}")
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
    budget: Budget | None = None,
) -> Report:
    """Verify `message` received from `ip` with envelope `sender`, within
    one message's `budget` (a fresh Budget by default). A header of more
    than MAX_FIELDS fields is not verified (its DKIM, DomainKeys and ARC
    are `temperror`); From and Received are still read for DMARC and SPF."""
    env = os.environ if environ is None else environ
    budget = budget if budget is not None else Budget()
    report = Report(authserv_id=authserv_id(cfg))
    behavior = spf_behavior(cfg, env)
    todo = {"dkim", "arc", "domainkeys", "spf", "dmarc"}
    try:
        with budget:
            _verify(report, cfg, message, sender, ip, behavior, budget, todo)
    except Exhausted as exc:
        _unfinished(report, todo, exc.reason)
    except MemoryError:
        _unfinished(report, todo, budget.out_of_memory().reason)
    finally:
        budget.disarm()
    apply_policy(report, cfg, env, behavior)
    return report


def _verify(
    report: Report,
    cfg: Config,
    message: bytes,
    sender: str,
    ip: str | None,
    behavior: int,
    budget: Budget,
    todo: set[str],
) -> None:
    """The checks in turn; each one done is taken out of `todo`."""
    body_start = body_offset(message)
    resolver = dnsres.make_resolver(cfg.dns, budget)
    if field_count(message, body_start) > MAX_FIELDS:
        raw = fields_named(message, (b"from", b"received"), body_start, 64)
        _unfinished(report, todo - {"spf", "dmarc"}, f"over {MAX_FIELDS} header fields")
    else:
        raw = header_fields(message)[0]
        fields = Fields(raw)
        dnsfunc = _cached(dnsres.dkim_dnsfunc(resolver))
        msg = dkimverify.Message(message, body_start, fields, dnsfunc, budget)
        report.dkim = dkimverify.verify_all(msg)
        todo.discard("dkim")
        budget.check()
        if fields.named(b"arc-seal"):
            check_arc(report, msg)
        todo.discard("arc")
        outcome = domainkeys.verify(message, raw, body_start, dnsfunc)
        report.domainkeys, report.domainkeys_letter = outcome.result, outcome.letter
        report.domainkeys_reason, report.domainkeys_domain = outcome.reason, outcome.domain
        todo.discard("domainkeys")
    if behavior > 0:
        # SPF keeps RFC 7208's own limits: a resolver outside the budget.
        # use_for_pyspf() sets pyspf's lookup function, a module global: put
        # it back so that `quarantine verify` leaves no trace in a process.
        previous = dnsres.use_for_pyspf(dnsres.make_resolver(cfg.dns))
        try:
            check_spf(report, ip, sender, helo_from_received(raw), cfg.dns.timeout)
        finally:
            dnsres.import_spf().DNSLookup = previous
    todo.discard("spf")
    check_dmarc(report, raw, resolver)
    todo.discard("dmarc")


def _unfinished(report: Report, todo: set[str], reason: str) -> None:
    """What the budget left undone becomes a temporary result."""
    comment = f"not verified: {reason}"
    if "dkim" in todo:
        report.dkim = [exhausted_result(reason)]
    if "arc" in todo and report.arc != "none":
        report.arc, report.arc_reason = "temperror", comment
    if "domainkeys" in todo:
        report.domainkeys, report.domainkeys_letter = "temperror", "F"
        report.domainkeys_reason, report.domainkeys_exhausted = comment, True
    if "spf" in todo and report.spf is not None:
        report.spf, report.spf_comment = "temperror", comment
    if "dmarc" in todo:
        report.dmarc, report.dmarc_reason = "temperror", comment
    todo.clear()


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
