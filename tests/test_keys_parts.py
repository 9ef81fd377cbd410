"""The parts of key roll-over on their own: PKCS#8 keys (read by our signer
without `cryptography`, by OpenDKIM, by Mail::DKIM), the `.active` pointer
quarantine-remote follows (a switch in the middle of signing never gives a
signature no record verifies), the state file, the tinydns data edit, the
`keys` commands' exit codes and `quarantine schedule` with keys.schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from keys_support import REMOTE, T0, Site, mail_dkim

from quarantine import backup, cli, config
from quarantine.auth import keys, keystate, pkcs8, publish, rotation, sign

if TYPE_CHECKING:
    from collections.abc import Callable

    from dns_server import DnsServer, Records

LAUNCH = "import sys\nfrom quarantine import cli\nsys.exit(cli.main(sys.argv[1:]))"
MESSAGE = (
    b"From: Alice <alice@example.test>\nTo: bob@example.org\nSubject: parts\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\nMessage-ID: <p.1@example.test>\n\nHello.\n"
)


def pkcs8_pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# ------------------------------------------------------------------ PKCS#8


def test_pkcs8_unwrapped_without_cryptography_matches_it() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    kind, pem = pkcs8.unwrap(pkcs8_pem(key))
    assert kind == "rsa"
    assert pem == key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    edkey = ed25519.Ed25519PrivateKey.generate()
    kind, seed = pkcs8.unwrap(pkcs8_pem(edkey))
    raw = edkey.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    import base64

    assert (kind, base64.b64decode(seed)) == ("ed25519", raw)


@pytest.mark.parametrize(
    "pem",
    [
        b"-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\nMIQ=\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\nMIIFAAIBADAFBgMrZXAEIgQgAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n",
    ],
)
def test_pkcs8_garbage_is_refused(pem: bytes) -> None:
    with pytest.raises(pkcs8.NotPkcs8):
        pkcs8.unwrap(pem)


def test_keygen_writes_pkcs8_that_the_signer_loads(tmp_path: Path) -> None:
    site = Site(tmp_path, ("example.test",))
    for name, kind in (("default", "rsa"), ("ed", "ed25519")):
        data = (site.keydir / "example.test" / name).read_bytes()
        assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        loaded = sign.parse_key(name, "example.test", data)
        assert loaded.kind == kind


def test_opendkim_signs_with_a_keygen_key(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    """OpenDKIM's own loader reads keygen's PKCS#8 RSA key: opendkim-testmsg
    signs with it (rsa-sha1, all it does) and Mail::DKIM verifies that
    against the record. (opendkim-testmsg cannot sign ed25519 at all.)"""
    site = Site(tmp_path, ("example.test",), ed25519=False)
    path = site.keydir / "example.test" / "default"
    message = tmp_path / "m.eml"
    message.write_bytes(MESSAGE.replace(b"\n", b"\r\n"))
    with message.open("rb") as stdin:  # a file: it reads a pipe badly (dkim_chunk(): Syntax error)
        proc = subprocess.run(
            ["opendkim-testmsg", "-C", "-d", "example.test", "-s", "default", "-k", str(path)],
            stdin=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"DKIM-Signature:")
    server = local_dns({"default._domainkey.example.test": site.record("example.test", "default")})
    signed = proc.stdout.replace(b"\r\n", b"\n")  # the whole message, signed
    assert mail_dkim(signed, "127.0.0.1", server.port) == {"default": "pass"}
    assert mail_dkim(signed + b"more\n", "127.0.0.1", server.port)["default"] != "pass"


# ------------------------------------------------------------------ pointer


def test_pointer_names_the_selector_and_the_key(tmp_path: Path) -> None:
    site = Site(tmp_path, ("example.test",), ed25519=False)
    cfg = site.cfg()
    keys.keygen(cfg, "example.test", "q1", "rsa", 1024)
    rotation._point(str(site.keydir / "example.test" / "default"), "q1")
    found = sign.find_key(cfg.dkim.sign_template, "example.test")
    assert found is not None and (found.selector, found.path) == (
        "q1",
        str(site.keydir / "example.test" / "q1"),
    )
    assert keys.find_keys(cfg, "example.test") == ["default", "q1"]  # not default.active


def test_a_pointer_being_replaced_is_not_a_selector(tmp_path: Path) -> None:
    """The temp link backup.symlink makes before its rename (left by a run
    killed between the two) points at a key file, and its name is a valid DNS
    name: still not a selector of its own."""
    site = Site(tmp_path, ("example.test",), ed25519=False)
    cfg = site.cfg()
    domain_dir = site.keydir / "example.test"
    (domain_dir / f"default.active{backup.TEMP_TAG}4242").symlink_to("default")
    (domain_dir / f"q1{backup.TEMP_TAG}4242").write_bytes((domain_dir / "default").read_bytes())
    assert keys.find_keys(cfg, "example.test") == ["default"]


def test_a_failed_symlink_leaves_no_temp_link(tmp_path: Path) -> None:
    """backup.symlink whose rename fails (a directory where the link goes):
    FileError, the directory untouched, and no `.quarantine-tmp.` link left."""
    (tmp_path / "default.active").mkdir()
    with pytest.raises(backup.FileError):
        backup.symlink(str(tmp_path / "default.active"), "q1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default.active"]
    assert (tmp_path / "default.active").is_dir()


@pytest.mark.parametrize("target", ["../../etc/passwd", "missing", ".hidden", "a b"])
def test_bad_pointer_defers_the_message(tmp_path: Path, target: str) -> None:
    site = Site(tmp_path, ("example.test",), ed25519=False)
    os.symlink(target, site.keydir / "example.test" / "default.active")
    env = {"PATH": os.environ["PATH"], "QUARANTINE_CONFIG": str(site.config)}
    proc = subprocess.run(
        [sys.executable, str(REMOTE), "mx.example.org", "a@example.test", "b@example.org"],
        input=MESSAGE,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.stdout.startswith(b"Z") and b"default.active" in proc.stdout, proc.stdout
    assert not (site.root / "sent").exists()


FLIPPER = """
import os, sys, time
from quarantine.auth import rotation
path, a, b, stop = sys.argv[1:]
n = 0
while not os.path.exists(stop):
    rotation._point(path, (a, b)[n % 2])
    n += 1
