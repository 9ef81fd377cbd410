"""`quarantine doctor` end to end: a healthy installation built with the real
programs gives exit 0 and no FAIL; each broken thing alone gives exactly its
FAIL, and where the breakage has a real consequence (sa-learn refused, qmail
-local unable to run the filter, tcpserver's rules without QMAILQUEUE) the
test shows that too."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dns_server import DnsServer, Records
from doctor_support import (
    DOMAIN,
    SAMPLE_SPAM,
    Installation,
    as_uid,
    failures,
    make_bayes,
    make_key,
)

from quarantine import sandbox


@pytest.fixture(scope="module")
def made(quarantine_bin: Path) -> Iterator[tuple[Path, Path, str]]:
    """The slow parts once per module: a Bayes database and a 2048-bit key
    (in a directory uid 89 can enter: pytest's own is 0700)."""
    top = Path(tempfile.mkdtemp(prefix="quarantine-doctor-"))
    top.chmod(0o755)
    make_bayes(top / "bayes")
    record = make_key(quarantine_bin, top / "keys")
    yield top / "bayes", top / "keys", record
    shutil.rmtree(top)


@pytest.fixture
def install(
    tree: sandbox.Tree,
    quarantine_bin: Path,
    local_dns: Callable[[Records], DnsServer],
    made: tuple[Path, Path, str],
) -> Iterator[Installation]:
    bayes, keydir, record = made
    yield Installation(tree, quarantine_bin, local_dns, record, bayes, keydir)


def only_failure(install: Installation) -> tuple[str | None, str | None]:
    code, findings = install.doctor()
    found = failures(findings)
    assert code == 1, findings
    assert len(found) == 1, found
    return found[0]


def test_healthy_installation_is_all_ok(install: Installation) -> None:
    proc = install.quarantine("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("ok  ") for line in lines), proc.stdout
    ids = {line.split()[1] for line in lines}
    assert ids >= {
        "config.valid",
        "queue.wired",
        "train.last-run",
        "bayes.owner",
        "remote.wrapped",
        "key.size",
        "key.perms",
        "filter.runnable",
        "tmp.debris",
        "imap.subscribed",
        "dns.dkim",
        "dns.spf",
        "dns.dmarc",
    }
    code, findings = install.doctor()
    assert code == 0
    assert {f["status"] for f in findings} == {"ok"}
    assert set(findings[0]) == {"id", "status", "subject", "message", "fix"}


def test_root_owned_bayes_database(install: Installation) -> None:
    toks = install.bayes / "bayes_toks"
    os.chown(toks, 0, 0)
    toks.chmod(0o600)
    check, subject = only_failure(install)
    assert (check, subject) == ("bayes.owner", f"{install.bayes}/bayes")
    # What the nightly run meets: sa-learn as the domain's uid cannot learn.
    env = {"HOME": str(install.bayes), "PATH": "/usr/bin:/bin", "LANG": "C"}
    proc = as_uid(
        89,
        89,
        ["sa-learn", "--dbpath", str(install.bayes / "bayes"), "--ham", str(SAMPLE_SPAM)],
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0 and "Permission denied" in proc.stderr, proc.stdout + proc.stderr


def test_bayes_unreadable_by_spamd(install: Installation) -> None:
    (install.bayes / "bayes_seen").chmod(0o600)
    check, _ = only_failure(install)
    assert check == "bayes.owner"


def test_bare_quarantine_on_a_qmail_line(install: Installation) -> None:
    dot = install.tree.domains[DOMAIN] / ".qmail-bob"
    dot.write_text("|preline quarantine deliver\n./bob/Maildir/\n")
    os.chown(dot, 89, 89)
    assert only_failure(install) == ("filter.runnable", str(dot))
    result = sandbox.qmail_local(install.tree, f"bob@{DOMAIN}", b"Subject: x\n\nbody\n")
    assert result.status != "success", result.output


def _venv(install: Installation) -> tuple[Path, Path]:
    """A real venv under a 0700 directory (as one under /root is)."""
    private = install.root / "private"
    private.mkdir(mode=0o700)
    venv = private / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    return private, venv


def _script_for(install: Installation, python: Path, where: Path) -> Path:
    """The installed quarantine script with its `#!` line pointing at `python`."""
    text = install.bin.read_text().split("\n", 1)[1]
    where.write_text(f"#!{python}\n{text}")
    where.chmod(0o755)
    return where


def _point_alice_at(install: Installation, program: Path) -> Path:
    dot = install.tree.domains[DOMAIN] / ".qmail-alice"
    text = dot.read_text()
    old = str(install.bin)
    assert old in text
    dot.write_text(text.replace(old, str(program)))
    return dot


def test_venv_under_a_0700_directory(install: Installation) -> None:
    _, venv = _venv(install)
    script = _script_for(install, venv / "bin" / "python", venv / "bin" / "quarantine")
    dot = _point_alice_at(install, script)
    check, subject = only_failure(install)
    assert (check, subject) == ("filter.runnable", str(dot))
    result = sandbox.qmail_local(install.tree, f"alice@{DOMAIN}", b"Subject: x\n\nbody\n")
    assert result.status != "success", result.output


def test_interpreter_under_a_0700_directory(install: Installation) -> None:
    _, venv = _venv(install)
    public = install.root / "public"
    public.mkdir(mode=0o755)
    script = _script_for(install, venv / "bin" / "python", public / "quarantine")
    dot = _point_alice_at(install, script)
    _, findings = install.doctor()
    assert failures(findings) == [("filter.runnable", str(dot))]
    message = next(f["message"] for f in findings if f["status"] == "fail")
    assert "interpreter" in str(message) and str(install.root / "private") in str(message)


def test_512_bit_key(install: Installation) -> None:
    from quarantine.auth import keys

    proc = subprocess.run(
        ["openssl", "genrsa", "-traditional", "512"], capture_output=True, check=True
    )
    install.key.write_bytes(proc.stdout)
    install.publish(keys.public_record(str(install.key)))  # only its size is wrong
    assert only_failure(install) == ("key.size", str(install.key))


def test_world_readable_key(install: Installation) -> None:
    install.key.chmod(0o644)
    assert only_failure(install) == ("key.perms", str(install.key))


def test_stale_cache(install: Installation) -> None:
    config = install.tree.config_path
    time.sleep(0.01)
    with config.open("a") as handle:
        handle.write("# edited after config check\n")
    assert only_failure(install) == ("config.valid", str(config))


def test_qmailqueue_missing_from_the_cdb(install: Installation) -> None:
    source = install.rules.read_text()
    install.write_rules('127.:allow,RELAYCLIENT=""\n:allow,DKVERIFY="DEGIJKfh"\n')
    install.rules.write_text(source)  # the file says it; the cdb tcpserver reads does not
    cdb = f"{install.rules}.cdb"
    assert only_failure(install) == ("queue.wired", cdb)
    # tcprulescheck shows what tcpserver would set for a remote client: no QMAILQUEUE.
    proc = subprocess.run(
        ["tcprulescheck", cdb],
        env={"TCPREMOTEIP": "192.0.2.1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert "DKVERIFY" in proc.stdout and "QMAILQUEUE" not in proc.stdout, proc.stdout


def test_no_rule_sets_qmailqueue(install: Installation) -> None:
    install.write_rules('127.:allow,RELAYCLIENT=""\n:allow\n')
    assert only_failure(install) == ("queue.wired", f"{install.rules}.cdb")


def test_published_key_differs(install: Installation, quarantine_bin: Path, tmp_path: Path) -> None:
    install.publish(make_key(quarantine_bin, tmp_path / "other"))
    assert only_failure(install) == ("dns.dkim", f"default._domainkey.{DOMAIN}")


def test_last_run_failed_or_old(install: Installation) -> None:
    install.write_state(exit_code=1, started=time.time() - 3600)
    assert only_failure(install) == ("train.last-run", str(install.state))
    install.write_state(exit_code=0, started=time.time() - 3 * 86400)
    assert only_failure(install) == ("train.last-run", str(install.state))


def test_qmail_remote_not_wrapped(install: Installation) -> None:
    remote = install.tree.qmail_home / "bin" / "qmail-remote"
    remote.unlink()
    shutil.copy(install.tree.qmail_home / "bin" / "qmail-remote.orig", remote)
    assert only_failure(install) == ("remote.wrapped", str(remote))


def test_debris_and_unsubscribed_junk_warn(install: Installation) -> None:
    maildir = install.tree.maildir(f"alice@{DOMAIN}")
    debris = maildir / "tmp" / "1.2.host"
    debris.write_text("half a message")
    install.write_config("cleanup:\n  tmp_age: 1s\n")  # its ctime cannot be set back
    time.sleep(1.1)
    (maildir / "courierimapsubscribed").write_text("INBOX.Sent\n")
    code, findings = install.doctor()
    assert code == 0, findings
    warned = {f["id"] for f in findings if f["status"] == "warn"}
    assert warned == {"tmp.debris", "imap.subscribed"}, findings


def test_one_domain_and_an_unknown_one(install: Installation) -> None:
    code, findings = install.doctor("--domain", DOMAIN)
    assert code == 0 and {f["subject"] for f in findings} >= {DOMAIN}
    proc = install.quarantine("doctor", "--domain", "nosuch.test")
    assert proc.returncode == 2, proc.stdout + proc.stderr


def test_hostile_names_stay_on_one_line(install: Installation) -> None:
    domain_dir = install.tree.domains[DOMAIN]
    evil = domain_dir / ".qmail-x\nFAIL  forged  line"
    evil.write_text("|preline quarantine deliver\n")
    os.chown(evil, 89, 89)
    # A symlink is never followed (nor reported as a filter): its target is
    # readable by the domain's uid and its bare name is on line 2, so a
    # followed link would be a FAIL line of its own.
    secret = install.root / "secret"
    secret.write_text("# not the domain's own file\n|quarantine deliver\n")
    secret.chmod(0o644)
    (domain_dir / ".qmail-link").symlink_to(secret)
    proc = install.quarantine("doctor")
    assert proc.returncode == 1
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and "\\x0aFAIL" in fails[0], proc.stdout
    assert not any(line.startswith("FAIL  forged") for line in proc.stdout.splitlines())


def test_bayes_database_sa_learn_cannot_read(install: Installation) -> None:
    # Permissions are right, the content is not: sa-learn as uid 89 decides.
    toks = install.bayes / "bayes_toks"
    toks.write_bytes(b"not a Berkeley DB file\n" * 100)
    os.chown(toks, 89, 89)
    _, findings = install.doctor()
    assert failures(findings) == [("bayes.owner", f"{install.bayes}/bayes")], findings
    message = next(f["message"] for f in findings if f["status"] == "fail")
    assert "sa-learn as uid 89 gid 89 cannot read it" in str(message)


def test_healthy_store_reports_its_counts(install: Installation) -> None:
    _, findings = install.doctor()
    bayes = next(f for f in findings if f["id"] == "bayes.owner")
    assert "nspam 1, nham 0" in str(bayes["message"]), bayes


def test_redis_store_that_does_not_answer(install: Installation) -> None:
    from dns_server import free_port

    install.write_config(
        "",
        store=f"  bayes:\n    store: redis\n    redis: server=127.0.0.1:{free_port()};database=2\n",
    )
    check, subject = only_failure(install)
    assert check == "bayes.owner" and subject is not None and subject.startswith("redis ")


def test_fifo_in_place_of_a_key(install: Installation) -> None:
    # The doctor reads keys as root: a FIFO planted as one is refused at
    # once (opening it for reading would wait for a writer forever).
    install.key.unlink()
    os.mkfifo(install.key, 0o640)
    os.chown(install.key, 0, 89)
    started = time.monotonic()
    _, findings = install.doctor(timeout=120)
    assert time.monotonic() - started < 120
    assert failures(findings) == [
        ("key.size", str(install.key)),
        ("dns.dkim", f"default._domainkey.{DOMAIN}"),
    ], findings
    size = next(f for f in findings if f["id"] == "key.size")
    assert "not a regular file" in str(size["message"]), size


def test_junk_folder_with_a_non_ascii_name(install: Installation) -> None:
    # deliver makes and subscribes the folder (its name in UTF-8 in both
    # files); the doctor reads the files the same way: no warning.
    from quarantine import maildir as md

    folder = "Ind\u00e9sirables"
    install.write_config(f"deliver:\n  junk_folder: {folder}\n  subscribe: both\n")
    maildir = install.tree.maildir(f"alice@{DOMAIN}")
    assert md.ensure_folder(str(maildir), folder, md.Owner(89, 89), subscribe_to="both")
    assert f"INBOX.{folder}\n".encode() in (maildir / "courierimapsubscribed").read_bytes()
    code, findings = install.doctor()
    assert code == 0, findings
    subscribed = [f for f in findings if f["id"] == "imap.subscribed"]
    assert [f["status"] for f in subscribed] == ["ok"], subscribed
    assert f"1 {folder} folder subscribed" in str(subscribed[0]["message"]), subscribed
