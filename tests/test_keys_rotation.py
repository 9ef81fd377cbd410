"""Keys that roll over, against real nameservers: BIND 9 updated by RFC 2136
with TSIG (nsupdate) and tinydns built from its data file, three domains each,
simulated time (an injected clock, no sleeping a week). Mail is signed by the
real quarantine-remote before, during and after and verified by Perl
Mail::DKIM (RSA) and dkimpy (ed25519) against the live server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from keys_rig import TINYDNS_IP, Bind, Tinydns
from keys_support import DAY, T0, Site, dkimpy_verify, mail_dkim, selector_at

from quarantine import backup
from quarantine.auth import keystate, rotation

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DOMAINS = ("a.test", "b.test", "c.test")
WITHDRAWN = "v=DKIM1; p="


@pytest.fixture
def bind_server() -> Iterator[Callable[..., Bind]]:
    started: list[Bind] = []

    def start(zones: dict[str, list[str]], **kwargs: object) -> Bind:
        server = Bind(zones, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def tinydns_server() -> Iterator[Callable[[list[str]], Tinydns]]:
    started: list[Tinydns] = []

    def start(lines: list[str]) -> Tinydns:
        server = Tinydns(lines)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def bind_site(
    tmp_path: Path,
    start: Callable[..., Bind],
    domains: tuple[str, ...] = DOMAINS,
    extra: str = "",
    **kwargs: object,
) -> tuple[Site, Bind]:
    """Keys for `domains`, published in BIND's zones from the start (the
    records an admin added by hand), and a configuration that updates BIND."""
    site = Site(tmp_path, domains)
    server = start({d: site.zone_lines(d) for d in domains}, **kwargs)
    site.configure(
        "  publish: nsupdate\n"
        "  nsupdate_server: 127.0.0.1\n"
        f"  nsupdate_port: {server.port}\n"
        f"  nsupdate_key: {server.key_file}\n" + extra,
        port=server.port,
    )
    return site, server


def verdicts(site: Site, message: bytes) -> dict[str, str]:
    return mail_dkim(message, site.dns_host, site.dns_port)


def assert_signed_by(site: Site, message: bytes, selector: str) -> None:
    """The RSA signature of `selector` passes Mail::DKIM, the ed25519 one
    (selector + e, or `ed` for the first keys) passes dkimpy."""
    found = verdicts(site, message)
    assert found.get(selector) == "pass", found
    ed = "ed" if selector == "default" else selector + "e"
    assert ed in found and "ed25519" in found[ed], found  # Mail::DKIM: unsupported algorithm
    assert dkimpy_verify(message, ed, site.dns_host, site.dns_port)


def full_rotation(site: Site, txt: Callable[[str], list[str]]) -> None:
    """Before, during and after one roll-over of every domain."""
    new = selector_at(T0)
    before = {d: site.sign(d) for d in site.domains}
    for domain in site.domains:
        assert_signed_by(site, before[domain], "default")

    report = site.rotate(T0)
    assert report.problems == [], report
    for domain in site.domains:
        assert site.pointer(domain) == new and site.pointer(domain, "ed") == new + "e"
        assert txt(f"{new}._domainkey.{domain}") == [site.record(domain, new)]
        assert txt(f"{new}e._domainkey.{domain}") == [site.record(domain, new + "e")]
    during = {d: site.sign(d) for d in site.domains}
    for domain in site.domains:
        assert_signed_by(site, during[domain], new)
        assert_signed_by(site, before[domain], "default")  # the old record is still there
    entries = {e["domain"]: e for e in rotation.status(site.cfg(), clock=lambda: T0 + DAY)}
    for domain in site.domains:
        active, retiring = entries[domain]["active"], entries[domain]["retiring"]
        assert isinstance(active, dict) and isinstance(retiring, list)
        assert active["selectors"] == {"rsa": new, "ed25519": new + "e"}
        assert [r["selectors"] for r in retiring] == [{"rsa": "default", "ed25519": "ed"}]

    assert site.rotate(T0 + 3 * DAY).lines == []  # inside keys.overlap: nothing to do
    for domain in site.domains:
        assert_signed_by(site, before[domain], "default")

    report = site.rotate(T0 + 8 * DAY)
    assert report.problems == [], report
    for domain in site.domains:
        assert txt(f"default._domainkey.{domain}") == [WITHDRAWN]
        assert txt(f"ed._domainkey.{domain}") == [WITHDRAWN]
        assert sorted(os.listdir(site.keydir / domain)) == sorted(
            ["default.active", "ed.active", new, new + ".pub", new + "e", new + "e.pub"]
        )
        after = site.sign(domain)
        assert_signed_by(site, after, new)
        assert_signed_by(site, during[domain], new)
        old = verdicts(site, before[domain])
        assert old["default"] != "pass" and "revoked" in old["default"], old
    state = keystate.load(str(site.state))
    for domain in site.domains:
        assert [(g.name, g.state) for g in state.domains[domain].generations] == [
            ("default", "retired"),
            (new, "active"),
        ]


def test_full_rotation_on_bind_with_nsupdate(
    tmp_path: Path, bind_server: Callable[..., Bind]
) -> None:
    site, server = bind_site(tmp_path, bind_server)
    full_rotation(site, server.txt)


def test_full_rotation_on_tinydns(
    tmp_path: Path, tinydns_server: Callable[[list[str]], Tinydns]
) -> None:
    """The data file keeps the admin's lines; the old records it had are
    commented out (`#quarantine-keys-was`), ours are marked, and a rerun of
    the same step leaves the file byte for byte as it was."""
    site = Site(tmp_path, DOMAINS)
    lines = ["# the admin's own data"]
    for domain in DOMAINS:
        lines.append(f".{domain}:{TINYDNS_IP}:ns1.{domain}:60")
        lines += site.tinydns_lines(domain)
    server = tinydns_server(lines)
    site.configure(f"  publish: tinydns\n  tinydns_data: {server.data}\n", host=TINYDNS_IP)
    full_rotation(site, server.txt)
    data = server.data.read_text()
    assert data.startswith("# the admin's own data\n")
    for domain in DOMAINS:
        assert f"#quarantine-keys-was 'default._domainkey.{domain}:" in data
        withdrawn = f"'default._domainkey.{domain}:v=DKIM1; p=:60\n"
        assert f"#quarantine-keys default._domainkey.{domain}\n{withdrawn}" in data
        assert data.count(f"#quarantine-keys {selector_at(T0)}._domainkey.{domain}\n") == 1
    site.rotate(T0 + 9 * DAY)
    assert server.data.read_text() == data


def test_lagging_nameserver_holds_the_switch(
    tmp_path: Path,
    bind_server: Callable[..., Bind],
    tinydns_server: Callable[[list[str]], Tinydns],
) -> None:
    """The zone has two nameservers: ns1, the BIND that takes the update, and
    ns2, a tinydns fed by a copy of the zone that has not caught up yet. It
    does not serve the new key, so signing stays with the old key and mail
    keeps verifying; once ns2 has the record, the next run switches."""
    nameservers = {"ns1": "127.0.0.1", "ns2": TINYDNS_IP}
    site, server = bind_site(tmp_path, bind_server, DOMAINS[:1], port=53, nameservers=nameservers)
    domain, new = DOMAINS[0], selector_at(T0)
    lagging = tinydns_server(
        [f".{domain}:{TINYDNS_IP}:ns2.{domain}:60", *site.tinydns_lines(domain)]
    )
    report = site.rotate(T0)
    assert report.problems == []
    assert site.pointer(domain) is None  # still the template's own key
    assert server.txt(f"{new}._domainkey.{domain}") == [site.record(domain, new)]
    assert lagging.txt(f"{new}._domainkey.{domain}") == []
    assert any(f"ns2.{domain} ({TINYDNS_IP}: missing)" in line for line in report.lines), report
    assert_signed_by(site, site.sign(domain), "default")
    (entry,) = rotation.status(site.cfg(), clock=lambda: T0)
    pending = entry["pending"]
    assert isinstance(pending, dict) and pending["state"] == "published"
    assert "ns2" in str(pending["waiting"]) and "ns1" not in str(pending["waiting"])

    assert site.rotate(T0 + DAY).problems == []
    assert site.pointer(domain) is None
    lagging.rebuild(site.tinydns_lines(domain))  # the copy catches up
    assert site.rotate(T0 + 2 * DAY).problems == []
    assert site.pointer(domain) == new
    assert_signed_by(site, site.sign(domain), new)


def test_print_never_switches_until_the_record_is_visible(
    tmp_path: Path, bind_server: Callable[..., Bind]
) -> None:
    """DNS run elsewhere: the run prints what to publish and waits; only when
    the admin has added the printed record does signing switch."""
    site, server = bind_site(
        tmp_path, bind_server, DOMAINS[:1], extra="  print_domains: [a.test]\n"
    )
    domain, new = DOMAINS[0], selector_at(T0)
    report = site.rotate(T0)
    assert report.problems == []
    printed = [line.split("bind:", 1)[1].strip() for line in report.lines if "bind:" in line]
    assert printed == [site.bind_record(domain, new), site.bind_record(domain, new + "e")]
    assert server.txt(f"{new}._domainkey.{domain}") == []
    for later in (1, 2, 30):
        assert site.rotate(T0 + later * DAY).problems == []
        assert site.pointer(domain) is None
        assert_signed_by(site, site.sign(domain), "default")
    for line in printed:  # the admin pastes what was printed
        server.nsupdate("update add " + line.replace("( ", "").replace(" )", ""))
    assert site.rotate(T0 + 31 * DAY).problems == []
    assert site.pointer(domain) == new
    assert_signed_by(site, site.sign(domain), new)
    report = site.rotate(T0 + 40 * DAY)
    assert any(line.startswith(f"{domain}: withdraw") for line in report.lines), report
    assert not (site.keydir / domain / "default").exists()


# ------------------------------------------------------------------ crashes

KILLER = """
import os, signal, sys
from quarantine import config
from quarantine.auth import rotation
cfg = config.load_file(sys.argv[1], read_cache=False, write_cache=False)
when, kill_at, domain = float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
steps = []
def hook(step, name):
    steps.append(step)
    if len(steps) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