print(n)
"""


def test_switch_while_signing_verifies_with_either_record(
    tmp_path: Path, local_dns: Callable[[Records], DnsServer]
) -> None:
    """One process flips the pointer between two published keys as fast as it
    can while this one signs: every signature verifies with the record of
    the selector it names (the selector and the key are read by one name)."""
    site = Site(tmp_path, ("example.test",), ed25519=False)
    cfg = site.cfg()
    for name in ("s1", "s2"):
        keys.keygen(cfg, "example.test", name, "rsa", 1024)
    zone = {f"{s}._domainkey.example.test": site.record("example.test", s) for s in ("s1", "s2")}
    server = local_dns(zone)
    stop = tmp_path / "stop"
    rotation._point(str(site.keydir / "example.test" / "default"), "s1")
    flipper = subprocess.Popen(
        [sys.executable, "-c", FLIPPER, str(site.keydir / "example.test" / "default"), "s1", "s2",
         str(stop)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    signed = []
    try:
        time.sleep(0.3)
        for _ in range(150):
            signed.append(sign.sign(cfg.dkim, MESSAGE).message)
    finally:
        stop.touch()
        out, _ = flipper.communicate(timeout=60)
    assert int(out) > 100
    records = {f"{k}.".encode(): v.encode() for k, v in zone.items()}
    used = set()
    for message in signed:
        wire = message.replace(b"\n", b"\r\n")
        assert dkim.verify(wire, dnsfunc=lambda name, timeout=5: records.get(name, b""))
        used.add((b"s=s1;" in b"".join(message.split()) and "s1") or "s2")
    assert used == {"s1", "s2"}
    for message in (signed[0], signed[-1]):
        assert "pass" in mail_dkim(message, "127.0.0.1", server.port).values()


def test_remote_with_pointer_and_pkcs8_stays_lean(tmp_path: Path) -> None:
    """The pointer costs one readlink; a PKCS#8 key is unwrapped without
    importing cryptography (bench/keys: twice the time of a message)."""
    site = Site(tmp_path, ("example.test",), ed25519=False)
    cfg = site.cfg()
    keys.keygen(cfg, "example.test", "q1", "rsa", 1024)
    rotation._point(str(site.keydir / "example.test" / "default"), "q1")
    config.load_file(str(site.config))  # compiled: no YAML on the mail path
    probe = (
        "import sys\nfrom quarantine import remote\nout, code = remote.run(sys.argv[1:])\n"
        "heavy = ('cryptography', 'dns.resolver', 'yaml', 'json', 'click')\n"
        "sys.stderr.write(repr((out, code, [m for m in heavy if m in sys.modules])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, "mx", "a@example.test", "b@example.org"],
        input=MESSAGE,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "QUARANTINE_CONFIG": str(site.config)},
        timeout=60,
        check=False,
    )
    assert proc.stderr.decode() == repr((b"r\0Kok\n\0", 0, []))
    assert b"s=q1;" in b"".join((site.root / "sent").read_bytes().split())


# ------------------------------------------------------------------ state


def test_state_round_trip_and_atomic_save(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.json")
    assert keystate.load(path).domains == {}
    state = keystate.State()
    gen = keystate.Generation({"rsa": "q202612"}, "new", {"new": 1.0})
    state.domain("example.test").generations.append(gen)
    keystate.save(path, state)
    again = keystate.load(path)
    assert again.domains["example.test"].generations[0] == gen
    assert os.listdir(tmp_path) == ["keys.json"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d["domains"]["example.test"]["generations"][0]["selectors"].update(
            rsa="../../x"), "not a DNS name"),
        (lambda d: d["domains"]["example.test"]["generations"][0].update(state="gone"),
         "unknown state"),
        (lambda d: d["domains"].update({"../x": {"generations": []}}), "not a DNS name"),
        (lambda d: d.update(version=9), "not a version 1"),
    ],
)  # fmt: skip
def test_state_file_is_read_strictly(
    tmp_path: Path, change: Callable[[dict[str, object]], None], words: str
) -> None:
    path = tmp_path / "keys.json"
    state = keystate.State()
    state.domain("example.test").generations.append(
        keystate.Generation({"rsa": "q1"}, "active", {"active": 1.0})
    )
    data = state.as_json()
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(keystate.StateError, match=words):
        keystate.load(str(path))


def test_lock_refuses_a_second_run(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.json")
    with keystate.Lock(path), pytest.raises(keystate.Locked), keystate.Lock(path):
        pass


# ------------------------------------------------------------------ tinydns data


def test_tinydns_edit_is_idempotent_and_keeps_other_lines() -> None:
    data = (
        ".example.test:127.0.0.2:ns1.example.test\n"
        "'s1._domainkey.example.test:v=DKIM1; p=OLD:60\n"
        "'other.example.test:keep me:60\n"
    )
    once = publish.edit_tinydns(
        data, "s1._domainkey.example.test", "'s1._domainkey.example.test:NEW:60"
    )
    assert once == (
        ".example.test:127.0.0.2:ns1.example.test\n"
        "#quarantine-keys-was 's1._domainkey.example.test:v=DKIM1; p=OLD:60\n"
        "'other.example.test:keep me:60\n"
        "#quarantine-keys s1._domainkey.example.test\n"
        "'s1._domainkey.example.test:NEW:60\n"
    )
    again = publish.edit_tinydns(
        once, "s1._domainkey.example.test", "'s1._domainkey.example.test:NEW:60"
    )
    assert again == once
    newer = publish.edit_tinydns(
        once, "S1._domainkey.example.test.", "'s1._domainkey.example.test:X:60"
    )
    assert newer.count("#quarantine-keys s1.") == 1 and newer.endswith(":X:60\n")


def test_tsig_key_file_is_read(tmp_path: Path) -> None:
    key = tmp_path / "upd.key"
    key.write_bytes(subprocess.run(["tsig-keygen", "-a", "hmac-sha256", "upd"],
                                   capture_output=True, check=True).stdout)  # fmt: skip
    name, algorithm, secret = publish.read_tsig_key(str(key))
    assert (name, algorithm) == ("upd", "hmac-sha256") and secret.endswith("=")
    key.write_text("nothing here\n")
    with pytest.raises(publish.PublishError, match="no `key"):
        publish.read_tsig_key(str(key))


# ------------------------------------------------------------------ commands


def run_cli(site: Site, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(cli.cli, ["--config", str(site.config), *args], standalone_mode=False)
    code = result.return_value if isinstance(result.return_value, int) else result.exit_code
    return code, result.stdout, result.stderr


def test_keys_commands_exit_codes(tmp_path: Path) -> None:
    site = Site(tmp_path, ("example.test",), ed25519=False)
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH,
         "--config", str(site.config), "keys", "status", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)
    assert entry["domain"] == "example.test" and entry["signing"] == {"rsa": "default"}
    assert entry["active"]["adopted"] is True and entry["active"]["age_seconds"] < 600
    with keystate.Lock(str(site.state)):
        proc = subprocess.run(
            [sys.executable, "-c", LAUNCH, "--config", str(site.config), "keys", "rotate"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert proc.returncode == 75 and "another key rotation" in proc.stderr
    site.config.write_text(site.config.read_text().replace("%/default", "all/default"))
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH, "--config", str(site.config), "keys", "rotate"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "has no %" in proc.stderr


def test_selector_taken_gets_a_suffix_and_bad_format_is_refused(tmp_path: Path) -> None:
    site = Site(tmp_path, ("example.test",), ed25519=False)
    base = time.strftime("q%Y%m", time.gmtime(T0))
    keys.keygen(site.cfg(), "example.test", base, "rsa", 1024)  # made by hand, this month
    state = keystate.State()
    roller = rotation.Roller(site.cfg(), state, lambda: T0, True, None, None, None,
                             rotation.Report())  # fmt: skip
    roller.domain = "example.test"
    assert roller.new_selectors(state.domain("example.test"), T0) == {"rsa": f"{base}-2"}
    site.configure("  selector_format: 'q/%Y'\n")
    with pytest.raises(rotation.RotationError, match="selector_format"):
        site.rotate(T0)


def test_print_says_what_to_add_and_remove(tmp_path: Path) -> None:
    site = Site(tmp_path, ("example.test",), ed25519=False)
    said: list[str] = []
    printer = publish.Print(site.cfg(), said.append)
    printer.put("q1._domainkey.example.test", "v=DKIM1; k=rsa; p=AAAA")
    printer.put("q0._domainkey.example.test", publish.WITHDRAWN, "v=DKIM1; k=rsa; p=BBBB")
    assert said == [
        "publish q1._domainkey.example.test:",
        '  bind:    q1._domainkey.example.test. 60 IN TXT "v=DKIM1; k=rsa; p=AAAA"',
        "  tinydns: 'q1._domainkey.example.test:v=DKIM1; k=rsa; p=AAAA:60",
        "withdraw (replace the record by) q0._domainkey.example.test:",
        '  bind:    q0._domainkey.example.test. 60 IN TXT "v=DKIM1; p="',
        "  tinydns: 'q0._domainkey.example.test:v=DKIM1; p=:60",
        '  (it replaces q0._domainkey.example.test. 60 IN TXT "v=DKIM1; k=rsa; p=BBBB")',
    ]


def test_schedule_runs_keys_rotate_on_keys_schedule(tmp_path: Path) -> None:
    """keys.schedule set: `quarantine schedule` names its next run at start
    and, when it fires, rolls keys (here: a print site with nothing visible,
    so the new key is published and held)."""
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    from quarantine.cli import train as train_cli

    site = Site(tmp_path, ("example.test",), ed25519=False)
    site.configure("  schedule: '17 4 * * 1'\n  max_age: 1s\n  nameservers: [127.0.0.1]\n", port=9)
    cfg = site.cfg()
    trigger = train_cli._keys_trigger(cfg, CronTrigger)
    assert trigger is not None and "17" in str(trigger)
    import threading

    logged: list[str] = []
    time.sleep(1.1)
    train_cli._rotate_keys(cfg, threading.Lock(), threading.Event(), logged.append)
    assert any("publish" in line for line in logged), logged
    assert logged[-1] == "keys rotate exit 0"
    assert keystate.load(str(site.state)).domains["example.test"].pending() is not None
    assert train_cli._keys_overdue(cfg) == (
        "keys: 1 domain (example.test) with keys older than keys.max_age: the next key "
        "rotation rolls them (see quarantine keys status)"
    )
    site.configure("  schedule: 'every day'\n")
    with pytest.raises(Exception, match=r"keys\.schedule"):
        train_cli._keys_trigger(site.cfg(), CronTrigger)
    (tmp_path / "off").mkdir()
    off = Site(tmp_path / "off", ("example.test",), ed25519=False)
    assert train_cli._keys_trigger(off.cfg(), CronTrigger) is None


class HostileDns:
    """A resolver whose NS answer holds a thousand names, some with control
    characters and escape sequences, none of them serving anything."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list[object]:
        if name != "example.test":
            return []
        hosts = [f"ns{i}\x1b[31m\n.example.test" for i in range(1000)]
        return [(name, "NS", host) for host in hosts]

    def resolve(self, name: str, qtype: str) -> list[object]:
        return []


