"""tcprules.py against Debian's real tcprules (ucspi-tcp 0.88): the source
parsed as tcprules parses it, the cdb it writes read back record for record,
tcpserver's lookup order, rewriting one rule, and the reader's bounds."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quarantine import tcprules

TCPRULES = "/usr/bin/tcprules"

# As a QmailToaster / jms-patched qmail box has it: relaying for localhost and
# the LAN, signing for relay clients, verification through qmail-dk for everyone.
TCP_SMTP = b"""\
# tcpserver rules for qmail-smtpd (compile: tcprules tcp.smtp.cdb tcp.smtp.tmp < tcp.smtp)
127.0.0.1:allow,RELAYCLIENT="",DKSIGN="/etc/domainkeys/%/default"
192.168.:allow,RELAYCLIENT="",DKSIGN="/etc/domainkeys/%/default",QMAILQUEUE="/var/qmail/bin/qmail-dk"
10.0.0.1-3:deny

=mx.example.test:allow,NOTE='say "hi"'
127.0.0.1:deny
:allow,DKVERIFY="DEGIJKfh",QMAILQUEUE="/var/qmail/bin/qmail-dk",DKQUEUE="/var/qmail/bin/qmail-queue.orig"
"""


def compile_real(tmp_path: Path, source: bytes, name: str = "tcp.smtp") -> tuple[int, Path]:
    """Run the real tcprules on `source`; its exit code and the cdb path."""
    src = tmp_path / name
    src.write_bytes(source)
    cdb = tmp_path / f"{name}.cdb"
    with src.open("rb") as stdin:
        proc = subprocess.run(
            [TCPRULES, str(cdb), f"{cdb}.tmp"], stdin=stdin, capture_output=True, check=False
        )
    return proc.returncode, cdb


def test_the_cdb_of_the_real_tcprules_is_read_record_for_record(tmp_path: Path) -> None:
    code, cdb_file = compile_real(tmp_path, TCP_SMTP)
    assert code == 0
    source = tcprules.RulesFile(TCP_SMTP, "tcp.smtp")
    cdb = tcprules.read_cdb(str(cdb_file))
    assert cdb.records() == source.records()
    assert [k for k, _ in cdb.records()] == [
        b"127.0.0.1",
        b"192.168.",
        b"10.0.0.1",
        b"10.0.0.2",
        b"10.0.0.3",
        b"=mx.example.test",
        b"127.0.0.1",
        b"",
    ]
    last = cdb.rules()[-1]
    assert last.get("QMAILQUEUE") == "/var/qmail/bin/qmail-dk"
    assert last.get("DKVERIFY") == "DEGIJKfh"
    assert cdb.rules()[5].get("NOTE") == 'say "hi"'
    # The first rule of a key is the one tcpserver finds.
    first = cdb.get(b"127.0.0.1")
    assert first is not None and first.startswith(b"+RELAYCLIENT=\0")
    assert cdb.get(b"10.0.0.4") is None


def test_tcpservers_lookup_order(tmp_path: Path) -> None:
    _, cdb_file = compile_real(tmp_path, TCP_SMTP)
    cdb = tcprules.read_cdb(str(cdb_file))
    local = tcprules.match(cdb, "127.0.0.1")
    assert local is not None and local.get("RELAYCLIENT") == "" and not local.deny
    lan = tcprules.match(cdb, "192.168.7.9")
    assert lan is not None and lan.address == "192.168." and lan.get("DKSIGN")
    denied = tcprules.match(cdb, "10.0.0.2")
    assert denied is not None and denied.deny
    named = tcprules.match(cdb, "198.51.100.1", host="mx.example.test")
    assert named is not None and named.address == "=mx.example.test"
    anyone = tcprules.match(cdb, "203.0.113.9", host="other.example")
    assert anyone is not None and anyone.address == ""
    assert anyone.get("QMAILQUEUE") == "/var/qmail/bin/qmail-dk"
    assert tcprules.match(tcprules.Cdb(_empty_cdb()), "203.0.113.9") is None


def _empty_cdb() -> bytes:
    return struct.pack("<512I", *([tcprules.CDB_HEADER, 0] * 256))


def test_one_rule_rewritten_and_the_cdb_rebuilt_by_tcprules(tmp_path: Path) -> None:
    src = tmp_path / "tcp.smtp"
    src.write_bytes(TCP_SMTP)
    rules = tcprules.read_source(str(src))
    everyone = rules.rules[-1]
    assert everyone.lineno == 8
    queue = "/opt/quarantine/bin/quarantine-queue"
    rules.put(everyone.with_env("QMAILQUEUE", queue).without("DKQUEUE"))
    src.write_bytes(rules.render())
    tcprules.rebuild(str(src))
    new_lines = src.read_bytes().split(b"\n")
    old_lines = TCP_SMTP.split(b"\n")
    assert [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b] == [7]
    assert new_lines[7] == f':allow,DKVERIFY="DEGIJKfh",QMAILQUEUE="{queue}"'.encode()
    cdb = tcprules.read_cdb(tcprules.cdb_path(str(src)))
    found = tcprules.match(cdb, "203.0.113.9")
    assert found is not None
    assert found.env == (("DKVERIFY", "DEGIJKfh"), ("QMAILQUEUE", queue))
    assert cdb.records() == tcprules.read_source(str(src)).records()


def test_values_with_both_quotes_get_another_delimiter(tmp_path: Path) -> None:
    rule = tcprules.Rule("1.2.3.4").with_env("A", "x\"y'z").with_env("B", "")
    assert rule.text() == '1.2.3.4:allow,A=|x"y\'z|,B=""'
    code, cdb_file = compile_real(tmp_path, rule.text().encode() + b"\n")
    assert code == 0
    assert tcprules.read_cdb(str(cdb_file)).rules()[0].env == rule.env


def test_what_tcprules_refuses_is_refused_with_file_and_line(tmp_path: Path) -> None:
    for bad in (b"1.2.3.4:allow,A=x\n", b"1.2.3.4:permit\n", b"1.2.3.4:allow,A\n", b"::1:allow\n"):
        code, _ = compile_real(tmp_path, b"# ok\n" + bad)
        assert code == 100, bad
        with pytest.raises(tcprules.RulesError, match=r"^tcp.smtp:2: "):
            tcprules.RulesFile(b"# ok\n" + bad, "tcp.smtp")
    src = tmp_path / "bad"
    src.write_bytes(b"1.2.3.4:allow,A=x\n")
    with pytest.raises(tcprules.RulesError, match="unable to parse this line"):
        tcprules.rebuild(str(src))
    with pytest.raises(tcprules.RulesError):
        tcprules.Rule("::1").text()
    with pytest.raises(tcprules.RulesError):
        tcprules.Rule("1.2.3.4").with_env("A", "a\nb").text()
    with pytest.raises(tcprules.RulesError):
        tcprules.Rule("1.2.3.4").with_env("A=B", "x")


def test_error_texts_are_printable(tmp_path: Path) -> None:
    """A file name or a value with a newline or an escape sequence cannot
    forge a report line or reach the terminal: every error text is shown."""
    odd = "tcp\n.smtp\x1b[31m"
    texts = []
    for call in (
        lambda: tcprules.RulesFile(b"1.2.3.4:permit\n", odd),
        lambda: tcprules.RulesFile(b'1.2.3.4:allow,A\x1b="x\n', odd),
        lambda: tcprules.read_source(str(tmp_path / odd)),
        lambda: tcprules.Cdb(b"", odd),
        lambda: tcprules.Rule("1.2.3.\x1b-4").cdb_keys(),
        lambda: tcprules.Rule("1.2.3.4").with_env("A\x1b,", "x"),
        lambda: tcprules.Rule("1.2.3.4").with_env("A\x1b", "a\nb").text(),
        lambda: tcprules.rebuild(str(tmp_path / "none"), program=str(tmp_path / odd)),
    ):
        with pytest.raises(tcprules.RulesError) as caught:
            call()
        texts.append(str(caught.value))
    for text in texts:
        assert text.isprintable(), text
    assert texts[0].startswith("tcp\\x0a.smtp\\x1b[31m:1: ")


# Lines built from the characters that matter to tcprules' parser.
LINE = st.text(alphabet=":,=\"'#- .=@a1\t", max_size=30).map(lambda s: s.replace("\n", ""))
SETTING = st.builds(
    lambda name, quote, value, close: f",{name}={quote}{value}{close}",
    st.sampled_from(["A", "QMAILQUEUE", "A,B", ""]),
    st.sampled_from(['"', "'", "|", "x"]),
    st.text(alphabet="ab ,=\"'|x", max_size=6),
    st.sampled_from(['"', "'", "|", "x", ""]),
)
RULE = st.builds(
    lambda addr, action, env, tail: f"{addr}:{action}{''.join(env)}{tail}",
    st.sampled_from(["1.2.3.4", "1.2.", "", "=h.example", "1.2.3.5-7", "x@1.2.3.4", "9-2", " #"]),
    st.sampled_from(["allow", "deny", "allo", "denyx"]),
    st.lists(SETTING, max_size=3),
    st.sampled_from(["", "", " ", "\t", "x", ",", "=", ","]),
)


@settings(
    max_examples=int(os.environ.get("QUARANTINE_PROPERTY_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.one_of(LINE, RULE), max_size=6), st.booleans())
def test_the_parser_agrees_with_the_real_tcprules(
    tmp_path: Path, lines: list[str], final_newline: bool
) -> None:
    """Whatever the lines, our parser accepts exactly what tcprules accepts
    and predicts the cdb's records; put() of every rule as it is, rendered
    anew, compiles to the same records."""
    data = "\n".join(lines).encode() + (b"\n" if final_newline else b"")
    code, cdb_file = compile_real(tmp_path, data)
    try:
        ours = tcprules.RulesFile(data)
    except tcprules.RulesError:
        assert code == 100, data
        return
    assert code == 0, data
    assert tcprules.read_cdb(str(cdb_file)).records() == ours.records(), data
    for rule in list(ours.rules):
        try:
            ours.put(rule)
        except tcprules.RulesError:
            return  # an address render() cannot write back (`#...` at a line start)
    code, again = compile_real(tmp_path, ours.render(), "again")
    assert code == 0
    assert tcprules.read_cdb(str(again)).records() == ours.records()


def test_the_cdb_reader_is_bounded(tmp_path: Path) -> None:
    _, cdb_file = compile_real(tmp_path, TCP_SMTP)
    good = cdb_file.read_bytes()
    with pytest.raises(tcprules.RulesError, match="too short"):
        tcprules.Cdb(good[:100])
    with pytest.raises(tcprules.RulesError, match="outside the file"):
        tcprules.Cdb(good[: len(good) - 8])
    # A record claiming four gigabytes.
    huge = bytearray(good)
    huge[tcprules.CDB_HEADER : tcprules.CDB_HEADER + 4] = b"\xff\xff\xff\xff"
    with pytest.raises(tcprules.RulesError, match="past the end"):
        tcprules.Cdb(bytes(huge)).records()
    # Every slot of every table full and pointing at the header: get() stops.
    looped = bytearray(good)
    for pos, slots in tcprules.Cdb(good).tables:
        for n in range(slots):
            struct.pack_into("<II", looped, pos + 8 * n, 0xDEADBEEF, 8)
    assert tcprules.Cdb(bytes(looped)).get(b"127.0.0.1") is None
    big = tmp_path / "big.cdb"
    big.write_bytes(good)
    with pytest.raises(tcprules.RulesError, match="larger than"):
        tcprules.read_cdb(str(big), limit=len(good) - 1)
    link = tmp_path / "link.cdb"
    link.symlink_to(cdb_file)
    with pytest.raises(tcprules.RulesError):
        tcprules.read_cdb(str(link))
    with pytest.raises(tcprules.RulesError, match="not a regular file"):
        tcprules.read_source(str(tmp_path))
