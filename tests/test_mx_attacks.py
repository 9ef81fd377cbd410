"""The MX path against an attacker with one message and a DNS zone: every
attack that hurt `quarantine-queue` before, as a test of the bound that now
answers it (CPU by getrusage, memory by the process's own peak, DNS queries
as the attacker's server counts them), and the RFC 6376 checks that keep a
forged or partial signature from passing. Independent checks by Perl
Mail::DKIM where a signature should pass."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import mx_support as mx
import pytest
from dns_server import DnsServer, Records, ZoneServer
from test_auth_verify import (
    DK_SIGNER,
    MESSAGE,
    RECEIVED,
    SIGNER,
    Key,
    _config,
    key,
    perl_verify,
    records,
)

from quarantine import config, verdict
from quarantine.auth import budget, dkimverify, verify
from quarantine.message import header_fields

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["key"]  # the fixture, shared with test_auth_verify

CPU_LIMIT = 2.5  # seconds: the contract's "about 2 s", with a margin for a busy machine
ALL_LETTERS = "CDEFGIJKLMNOPQR"  # DKVERIFY: refuse on every DKIM status but A


def attack(*signatures: bytes, head: bytes | None = None) -> bytes:
    return b"".join(signatures) + (head or mx.plain_head()) + b"\n" + mx.BODY


def perl_sign(key: Key, message: bytes, selector: str = "s1", **env: str) -> bytes:
    """Signed by Perl Mail::DKIM; DKIM_HEADERS, DKIM_QUERY, DKIM_IDENTITY
    set the h=, q= and i= tags."""
    proc = subprocess.run(
        ["perl", str(SIGNER), str(key.path), "example.test", selector],
        input=message,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
        timeout=30,
    )
    return proc.stdout


def report_for(server: DnsServer, message: bytes, extra: str = "") -> verify.Report:
    return verify.verify_message(_config(server, extra), RECEIVED + message, "", None, {})


# --- CPU: keys, ARC, fields -------------------------------------------------------


def test_huge_rsa_keys_are_refused_before_any_arithmetic(
    zone: Callable[..., ZoneServer],
) -> None:
    """Eight signatures on 16384-bit keys with 16384-bit exponents took about
    6 s of CPU each. Now each is a key error before the RSA step."""
    record = mx.fake_key_record(16384, 16384)
    server = zone(lambda name: record if "._domainkey." in name else None)
    message = attack(*(mx.forged_signature(f"s{i}") for i in range(8)))
    spent = mx.run_queue(message, server)  # type: ignore[arg-type]
    assert spent.code == 0, spent.stderr
    assert spent.cpu < CPU_LIMIT, spent.cpu
    results = spent.results()
    assert results.count("dkim=permerror (RSA key of 16384 bits, over 8192: not used)") == 8


@pytest.mark.parametrize(
    ("bits", "exponent_bits", "reason"),
    [
        (8193, 17, "RSA key of 8193 bits, over 8192: not used"),
        (2048, 2048, "RSA exponent is not a small odd number: not used"),
        (2048, 65, "RSA exponent is not a small odd number: not used"),
        (1023, 17, "RSA key of 1023 bits, under 1024 (RFC 8301)"),
    ],
)
def test_key_bounds_are_key_errors(
    zone: Callable[..., ZoneServer], bits: int, exponent_bits: int, reason: str
) -> None:
    record = mx.fake_key_record(bits, exponent_bits)
    server = zone(lambda name: record if "._domainkey." in name else None)
    cfg = _zone_config(server)
    report = verify.verify_message(cfg, attack(mx.forged_signature("s1")), "", None, {})
    assert [(r.result, r.letter, r.reason) for r in report.dkim] == [("permerror", "M", reason)]


def test_an_8192_bit_key_is_still_used(zone: Callable[..., ZoneServer]) -> None:
    """The bound is a bound: a key at 8192 bits gets the RSA step (this
    forged signature then fails, letter D, not a key error)."""
    record = mx.fake_key_record(8192)
    server = zone(lambda name: record if "._domainkey." in name else None)
    report = verify.verify_message(
        _zone_config(server), attack(mx.forged_signature("s1", sig_bytes=1024)), "", None, {}
    )
    assert [(r.result, r.letter) for r in report.dkim] == [("fail", "D")]


def _zone_config(server: ZoneServer) -> config.Config:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"zone-{server.port}.yaml"
    path.write_text("verify:\n  authserv_id: mx.quarantine.test\n" + server.config_yaml())
    return config.load_file(str(path), read_cache=False, write_cache=False)


def test_arc_chain_of_1000_sets_costs_no_lookups(zone: Callable[..., ZoneServer]) -> None:
    """1,000 ARC sets made 2,002 DNS queries (a reflection tool against any
    zone) and 48 s of CPU: RFC 8617 allows 50 sets, so it fails unread."""
    server = zone(lambda name: None)
    spent = mx.run_queue(attack(mx.arc_chain(1000)), server)  # type: ignore[arg-type]
    assert spent.code == 0, spent.stderr
    assert spent.cpu < CPU_LIMIT, spent.cpu
    assert "arc=fail" in spent.results()
    assert server.queries() <= 5, server.queries()  # SPF and DMARC only


def test_arc_chain_within_the_limit_stays_in_the_dns_budget(
    zone: Callable[..., ZoneServer],
) -> None:
    """50 sets with a selector each would ask 100 names: the message's DNS
    budget (50) stops it, and the result is temporary."""
    server = zone(lambda name: None)
    spent = mx.run_queue(attack(mx.arc_chain(50)), server)  # type: ignore[arg-type]
    assert spent.code == 0, spent.stderr
    assert spent.cpu < CPU_LIMIT, spent.cpu
    assert server.queries() <= budget.MAX_QUERIES + 5, server.queries()


def test_30000_arc_fields(zone: Callable[..., ZoneServer]) -> None:
    server = zone(lambda name: None)
    fields = b"".join(
        b"ARC-Seal: i=%d; a=rsa-sha256; cv=pass; d=attacker.test; s=x%d; b=AAAA\n" % (i % 60, i)
        for i in range(30000)
    )
    spent = mx.run_queue(attack(fields), server)  # type: ignore[arg-type]
    assert spent.code == 0, spent.stderr
    assert spent.cpu < CPU_LIMIT, spent.cpu
    assert "arc=fail (more than 150 ARC fields)" in spent.results()
    assert server.queries() <= 5


# --- memory ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline() -> int:
    """Peak memory of quarantine-queue on a small message: the constant."""
    server = ZoneServer(lambda name: None)
    try:
        spent = mx.run_queue(attack(), server)  # type: ignore[arg-type]
    finally:
        server.stop()
    assert spent.code == 0 and spent.maxrss > 0, spent.stderr
    return spent.maxrss


@pytest.mark.parametrize(
    "shape",
    [
        "2.5 million tiny fields",  # 1 GB and 10 s of CPU before
        "99,000 fields of 100 bytes",  # verified in full
        "one field folded over 10 MB",
    ],
)
def test_a_10mb_header_costs_at_most_three_times_its_size(
    zone: Callable[..., ZoneServer], baseline: int, shape: str
) -> None:
    if shape.startswith("2.5"):
        filler = b"a:b\n" * 2_500_000
    elif shape.startswith("99"):
        filler = b"".join(b"X-F%07d: %s\n" % (i, b"y" * 86) for i in range(99_000))
    else:
        filler = b"X-Folded: start\n" + (b"\t" + b"z" * 98 + b"\n") * 99_000
    message = attack(mx.forged_signature("s1"), head=filler + mx.plain_head())
    assert len(message) > 9_500_000
    server = zone(lambda name: None)
    tiny = shape.startswith("2.5")
    # Every DKVERIFY letter refuses: a header the verifier could not read is
    # still only a reason to try again later.
    env = {"DKVERIFY": f",{ALL_LETTERS}"} if tiny else {}
    spent = mx.run_queue(message, server, env=env)  # type: ignore[arg-type]
    assert spent.cpu < CPU_LIMIT, spent.cpu
    assert spent.maxrss <= baseline + 3 * len(message), (spent.maxrss, baseline, len(message))
    if tiny:
        assert spent.code == 71 and "DKIM status K" in spent.stderr, spent.stderr
    else:
        assert spent.code == 0, spent.stderr
        assert "dkim=permerror (no key record)" in spent.results()


@pytest.fixture(scope="module")
def big_signed(key: Key) -> bytes:
    """A correctly signed message of 10 MB (a body of 100-byte lines)."""
    body = b"".join(b"line %07d %s\n" % (i, b"x" * 86) for i in range(100_000))
    return perl_sign(key, MESSAGE.replace(b"this is a test.\n", body))


def test_signed_10mb_message_under_a_memory_limit_passes(
    key: Key, local_dns: Callable[[Records], DnsServer], big_signed: bytes
) -> None:
    """qmail-smtpd often runs under softlimit: a correctly signed 10 MB
    message got DKIM status C and exit 31 when verification ran out of
    memory. With the address space its verification needs it passes."""
    server = local_dns(records(key))
    limit = _address_space_of_a_small_run(server) + 3 * len(big_signed) + (32 << 20)
    spent = mx.run_queue(big_signed, server, limit_as=limit)
    assert spent.code == 0, spent.stderr
    assert "dkim=pass" in spent.results()


def test_out_of_memory_is_never_permanent(
    key: Key, local_dns: Callable[[Records], DnsServer], big_signed: bytes
) -> None:
    """Less address space than verifying needs: a temporary outcome (71 or
    81, or a temperror accepted), never 31, whatever DKVERIFY says."""
    server = local_dns(records(key))
    small = _address_space_of_a_small_run(server)
    refusals = set()
    for extra in (len(big_signed), len(big_signed) * 3 // 2, 2 * len(big_signed)):
        spent = mx.run_queue(
            big_signed, server, env={"DKVERIFY": f",{ALL_LETTERS}"}, limit_as=small + extra
        )
        refusals.add(spent.code)
        assert spent.code in (0, 71, 81), spent.stderr
        if spent.code == 0:
            assert "dkim=pass" in spent.results() or "dkim=temperror" in spent.results()
    assert refusals, refusals


def _address_space_of_a_small_run(server: DnsServer) -> int:
    """VmPeak of quarantine-queue on a small message: its fixed address space."""
    probe = (
        "import runpy, sys, atexit, os\n"
        "def peak():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmPeak:'):\n"
        "            os.write(2, ('PEAK ' + line.split()[1] + '\\n').encode())\n"
        "atexit.register(peak)\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    saved = mx.PROBE
    mx.PROBE = probe
    try:
        spent = mx.run_queue(MESSAGE, server)
    finally:
        mx.PROBE = saved
    peak = [line for line in spent.stderr.splitlines() if line.startswith("PEAK ")]
    assert peak, spent.stderr
    return int(peak[0].split()[1]) * 1024


def test_memory_error_in_verification_is_temporary(
    key: Key, local_dns: Callable[[Records], DnsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = local_dns(records(key))
    cfg = _config(server, f'  dkverify: ",{ALL_LETTERS}"\n')

    def no_memory(*args: object) -> bytes:
        raise MemoryError

    monkeypatch.setattr(dkimverify, "body_hash", no_memory)
    report = verify.verify_message(cfg, perl_sign(key, MESSAGE), "", None, {})
    assert [(r.result, r.letter, r.exhausted) for r in report.dkim] == [("temperror", "K", True)]
    assert report.code == verify.DEFER, report.reason


# --- the CPU budget itself ----------------------------------------------------------


def test_cpu_budget_stops_any_python_loop() -> None:
    """The timer raises in pure Python code, even code that swallowed the
    first signal with a bare `except:` (the timer fires again)."""
    import resource

    def stubborn() -> None:
        try:
            while True:
                pass
        except BaseException:  # noqa: S110 - what a careless library does
            pass
        while True:
            pass

    before = resource.getrusage(resource.RUSAGE_SELF)
    spent = budget.Budget(cpu=0.2)
    with pytest.raises(budget.Exhausted), spent:
        stubborn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert used < 1.0, used
    assert spent.spent == "CPU time (0.2 s) spent"
    # Disarmed: nothing fires any more.
    deadline = resource.getrusage(resource.RUSAGE_SELF).ru_utime + 0.4
    while resource.getrusage(resource.RUSAGE_SELF).ru_utime < deadline:
        pass


def test_dns_budget_counts_every_lookup() -> None:
    spent = budget.Budget(cpu=0, queries=3)
    for _ in range(3):
        assert spent.charge(5.0) == 5.0
    with pytest.raises(budget.Exhausted, match=r"DNS query budget \(3\) spent"):
        spent.charge(5.0)


# --- RFC 6376 -----------------------------------------------------------------------


def test_a_signature_without_from_in_h_is_ignored(
    key: Key, local_dns: Callable[[Records], DnsServer]
) -> None:
    """h= without From, then From rewritten: it passed DKIM and DMARC. RFC
    6376 §6.1.1: such a signature MUST be ignored."""
    server = local_dns(records(key))
    signed = perl_sign(key, MESSAGE, DKIM_HEADERS="to:subject:date:message-id")
    forged = signed.replace(b"From: Alice <alice@example.test>", b"From: CEO <ceo@example.test>")
    report = report_for(server, forged)
    assert [(r.result, r.letter) for r in report.dkim] == [("permerror", "C")]
    assert "From is not signed" in report.dkim[0].reason
    assert report.dmarc == "fail"


def test_key_t_s_binds_i_to_d(key: Key, local_dns: Callable[[Records], DnsServer]) -> None:
    """RFC 6376 §3.6.1: with t=s in the key, i= must be in d= itself."""
    strict = key.record + "; t=s"
    server = local_dns(records(key, {"strict._domainkey.example.test": strict}))
    sub = perl_sign(key, MESSAGE, "strict", DKIM_IDENTITY="alice@sub.example.test")
    same = perl_sign(key, MESSAGE, "strict", DKIM_IDENTITY="alice@example.test")
    assert [(r.result, r.letter) for r in report_for(server, sub).dkim] == [("permerror", "G")]
    assert report_for(server, same).dkim[0].result == "pass"
    assert perl_verify(same, server).split()[0] == "pass"


@pytest.mark.parametrize(
    "record",
    [
        "v=DKIM1; k=rsa; p=bm90IGEga2V5IGF0IGFsbA==",  # base64, not DER
        "v=DKIM1; k=rsa; p=!!!notbase64!!!",
        "v=DKIM1; k=ed25519; p=c2hvcnQ=",  # 5 bytes, not 32
    ],
)
def test_a_key_that_cannot_be_decoded_is_a_key_error(
    key: Key, local_dns: Callable[[Records], DnsServer], record: str
) -> None:
    """Letter M (PUBLIC KEY INVALID), not D (signature bad)."""
    server = local_dns(records(key, {"s1._domainkey.example.test": record}))
    report = report_for(server, perl_sign(key, MESSAGE))
    assert report.dkim[0].result == "permerror"
    assert report.dkim[0].letter in ("M", "Q"), report.dkim[0].reason
    if "k=rsa" in record:
        assert report.dkim[0].letter == "M"


def test_obsolete_header_syntax_is_read_as_relaxed_does(
    key: Key, local_dns: Callable[[Records], DnsServer]
) -> None:
    """`Subject : x` (space before the colon, RFC 5322 §4.5) made every
    signature a permerror; Mail::DKIM and OpenDKIM pass it."""
    server = local_dns(records(key))
    message = MESSAGE.replace(b"Subject: hello", b"Subject  : hello")
    signed = perl_sign(key, message)
    assert perl_verify(signed, server).split()[0] == "pass"
    assert report_for(server, signed).dkim[0].result == "pass"
    tampered = signed.replace(b"Subject  : hello", b"Subject  : HELLO")
    assert report_for(server, tampered).dkim[0].result == "fail"


def test_q_lists_quoted_printable_i_and_key_s_lists(
    key: Key, local_dns: Callable[[Records], DnsServer]
) -> None:
    """Forms dkimpy rejects and Mail::DKIM verifies: q=dns/txt:other,
    i= with a quoted-printable local part, a key with s=email:tlsrpt."""
    server = local_dns(
        records(key, {"svc._domainkey.example.test": key.record + "; s=email:tlsrpt"})
    )
    cases = [
        perl_sign(key, MESSAGE, DKIM_QUERY="dns/txt:other"),
        perl_sign(key, MESSAGE, DKIM_IDENTITY="a=b@example.test"),
        perl_sign(key, MESSAGE, "svc"),
    ]
    assert b"q=dns/txt:other" in cases[0] and b"=3D" in cases[1]
    for signed in cases:
        assert perl_verify(signed, server).split()[0] == "pass"
        report = report_for(server, signed)
        assert report.dkim[0].result == "pass", report.dkim[0].reason


def test_partial_body_signature_keeps_nothing_out_of_junk(
    key: Key, local_dns: Callable[[Records], DnsServer], tmp_path: Path
) -> None:
    """A trusted domain's l= signature, and spam appended after the signed
    part: dkim=pass (partial body) in the header, but deliver's rules see
    `policy`, so the trusted-dkim rule does not keep it in the inbox."""
    import dkim

    server = local_dns(records(key))
    signature = dkim.sign(
        MESSAGE.replace(b"\n", b"\r\n"),
        b"s1",
        b"example.test",
        key.path.read_bytes(),
        include_headers=[b"from", b"to", b"subject"],
        length=True,
    )
    spam = b"\nBUY CHEAP PILLS http://spam.example/\n"
    message = signature.replace(b"\r\n", b"\n") + MESSAGE + spam
    report = report_for(server, message)
    assert report.dkim[0].result == "pass" and report.dkim[0].partial
    value = report.authres_value()
    assert "dkim=pass (partial body: l=" in value
    headers = [
        ("authentication-results", " ".join(value.split())),
        ("x-spam-status", "Yes, score=9.1 required=5.0"),
    ]
    path = tmp_path / "deliver.yaml"
    path.write_text(
        "deliver:\n  authserv_ids: [mx.quarantine.test]\n  trusted_domains: [example.test]\n"
    )
    deliver_cfg = config.load_file(str(path), read_cache=False, write_cache=False).deliver
    decision = verdict.decide(headers, deliver_cfg)
    assert decision.action == "junk", decision.reason
    assert "dkim=policy(example.test)" in decision.reason
    # The same message signed over the whole body stays trusted.
    whole = perl_sign(key, MESSAGE)
    full = report_for(server, whole).authres_value()
    headers[0] = ("authentication-results", " ".join(full.split()))
    assert verdict.decide(headers, deliver_cfg).action == "inbox"


# --- forged results of every id deliver trusts ------------------------------------------


FORGED = (
    b"Authentication-Results: mx2.quarantine.test; dkim=pass header.d=trusted.test\n"
    b"Authentication-Results: elsewhere.example; dkim=pass header.d=trusted.test\n"
)


@pytest.mark.parametrize("relay", [False, True])
def test_forged_results_of_the_other_mx_are_renamed(
    local_dns: Callable[[Records], DnsServer], relay: bool
) -> None:
    """Two ids in deliver.authserv_ids (two MX hosts): a sender's
    `mx2...; dkim=pass header.d=<trusted>` survived and deliver put spam in
    the inbox. Now every id deliver trusts is renamed, on both paths."""
    server = local_dns({"x.example.test": "x"})
    extra = "deliver:\n  authserv_ids: [mx.quarantine.test, mx2.quarantine.test]\n"
    env = {"RELAYCLIENT": ""} if relay else {}
    spent = mx.run_queue(FORGED + MESSAGE, server, env=env, extra_config=extra)
    assert spent.code == 0, spent.stderr
    fields, _ = header_fields(spent.head)
    names = [f.split(b":", 1)[0] for f in fields]
    assert b"X-Original-Authentication-Results" in names
    assert b"Authentication-Results: elsewhere.example" in spent.head  # not ours: left alone
    assert b"\nAuthentication-Results: mx2." not in spent.head
    assert not spent.head.startswith(b"Authentication-Results: mx2.")


def test_the_other_mx_may_relay_its_results(local_dns: Callable[[Records], DnsServer]) -> None:
    """The other MX relaying what it verified keeps its header when the
    tcpserver rules say so for its address (QUARANTINE_KEEP_RESULTS)."""
    server = local_dns({"x.example.test": "x"})
    extra = "deliver:\n  authserv_ids: [mx.quarantine.test, mx2.quarantine.test]\n"
    env = {"RELAYCLIENT": "", "QUARANTINE_KEEP_RESULTS": "mx2.quarantine.test"}
    spent = mx.run_queue(FORGED + MESSAGE, server, env=env, extra_config=extra)
    assert spent.code == 0, spent.stderr
    assert b"X-Original-" not in spent.head


def test_config_check_names_ids_no_verifier_here_renames(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(
        "verify:\n  authserv_id: mx.example\n  qmail_queue: /nonexistent/qmail-queue\n"
        "deliver:\n  authserv_ids: ['mx2.example', 'bad id;x']\n"
    )
    cfg = config.load_file(str(path), read_cache=False, write_cache=False)
    warnings = "\n".join(config.trust_warnings(cfg))
    assert "'bad id;x' is no authserv-id" in warnings
    assert "does not name this host's own id 'mx.example'" in warnings
    assert "no quarantine-queue on this host renames forged results" in warnings


# --- DomainKeys -----------------------------------------------------------------------


def test_domainkeys_h_order_and_unsigned_sender(
    key: Key, local_dns: Callable[[Records], DnsServer]
) -> None:
    """Mail::DKIM hashes the h= fields in h= order and takes the identity
    from the signed fields only: a signature over `subject:from` (not the
    message's order) and a Sender: added outside h= both pass there, and
    failed here."""
    server = local_dns(records(key))
    to = b"To: bob@rcpt.test\n"
    message = MESSAGE.replace(to, to + b"Sender: list@other.test\n")
    proc = subprocess.run(
        ["perl", str(DK_SIGNER), str(key.path), "example.test", "s1", "nofws", "subject:from"],
        input=message,
        capture_output=True,
        check=True,
        timeout=30,
    )
    signed = proc.stdout
    assert perl_verify(signed, server).split()[0] == "pass"
    report = report_for(server, signed)
    assert (report.domainkeys, report.dk_letters()) == ("pass", {"A"}), report.domainkeys_reason
    assert report_for(server, signed.replace(b"Hello Bob", b"Hello Eve")).domainkeys == "fail"


# --- any tags, bounded ------------------------------------------------------------------


SIG_VALUES = [
    *("1", "rsa-sha256", "ed25519-sha256", "relaxed/simple", "from:to", "example.test", "s1"),
    *("dns/txt:x", "@example.test", "99999999", "AAAA", "=", ";", ""),
]
KEY_VALUES = ["DKIM1", "rsa", "ed25519", "sha256", "email:*", "y:s", ""]


def _b64_spki(bits: int, exponent: int) -> str:
    return base64.b64encode(mx.rsa_spki((1 << (bits - 1)) | 1, exponent)).decode()


def _fuzz_cases() -> Iterator[object]:
    from hypothesis import strategies as st

    tag = st.sampled_from(["v", "a", "b", "bh", "c", "d", "h", "i", "l", "q", "s", "t", "x", "z"])
    value = st.one_of(
        st.sampled_from(SIG_VALUES),
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    )
    yield st.lists(st.tuples(tag, value), max_size=14)
    key_tag = st.sampled_from(["v", "k", "p", "h", "s", "t", "g", "n"])
    key_value = st.one_of(
        st.sampled_from([*KEY_VALUES, _b64_spki(2048, 3), _b64_spki(9001, 65537)]),
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    )
    yield st.lists(st.tuples(key_tag, key_value), max_size=8)


def test_fuzz_signature_and_key_tags_stay_in_the_budget() -> None:
    """Any DKIM-Signature, ARC and key record tags: a defined result, no
    exception, and less CPU than the per-message budget."""
    import resource

    from hypothesis import given, settings

    sig_tags, key_tags = _fuzz_cases()

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(sig=sig_tags, key_record=key_tags)  # type: ignore[misc]
    def check(sig: list[tuple[str, str]], key_record: list[tuple[str, str]]) -> None:
        value = "; ".join(f"{k}={v}" for k, v in sig).encode("latin-1")
        record = "; ".join(f"{k}={v}" for k, v in key_record).encode("latin-1")
        message = (
            b"DKIM-Signature: " + value + b"\n"
            b"ARC-Seal: i=1; " + value + b"\n"
            b"ARC-Message-Signature: i=1; " + value + b"\n"
            b"ARC-Authentication-Results: i=1; x; dkim=pass\n" + mx.plain_head() + b"\n" + mx.BODY
        )
        raw, start = header_fields(message)
        before = resource.getrusage(resource.RUSAGE_SELF)
        spent = budget.Budget()
        with spent:
            msg = dkimverify.Message(
                message, start, dkimverify.Fields(raw), lambda name, timeout=5: record, spent
            )
            results = dkimverify.verify_all(msg)
            report = verify.Report("mx")
            verify.check_arc(report, msg)
        after = resource.getrusage(resource.RUSAGE_SELF)
        assert after.ru_utime - before.ru_utime < 2.0
        assert len(results) == 1 and results[0].letter in "ACDEFGIJKLMPQR"
        assert report.arc in ("pass", "fail", "none", "temperror")

    check()


def test_body_hash_matches_dkimpy_on_any_body() -> None:
    """The chunked body hash against dkimpy's whole-body canonicalization,
    with chunks of every small size (boundaries anywhere)."""
    import re

    from dkim.canonicalization import Relaxed, Simple
    from hypothesis import given, settings
    from hypothesis import strategies as st

    pieces = st.sampled_from([b"a", b" ", b"\t", b"\n", b"\r\n", b"\r", b"b ", b"\n\n"])

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(pieces, max_size=40), st.sampled_from([1, 2, 3, 65536]))  # type: ignore[misc]
    def check(parts: list[bytes], chunk: int) -> None:
        body = b"".join(parts)
        lines = b"\r\n".join(re.split(rb"\r?\n", body))
        old = dkimverify.CHUNK
        dkimverify.CHUNK = chunk
        try:
            for form, canon in (("simple", Simple), ("relaxed", Relaxed)):
                want = hashlib.sha256(canon.canonicalize_body(lines)).digest()
                got = dkimverify.body_hash(b"H: x\n\n" + body, 6, form, "sha256", None)
                assert got == want, (form, body)
        finally:
            dkimverify.CHUNK = old

    check()