def test_nameservers_from_dns_are_bounded_and_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quarantine.auth import resolver

    site = Site(tmp_path, ("example.test",), ed25519=False)
    monkeypatch.setattr(resolver, "make_resolver", HostileDns)
    waiting = rotation.nameserver_check(site.cfg())
    note = waiting("q1._domainkey.example.test", "v=DKIM1; p=AAAA")
    assert note.startswith("q1._domainkey.example.test not yet served by ns0")
    assert note.count("(no address)") == rotation.MAX_NAMESERVERS
    assert "\x1b" not in note and "\n" not in note and "\\x1b[31m\\x0a" in note


def test_weak_key_is_rolled_whatever_its_age(tmp_path: Path) -> None:
    """The old dknewkey's 384-bit key (made today, so not past keys.max_age)
    is due at once: the signer refuses it, so waiting half a year would
    leave the domain unsigned; a 1024-bit key of the same age is not due."""
    site = Site(tmp_path, ("weak.test", "fine.test"), ed25519=False)
    weak = Path(__file__).parent / "data" / "migrate" / "dknewkey-384.pem"
    (site.keydir / "weak.test" / "default").write_bytes(weak.read_bytes())
    site.configure("  nameservers: [127.0.0.1]\n", port=9)
    now = time.time()
    report = site.rotate(now, waiting=lambda name, text: "held")
    assert report.problems == []
    state = keystate.load(str(site.state))
    pending = state.domains["weak.test"].pending()
    assert pending is not None and pending.state == "published"
    assert state.domains["fine.test"].pending() is None


