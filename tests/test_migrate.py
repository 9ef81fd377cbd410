"""`quarantine migrate` on the two old setups, end to end with the installed
command: dry run (nothing written) -> --apply -> spam and ham delivered through
the migrated .qmail files by the sandbox's qmail-local, a message signed by
quarantine-remote in qmail-remote's place and verified by Perl Mail::DKIM,
qmail-smtpd's rules cdb read back -> --undo -> every file byte-identical."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import migrate_support as ms
import pytest
from dns_server import DnsServer, Records

from quarantine import sandbox, tcprules
from quarantine.auth import keys

VERIFY_PL = Path(__file__).parent / "data" / "mail_dkim_verify.pl"
SPAM = (
    b"From: spammer@spam.example\nTo: alice@example.test\nSubject: buy\n"
    b"X-Spam-Flag: YES\n"
    b"X-Spam-Status: Yes, score=12.3 required=5.0 tests=GTUBE\n\tautolearn=no version=4.0.0\n"
    b"\nbody\n"
)
HAM = b"From: friend@ok.example\nSubject: hi\nX-Spam-Status: No, score=0.1\n\nhello\n"
OUTBOUND = (
    b"From: Alice <alice@example.test>\nTo: Bob <bob@remote.example>\n"
    b"Subject: hello\nDate: Tue, 01 Dec 2026 10:00:00 +0000\n"
    b"Message-ID: <m1@example.test>\n\nHello  Bob,\nthe migrated key signs this.\n"
)


@pytest.fixture(params=["toaster", "jms"])
def server(request: pytest.FixtureRequest) -> Iterator[ms.OldServer]:
    with ms.old_server(request.param) as built:
        yield built


def mail_dkim(message: bytes, server: DnsServer) -> str:
    proc = subprocess.run(
        ["perl", str(VERIFY_PL)],
        input=message.replace(b"\n", b"\r\n"),
        capture_output=True,
        env={"PATH": os.environ["PATH"], "DNS_PORT": str(server.port)},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip()


def test_dry_run_apply_deliver_sign_undo(
    server: ms.OldServer,
    quarantine_bin: Path,
    local_dns: Callable[[Records], DnsServer],
) -> None:
    srv = server
    tree = srv.tree
    bindir = quarantine_bin.parent
    before = srv.snapshot()

    # Dry run: the plan, nothing written; the 384-bit key cannot be carried over.
    code, doc, _ = ms.run_json(quarantine_bin, srv)
    assert code == 1, doc
    assert doc["mode"] == "dry-run"
    assert srv.snapshot() == before
    manual = ms.findings(doc, "manual")
    assert len(manual) == 1, manual
    weak = manual[0]
    assert weak["area"] == "keys" and "384-bit" in weak["message"]
    assert weak["fix"].startswith("quarantine keys rotate --domain ")
    assert not srv.backup_dir.exists()
    if srv.kind == "toaster":  # the global entry's d= for every other domain is said
        glob = [f for f in ms.findings(doc, "note") if f["subject"] == "global"]
        assert glob and "d=mail.example.test" in glob[0]["message"]

    # Apply.
    code, doc, err = ms.run_json(quarantine_bin, srv, "--apply")
    assert code == 1, (doc, err)
    assert Path(str(doc["backup"])).is_dir()
    queue = str(bindir / "quarantine-queue")
    cdb = tcprules.read_cdb(f"{srv.rules}.cdb")
    outside = tcprules.match(cdb, "203.0.113.9")
    assert outside is not None and outside.get("QMAILQUEUE") == queue
    assert outside.get("DKVERIFY") in ("DEGIJKfh", "DEGIJKfh,CGHIJMQRkl")
    assert cdb.records() == tcprules.read_source(str(srv.rules)).records()
    cdb_before, cdb_after = (
        before[f"{srv.rules.relative_to(tree.root)}.cdb"],
        os.stat(f"{srv.rules}.cdb"),
    )
    assert (cdb_after.st_mode & 0o7777, cdb_after.st_uid) == cdb_before[2:4]
    text = tree.config_path.read_text()
    template = str(srv.signing_key.parent.parent / "%" / srv.signing_key.name)
    assert f"sign_template: {template}" in text
    assert "spfbehavior: 3" in text
    assert "domainkeys: true" in text
    assert not srv.weak_key.exists() and Path(f"{srv.weak_key}.weak").is_file()
    remote = tree.qmail_home / "bin" / "qmail-remote"
    assert os.readlink(remote) == str(bindir / "quarantine-remote")
    cron = srv.crontab.read_text()
    assert "sa-learn" not in cron and f"{quarantine_bin} train --quiet" in cron

    if srv.kind == "jms":  # bob's own .qmail, which vdelivermail runs
        bob = (tree.maildir("bob@example.test").parent / ".qmail").read_text()
        assert "maildrop" not in bob.split("\n", 1)[1] and bob.endswith(
            f" deliver --config {tree.config_path}\n./Maildir/\n"
        )

    # A second run finds nothing more to change, only the key still to roll.
    code, again, _ = ms.run_json(quarantine_bin, srv)
    assert code == 1 and again["edits"] == [] and again["config"]["set"] == {}
    assert [f["area"] for f in ms.findings(again, "manual")] == ["keys"]
    assert ms.findings(again, "change") == []

    # Mail delivered through the migrated .qmail files, as qmail-local runs them.
    spam = sandbox.qmail_local(tree, "alice@example.test", SPAM)
    assert (spam.status, spam.codes) == ("success", [99]), spam
    assert len(tree.messages("alice@example.test", "Junk")) == 1
    assert tree.messages("alice@example.test") == []
    ham = sandbox.qmail_local(tree, "alice@example.test", HAM)
    assert ham.status == "success" and ham.codes[0] == 0, ham
    inbox = tree.messages("alice@example.test")
    assert len(inbox) == 1 and inbox[0].read_bytes().endswith(HAM)
    assert len(tree.messages("alice@example.test", "Junk")) == 1

    # Signed by quarantine-remote in qmail-remote's place, with the carried-over key.
    env = {"PATH": "/usr/bin:/bin", "QUARANTINE_CONFIG": str(tree.config_path)}
    argv = [str(remote), "remote.example", "alice@example.test", "bob@remote.example"]
    proc = subprocess.run(argv, input=OUTBOUND, capture_output=True, env=env, timeout=120)
    assert proc.stdout == b"r\0Kremote accepted message.\n\0", proc
    orig = tree.qmail_home / "bin" / "qmail-remote.orig"
    sent = Path(f"{orig}.sent").read_bytes()
    assert sent.endswith(OUTBOUND) and sent.startswith(b"DKIM-Signature:")
    selector = srv.signing_key.name
    record = keys.record_from_key(srv.good_key)
    dns = local_dns({f"{selector}._domainkey.example.test": record})
    assert mail_dkim(sent, dns) == "pass"
    assert b"DomainKey-Signature:" in sent
    for name in (f"{orig}.sent", f"{orig}.argv"):
        os.unlink(name)

    # Undo: every file as it was, byte for byte, mode, owner and time.
    code, doc, err = ms.run_json(quarantine_bin, srv, "--undo")
    assert code == 0, (doc, err)
    assert doc["restored"] and not doc["problems"]
    after = srv.snapshot()
    assert sorted(set(after) ^ set(before)) == []
    assert [k for k in before if before[k] != after[k]] == []
    code, doc, _ = ms.run_json(quarantine_bin, srv, "--undo")
    assert code == 0 and doc["restored"] == []


def test_plain_text_report(server: ms.OldServer, quarantine_bin: Path) -> None:
    proc = ms.run(quarantine_bin, server)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert any(x.startswith("manual keys") and "quarantine keys rotate" in x for x in lines)
    assert any(x.startswith("change rules") for x in lines)
    assert any(x.startswith("+|") and " deliver" in x for x in lines)  # the diff of the .qmail
    assert "dry run: nothing written" in proc.stderr


def test_undo_refuses_a_file_changed_since(server: ms.OldServer, quarantine_bin: Path) -> None:
    ms.run_json(quarantine_bin, server, "--apply")
    server.crontab.write_text("# edited by hand after the migration\n")
    code, doc, _ = ms.run_json(quarantine_bin, server, "--undo")
    assert code == 1 and doc["restored"] == []
    assert any(str(server.crontab) in p for p in doc["problems"])
    assert server.crontab.read_text().startswith("# edited")
    code, doc, _ = ms.run_json(quarantine_bin, server, "--undo", "--force")
    assert code == 0
    assert "sa-learn" in server.crontab.read_text()
