"""The doctor's parts on their own: the line and JSON forms of a finding, what
a uid may do with a path (kernel answer as that uid, and the mode-bit answer),
the config cache's freshness, the trainer's last run under an injected clock,
the mailbox walk, key files and DNS lookups against a recording resolver."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quarantine import config as config_module
from quarantine import discovery, doctor, filterchain, privsep, sandbox
from quarantine import maildir as md
from quarantine.auth import dnscheck
from quarantine.auth import resolver as resolver_module
from quarantine.health import access, install, mailboxes, signing
from quarantine.health.findings import Finding, fail, ok, warn

DOMAIN = "example.test"


def test_line_and_json_forms() -> None:
    finding = fail("bayes.owner", "/var/lib/bayes/bayes", "uid 89 cannot write", "chown 89:89 x")
    assert finding.line() == (
        "FAIL  bayes.owner      /var/lib/bayes/bayes  uid 89 cannot write -> chown 89:89 x"
    )
    assert ok("key.size", "k", "2048-bit RSA").line().startswith("ok    key.size ")
    assert "->" not in ok("key.size", "k", "fine").line()
    assert warn("tmp.debris", "d", "m", "f").as_dict() == {
        "id": "tmp.debris", "status": "warn", "subject": "d", "message": "m", "fix": "f",
    }  # fmt: skip
    assert ok("a", "b", "c").as_dict()["fix"] is None


def test_names_are_escaped_in_both_forms() -> None:
    hostile = "/d/.qmail-x\nFAIL  forged\x1b[2J\udcff"
    finding = fail("filter.runnable", hostile, f"line 1: {hostile}", hostile)
    line = finding.line()
    assert "\n" not in line and "\x1b" not in line
    assert "\\x0aFAIL" in line and "\\x1b" in line and "\\xff" in line
    data = json.loads(json.dumps(finding.as_dict()))
    assert "\n" not in data["subject"] and "\\x0a" in data["subject"]


def test_worker_results_round_trip_and_garbage_is_a_failure() -> None:
    finding = warn("imap.subscribed", "example.test", "not subscribed", "add it")
    assert Finding.from_list(json.loads(json.dumps(finding.as_list()))) == finding
    broken = Finding.from_list(["x", "maybe", "s", "m", None])
    assert broken.status == "fail" and broken.id == "doctor"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temporary directory every uid can enter (pytest's own is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="quarantine-doctor-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_blocked_by_mode_bits_and_by_the_kernel(open_dir: Path) -> None:
    tmp_path = open_dir
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    program = closed / "prog"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    tmp_path.chmod(0o755)
    other = access.Who(4242, 4242, "uid 4242")
    # Not that uid here: worked out from the bits.
    reason = access.blocked(str(program), "rx", other.uid, other.gid)
    assert reason is not None and f"cannot enter {closed}" in reason
    if os.geteuid() == 0:
        # As root: a worker drops to the uid and the kernel answers.
        assert access.probe(other, [(str(program), "rx")]) == [reason]
        closed.chmod(0o711)
        assert access.probe(other, [(str(program), "rx"), (str(closed), "w")])[0] is None
        assert access.blocked(str(program), "rx", other.uid, other.gid) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_run_as_runs_as_that_uid() -> None:
    result = privsep.run_as(4242, 4343, lambda: {"ids": [os.geteuid(), os.getegid()]})
    assert result == {"ids": [4242, 4343]}
    assert os.geteuid() == 0


def test_cache_missing_fresh_stale_untrusted(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("train:\n  age: 3d\n")
    fix = "quarantine config check"
    assert install.cache_finding(str(path), fix).status == "warn"  # no cache yet
    config_module.load_file(str(path))  # writes the cache, as config check does
    assert install.cache_finding(str(path), fix).status == "ok"
    time.sleep(0.01)
    path.write_text("train:\n  age: 4d\n")
    stale = install.cache_finding(str(path), fix)
    assert stale.status == "fail" and "changed after" in stale.message
    config_module.load_file(str(path))
    os.chmod(config_module.cache_path(str(path)), 0o666)
    untrusted = install.cache_finding(str(path), fix)
    assert untrusted.status == "fail" and "writable by others" in untrusted.message


def test_config_that_does_not_load(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("train:\n  agge: 3d\n")
    cfg, found = install.load_config(str(path), {})
    assert cfg is None
    assert [(f.id, f.status) for f in found] == [("config.valid", "fail")]
    assert "train.agge" in found[0].message and ":2:" in found[0].message


def test_last_run_under_a_clock(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    cfg_path = tmp_path / "q.yaml"
    cfg_path.write_text(f"train:\n  state_file: {state}\n")
    cfg = config_module.load_file(str(cfg_path), write_cache=False)
    now = 1_800_000_000.0
    assert install.last_run(cfg, now).status == "warn"  # never ran

    def write(exit_code: int, started: float) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
        state.write_text(json.dumps({"started": stamp, "exit_code": exit_code}))

    write(0, now - 86400)
    assert install.last_run(cfg, now).status == "ok"
    write(0, now - 2 * 86400 - 60)
    assert install.last_run(cfg, now).status == "fail"
    write(1, now - 60)
    assert install.last_run(cfg, now).status == "fail"
    state.write_text("{not json")
    assert install.last_run(cfg, now).status == "fail"


def test_cache_is_current_says_what_load_file_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("train:\n  age: 3d\n")
    assert not config_module.cache_is_current(str(path), os.stat(path))
    config_module.load_file(str(path))  # writes the cache
    assert config_module.cache_is_current(str(path), os.stat(path))

    def parse(text: bytes | str, source: str) -> dict[str, dict[str, object]]:
        raise AssertionError(f"{source} parsed, not read from its cache")

    monkeypatch.setattr(config_module, "parse_text", parse)
    assert config_module.load_file(str(path)).train.age == 3 * 86400
    time.sleep(0.01)
    path.write_text("train:\n  age: 4d\n")
    assert not config_module.cache_is_current(str(path), os.stat(path))
    with pytest.raises(AssertionError, match="parsed"):
        config_module.load_file(str(path))


def test_every_check_id_is_in_check_ids() -> None:
    """The ids the checks write (literally, or as a module's CHECK) are
    CHECK_IDS, and each of CHECK_IDS is written by some check."""
    top = Path(doctor.__file__).parent
    sources = [top / "doctor.py", *sorted((top / "health").glob("*.py"))]
    text = "\n".join(path.read_text() for path in sources)
    written = set(re.findall(r"\b(?:ok|warn|fail)\(\s*\"([a-z]+\.[a-z-]+)\"", text))
    written |= set(re.findall(r"(?m)^CHECK = \"([a-z]+\.[a-z-]+)\"", text))  # ok(CHECK, ...)
    written |= {f"dns.{kind}" for kind in ("spf", "dmarc")}  # f"dns.{finding.kind}"
    assert written == set(doctor.CHECK_IDS)


def test_mode_bits_are_read_as_optin_reads_them(
    open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = open_dir / "prog"
    program.write_text("#!/bin/sh\n")
    if os.geteuid() == 0:
        os.chown(program, 0, 4242)
    for mode in (0o700, 0o750, 0o705, 0o755, 0o644, 0o711):
        program.chmod(mode)
        doctor_says = access.blocked(str(program), "rx", 4242, 4242)
        optin_says = filterchain.access_problem(str(program), 4242, 4242, 0o5)
        assert (doctor_says is None) == (optin_says is None), (oct(mode), doctor_says, optin_says)
    assert access.blocked(str(program), "rx", 4242, 4242) is not None  # 0711: not readable
    program.chmod(0o755)
    assert access.blocked(str(program), "rx", 4242, 4242) is None
    # One rule, filterchain's: the doctor has no copy of its own.
    monkeypatch.setattr(filterchain, "may", lambda st, uid, gid, bits: False)
    assert access.blocked(str(program), "rx", 4242, 4242) is not None


@pytest.mark.parametrize("folder", ["Ind\u00e9sirables", "Spam.\u00c4lter", "Ind&AOk-sirables"])
def test_listed_reads_the_files_as_subscribe_writes_them(tmp_path: Path, folder: str) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    owner = md.Owner(os.getuid(), os.getgid())
    for server in ("courier", "dovecot"):
        assert not md.listed(str(maildir), folder, server)
    assert md.servers_for(str(maildir), "courier") == (True, False)
    assert md.servers_for(str(maildir), "off") == (False, False)
    assert md.servers_for(str(maildir), "auto") == md.servers_of(str(maildir)) == (True, True)
    md.subscribe(str(maildir), folder, owner, "both")
    for server in ("courier", "dovecot"):
        assert md.listed(str(maildir), folder, server), server
        assert not md.listed(str(maildir), "Junk", server), server
    # A second subscribe finds the names listed: nothing is added.
    assert md.subscribe(str(maildir), folder, owner, "both") == []
    # A subscription file that is a symlink is not read.
    (maildir / "courierimapsubscribed").rename(tmp_path / "elsewhere")
    (maildir / "courierimapsubscribed").symlink_to(tmp_path / "elsewhere")
    assert not md.listed(str(maildir), folder, "courier")


def test_the_walk_reads_dot_qmail_files_one_at_a_time(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    domain_dir = tree.domains[DOMAIN]
    (domain_dir / ".qmail-extra").write_text("|/bin/true\n")
    (tree.maildir(f"bob@{DOMAIN}").parent / ".qmail").write_text("./Maildir/\n")
    events: list[str] = []
    read_plain, line, maildir_of = (
        mailboxes._read_plain,
        mailboxes.Walker._line,
        discovery.maildir_of,
    )
    homes: list[str] = []

    def counted_read(name: str, dir_fd: int | None = None) -> str | None:
        events.append("read")
        return read_plain(name, dir_fd)

    def counted_line(self: mailboxes.Walker, domain: object, text: str) -> object:
        events.append("line")
        return line(self, domain, text)  # type: ignore[arg-type]

    def counted_maildir_of(cfg: object, domain: object, home: str) -> str | None:
        homes.append(home)
        return maildir_of(cfg, domain, home)  # type: ignore[arg-type]

    monkeypatch.setattr(mailboxes, "_read_plain", counted_read)
    monkeypatch.setattr(mailboxes.Walker, "_line", counted_line)
    monkeypatch.setattr(discovery, "maildir_of", counted_maildir_of)
    cfg = config_module.load_file(str(tree.config_path), write_cache=False)
    [domain] = discovery.find_domains(cfg, discovery.Options([DOMAIN]))
    found = mailboxes.Walker(cfg).domain(domain)
    assert [f.status for f in found if f.id == "filter.runnable"] == ["ok"], found
    reads = [i for i, e in enumerate(events) if e == "read"]
    assert len(reads) >= 3, events  # .qmail-alice, .qmail-extra, bob's .qmail
    # Each file's lines are checked before the next file is read.
    assert events.index("line") < reads[-1], events
    assert sorted(homes) == sorted(set(homes)) and len(homes) == 2, homes


def test_unreadable_key_files_are_refused_at_once(tmp_path: Path) -> None:
    from quarantine.auth import sign

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    large = tmp_path / "large"
    large.write_bytes(b"A" * (sign.MAX_KEY + 1))
    link = tmp_path / "link"
    link.symlink_to(large)
    # A FIFO is not opened for a blocking read (which would wait forever).
    finding = signing.key_size(str(fifo))
    assert finding.status == "fail" and "not a regular file" in finding.message
    finding = signing.key_size(str(large))
    assert finding.status == "fail" and f"over {sign.MAX_KEY} bytes" in finding.message
    finding = signing.key_size(str(link))
    assert finding.status == "warn" and "symlink" in finding.message


class Recording(resolver_module.Resolver):
    """Answers TXT questions from a table and remembers every question."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(["127.0.0.1"])
        self.answers = answers
        self.asked: list[str] = []

    def resolve(self, name: str, qtype: str) -> list[object]:
        self.asked.append(f"{name} {qtype}")
        text = self.answers.get(name)
        return [(text.encode(),)] if text is not None and qtype == "TXT" else []


def test_dns_checks_ask_each_name_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = tmp_path / "keys" / DOMAIN / "default"
    key.parent.mkdir(parents=True)
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    key.write_bytes(pem)
    cfg_path = tmp_path / "q.yaml"
    cfg_path.write_text(
        f"dkim:\n  keydir: {tmp_path}/keys\n  sign_template: {tmp_path}/keys/%/default\n"
    )
    cfg = config_module.load_file(str(cfg_path), write_cache=False)
    dkim_name = f"default._domainkey.{DOMAIN}"
    recording = Recording(
        {dkim_name: signing.inspect(str(key)).record, f"_dmarc.{DOMAIN}": "v=DMARC1; p=none"}
    )
    only = dnscheck.check(cfg, DOMAIN, resolver=recording, kinds=("dmarc",))
    assert [(f.kind, f.status) for f in only] == [("dmarc", dnscheck.PUBLISHED)]
    assert recording.asked == [f"_dmarc.{DOMAIN} TXT"]
    recording.asked.clear()
    monkeypatch.setattr(resolver_module, "make_resolver", lambda *_: recording)
    keys, broken = signing.signing_keys(cfg, [DOMAIN])
    assert not broken
    found = signing.check_dns(cfg, keys)
    assert [(f.id, f.status) for f in found] == [
        ("dns.dkim", "ok"),
        ("dns.spf", "fail"),  # no SPF record served
        ("dns.dmarc", "ok"),
    ], found
    assert recording.asked.count(f"{dkim_name} TXT") == 1, recording.asked


def test_a_fifo_where_qmail_remote_goes_is_not_waited_on(tmp_path: Path) -> None:
    """The doctor asks whether qmail-remote is our wrapper: a FIFO planted
    there (no writer ever comes) is answered at once, not waited on; a
    script that runs quarantine-remote is still recognised."""
    fifo = tmp_path / "qmail-remote"
    os.mkfifo(fifo)
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(signing.is_wrapper(str(fifo))))
    worker.start()
    worker.join(5)
    if worker.is_alive():  # it waits for a writer: be one, so the test ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("is_wrapper waited on a FIFO")
    assert result == [False]
    script = tmp_path / "qmail-remote.script"
    script.write_text('#!/bin/sh\nexec /opt/quarantine/bin/quarantine-remote "$@"\n')
    assert signing.is_wrapper(str(script)) is True