class CrowdedDns(HostileDns):
    """Two nameservers, each with three hundred A and three hundred AAAA
    records: every address asked would be 1200 queries per record checked."""

    asked: list[tuple[str, str]]

    def records(self, name: str, qtype: str, timeout: float | None = None) -> list[object]:
        if name != "example.test":
            return []
        return [(name, "NS", f"ns{i}.example.test") for i in (1, 2)]

    def resolve(self, name: str, qtype: str) -> list[object]:
        CrowdedDns.asked.append((name, qtype))
        if qtype == "A":
            return [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(300)]
        return [f"fd00::{i + 1:x}" for i in range(300)]


def test_nameserver_addresses_are_bounded_per_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zone whose nameservers list hundreds of addresses costs at most
    MAX_ADDRESSES queries per nameserver, the AAAA lookup skipped when the A
    records already fill them."""
    from quarantine.auth import dnscheck, resolver

    site = Site(tmp_path, ("example.test",), ed25519=False)
    monkeypatch.setattr(resolver, "make_resolver", CrowdedDns)
    CrowdedDns.asked = []
    checked: list[str] = []

    def check(server: resolver.Resolver, name: str, text: str) -> dnscheck.Finding:
        checked.append(server.nameservers[0])
        return dnscheck.Finding("dkim", name, dnscheck.MISSING)

    monkeypatch.setattr(dnscheck, "check_dkim_record", check)
    note = rotation.nameserver_check(site.cfg())("q1._domainkey.example.test", "v=DKIM1; p=AA")
    assert rotation.MAX_ADDRESSES <= 4
    assert len(checked) == 2 * rotation.MAX_ADDRESSES
    assert checked[: rotation.MAX_ADDRESSES] == [
        f"127.1.0.{i + 1}" for i in range(rotation.MAX_ADDRESSES)
    ]
    assert CrowdedDns.asked == [("ns1.example.test", "A"), ("ns2.example.test", "A")]
    assert note == (
        "q1._domainkey.example.test not yet served by ns1.example.test (127.1.0.1: missing), "
        "ns2.example.test (127.1.0.1: missing)"
    )


def swappable_link(tmp_path: Path) -> tuple[Path, Path]:
    """A symlink to a directory (returned second), the link in a directory
    uid 1234 owns: one a mailbox uid could have swapped."""
    owned = tmp_path / "owned"
    owned.mkdir()
    os.chown(owned, 1234, 1234)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (owned / "link").symlink_to(elsewhere)
    return owned / "link", elsewhere


def test_the_pointer_is_swapped_through_the_directory_descriptor(tmp_path: Path) -> None:
    """`.active` is replaced by backup.symlink: a key directory reached
    through a symlink that a mailbox uid could swap is refused, nothing is
    made where that link points, and a normal swap leaves no temporary."""
    site = Site(tmp_path, ("example.test",), ed25519=False)
    keydir = site.keydir / "example.test"
    rotation._point(str(keydir / "default"), "q1")
    rotation._point(str(keydir / "default"), "q2")
    assert os.readlink(keydir / "default.active") == "q2"
    assert [n for n in os.listdir(keydir) if backup.TEMP_TAG in n or n.endswith(".tmp")] == []
    link, elsewhere = swappable_link(tmp_path)
    with pytest.raises(backup.FileError, match="symlink"):
        rotation._point(str(link / "default"), "q1")
    assert os.listdir(elsewhere) == []


def test_state_save_keeps_mode_and_owner_and_follows_no_swapped_link(tmp_path: Path) -> None:
    """keystate.save goes through backup.write: the admin's mode and owner
    stay, and a state directory behind a symlink a non-root uid can change
    is refused (StateError), not written through."""
    path = tmp_path / "keys.json"
    state = keystate.State()
    state.domain("example.test").generations.append(
        keystate.Generation({"rsa": "q1"}, "active", {"active": 1.0})
    )
    keystate.save(str(path), state)
    assert path.stat().st_mode & 0o7777 == 0o644  # a new file
    os.chmod(path, 0o600)
    os.chown(path, 1234, 1235)
    keystate.save(str(path), state)
    st = path.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 1235)
    assert keystate.load(str(path)).domains["example.test"].generations[0].selectors == {
        "rsa": "q1"
    }
    link, elsewhere = swappable_link(tmp_path)
    with pytest.raises(keystate.StateError, match="symlink"):
        keystate.save(str(link / "keys.json"), state)
    assert os.listdir(elsewhere) == []


def tinydns_site(tmp_path: Path, data: Path) -> tuple[publish.Tinydns, list[list[str]]]:
    site = Site(tmp_path, ("example.test",), ed25519=False)
    site.configure(f"  publish: tinydns\n  tinydns_data: {data}\n")
    built: list[list[str]] = []

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        built.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    return publish.Tinydns(site.cfg(), lambda text: None, run), built


def test_tinydns_symlinked_data_is_refused_not_replaced(tmp_path: Path) -> None:
    """A data file that is a symlink is neither followed nor replaced by a
    regular file (backup's contract): a clear error, the link and the file it
    names untouched, nothing built."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "data").write_text(".example.test:127.0.0.2:ns1.example.test\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").symlink_to(real / "data")
    tinydns, built = tinydns_site(tmp_path, root / "data")
    with pytest.raises(publish.PublishError, match=r"is a symlink \(to .*\): not followed"):
        tinydns.put("q1._domainkey.example.test", "v=DKIM1; p=AAAA")
    assert (root / "data").is_symlink() and os.readlink(root / "data") == str(real / "data")
    assert (real / "data").read_text() == ".example.test:127.0.0.2:ns1.example.test\n"
    assert built == []


def test_tinydns_data_edit_keeps_mode_and_owner(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = root / "data"
    data.write_text(".example.test:127.0.0.2:ns1.example.test\n")
    os.chmod(data, 0o640)
    os.chown(data, 1234, 1235)
    tinydns, built = tinydns_site(tmp_path, data)
    tinydns.put("q1._domainkey.example.test", "v=DKIM1; p=AAAA")
    st = data.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 1234, 1235)
    assert data.read_text().endswith(
        "#quarantine-keys q1._domainkey.example.test\n"
        "'q1._domainkey.example.test:v=DKIM1; p=AAAA:60\n"
    )
    assert built == [["tinydns-data"]]
    assert os.listdir(root) == ["data"]
