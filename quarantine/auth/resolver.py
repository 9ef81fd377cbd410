"""DNS for the authentication commands: a small stub resolver over UDP (EDNS0,
TCP when the answer is truncated) that asks the configured or
/etc/resolv.conf servers for the TXT, A, AAAA, MX and PTR records DKIM, SPF and
DMARC need, and the adapters dkimpy and pyspf use to ask it.

Why not dnspython's resolver: importing it costs about 48 ms (dns.message,
dns.name, dns._features reading importlib.metadata), half of what a whole
quarantine-queue run may take. This module imports only the standard library.
It is a stub resolver: the recursive server does the work; here the query is
sent, the reply is matched to it (source, ID, question) and read.
"""

from __future__ import annotations

import _socket
import os
import select
import struct
import sys
import time

from quarantine.config import DnsConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from quarantine.auth.budget import Budget

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SPF": 99}
TYPE_NAMES = {number: name for name, number in TYPES.items()}
CLASS_IN = 1
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3
EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation
MAX_CNAMES = 8
RESOLV_CONF = "/etc/resolv.conf"

# One answer record: (owner name, type name, value). The value is the address
# text for A/AAAA, the name for PTR/CNAME, (preference, exchange) for MX and the
# tuple of character-strings (bytes) for TXT/SPF. Names are lower case,
# without the final dot.
Record = tuple[str, str, object]


class DnsTempError(Exception):
    """The lookup could not be done now (timeout, SERVFAIL, no server): retry later."""


class BadName(ValueError):
    """A name that cannot exist in the DNS (empty or over-long label, over 255 bytes)."""


class NotTheReply(ValueError):
    """A datagram that is not the reply to our query (another ID or question):
    a late answer or a spoof. It is skipped, not taken as the server's word."""


class _ServerFailed(Exception):
    """This server gave no usable answer; the next one may."""


