"""The stub resolver the authentication commands use (quarantine/auth/resolver.py):
its answers against a real dnsmasq, checked against dnspython's; truncation and
TCP; CNAMEs; pyspf through it; and servers that misbehave (silent, refusing,
SERVFAIL, spoofed or garbage replies, no EDNS), played by small UDP servers."""

from __future__ import annotations

import _socket
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dns_server import DnsServer, free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from quarantine.auth import resolver
from quarantine.auth.resolver import BadName, DnsTempError, Resolver

REPO = Path(__file__).resolve().parents[1]
DOMAIN = "example.test"
BIG = ["v=DKIM1; k=rsa; p=" + letter * 700 for letter in "ABCD"]  # 2.9 KB: over EDNS's 1232
RECORDS: dict[str, str | list[str]] = {
    DOMAIN: ["v=spf1 mx a:web.example.test include:_spf.example.test -all", "site-verification"],
    f"_spf.{DOMAIN}": "v=spf1 ip4:10.0.0.0/8 ip6:2001:db8:1::/48 -all",
    f"sel._domainkey.{DOMAIN}": "v=DKIM1; k=rsa; p=" + "Q" * 400,
    f"big.{DOMAIN}": BIG,
    f"_dmarc.{DOMAIN}": "v=DMARC1; p=reject",
}
EXTRA = [
    f"host-record=mail.{DOMAIN},192.0.2.7,2001:db8::7",
    f"host-record=web.{DOMAIN},192.0.2.80",
    f"mx-host={DOMAIN},mail.{DOMAIN},10",
    f"cname=alias.{DOMAIN},big.{DOMAIN}",
    f"cname=twice.{DOMAIN},alias.{DOMAIN}",
    f"cname=provider._domainkey.{DOMAIN},sel._domainkey.{DOMAIN}",
]
QUESTIONS = [
    (DOMAIN, "TXT"),
    (f"sel._domainkey.{DOMAIN}", "TXT"),
    (f"big.{DOMAIN}", "TXT"),
    (f"twice.{DOMAIN}", "TXT"),
    (f"mail.{DOMAIN}", "A"),
    (f"mail.{DOMAIN}", "AAAA"),
    (DOMAIN, "MX"),
    ("7.2.0.192.in-addr.arpa", "PTR"),
    (f"mail.{DOMAIN}", "TXT"),  # NODATA
    (f"nothing.{DOMAIN}", "A"),  # NXDOMAIN
]


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    running = DnsServer(RECORDS, EXTRA)
    yield running
    running.stop()


@pytest.fixture
def ours(server: DnsServer) -> Resolver:
    return Resolver(["127.0.0.1"], server.port, 3.0)


