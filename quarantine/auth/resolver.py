"""DNS for the authentication commands: one dnspython resolver built from the
`dns` section of the configuration (servers, port, timeout), TXT lookups that
tell a temporary failure from an answer of "nothing there", and the adapters
dkimpy and pyspf need to use it.
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.resolver

from quarantine.config import DnsConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class DnsTempError(Exception):
    """The lookup could not be done now (timeout, SERVFAIL, no server): retry later."""


def make_resolver(cfg: DnsConfig) -> dns.resolver.Resolver:
    """The system resolver, or the configured servers and port."""
    if cfg.nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = list(cfg.nameservers)
    else:
        resolver = dns.resolver.Resolver()
    resolver.port = cfg.port
    resolver.timeout = cfg.timeout
    resolver.lifetime = cfg.timeout
    return resolver


def txt(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    """The TXT records at `name`, each with its character-strings joined; an
    empty list when the name or the record does not exist (NXDOMAIN, NODATA).
    DnsTempError when the answer could not be had."""
    try:
        qname = dns.name.from_text(name)
    except dns.exception.DNSException:
        # A name that cannot exist (empty or over-long label, bad escape)
        # comes from a hostile header: it has no records, it is not a
        # temporary failure (which a DKVERIFY `k` would defer forever).
        return []
    try:
        answer = resolver.resolve(qname, "TXT", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise DnsTempError(f"{name} TXT: {exc}") from None
    except dns.exception.DNSException as exc:
        raise DnsTempError(f"{name} TXT: {exc}") from None
    if answer.rrset is None:
        return []
    return [b"".join(record.strings).decode("latin-1") for record in answer.rrset]


def dkim_dnsfunc(resolver: dns.resolver.Resolver) -> Callable[..., bytes]:
    """dkimpy's `dnsfunc(name, timeout=5)`: bytes name in, the joined TXT data
    (bytes) out, empty when absent. A temporary failure propagates."""

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        records = txt(resolver, name.decode("ascii", "replace"))
        return records[0].encode("latin-1") if records else b""

    return lookup


def use_for_pyspf(resolver: dns.resolver.Resolver) -> None:
    """pyspf 2.0.14 asks `dns.resolver` module functions: point them here.
    Its own lookup calls the deprecated `dns.resolver.query()` (a
    DeprecationWarning on every query), so its `DNSLookup` is replaced by one
    that calls `resolve()` on this resolver and maps failures to TempError."""
    import warnings

    with warnings.catch_warnings():
        # Invalid escapes in pyspf 2.0.14's docstrings warn when it is compiled.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        import spf

    dns.resolver.default_resolver = resolver

    def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list[object]:
        out: list[object] = []
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return out  # no such name can exist
        try:
            answer = resolver.resolve(qname, qtype, lifetime=min(timeout, resolver.lifetime))
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return out
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {exc}") from None
        for rdata in answer:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out

    spf.DNSLookup = lookup
