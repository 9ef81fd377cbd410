"""Keys and DNS records: `quarantine keygen` (modes, group, no overwrite,
weak sizes and hostile names refused), `quarantine dns` (golden BIND and
tinydns-data output, escaping, long keys) and `quarantine dns check` against
a real DNS server (dnsmasq), plus a key made by keygen signing a message that
Perl Mail::DKIM verifies against the record we generated."""

from __future__ import annotations

import base64
import grp
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import dns.rdatatype
import dns.zone
import pytest
from click.testing import CliRunner, Result

from quarantine import cli, config
from quarantine.auth import dnscheck, keys, pkcs8, records
from quarantine.cli import auth as cli_auth

if TYPE_CHECKING:
    from collections.abc import Callable

    from dns_server import DnsServer, Records

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "auth_keys"
DOMAIN = "example.test"
MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: key round trip\r\n"
    b"Date: Tue, 24 Nov 2026 08:00:00 +0000\r\n"
    b"Message-ID: <keys-1@example.test>\r\n"
    b"\r\n"
    b"Signed with a key quarantine keygen made.\r\n"
)


@click.group()
@click.option("--config", "config_path")
@click.pass_context
def group(ctx: click.Context, config_path: str | None) -> None:
    """The key and DNS commands on a group of the test's own."""
    ctx.obj = cli.Context(config_path)


cli_auth.add_to(group)


def write_config(tmp_path: Path, text: str = "", keydir: Path | None = None) -> Path:
    keydir = keydir or tmp_path / "domainkeys"
    path = tmp_path / "quarantine.yaml"
    path.write_text(f"dkim:\n  keydir: {keydir}\n{text}")
    return path


def load(path: Path) -> config.Config:
    return config.load_file(str(path), read_cache=False, write_cache=False)


def run(conf: Path, *args: str) -> Result:
    return CliRunner().invoke(group, ["--config", str(conf), *args], catch_exceptions=False)


# -- keygen -------------------------------------------------------------------