def encode_name(name: str) -> bytes:
    """`name` in wire form. Non-ASCII labels are IDNA-encoded; BadName for a
    name no DNS record can have."""
    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise BadName("empty name")
    out = bytearray()
    for label in text.split("."):
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            try:
                raw = label.encode("idna")
            except UnicodeError:
                raise BadName(f"label {label!r} cannot be encoded") from None
        if not 0 < len(raw) < 64:
            raise BadName(f"label of {len(raw)} bytes")
        out += bytes((len(raw),)) + raw
    out += b"\0"
    if len(out) > 255:
        raise BadName(f"name of {len(out)} bytes")
    return bytes(out)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The (lower-case, dot-joined) name at `offset` and the offset after it,
    following compression pointers (only backwards, so never in a loop)."""
    labels: list[str] = []
    end = -1
    position = offset
    total = 0
    while True:
        if position >= len(data):
            raise ValueError("name runs past the message")
        length = data[position]
        if length & 0xC0 == 0xC0:
            if position + 1 >= len(data):
                raise ValueError("cut compression pointer")
            target = ((length & 0x3F) << 8) | data[position + 1]
            if end < 0:
                end = position + 2
            if target >= position:
                raise ValueError("compression pointer does not point back")
            position = target
            continue
        if length & 0xC0:
            raise ValueError("unknown label type")
        position += 1
        if length == 0:
            break
        label = data[position : position + length]
        if len(label) != length:
            raise ValueError("label runs past the message")
        total += length + 1
        if total > 255:
            raise ValueError("name over 255 bytes")
        labels.append(label.decode("latin-1").lower())
        position += length
    return ".".join(labels), (end if end >= 0 else position)


def _rdata(data: bytes, start: int, length: int, rtype: int) -> object:
    """The value of one record (see `Record`); None for a type not asked about."""
    rdata = data[start : start + length]
    if rtype == 1 and length == 4:
        return _socket.inet_ntop(_socket.AF_INET, rdata)
    if rtype == 28 and length == 16:
        return _socket.inet_ntop(_socket.AF_INET6, rdata)
    if rtype in (2, 5, 12):
        return _read_name(data, start)[0]
    if rtype == 15:
        if length < 3:
            raise ValueError("short MX record")
        return struct.unpack_from("!H", data, start)[0], _read_name(data, start + 2)[0]
    if rtype in (16, 99):
        strings: list[bytes] = []
        position = 0
        while position < length:
            size = rdata[position]
            chunk = rdata[position + 1 : position + 1 + size]
            if len(chunk) != size:
                raise ValueError("character-string runs past the record")
            strings.append(chunk)
            position += 1 + size
        return tuple(strings)
    if rtype in (1, 28):
        raise ValueError(f"address record of {length} bytes")
    return None


def parse_reply(data: bytes, query: bytes) -> tuple[int, bool, list[Record]]:
    """(rcode, truncated, answer records) of `data` if it is the reply to
    `query` (same ID, same question, QR set), else NotTheReply; ValueError
    when it is the reply but cannot be read."""
    if len(data) < 12:
        raise ValueError("reply shorter than a header")
    ident, flags, qdcount, ancount = struct.unpack_from("!HHHH", data)
    if ident != struct.unpack_from("!H", query)[0] or not flags & 0x8000:
        raise NotTheReply("not the reply to this query")
    question_end = query.index(b"\0", 12) + 5
    question = query[12:question_end]
    truncated = bool(flags & 0x0200)
    rcode = flags & 0x000F
    if qdcount != 1 or data[12:question_end].lower() != question.lower():
        if truncated and qdcount == 0:
            return rcode, True, []
        raise NotTheReply("the reply is for another question")
    records: list[Record] = []
    position = question_end
    for _ in range(ancount):
        owner, position = _read_name(data, position)
        if position + 10 > len(data):
            if truncated:
                break
            raise ValueError("record runs past the message")
        rtype, rclass, _ttl, length = struct.unpack_from("!HHIH", data, position)
        position += 10
        if position + length > len(data):
            if truncated:
                break
            raise ValueError("record data runs past the message")
        if rclass == CLASS_IN and rtype in TYPE_NAMES:
            value = _rdata(data, position, length, rtype)
            if value is not None:
                records.append((owner, TYPE_NAMES[rtype], value))
        position += length
    return rcode, truncated, records


def make_query(wire_name: bytes, rtype: int, edns: bool = True) -> bytes:
    """A recursive query with a random ID, and an EDNS0 OPT record unless the
    server refused EDNS."""
    header = os.urandom(2) + struct.pack("!HHHHH", 0x0100, 1, 0, 0, 1 if edns else 0)
    opt = b"\0" + struct.pack("!HHIH", 41, EDNS_PAYLOAD, 0, 0) if edns else b""
    return header + wire_name + struct.pack("!HH", rtype, CLASS_IN) + opt


def _family(server: str) -> int:
    return _socket.AF_INET6 if ":" in server else _socket.AF_INET


def _udp(server: str, port: int, query: bytes, deadline: float) -> bytes:
    """The reply from `server` to `query` over UDP. The socket is connected,
    so the kernel drops datagrams from any other address; datagrams that are not
    the reply (a late answer, a spoof from the same address) are skipped.
    `_socket`, the C module under `socket`: `socket`'s enum conversions of
    every constant cost milliseconds a start. A socket that cannot be made
    (no IPv6 here, out of descriptors) fails this server only, like a timeout."""
    try:
        sock = _socket.socket(_family(server), _socket.SOCK_DGRAM)
    except OSError as exc:
        raise _ServerFailed(f"{server}: {exc.strerror or exc}") from None
    try:
        try:
            sock.connect((server, port))
            sock.send(query)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    raise _ServerFailed(f"{server}: timed out")
                data = sock.recv(65535)
                try:
                    parse_reply(data, query)
                except NotTheReply:
                    continue
                except ValueError:
                    pass  # the server's own reply, unreadable: the caller says so
                return data
        except OSError as exc:
            raise _ServerFailed(f"{server}: {exc.strerror or exc}") from None
    finally:
        sock.close()


def _tcp(server: str, port: int, query: bytes, deadline: float) -> bytes:
    """The reply from `server` to `query` over TCP (RFC 7766: two-byte length
    prefix), after a truncated UDP reply."""
    try:
        sock = _socket.socket(_family(server), _socket.SOCK_STREAM)
    except OSError as exc:
        raise _ServerFailed(f"{server}: TCP: {exc.strerror or exc}") from None
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect((server, port))
        sock.sendall(struct.pack("!H", len(query)) + query)
        data = b""
        want = 2
        while len(data) < want:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(65537 - len(data))
            if not chunk:
                raise _ServerFailed(f"{server}: TCP connection closed early")
            data += chunk
            if len(data) >= 2:
                want = 2 + struct.unpack_from("!H", data)[0]
        return data[2:want]
    except OSError as exc:
        raise _ServerFailed(f"{server}: TCP: {exc.strerror or exc}") from None
    finally:
        sock.close()


def nameservers_from(path: str = RESOLV_CONF) -> list[str]:
    """The `nameserver` lines of resolv.conf(5); 127.0.0.1 when there are
    none, as the C library does."""
    servers: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    servers.append(words[1])
    except OSError:
        pass
    return servers or ["127.0.0.1"]


class Resolver:
    """Asks `nameservers` (in turn, until `timeout` seconds are up) on `port`.
    With a `budget`, every lookup is charged to it first (budget.Exhausted
    once a message's allowance of queries or DNS time is spent)."""

    __slots__ = ("budget", "nameservers", "port", "timeout")

    def __init__(
        self,
        nameservers: Sequence[str],
        port: int = 53,
        timeout: float = 5.0,
        budget: Budget | None = None,
    ) -> None:
        self.nameservers = list(nameservers)
        self.port = port
        self.timeout = timeout
        self.budget = budget

    def _exchange(self, wire_name: bytes, rtype: int, timeout: float) -> tuple[int, list[Record]]:
        """(rcode, records) from the first server with a usable answer:
        NOERROR or NXDOMAIN. A server that fails (timeout, SERVFAIL, REFUSED,
        garbage) is passed over; when all have failed until the time is up,
        DnsTempError. Each round gives every server a longer wait."""
        deadline = time.monotonic() + timeout
        wait = min(1.0, timeout / max(len(self.nameservers), 1))
        pause = 0.1  # between rounds, so a failing server is not asked in a tight loop
        problems: list[str] = []
        while True:
            for server in self.nameservers:
                edns = True
                while True:
                    query = make_query(wire_name, rtype, edns)
                    until = min(deadline, time.monotonic() + wait)
                    try:
                        data = _udp(server, self.port, query, until)
                        rcode, truncated, records = parse_reply(data, query)
                        if truncated:
                            data = _tcp(server, self.port, query, deadline)
                            rcode, _, records = parse_reply(data, query)
                    except _ServerFailed as exc:
                        problems.append(str(exc))
                        break
                    except ValueError as exc:
                        problems.append(f"{server}: bad reply: {exc}")
                        break
                    if rcode == FORMERR and edns:
                        edns = False  # an old server that does not know EDNS0
                        continue
                    if rcode in (NOERROR, NXDOMAIN):
                        return rcode, records
                    problems.append(f"{server}: rcode {rcode}")
                    break
                if time.monotonic() >= deadline:
                    break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(pause, left))
            pause = min(pause * 2, 2.0)
            wait *= 2
        said = "; ".join(dict.fromkeys(problems)) or "no time to ask"
        raise DnsTempError(f"no answer in {timeout:g} s ({said})")

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list[Record]:
        """Every answer record for `name`/`qtype`, CNAMEs included (as
        pyspf's cache wants them); [] for NXDOMAIN or no data; BadName for a
        name that cannot exist; DnsTempError when no answer could be had."""
        wire = encode_name(name)
        timeout = timeout or self.timeout
        if self.budget is not None:
            timeout = self.budget.charge(timeout)
        rcode, records = self._exchange(wire, TYPES[qtype], timeout)
        return [] if rcode == NXDOMAIN else records

    def resolve(self, name: str, qtype: str) -> list[object]:
        """The values of the `qtype` records at `name`, CNAMEs followed (up
        to 8; the recursive server usually follows them in one answer)."""
        current = _read_name(encode_name(name), 0)[0]
        records = self.records(current, qtype)
        seen: set[str] = set()
        while True:
            values = [v for owner, kind, v in records if owner == current and kind == qtype]
            if values:
                return values
            targets = [v for owner, kind, v in records if owner == current and kind == "CNAME"]
            if not targets:
                return []
            seen.add(current)
            current = str(targets[0])
            if current in seen or len(seen) > MAX_CNAMES:
                return []
            if not any(owner == current for owner, _, _ in records):
                records = self.records(current, qtype)


