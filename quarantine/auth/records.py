"""The DNS records a domain publishes for mail authentication: SPF (from
dns.spf_ips, spf_includes, spf_all), one DKIM record per local key, DMARC
(dns.dmarc_policy, rua, ruf), and on request the legacy DomainKeys policy and
ADSP records; written for BIND (quoted strings of at most 255 bytes) or
tinydns-data (one `'` line per record, special bytes octal-escaped).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from quarantine.auth import keys
from quarantine.config import Config

FORMATS = ("bind", "tinydns")
BIND_STRING = 255  # bytes per character-string in a TXT record


class RecordProblem(Exception):
    """The configuration cannot make a record (a bad address in dns.spf_ips)."""


@dataclass(frozen=True)
class Record:
    """One TXT record to publish."""

    kind: str  # spf, dkim, dmarc, domainkeys, adsp
    name: str  # the owner name, no trailing dot
    text: str
    selector: str | None = None  # dkim only


@dataclass(frozen=True)
class Records:
    """The records for a domain, and notes on what could not be made."""

    domain: str
    records: list[Record]
    notes: list[str]


def spf_text(cfg: Config) -> str | None:
    """`v=spf1 ip4:... ip6:... include:... ~all`, None when neither
    addresses nor includes are configured."""
    if not cfg.dns.spf_ips and not cfg.dns.spf_includes:
        return None
    terms = ["v=spf1"]
    for value in cfg.dns.spf_ips:
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise RecordProblem(f"dns.spf_ips: {value!r} is not an IP address or network") from None
        kind = "ip4" if network.version == 4 else "ip6"
        if network.prefixlen == network.max_prefixlen:
            terms.append(f"{kind}:{network.network_address}")
        else:
            terms.append(f"{kind}:{network}")
    for include in cfg.dns.spf_includes:
        terms.append(f"include:{keys.check_name(include.strip(), 'domain')}")
    terms.append(cfg.dns.spf_all)
    return " ".join(terms)


def _mailto(address: str) -> str:
    address = address.strip()
    if ":" in address:
        return address
    return "mailto:" + address


def dmarc_text(cfg: Config) -> str:
    """`v=DMARC1; p=...; rua=mailto:...; ruf=mailto:...`."""
    parts = ["v=DMARC1", f"p={cfg.dns.dmarc_policy}"]
    if cfg.dns.dmarc_rua:
        parts.append("rua=" + ",".join(_mailto(a) for a in cfg.dns.dmarc_rua))
    if cfg.dns.dmarc_ruf:
        parts.append("ruf=" + ",".join(_mailto(a) for a in cfg.dns.dmarc_ruf))
    return "; ".join(parts)


def build(cfg: Config, domain: str, legacy: bool = False) -> Records:
    """Every record `domain` should publish."""
    domain = keys.check_name(domain, "domain")
    out: list[Record] = []
    notes: list[str] = []
    spf = spf_text(cfg)
    if spf is None:
        notes.append("no SPF record: set dns.spf_ips (and dns.spf_includes) in the configuration")
    else:
        out.append(Record("spf", domain, spf))
    selectors = keys.find_keys(cfg, domain)
    if not selectors:
        notes.append(
            f"no DKIM key in {keys.key_dir(cfg, domain)}: run `quarantine keygen {domain}`"
        )
    for selector in selectors:
        try:
            text = keys.key_record(cfg, domain, selector)
        except keys.KeyFailure as exc:
            notes.append(f"DKIM selector {selector}: {exc}")
            continue
        out.append(Record("dkim", f"{selector}._domainkey.{domain}", text, selector))
    out.append(Record("dmarc", f"_dmarc.{domain}", dmarc_text(cfg)))
    if legacy:
        # RFC 4870 outbound signing policy: o=~ "some mail is signed".
        out.append(Record("domainkeys", f"_domainkey.{domain}", "o=~"))
        # RFC 5617 (Historic since 2013): make no promise.
        out.append(Record("adsp", f"_adsp._domainkey.{domain}", "dkim=unknown"))
    return Records(domain, out, notes)


def bind_strings(text: str) -> list[str]:
    """`text` as BIND quoted character-strings, each at most 255 bytes of data
    (split before escaping, so no escape is cut), `"` and `\\` escaped and
    bytes outside printable ASCII written `\\DDD` (decimal, as BIND reads it)."""
    data = text.encode("utf-8")
    chunks = [data[i : i + BIND_STRING] for i in range(0, len(data), BIND_STRING)] or [b""]
    out = []
    for chunk in chunks:
        escaped = []
        for byte in chunk:
            if byte in (0x22, 0x5C):
                escaped.append("\\" + chr(byte))
            elif 0x20 <= byte < 0x7F:
                escaped.append(chr(byte))
            else:
                escaped.append(f"\\{byte:03d}")
        out.append('"' + "".join(escaped) + '"')
    return out


def bind_line(record: Record, ttl: int) -> str:
    """`name. TTL IN TXT "..."`, or `( "..." "..." )` for long data."""
    strings = bind_strings(record.text)
    data = strings[0] if len(strings) == 1 else "( " + " ".join(strings) + " )"
    return f"{record.name}. {ttl} IN TXT {data}"


def tinydns_escape(text: str) -> str:
    """tinydns-data text: `:`, `\\` and bytes outside printable ASCII as
    three-digit octal escapes (`:` is `\\072`)."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in (0x3A, 0x5C) or not 0x20 <= byte < 0x7F:
            out.append(f"\\{byte:03o}")
        else:
            out.append(chr(byte))
    return "".join(out)


def tinydns_line(record: Record, ttl: int) -> str:
    """`'fqdn:text:ttl`: tinydns-data splits the text into strings itself."""
    return f"'{tinydns_escape(record.name)}:{tinydns_escape(record.text)}:{ttl}"


def render(records: list[Record], fmt: str, ttl: int) -> str:
    """The records as zone lines in `fmt` (bind or tinydns), newline-terminated."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: bind or tinydns")
    line = bind_line if fmt == "bind" else tinydns_line
    return "".join(line(record, ttl) + "\n" for record in records)
