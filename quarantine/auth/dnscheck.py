"""`quarantine dns check`: ask DNS for each record `quarantine dns` would
print and say, per record, published / missing / different (or temperror):
the DKIM key published equals the local key's public half, the SPF record
passes (pyspf) for every configured outbound address, the DMARC record parses
and carries the configured policy. Every problem comes with what to publish.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass

from quarantine.auth import keys, records
from quarantine.auth.records import Record
from quarantine.auth.resolver import (
    DnsTempError,
    Resolver,
    import_spf,
    make_resolver,
    txt,
    use_for_pyspf,
)
from quarantine.config import Config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

PUBLISHED = "published"
MISSING = "missing"
DIFFERENT = "different"
TEMPERROR = "temperror"  # DNS could not answer now: try again later
DMARC_POLICIES = ("none", "quarantine", "reject")
SPF_PROBE_IP = "192.0.2.1"  # evaluates a record when no dns.spf_ips are configured


@dataclass(frozen=True)
class Finding:
    """One record's state in DNS."""

    kind: str  # spf, dkim, dmarc, domainkeys, adsp
    name: str
    status: str  # published, missing, different, temperror
    detail: str = ""
    publish: str = ""  # the record to publish (a BIND line) when not published

    @property
    def ok(self) -> bool:
        return self.status == PUBLISHED

    def lines(self) -> list[str]:
        """The report: one line, then `publish:` for a problem."""
        head = f"{self.status:<9} {self.kind:<10} {self.name}"
        if self.detail:
            head += f": {self.detail}"
        out = [head]
        if not self.ok and self.publish:
            out.append(f"  publish: {self.publish}")
        return out


def check(
    cfg: Config,
    domain: str,
    legacy: bool = False,
    resolver: Resolver | None = None,
    kinds: Collection[str] | None = None,
) -> list[Finding]:
    """Findings for every record of `domain`, or only for those of `kinds`
    (spf, dkim, dmarc...; None: all). keys.KeyUsage for a bad name,
    records.RecordProblem for a bad configuration. Without dns.nameservers,
    the servers of /etc/resolv.conf are asked (127.0.0.1 when it names none)."""
    wanted = records.build(cfg, domain, legacy)
    if resolver is None:
        resolver = make_resolver(cfg.dns)
    ttl = cfg.dns.ttl
    findings: list[Finding] = []

    def asked(kind: str) -> bool:
        return kinds is None or kind in kinds

    built = {record.kind for record in wanted.records}
    if "spf" not in built and asked("spf"):
        findings.append(_check_spf_unconfigured(cfg, resolver, wanted.domain))
    if "dkim" not in built and asked("dkim"):
        findings.append(
            Finding(
                "dkim",
                f"*._domainkey.{wanted.domain}",
                MISSING,
                "; ".join(n for n in wanted.notes if "DKIM" in n or "keygen" in n)
                or "no usable local key",
                f"run `quarantine keygen {wanted.domain}`, then publish its record",
            )
        )
    for record in wanted.records:
        if not asked(record.kind):
            continue
        publish = records.bind_line(record, ttl)
        try:
            if record.kind == "spf":
                finding = _check_spf(cfg, resolver, record)
            elif record.kind == "dkim":
                finding = _check_dkim(resolver, record)
            elif record.kind == "dmarc":
                finding = _check_dmarc(cfg, resolver, record)
            else:
                finding = _check_exact(resolver, record)
        except DnsTempError as exc:
            finding = Finding(record.kind, record.name, TEMPERROR, f"DNS lookup failed: {exc}")
        if not finding.ok and not finding.publish:
            finding = Finding(finding.kind, finding.name, finding.status, finding.detail, publish)
        findings.append(finding)
    return findings


def _check_spf_unconfigured(cfg: Config, resolver: Resolver, domain: str) -> Finding:
    """No outbound addresses configured: only say whether a record exists."""
    hint = "set dns.spf_ips in the configuration, then publish `quarantine dns` output"
    try:
        found = [t for t in txt(resolver, domain) if _is_spf(t)]
    except DnsTempError as exc:
        return Finding("spf", domain, TEMPERROR, f"DNS lookup failed: {exc}", hint)
    if not found:
        return Finding("spf", domain, MISSING, "no SPF record and no dns.spf_ips", hint)
    return _check_spf(cfg, resolver, Record("spf", domain, found[0]))


def _is_spf(text: str) -> bool:
    return text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")


def _check_spf(cfg: Config, resolver: Resolver, record: Record) -> Finding:
    found = [t for t in txt(resolver, record.name) if _is_spf(t)]
    if not found:
        return Finding("spf", record.name, MISSING, "no v=spf1 record")
    if len(found) > 1:
        return Finding("spf", record.name, DIFFERENT, f"{len(found)} SPF records (permerror)")
    # use_for_pyspf() sets pyspf's lookup function, a module global; put it
    # back afterwards so that this check leaves no trace in the process.
    previous = use_for_pyspf(resolver)
    try:
        failures = _spf_failures(cfg, record.name)
    finally:
        import_spf().DNSLookup = previous
    if failures:
        return Finding("spf", record.name, DIFFERENT, "does not pass for " + ", ".join(failures))
    ips = ", ".join(cfg.dns.spf_ips)
    return Finding(
        "spf",
        record.name,
        PUBLISHED,
        f"passes for {ips}" if ips else "evaluates (no dns.spf_ips to test it with)",
    )