def make_resolver(cfg: DnsConfig, budget: Budget | None = None) -> Resolver:
    """The configured servers and port, else those of /etc/resolv.conf."""
    return Resolver(cfg.nameservers or nameservers_from(), cfg.port, cfg.timeout, budget)


def txt(resolver: Resolver, name: str) -> list[str]:
    """The TXT records at `name`, each with its character-strings joined; an
    empty list when the name or the record does not exist (NXDOMAIN, NODATA)
    or cannot exist (a name from a hostile header: no records, and not a
    temporary failure, which a DKVERIFY `k` would defer forever).
    DnsTempError when the answer could not be had."""
    try:
        values = resolver.resolve(name, "TXT")
    except BadName:
        return []
    return [b"".join(v).decode("latin-1") for v in values if isinstance(v, tuple)]


def dkim_dnsfunc(resolver: Resolver) -> Callable[..., bytes]:
    """dkimpy's `dnsfunc(name, timeout=5)`: bytes name in, the joined TXT data
    (bytes) out, empty when absent. A temporary failure propagates."""

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        records = txt(resolver, name.decode("ascii", "replace"))
        return records[0].encode("latin-1") if records else b""

    return lookup


def plug_dkim_dns() -> None:
    """Before dkimpy is imported: replace its `dkim.dnsplug`, which imports
    dnspython's resolver, by a plug that refuses to look anything up (every
    caller here passes its own `dnsfunc`). Only in our own commands' processes,
    never in a library."""
    if "dkim" in sys.modules or "dkim.dnsplug" in sys.modules:
        return
    import types

    def get_txt(name: bytes, timeout: float = 5) -> bytes:
        raise DnsTempError("dkimpy's own DNS is not used: pass dnsfunc")

    plug = types.ModuleType("dkim.dnsplug")
    plug.get_txt = get_txt  # type: ignore[attr-defined]
    sys.modules["dkim.dnsplug"] = plug