report = rotation.rotate(cfg, (domain,), clock=lambda: when, hook=hook)
print(" ".join(steps))
sys.exit(report.exit_code)
"""


def run_killed(
    site: Site, when: float, kill_at: int, domain: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", KILLER, str(site.config), str(when), str(kill_at), domain],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sigkill_at_every_step_resumes(tmp_path: Path, bind_server: Callable[..., Bind]) -> None:
    """A run killed after any step (state saved, key written, record put,
    pointer switched, record withdrawn, key removed) leaves mail that
    verifies, and the next run finishes the roll-over exactly as an
    uninterrupted one does."""
    phase1 = ["adopted", "new", "key", "key", "put", "put", "published", "switched", "active"]
    phase2 = ["withdrawn", "withdrawn", "removed", "removed", "retired"]
    points = len(phase1) + len(phase2)
    domains = tuple(f"k{i}.test" for i in range(points + 1))
    site, server = bind_site(tmp_path, bind_server, domains)
    new = selector_at(T0)
    clean = domains[-1]  # the uninterrupted run, in this process
    steps: list[str] = []
    assert site.rotate(T0, domains=(clean,), hook=lambda step, _: steps.append(step)).lines
    assert steps == phase1
    steps.clear()
    report = site.rotate(T0 + 8 * DAY, domains=(clean,), hook=lambda step, _: steps.append(step))
    assert report.problems == [], report
    assert report.lines == [  # the selectors as the state file keeps them, sorted by key type
        f"{clean}: 127.0.0.1: ed._domainkey.{clean} withdrawn (zone {clean})",
        f"{clean}: 127.0.0.1: default._domainkey.{clean} withdrawn (zone {clean})",
        f"{clean}: retired default: record withdrawn, private key removed",
    ]
    assert steps == phase2
    for point in range(1, points + 1):
        domain = domains[point - 1]
        for when, phase, offset in ((T0, phase1, 0), (T0 + 8 * DAY, phase2, len(phase1))):
            if offset < point <= offset + len(phase):
                killed = run_killed(site, when, point - offset, domain)
                assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
                signed = site.sign(domain)  # by whatever the crash left behind
                selector = site.pointer(domain) or "default"
                assert dkimpy_verify(signed, selector, site.dns_host, site.dns_port), point
            report = site.rotate(when, domains=(domain,))
            assert report.problems == [], (point, report)
        assert site.pointer(domain) == new, point
        assert server.txt(f"default._domainkey.{domain}") == [WITHDRAWN], point
        assert server.txt(f"{new}._domainkey.{domain}") == [site.record(domain, new)], point
        assert not (site.keydir / domain / "default").exists(), point
    assert_signed_by(site, site.sign(domains[0]), new)
    state = json.loads(site.state.read_text())["domains"]
    shape = [(g["selectors"], g["state"]) for g in state[clean]["generations"]]
    for domain in domains[:-1]:
        assert [(g["selectors"], g["state"]) for g in state[domain]["generations"]] == shape
    # Killed between steps, never inside a write: no temporary file (of
    # backup.write for the state, backup.symlink for a pointer) is left.
    for directory in (site.state.parent, *(site.keydir / d for d in domains)):
        assert [n for n in os.listdir(directory) if backup.TEMP_TAG in n] == [], directory