def test_keygen_rsa_default(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    conf = write_config(tmp_path)
    result = run(conf, "keygen", DOMAIN)
    assert result.exit_code == 0, result.output
    directory = tmp_path / "domainkeys" / DOMAIN
    key, pub = directory / "default", directory / "default.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    data = key.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8: OpenDKIM reads it too
    private = serialization.load_pem_private_key(data, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    record = pub.read_text().strip()
    assert re.fullmatch(r"v=DKIM1; k=rsa; p=[A-Za-z0-9+/]+=*", record)
    assert keys.public_record(str(key)) == record
    assert f"default._domainkey.{DOMAIN}. IN TXT {record}" in result.output
    assert sorted(os.listdir(directory)) == ["default", "default.pub"]  # no temp files left


def test_public_record_matches_openssl(tmp_path: Path) -> None:
    """The p= value is what `openssl rsa -pubout` gives (SubjectPublicKeyInfo)."""
    key = GOLDEN / "keys" / DOMAIN / "sel1"
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    record = keys.public_record(str(key))
    assert record == f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def test_public_record_of_pkcs8_and_ed25519_pem(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = tmp_path / "pkcs8"
    pkcs8.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    spki = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert keys.public_record(str(pkcs8)) == f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"
    ed_key = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "ed.pem"
    pem.write_bytes(
        ed_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    seed = tmp_path / "ed.seed"
    raw = ed_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    seed.write_bytes(base64.b64encode(raw))
    assert keys.public_record(str(pem)) == keys.public_record(str(seed))
    assert keys.public_record(str(seed)).startswith("v=DKIM1; k=ed25519; p=")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a key\n")
    with pytest.raises(keys.KeyFailure, match="not an RSA PEM"):
        keys.public_record(str(garbage))
    with pytest.raises(keys.KeyFailure, match="cannot read"):
        keys.public_record(str(tmp_path / "absent"))


def test_keygen_ed25519_is_pkcs8(tmp_path: Path) -> None:
    """A PKCS#8 PEM (what OpenSSL and OpenDKIM read); the seed inside signs
    with dkimpy and verifies against the record keygen printed."""
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    cfg = load(write_config(tmp_path))
    made = keys.keygen(cfg, DOMAIN, selector="ed", key_type="ed25519")
    data = Path(made.path).read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    private = serialization.load_pem_private_key(data, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert made.record == f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    assert Path(made.pub_path).read_text() == made.record + "\n"
    kind, seed = pkcs8.unwrap(data)
    assert kind == "ed25519"
    signature = dkim.sign(
        MESSAGE, b"ed", DOMAIN.encode(), seed, signature_algorithm=b"ed25519-sha256"
    )
    zone = {f"ed._domainkey.{DOMAIN}.".encode(): made.record.encode()}
    assert dkim.verify(signature + MESSAGE, dnsfunc=lambda name, timeout=5: zone.get(name, b""))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another group needs root")
def test_keygen_group_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = next(g for g in grp.getgrall() if g.gr_gid != os.getegid())
    monkeypatch.setattr(keys, "KEY_GROUP", other.gr_name)
    made = keys.keygen(load(write_config(tmp_path)), DOMAIN, bits=1024)
    assert made.group == other.gr_name
    assert os.stat(made.path).st_gid == other.gr_gid
    assert os.stat(os.path.dirname(made.path)).st_gid == other.gr_gid
    assert stat.S_IMODE(os.stat(made.path).st_mode) == 0o640


def test_keygen_without_the_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "KEY_GROUP", "no-such-group-here")
    conf = write_config(tmp_path)
    result = run(conf, "keygen", DOMAIN, "--bits", "1024")
    assert result.exit_code == 0
    assert "no group 'no-such-group-here'" in result.stderr
    key = tmp_path / "domainkeys" / DOMAIN / "default"
    assert key.stat().st_gid == os.getegid()
    assert stat.S_IMODE(key.stat().st_mode) == 0o640


def test_keygen_safe_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        made = keys.keygen(load(write_config(tmp_path)), DOMAIN, bits=1024)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(made.path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(os.path.dirname(made.path)).st_mode) == 0o750


def test_keygen_never_overwrites_without_force(tmp_path: Path) -> None:
    conf = write_config(tmp_path)
    assert run(conf, "keygen", DOMAIN, "--bits", "1024").exit_code == 0
    key = tmp_path / "domainkeys" / DOMAIN / "default"
    before = key.read_bytes()
    result = run(conf, "keygen", DOMAIN, "--bits", "1024")
    assert result.exit_code == 1
    assert "exists: not overwritten" in result.output
    assert key.read_bytes() == before
    with pytest.raises(keys.KeyExists):
        keys.keygen(load(conf), DOMAIN, key_type="ed25519")
    assert key.read_bytes() == before
    result = run(conf, "keygen", DOMAIN, "--bits", "1024", "--force")
    assert result.exit_code == 0
    assert key.read_bytes() != before
    assert (key.parent / "default.pub").read_text().strip() == keys.public_record(str(key))
    assert sorted(os.listdir(key.parent)) == ["default", "default.pub"]


@pytest.mark.parametrize("bits", ["384", "512", "1023"])
def test_keygen_refuses_weak_rsa(tmp_path: Path, bits: str) -> None:
    conf = write_config(tmp_path)
    result = run(conf, "keygen", DOMAIN, "--bits", bits)
    assert result.exit_code == 2
    assert f"{bits}-bit RSA refused" in result.output
    assert "RFC 8301" in result.output
    assert not (tmp_path / "domainkeys").exists()


def test_keygen_refuses_other_sizes(tmp_path: Path) -> None:
    conf = write_config(tmp_path)
    assert run(conf, "keygen", DOMAIN, "--bits", "8192").exit_code == 2
    result = run(conf, "keygen", DOMAIN, "--type", "ed25519", "--bits", "2048")
    assert result.exit_code == 2
    assert "fixed size" in result.output
    assert run(conf, "keygen", DOMAIN, "--type", "dsa").exit_code == 2


def test_keygen_size_from_config(tmp_path: Path) -> None:
    conf = write_config(tmp_path, "  bits: 512\n  selector: s2026\n")
    result = run(conf, "keygen", DOMAIN)
    assert result.exit_code == 2
    assert "512-bit RSA refused" in result.output


HOSTILE = [
    "../etc",
    "a/b",
    "..",
    ".hidden",
    "a..b",
    "a\x00b",
    "",
    "x" * 64 + ".test",
    "a b",
    "-lead.test",
    "ex\u00e4mple.test",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_keygen_refuses_hostile_names(tmp_path: Path, name: str) -> None:
    cfg = load(write_config(tmp_path))
    with pytest.raises(keys.KeyUsage):
        keys.keygen(cfg, name)
    with pytest.raises(keys.KeyUsage):
        keys.keygen(cfg, DOMAIN, selector=name)
    with pytest.raises(keys.KeyUsage):
        keys.find_keys(cfg, name)
    assert not (tmp_path / "domainkeys").exists()


def test_keygen_hostile_name_exit_2(tmp_path: Path) -> None:
    conf = write_config(tmp_path)
    result = run(conf, "keygen", "../../tmp/x")
    assert result.exit_code == 2
    assert "not a DNS name" in result.output
    result = run(conf, "keygen", DOMAIN, "--selector", "x.pub")
    assert result.exit_code == 2
    assert not (tmp_path / "domainkeys").exists()


def test_keygen_refuses_a_symlinked_domain_dir(tmp_path: Path) -> None:
    cfg = load(write_config(tmp_path))
    (tmp_path / "domainkeys").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "domainkeys" / DOMAIN).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(keys.KeyFailure, match="not a directory"):
        keys.keygen(cfg, DOMAIN, bits=1024)
    assert os.listdir(tmp_path / "elsewhere") == []


def test_find_keys(tmp_path: Path) -> None:
    cfg = load(write_config(tmp_path))
    assert keys.find_keys(cfg, DOMAIN) == []
    keys.keygen(cfg, DOMAIN, selector="s2", key_type="ed25519")
    keys.keygen(cfg, DOMAIN, selector="s1", key_type="ed25519")
    directory = tmp_path / "domainkeys" / DOMAIN
    (directory / ".s3.tmp123").write_text("half written")
    (directory / "sub").mkdir()
    assert keys.find_keys(cfg, DOMAIN) == ["s1", "s2"]
    assert keys.find_keys(cfg, "EXAMPLE.test") == ["s1", "s2"]


# -- records ------------------------------------------------------------------


def golden_config(tmp_path: Path) -> config.Config:
    text = (GOLDEN / "records.yaml").read_text()
    path = tmp_path / "records.yaml"
    path.write_text(text + f"dkim:\n  keydir: {GOLDEN / 'keys'}\n")
    return load(path)


@pytest.mark.parametrize("fmt", ["bind", "tinydns"])
def test_records_golden(tmp_path: Path, fmt: str) -> None:
    conf = tmp_path / "records.yaml"
    golden_config(tmp_path)
    result = run(conf, "dns", DOMAIN, "--legacy", "--format", fmt)
    assert result.exit_code == 0, result.output
    assert result.stdout == (GOLDEN / f"example.test.{fmt}").read_text()


def test_records_default_format_is_bind_and_legacy_is_optional(tmp_path: Path) -> None:
    golden_config(tmp_path)
    result = run(tmp_path / "records.yaml", "dns", DOMAIN)
    assert result.exit_code == 0
    golden = (GOLDEN / "example.test.bind").read_text().splitlines(keepends=True)
    assert result.stdout == "".join(golden[:4])  # no DomainKeys policy, no ADSP


def test_bind_output_parses_back(tmp_path: Path) -> None:
    """dnspython reads the BIND lines as a zone: every record's strings join
    to the text we meant, and none is longer than 255 bytes."""
    cfg = golden_config(tmp_path)
    made = records.build(cfg, DOMAIN, legacy=True)
    odd = records.Record("spf", f"odd.{DOMAIN}", 'quote " back\\slash caf\u00e9 ' + "x" * 300)
    text = records.render([*made.records, odd], "bind", 3600)
    zone = dns.zone.from_text(
        "@ 3600 IN SOA ns. host. 1 2 3 4 5\n@ 3600 IN NS ns.\n" + text,
        origin=DOMAIN + ".",
        relativize=False,
    )
    for record in [*made.records, odd]:
        rdataset = zone.find_rdataset(record.name + ".", dns.rdatatype.TXT)
        (rdata,) = list(rdataset)
        assert all(len(s) <= 255 for s in rdata.strings)
        assert b"".join(rdata.strings) == record.text.encode("utf-8")
    long_one = next(r for r in made.records if r.selector == "sel1")
    assert len(long_one.text) > 255


def tinydns_unescape(field: str) -> bytes:
    """tinydns-data's txtparse: backslash + 1-3 octal digits is that byte,
    backslash + anything else is that character."""
    out = bytearray()
    i = 0
    data = field.encode("latin-1")
    while i < len(data):
        if data[i] == 0x5C and i + 1 < len(data):
            digits = re.match(rb"[0-7]{1,3}", data[i + 1 : i + 4])
            if digits:
                out.append(int(digits.group(), 8) & 0xFF)
                i += 1 + len(digits.group())
                continue
            out.append(data[i + 1])
            i += 2
            continue
        out.append(data[i])
        i += 1
    return bytes(out)


def test_tinydns_escaping() -> None:
    record = records.Record("dmarc", f"_dmarc.{DOMAIN}", 'a:b\\c "q" caf\u00e9\tend')
    line = records.tinydns_line(record, 300)
    assert line == '\'_dmarc.example.test:a\\072b\\134c "q" caf\\303\\251\\011end:300'
    kind, rest = line[0], line[1:]
    fields = rest.split(":")  # tinydns-data splits on ':' before unescaping
    assert kind == "'" and len(fields) == 3
    assert fields[0] == f"_dmarc.{DOMAIN}" and fields[2] == "300"
    assert tinydns_unescape(fields[1]) == record.text.encode("utf-8")


def test_tinydns_golden_lines_parse() -> None:
    for line in (GOLDEN / "example.test.tinydns").read_text().splitlines():
        assert line.startswith("'")
        name, text, ttl = line[1:].split(":")
        assert ttl == "3600" and name.endswith(DOMAIN)
        assert all(0x20 <= b < 0x7F for b in tinydns_unescape(text))


def test_records_notes_without_spf_ips_or_keys(tmp_path: Path) -> None:
    conf = write_config(tmp_path)
    result = run(conf, "dns", DOMAIN)
    assert result.exit_code == 0
    assert result.stdout == f'_dmarc.{DOMAIN}. 3600 IN TXT "v=DMARC1; p=none"\n'
    assert "set dns.spf_ips" in result.stderr
    assert f"quarantine keygen {DOMAIN}" in result.stderr


def test_records_bad_spf_ip(tmp_path: Path) -> None:
    conf = write_config(tmp_path, "dns:\n  spf_ips: [mail.example.test]\n")
    result = run(conf, "dns", DOMAIN)
    assert result.exit_code == 1
    assert "not an IP address" in result.output


def test_dns_usage(tmp_path: Path) -> None:
    conf = write_config(tmp_path)
    assert run(conf, "dns").exit_code == 2
    assert run(conf, "dns", "../x").exit_code == 2
    assert run(conf, "dns", DOMAIN, "--format", "djbdns").exit_code == 2
    assert run(conf, "dns", "check").exit_code == 2
    result = run(conf, "dns", "--help")
    assert result.exit_code == 0 and "dns check DOMAIN" in result.output


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("v=DMARC1; p=reject", True),
        ("v=DMARC1;p=none;rua=mailto:a@b.test", True),
        ("v=DMARC1; p=quarantine; pct=50;", True),
        ("p=reject; v=DMARC1", False),
        ("v=DMARC1", False),
        ("v=DMARC1; p=maybe", False),
        ("v=DMARC1; p", False),
        ("v=DMARC2; p=reject", False),
    ],
)
def test_parse_dmarc(text: str, ok: bool) -> None:
    assert (dnscheck.parse_dmarc(text) is not None) is ok


# -- dns check against a real DNS server --------------------------------------

CHECK_CONFIG = "  spf_ips: [127.0.0.1]\n  spf_all: -all\n  dmarc_policy: reject\n  timeout: 2\n"


def served(cfg: config.Config, domain: str = DOMAIN, legacy: bool = False) -> dict[str, str]:
    """What `quarantine dns` says to publish, as {name: text} for local_dns."""
    return {r.name: r.text for r in records.build(cfg, domain, legacy).records}


def check_setup(
    tmp_path: Path,
    local_dns: Callable[[Records], DnsServer],
    change: Callable[[dict[str, str]], object] = lambda zone: None,
    legacy: bool = False,
) -> tuple[Path, DnsServer]:
    """keygen rsa, build the records, let `change` alter them, serve them."""
    keys.keygen(load(write_config(tmp_path)), DOMAIN)
    zone = served(load(write_config(tmp_path, "dns:\n" + CHECK_CONFIG)), legacy=legacy)
    change(zone)
    server = local_dns(dict(zone))
    dns_yaml = server.config_yaml() + CHECK_CONFIG
    return write_config(tmp_path, dns_yaml), server


def lines(result: Result) -> dict[str, str]:
    """{name: status} from the report."""
    out = {}
    for line in result.stdout.splitlines():
        if not line.startswith(" "):
            status, _kind, name = line.split(None, 2)
            out[name.split(":")[0]] = status
    return out


def test_dns_check_all_published(tmp_path: Path, local_dns: Callable[[Records], DnsServer]) -> None:
    conf, _ = check_setup(tmp_path, local_dns, legacy=True)
    result = run(conf, "dns", "check", DOMAIN, "--legacy")
    assert result.exit_code == 0, result.output
    assert lines(result) == {
        DOMAIN: "published",
        f"default._domainkey.{DOMAIN}": "published",
        f"_dmarc.{DOMAIN}": "published",
        f"_domainkey.{DOMAIN}": "published",
        f"_adsp._domainkey.{DOMAIN}": "published",
    }
    assert "passes for 127.0.0.1" in result.stdout
    assert "publish:" not in result.stdout


def test_dns_check_changed_key(tmp_path: Path, local_dns: Callable[[Records], DnsServer]) -> None:
    other = keys.record_from_key(base64.b64encode(b"\x01" * 32))  # some other key

    def change(zone: dict[str, str]) -> None:
        zone[f"default._domainkey.{DOMAIN}"] = other.replace("ed25519", "rsa")

    conf, _ = check_setup(tmp_path, local_dns, change)
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert lines(result)[f"default._domainkey.{DOMAIN}"] == "different"
    assert "not the local key's public half" in result.stdout
    record = (tmp_path / "domainkeys" / DOMAIN / "default.pub").read_text().strip()
    publish = [line for line in result.stdout.splitlines() if line.startswith("  publish:")]
    (line,) = publish
    assert line.startswith(f"  publish: default._domainkey.{DOMAIN}. 3600 IN TXT ( ")
    assert record.split("p=")[1][:100] in line
    assert "1 of 3 records need attention" in result.output


def test_dns_check_missing_dmarc(tmp_path: Path, local_dns: Callable[[Records], DnsServer]) -> None:
    conf, _ = check_setup(tmp_path, local_dns, lambda zone: zone.pop(f"_dmarc.{DOMAIN}"))
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert lines(result)[f"_dmarc.{DOMAIN}"] == "missing"
    assert lines(result)[DOMAIN] == "published"
    assert f'  publish: _dmarc.{DOMAIN}. 3600 IN TXT "v=DMARC1; p=reject"' in result.stdout


@pytest.mark.parametrize(
    ("published", "says"),
    [
        ("v=DMARC1; p=sometimes", "does not parse"),
        ("p=reject; v=DMARC1", "no v=DMARC1 record"),
        ("v=DMARC1; p=none", "p=none published, dns.dmarc_policy is reject"),
    ],
)
def test_dns_check_dmarc_invalid_or_other_policy(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer], published: str, says: str
) -> None:
    def change(zone: dict[str, str]) -> None:
        zone[f"_dmarc.{DOMAIN}"] = published

    conf, _ = check_setup(tmp_path, local_dns, change)
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert says in result.stdout
    assert lines(result)[f"_dmarc.{DOMAIN}"] in ("different", "missing")


def test_dns_check_spf_fails_for_our_ip(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    def change(zone: dict[str, str]) -> None:
        zone[DOMAIN] = "v=spf1 ip4:192.0.2.1 -all"

    conf, _ = check_setup(tmp_path, local_dns, change)
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert lines(result)[DOMAIN] == "different"
    assert "does not pass for 127.0.0.1: fail" in result.stdout
    assert f'  publish: {DOMAIN}. 3600 IN TXT "v=spf1 ip4:127.0.0.1 -all"' in result.stdout


def test_dns_check_two_spf_records(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    def change(zone: dict[str, str]) -> None:
        zone[DOMAIN] = [zone[DOMAIN], "v=spf1 -all"]  # type: ignore[assignment]

    conf, _ = check_setup(tmp_path, local_dns, change)
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert "2 SPF records" in result.stdout


def test_dns_check_revoked_key(tmp_path: Path, local_dns: Callable[[Records], DnsServer]) -> None:
    def change(zone: dict[str, str]) -> None:
        zone[f"default._domainkey.{DOMAIN}"] = "v=DKIM1; k=rsa; p="

    conf, _ = check_setup(tmp_path, local_dns, change)
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert "empty p=: the key is revoked" in result.stdout


def test_dns_check_dns_down(tmp_path: Path) -> None:
    """Nothing answers on the configured port: temperror, exit 1, no traceback."""
    from dns_server import free_port

    keys.keygen(load(write_config(tmp_path)), DOMAIN, key_type="ed25519")
    dns_yaml = f"dns:\n  nameservers: [127.0.0.1]\n  port: {free_port()}\n  timeout: 0.5\n"
    conf = write_config(tmp_path, dns_yaml + "  spf_ips: [127.0.0.1]\n")
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert set(lines(result).values()) == {"temperror"}
    assert "DNS lookup failed" in result.stdout


def test_dns_check_without_keys_or_spf_ips(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    server = local_dns({f"_dmarc.{DOMAIN}": "v=DMARC1; p=none"})
    conf = write_config(tmp_path, server.config_yaml())
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert lines(result) == {
        DOMAIN: "missing",
        f"*._domainkey.{DOMAIN}": "missing",
        f"_dmarc.{DOMAIN}": "published",
    }
    assert f"run `quarantine keygen {DOMAIN}`" in result.stdout


# -- a key from keygen, verified by an independent implementation -------------


def test_keygen_rsa_signs_for_mail_dkim(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    """dkimpy signs with the key keygen wrote; Perl Mail::DKIM, asking dnsmasq
    serving the record `quarantine dns` printed, says pass (and fail once the
    body is changed)."""
    import dkim

    cfg = load(write_config(tmp_path, "dns:\n  spf_ips: [127.0.0.1]\n"))
    made = keys.keygen(cfg, DOMAIN, selector="s2026")
    server = local_dns({**served(cfg)})
    signature = dkim.sign(
        MESSAGE,
        b"s2026",
        DOMAIN.encode(),
        pkcs8.unwrap(Path(made.path).read_bytes())[1],  # dkimpy reads PKCS#1 only
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    perl = shutil.which("perl") or "/usr/bin/perl"
    env = {**os.environ, "DNS_PORT": str(server.port)}

    def mail_dkim(message: bytes) -> str:
        proc = subprocess.run(
            [perl, str(DATA / "mail_dkim_verify.pl")],
            input=message,
            capture_output=True,
            env=env,
            check=True,
            timeout=60,
        )
        return proc.stdout.decode().strip()

    assert mail_dkim(signature + MESSAGE) == "pass"
    assert mail_dkim(signature + MESSAGE.replace(b"key round", b"key-round")).startswith("fail")


def test_keygen_ed25519_verifies_through_dns(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    """ed25519: only dkimpy can check it here (Debian's Mail::DKIM has no
    ed25519, rig.md), through the real DNS server and our resolver."""
    import dkim

    from quarantine.auth.resolver import dkim_dnsfunc, make_resolver

    cfg = load(write_config(tmp_path))
    made = keys.keygen(cfg, DOMAIN, selector="ed", key_type="ed25519")
    server = local_dns({**served(cfg)})
    cfg = load(write_config(tmp_path, server.config_yaml()))
    signature = dkim.sign(
        MESSAGE,
        b"ed",
        DOMAIN.encode(),
        pkcs8.unwrap(Path(made.path).read_bytes())[1],
        signature_algorithm=b"ed25519-sha256",
    )
    dnsfunc = dkim_dnsfunc(make_resolver(cfg.dns))
    assert dkim.verify(signature + MESSAGE, dnsfunc=dnsfunc)
    assert not dkim.verify(signature + MESSAGE + b"more\r\n", dnsfunc=dnsfunc)


def test_dns_check_leaves_pyspf_as_it_was(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    import dns.resolver
    import spf

    before = spf.DNSLookup, dns.resolver.default_resolver
    conf, _ = check_setup(tmp_path, local_dns)
    assert run(conf, "dns", "check", DOMAIN).exit_code == 0
    assert (spf.DNSLookup, dns.resolver.default_resolver) == before


def test_dns_check_key_record_for_sha1_only(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    def change(zone: dict[str, str]) -> None:
        name = f"default._domainkey.{DOMAIN}"
        zone[name] = zone[name].replace("k=rsa;", "k=rsa; h=sha1;")

    conf, _ = check_setup(tmp_path, local_dns, change)
    result = run(conf, "dns", "check", DOMAIN)
    assert result.exit_code == 1
    assert "h=sha1: rsa-sha256 signatures are refused" in result.stdout


@pytest.mark.parametrize(
    ("spf", "status"),
    [("v=spf1 a mx ~all", "published"), ("v=spf1 ip4:300.1.2.3 -all", "different")],
)
def test_dns_check_spf_without_spf_ips(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer], spf: str, status: str
) -> None:
    """No dns.spf_ips: the published record is only evaluated (a syntax error
    is a problem, any result otherwise is fine)."""
    cfg = load(write_config(tmp_path))
    keys.keygen(cfg, DOMAIN, key_type="ed25519")
    server = local_dns({**served(cfg), DOMAIN: spf})
    conf = write_config(tmp_path, server.config_yaml())
    result = run(conf, "dns", "check", DOMAIN)
    assert lines(result)[DOMAIN] == status, result.stdout
    assert result.exit_code == (0 if status == "published" else 1)


EXIT_SCRIPT = "import sys\nfrom quarantine import cli\nsys.exit(cli.main(sys.argv[1:]))\n"


def test_exit_codes_through_cli_main(tmp_path: Path) -> None:
    """The codes reach the shell through cli.main() (which returns 0 after a
    ctx.exit() in non-standalone mode, so the commands raise instead)."""
    from dns_server import free_port

    dead = f"dns:\n  nameservers: [127.0.0.1]\n  port: {free_port()}\n  timeout: 0.3\n"
    conf = str(write_config(tmp_path, dead))

    def code(*args: str) -> int:
        proc = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, "--config", conf, *args],
            capture_output=True,
            check=False,
            timeout=60,
        )
        return proc.returncode

    assert code("keygen", DOMAIN, "--type", "ed25519") == 0
    assert code("keygen", DOMAIN, "--type", "ed25519") == 1
    assert code("keygen", DOMAIN, "--bits", "512", "--selector", "weak") == 2
    assert code("dns", DOMAIN) == 0
    assert code("dns", "check", DOMAIN) == 1
    assert code("dns", "check", "../etc") == 2


def test_records_from_pub_file_when_the_key_is_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root: the private key (0640 root:qmail) cannot be read, so the
    record comes from the .pub file beside it."""
    cfg = load(write_config(tmp_path))
    made = keys.keygen(cfg, DOMAIN, key_type="ed25519")

    def unreadable(path: str) -> str:
        raise keys.KeyFailure(f"{path}: cannot read: Permission denied")

    monkeypatch.setattr(keys, "public_record", unreadable)
    monkeypatch.setattr(keys.os, "access", lambda path, mode: False)
    (record,) = records.build(cfg, DOMAIN).records[:1]
    assert record.kind == "dkim" and record.text == made.record
    Path(made.pub_path).write_text("garbage\n")
    with pytest.raises(keys.KeyFailure, match="Permission denied"):
        keys.key_record(cfg, DOMAIN, "default")