def dnspython_answer(port: int, name: str, qtype: str) -> set[tuple[str, str, object]]:
    """The same question asked with dnspython, in our result form."""
    import dns.resolver

    other = dns.resolver.Resolver(configure=False)
    other.nameservers = ["127.0.0.1"]
    other.port = port
    try:
        answer = other.resolve(name, qtype, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return set()
    out: set[tuple[str, str, object]] = set()
    for rrset in answer.response.answer:
        owner = rrset.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            value: object
            if kind in ("A", "AAAA"):
                value = rdata.address
            elif kind == "MX":
                value = (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
            elif kind in ("PTR", "CNAME"):
                value = rdata.target.to_text(omit_final_dot=True).lower()
            else:
                value = tuple(rdata.strings)
            out.add((owner, kind, value))
    return out


@pytest.mark.parametrize(("name", "qtype"), QUESTIONS)
def test_answers_equal_dnspythons(server: DnsServer, ours: Resolver, name: str, qtype: str) -> None:
    """An independent implementation asked the same server agrees record for record."""
    got = ours.records(name, qtype)
    assert len(got) == len(set(got))
    assert set(got) == dnspython_answer(server.port, name, qtype)


def test_values(ours: Resolver) -> None:
    assert ours.resolve(f"mail.{DOMAIN}", "A") == ["192.0.2.7"]
    assert ours.resolve(f"MAIL.{DOMAIN}.", "AAAA") == ["2001:db8::7"]
    assert ours.resolve(DOMAIN, "MX") == [(10, f"mail.{DOMAIN}")]
    assert ours.resolve("7.2.0.192.in-addr.arpa", "PTR") == [f"mail.{DOMAIN}"]
    assert sorted(resolver.txt(ours, DOMAIN)) == sorted(RECORDS[DOMAIN])
    assert resolver.txt(ours, f"mail.{DOMAIN}") == []
    assert resolver.txt(ours, f"nothing.{DOMAIN}") == []


def test_truncated_udp_answer_is_asked_again_over_tcp(server: DnsServer, ours: Resolver) -> None:
    query = resolver.make_query(resolver.encode_name(f"big.{DOMAIN}"), 16)
    data = resolver._udp("127.0.0.1", server.port, query, time.monotonic() + 3)
    assert resolver.parse_reply(data, query)[1], "dnsmasq should truncate 2.9 KB over UDP"
    assert sorted(resolver.txt(ours, f"big.{DOMAIN}")) == BIG


def test_cname_chains_are_followed(ours: Resolver) -> None:
    assert sorted(resolver.txt(ours, f"twice.{DOMAIN}")) == BIG
    key = resolver.dkim_dnsfunc(ours)(f"provider._domainkey.{DOMAIN}".encode())
    assert key == str(RECORDS[f"sel._domainkey.{DOMAIN}"]).encode()


def test_dkim_dnsfunc_absent_is_empty(ours: Resolver) -> None:
    assert resolver.dkim_dnsfunc(ours)(f"none._domainkey.{DOMAIN}".encode()) == b""


@pytest.mark.parametrize(
    "name",
    ["", ".", "a..b.example", "x" * 64 + ".example", ".".join(["abcdefghi"] * 30), "bad\udcff.x"],
)
def test_names_that_cannot_exist(ours: Resolver, name: str) -> None:
    """From hostile headers: no records, never a temporary failure, never a query."""
    with pytest.raises(BadName):
        ours.records(name, "TXT")
    assert resolver.txt(ours, name) == []
    assert resolver.dkim_dnsfunc(ours)(name.encode("utf-8", "surrogateescape")) == b""


def test_international_names_are_idna_encoded() -> None:
    assert resolver.encode_name("bücher.example") == b"\x0dxn--bcher-kva\x07example\x00"


def test_pyspf_through_the_resolver(server: DnsServer, ours: Resolver) -> None:
    """mx, a:, include, ip6 evaluated by pyspf with its lookups on our resolver."""
    spf = resolver.import_spf()
    before = spf.DNSLookup
    previous = resolver.use_for_pyspf(ours)
    try:
        results = {
            ip: spf.check2(i=ip, s=f"someone@{DOMAIN}", h=f"mail.{DOMAIN}")[0]
            for ip in ("192.0.2.7", "192.0.2.80", "10.1.2.3", "2001:db8:1::5", "203.0.113.9")
        }
    finally:
        spf.DNSLookup = previous
    assert previous is before
    assert results == {
        "192.0.2.7": "pass",
        "192.0.2.80": "pass",
        "10.1.2.3": "pass",
        "2001:db8:1::5": "pass",
        "203.0.113.9": "fail",
    }


def test_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nsearch example.org\nnameserver 192.0.2.53\noptions ndots:2\n"
        "nameserver 2001:db8::53\nnameserver\n"
    )
    assert resolver.nameservers_from(str(conf)) == ["192.0.2.53", "2001:db8::53"]
    assert resolver.nameservers_from(str(tmp_path / "missing")) == ["127.0.0.1"]
    conf.write_text("search example.org\n")
    assert resolver.nameservers_from(str(conf)) == ["127.0.0.1"]


# --- servers that misbehave --------------------------------------------------


def reply(
    query: bytes,
    rcode: int = 0,
    answers: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
    ident: bytes | None = None,
    question: bytes | None = None,
    edns_ok: bool = True,
) -> bytes:
    """A reply to `query` (or a forged one): answers are (type, rdata) at the
    question's name, by compression pointer."""
    end = query.index(b"\0", 12) + 5
    header = (ident or query[:2]) + struct.pack("!HHHHH", 0x8180 | rcode, 1, len(answers), 0, 0)
    body = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
        for rtype, rdata in answers
    )
    return header + (question or query[12:end]) + body


class FakeServer:
    """A UDP server on 127.0.0.1 answering each query with `respond(query)`
    (a list of datagrams, possibly empty); it records what it was asked."""

    def __init__(self, respond: Callable[[bytes], list[bytes]]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.respond = respond
        self.queries: list[bytes] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stopped.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self.queries.append(query)
                for datagram in self.respond(query):
                    self.sock.sendto(datagram, peer)
            except OSError:  # closed by the test (or a relay that timed out)
                return

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[bytes], list[bytes]]], FakeServer]]:
    made: list[FakeServer] = []

    def start(respond: Callable[[bytes], list[bytes]]) -> FakeServer:
        made.append(FakeServer(respond))
        return made[-1]

    yield start
    for one in made:
        one.close()


TXT_RDATA = b"\x0bv=spf1 -all"