def _spf_failures(cfg: Config, domain: str) -> list[str]:
    """`ip: result` for each configured address SPF does not pass."""
    spf = import_spf()

    failures = []
    # Without configured addresses, one from TEST-NET-1 (RFC 5737) only shows
    # whether the record evaluates at all (permerror: a syntax error, too
    # many lookups).
    ips = [
        str(ipaddress.ip_network(value.strip(), strict=False).network_address)
        for value in cfg.dns.spf_ips
    ]
    for ip in ips or [SPF_PROBE_IP]:
        result, explanation = spf.check2(
            i=ip, s=f"postmaster@{domain}", h=domain, timeout=cfg.dns.timeout
        )
        if result == "temperror":
            raise DnsTempError(f"SPF for {ip}: {explanation}")
        if result == "permerror" or (ips and result != "pass"):
            failures.append(f"{ip}: {result}" + (f" ({explanation})" if explanation else ""))
    return failures


def _key_bytes(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def check_dkim_record(resolver: Resolver, name: str, text: str) -> Finding:
    """Does `resolver` serve `text` (a local key's record) at `name`? The
    check `dns check` makes for a DKIM key; `keys rotate` asks it of every
    nameserver of the zone before it switches signing to a new key."""
    try:
        return _check_dkim(resolver, Record("dkim", name, text))
    except DnsTempError as exc:
        return Finding("dkim", name, TEMPERROR, f"DNS lookup failed: {exc}")


def _check_dkim(resolver: Resolver, record: Record) -> Finding:
    found = txt(resolver, record.name)
    if not found:
        return Finding("dkim", record.name, MISSING, "no key record")
    local = keys.dkim_tags(record.text)
    want = _key_bytes(local.get("p", ""))
    if len(found) > 1:
        return Finding(
            "dkim", record.name, DIFFERENT, f"{len(found)} TXT records: verifiers take any one"
        )
    tags = keys.dkim_tags(found[0])
    if tags.get("v", "DKIM1") != "DKIM1":
        return Finding("dkim", record.name, DIFFERENT, f"v={tags['v']}, not DKIM1")
    if "p" not in tags:
        return Finding("dkim", record.name, DIFFERENT, "no p= tag")
    if not tags["p"]:
        return Finding("dkim", record.name, DIFFERENT, "empty p=: the key is revoked")
    if tags.get("k", "rsa").lower() != local.get("k", "rsa").lower():
        return Finding(
            "dkim",
            record.name,
            DIFFERENT,
            f"k={tags.get('k', 'rsa')} published, the local key is {local.get('k', 'rsa')}",
        )
    hashes = [h.lower() for h in tags.get("h", "sha256").split(":")]
    if "sha256" not in hashes:
        return Finding(
            "dkim", record.name, DIFFERENT, f"h={tags['h']}: rsa-sha256 signatures are refused"
        )
    if tags.get("s", "*").lower() not in ("*", "email") and "email" not in tags["s"].split(":"):
        return Finding("dkim", record.name, DIFFERENT, f"s={tags['s']}: not for email")
    got = _key_bytes(tags["p"])
    if got is None:
        return Finding("dkim", record.name, DIFFERENT, "p= is not valid base64")
    if got != want:
        return Finding(
            "dkim", record.name, DIFFERENT, "the published key is not the local key's public half"
        )
    return Finding("dkim", record.name, PUBLISHED, "matches the local key")


def parse_dmarc(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record, or None when it does not parse (v=DMARC1
    must come first, p= must be none, quarantine or reject)."""
    tags: dict[str, str] = {}
    parts = [p.strip() for p in text.split(";")]
    for index, part in enumerate(parts):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            return None
        name, value = name.strip().lower(), value.strip()
        if index == 0 and (name != "v" or value != "DMARC1"):
            return None
        tags.setdefault(name, value)
    if tags.get("p", "").lower() not in DMARC_POLICIES:
        return None
    return tags


def _check_dmarc(cfg: Config, resolver: Resolver, record: Record) -> Finding:
    found = [t for t in txt(resolver, record.name) if t.lstrip().lower().startswith("v=dmarc1")]
    if not found:
        return Finding("dmarc", record.name, MISSING, "no v=DMARC1 record")
    if len(found) > 1:
        return Finding("dmarc", record.name, DIFFERENT, f"{len(found)} DMARC records (ignored)")
    tags = parse_dmarc(found[0])
    if tags is None:
        return Finding(
            "dmarc", record.name, DIFFERENT, "does not parse (v=DMARC1 first, p= required)"
        )
    policy = tags["p"].lower()
    if policy != cfg.dns.dmarc_policy:
        return Finding(
            "dmarc",
            record.name,
            DIFFERENT,
            f"p={policy} published, dns.dmarc_policy is {cfg.dns.dmarc_policy}",
        )
    return Finding("dmarc", record.name, PUBLISHED, f"p={policy}")


def _check_exact(resolver: Resolver, record: Record) -> Finding:
    found = txt(resolver, record.name)
    if not found:
        return Finding(record.kind, record.name, MISSING)
    if record.text in found:
        return Finding(record.kind, record.name, PUBLISHED)
    return Finding(record.kind, record.name, DIFFERENT, f"{found[0]!r} published")