def import_dkim() -> Any:
    """dkimpy, without dnspython's resolver (see `plug_dkim_dns`), and with
    PyNaCl loaded on first use: dkimpy imports it up front (about 9 ms) for
    ed25519 only, and most signatures are RSA. Its import is refused for that
    moment and dkimpy's module global `nacl` is then given a stand-in that
    imports PyNaCl when an ed25519 key is first used."""
    plug_dkim_dns()
    if "dkim" in sys.modules:
        return sys.modules["dkim"]
    blocked = [name for name in ("nacl.signing", "nacl.encoding") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import dkim
    finally:
        for name in blocked:
            sys.modules.pop(name, None)
    if blocked:
        dkim.nacl = _NaclOnDemand()
    return dkim


class _NaclOnDemand:
    """dkimpy's `nacl` name: the real package, imported at first attribute use
    (dkimpy reads nacl.signing, nacl.encoding and nacl.exceptions)."""

    def __getattr__(self, name: str) -> Any:
        import nacl.encoding
        import nacl.exceptions
        import nacl.signing

        return getattr(nacl, name)


def import_spf() -> Any:
    """pyspf, its code as shipped, imported with stand-ins for what it imports
    up front but a check does not use, for that moment only:
    - dnspython (`dns`, `dns.resolver`) unimportable, and a pydns `DNS` that
      is never asked anything: lookups go through `use_for_pyspf`;
    - `email.message` and `urllib.parse` (for `get_header` and the URL-quoting
      of a macro's upper-case letters) loaded at first use: with the datetime,
      calendar and random modules they pull in, about 10 ms a start;
    - `socket` (its one use in a check is `socket.error`, in except clauses)
      the C module `_socket`, without `socket`'s enum conversions;
    - `re` one whose patterns are compiled at their first use (pyspf compiles
      eleven on import; its IPv6 one alone costs milliseconds)."""
    if "spf" in sys.modules:
        return sys.modules["spf"]
    import types
    import warnings

    from quarantine.lazyimport import import_with, lazy_re, on_first_use

    stand_ins: dict[str, Any] = {}
    if "dns.resolver" not in sys.modules:
        pydns = types.ModuleType("DNS")
        pydns.Type = types.SimpleNamespace(SPF=99)  # type: ignore[attr-defined]
        pydns.DiscoverNameServers = lambda: None  # type: ignore[attr-defined]
        stand_ins.update({"dns": None, "dns.resolver": None, "DNS": pydns})

    def message(*args: Any, **kwargs: Any) -> Any:
        from email.message import Message

        return Message(*args, **kwargs)

    stand_ins["email.message"] = on_first_use("email.message", Message=message)
    stand_ins["urllib.parse"] = on_first_use("urllib.parse")
    stand_ins["socket"] = _socket
    with warnings.catch_warnings():
        # Invalid escapes in pyspf 2.0.14's docstrings warn when it is compiled.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        return import_with("spf", stand_ins, {"re": lazy_re()})


def use_for_pyspf(resolver: Resolver) -> Callable[..., list[object]]:
    """Point pyspf's `DNSLookup` at `resolver`; returns the lookup it had, so
    the caller can put it back. Every answer record is returned with its owner,
    CNAMEs included, in the form pyspf caches: ((name, type), value)."""
    spf = import_spf()

    def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list[object]:
        try:
            records = resolver.records(name, qtype, min(timeout, resolver.timeout))
        except BadName:
            return []
        except DnsTempError as exc:
            raise spf.TempError(f"DNS {exc}") from None
        return [((owner, kind), value) for owner, kind, value in records]

    previous: Callable[..., list[object]] = spf.DNSLookup
    spf.DNSLookup = lookup
    return previous