def test_silent_server_is_a_temporary_failure_within_the_timeout(
    fake: Callable[..., FakeServer],
) -> None:
    silent = fake(lambda query: [])
    started = time.monotonic()
    with pytest.raises(DnsTempError, match="timed out"):
        Resolver(["127.0.0.1"], silent.port, 0.6).records(DOMAIN, "TXT")
    assert 0.5 < time.monotonic() - started < 1.5
    assert len(silent.queries) >= 1


def test_refusing_port_is_a_temporary_failure() -> None:
    with pytest.raises(DnsTempError):
        Resolver(["127.0.0.1"], free_port(), 0.5).records(DOMAIN, "TXT")


@pytest.mark.parametrize("rcode", [2, 4, 5])  # SERVFAIL, NOTIMP, REFUSED
def test_a_failing_server_is_a_temporary_failure(
    fake: Callable[..., FakeServer], rcode: int
) -> None:
    """Asked again until the time is up (it may recover), then DnsTempError."""
    failing = fake(lambda query: [reply(query, rcode)])
    with pytest.raises(DnsTempError, match=f"rcode {rcode}"):
        Resolver(["127.0.0.1"], failing.port, 0.5).records(DOMAIN, "TXT")
    assert len(failing.queries) >= 1


def test_servfail_then_a_good_server(fake: Callable[..., FakeServer], server: DnsServer) -> None:
    """Two servers on 127.0.0.1 cannot share a port; a relay plays the second
    server: the first query gets SERVFAIL, the next ones go to dnsmasq."""
    upstream = ("127.0.0.1", server.port)

    def flaky(query: bytes) -> list[bytes]:
        if len(fake_server.queries) == 1:
            return [reply(query, 2)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as relay:
            relay.settimeout(2)
            relay.sendto(query, upstream)
            return [relay.recv(4096)]

    fake_server = fake(flaky)
    got = resolver.txt(Resolver(["127.0.0.1"], fake_server.port, 3.0), f"_dmarc.{DOMAIN}")
    assert got == ["v=DMARC1; p=reject"]
    assert len(fake_server.queries) == 2


def test_spoofed_replies_are_ignored(fake: Callable[..., FakeServer]) -> None:
    """A wrong ID, a reply to another question and a non-reply come first; the
    real answer after them is the one taken."""

    def spoofing(query: bytes) -> list[bytes]:
        other = bytes((query[0] ^ 0xFF, query[1]))
        forged = [(16, b"\x0fv=spf1 +all ok?")]
        return [
            reply(query, answers=forged, ident=other),
            reply(query, answers=forged, question=b"\x04evil\x04test\x00\x00\x10\x00\x01"),
            query,  # QR not set
            reply(query, answers=[(16, TXT_RDATA)]),
        ]

    spoofer = fake(spoofing)
    assert resolver.txt(Resolver(["127.0.0.1"], spoofer.port, 2.0), DOMAIN) == ["v=spf1 -all"]


class NoIPv6:
    """`_socket` on a host without IPv6: making an AF_INET6 socket fails."""

    def __getattr__(self, name: str) -> object:
        return getattr(_socket, name)

    @staticmethod
    def socket(family: int, kind: int) -> object:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return _socket.socket(family, kind)


def test_a_socket_that_cannot_be_made_passes_to_the_next_server(
    fake: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first nameserver is IPv6 on a host without IPv6: its socket cannot
    be made, and the next server answers (no OSError out of the resolver)."""
    good = fake(lambda query: [reply(query, answers=[(16, TXT_RDATA)])])
    monkeypatch.setattr(resolver, "_socket", NoIPv6())
    ours = Resolver(["::1", "127.0.0.1"], good.port, 2.0)
    assert resolver.txt(ours, DOMAIN) == ["v=spf1 -all"]
    with pytest.raises(DnsTempError, match="::1: Address family not supported"):
        Resolver(["::1"], good.port, 0.3).records(DOMAIN, "TXT")


def test_a_server_without_edns_is_asked_again_without_it(fake: Callable[..., FakeServer]) -> None:
    def old(query: bytes) -> list[bytes]:
        has_opt = struct.unpack_from("!H", query, 10)[0] == 1
        return [reply(query, 1)] if has_opt else [reply(query, answers=[(16, TXT_RDATA)])]

    old_server = fake(old)
    assert resolver.txt(Resolver(["127.0.0.1"], old_server.port, 2.0), DOMAIN) == ["v=spf1 -all"]
    assert [struct.unpack_from("!H", q, 10)[0] for q in old_server.queries] == [1, 0]


@pytest.mark.parametrize(
    "answers",
    [
        [(16, b"\x20short")],  # a character-string longer than its record
        [(1, b"\x7f\x00\x00")],  # an A record of 3 bytes
        [(15, b"\x00")],  # an MX without its name
        [(12, b"\xc0\xff")],  # a compression pointer forwards
        [(12, b"\xc0\x0c")],  # a pointer back into the question: fine, a name
    ],
)
def test_malformed_replies(
    fake: Callable[..., FakeServer], answers: list[tuple[int, bytes]]
) -> None:
    garbage = fake(lambda query: [reply(query, answers=answers)])
    lookup = Resolver(["127.0.0.1"], garbage.port, 0.5)
    qtype = {16: "TXT", 1: "A", 15: "MX", 12: "PTR"}[answers[0][0]]
    if answers[0][1] == b"\xc0\x0c":
        assert lookup.records(DOMAIN, qtype) == [(DOMAIN, "PTR", DOMAIN)]
        return
    with pytest.raises(DnsTempError, match="bad reply"):
        lookup.records(DOMAIN, qtype)


def test_compression_loop_does_not_hang() -> None:
    query = resolver.make_query(resolver.encode_name(DOMAIN), 12)
    looping = reply(query, answers=[(12, b"\xc0\x00")])
    # A name pointing at itself, placed as the owner of the answer:
    at = len(looping) - 2 - 10 - 2
    looping = looping[:at] + struct.pack("!H", 0xC000 | at) + looping[at + 2 :]
    with pytest.raises(ValueError):
        resolver.parse_reply(looping, query)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 0xFFFF))
def test_any_reply_bytes_give_records_or_value_error(tail: bytes, flags: int) -> None:
    query = resolver.make_query(resolver.encode_name(DOMAIN), 16)
    end = query.index(b"\0", 12) + 5
    for data in (
        query[:2] + struct.pack("!H", flags | 0x8000) + tail,
        query[:2] + struct.pack("!HHHHH", flags | 0x8000, 1, 3, 0, 0) + query[12:end] + tail,
    ):
        try:
            rcode, _, records = resolver.parse_reply(data, query)
        except ValueError:
            continue
        assert 0 <= rcode < 16
        assert all(kind in resolver.TYPES for _, kind, _ in records)


def fresh_process(probe: str) -> list[str]:
    """What `probe` prints, split in words, run in a new interpreter (its
    imports start from nothing) with warnings as errors."""
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    return out.stdout.split()


def test_queue_process_loads_no_dnspython_resolver() -> None:
    """quarantine-queue's imports (verification, pyspf) leave dnspython, and
    the modules pyspf imports but a check does not use, out: about 48 ms of
    every message for dnspython, 10 ms for the others. A process that wants
    them afterwards still gets them, and pyspf's deferred names work."""
    probe = (
        "import sys\n"
        "import quarantine.queue, quarantine.auth.verify as v\n"
        "spf = v.dnsres.import_spf()\n"
        "heavy = ('dns', 'dkim', 'logging', 'email.message', 'email.utils', 'urllib.parse',\n"
        "         'socket', 'signal', 'hashlib', 'threading', 'calendar', 'datetime')\n"
        "print([m for m in sys.modules if m.startswith('dns.')] + [m for m in heavy\n"
        "      if m in sys.modules])\n"
        "import dns.resolver, socket, urllib.parse, email.message\n"
        "print(dns.resolver.Resolver.__name__, spf.urllibparse.quote('a b', '~'),\n"
        "      type(spf.Message()).__name__, spf.socket.error is OSError,\n"
        "      spf.RE_IP6.match('2001:db8::1') is not None, type(__import__('re').compile('x')))\n"
    )
    assert fresh_process(probe) == [
        "[]", "Resolver", "a%20b", "Message", "True", "True", "<class", "'re.Pattern'>"
    ]  # fmt: skip


def test_dkimpy_loads_pynacl_only_for_an_ed25519_key() -> None:
    """import_dkim leaves PyNaCl out until an ed25519 key is used; then
    signing, verifying and rejecting a changed message all work."""
    probe = (
        "import base64, os, sys\n"
        "from quarantine.auth.resolver import import_dkim\n"
        "dkim = import_dkim()\n"
        "print('nacl.bindings' in sys.modules)\n"
        "seed = os.urandom(32)\n"
        "public = dkim.nacl.signing.SigningKey(seed).verify_key.encode()\n"
        "record = b'v=DKIM1; k=ed25519; p=' + base64.b64encode(public)\n"
        "msg = b'From: a@example.test\\r\\nSubject: x\\r\\n\\r\\nbody\\r\\n'\n"
        "sig = dkim.sign(msg, b'ed', b'example.test', base64.b64encode(seed),\n"
        "                signature_algorithm=b'ed25519-sha256')\n"
        "dns = lambda name, timeout=5: record\n"
        "print(dkim.verify(sig + msg, dnsfunc=dns), dkim.verify(sig + msg + b'x', dnsfunc=dns))\n"
    )
    assert fresh_process(probe) == ["False", "True", "False"]
