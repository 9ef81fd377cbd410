"""A healthy installation for `quarantine doctor`'s tests, built with the real
programs: the sandbox tree with alice opted in by `quarantine optin`, a Bayes
database made by sa-learn as the domain's uid, a 2048-bit key from `quarantine
keygen`, its records served by dnsmasq, qmail-remote wrapped, a tcp.smtp whose
cdb the real tcprules compiled, the config's cache made by `quarantine config
check`, the trainer's state file, and Junk made by maildirmake and subscribed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from dns_server import DnsServer, Records

from quarantine import sandbox
from quarantine.doctor import CHECK_IDS

DOMAIN = "example.test"
SPF = "v=spf1 ip4:192.0.2.10 -all"
DMARC = "v=DMARC1; p=none"
SPAMD_USER = "debian-spamd"  # created by Debian's spamassassin package
SAMPLE_SPAM = Path("/usr/share/doc/spamassassin/examples/sample-spam.txt")


def as_uid(
    uid: int, gid: int, argv: list[str], **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run argv as uid/gid with no supplementary groups (as qmail-local does)."""
    command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


def make_bayes(directory: Path) -> None:
    """A real Bayes database: sa-learn as uid 89 learns the sample spam."""
    directory.mkdir(mode=0o755)
    os.chown(directory, 89, 89)
    env = {"HOME": str(directory), "PATH": "/usr/bin:/bin", "LANG": "C"}
    proc = as_uid(
        89,
        89,
        ["sa-learn", "--dbpath", str(directory / "bayes"), "--spam", str(SAMPLE_SPAM)],
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (directory / "bayes_toks").exists(), sorted(os.listdir(directory))


def make_key(quarantine_bin: Path, keydir: Path) -> str:
    """`quarantine keygen` a 2048-bit key; returns its DNS record."""
    config = keydir.parent / "keygen.yaml"
    config.write_text(f"dkim:\n  keydir: {keydir}\n")
    proc = subprocess.run(
        [str(quarantine_bin), "--config", str(config), "keygen", DOMAIN],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (keydir / DOMAIN / "default.pub").read_text().strip()


class Installation:
    """Everything doctor checks, healthy; the tests break one thing each."""

    def __init__(
        self,
        tree: sandbox.Tree,
        quarantine_bin: Path,
        serve: Callable[[Records], DnsServer],
        key_record: str,
        bayes: Path,
        keydir: Path,
    ) -> None:
        self.tree = tree
        self.bin = quarantine_bin
        self.serve = serve
        self.dns = serve(records(key_record))
        root = tree.root
        self.root = root
        self.bayes = root / "bayes"
        shutil.copytree(bayes, self.bayes)
        for path in [self.bayes, *self.bayes.iterdir()]:
            os.chown(path, 89, 89)
            path.chmod(0o755 if path.is_dir() else 0o644)  # spamd reads it
        self.keydir = root / "keys"
        shutil.copytree(keydir, self.keydir)
        self.key = self.keydir / DOMAIN / "default"
        for path in (self.keydir, self.keydir / DOMAIN):
            path.chmod(0o755)
        os.chown(self.key, 0, 89)  # qmail-remote's group
        self.key.chmod(0o640)
        bindir = tree.qmail_home / "bin"
        (bindir / "qmail-remote.orig").write_text("#!/bin/sh\nexit 0\n")
        (bindir / "qmail-remote.orig").chmod(0o755)
        (bindir / "qmail-remote").symlink_to(quarantine_bin.parent / "quarantine-remote")
        (bindir / "qmail-queue").write_text("#!/bin/sh\nexit 0\n")
        (bindir / "qmail-queue").chmod(0o755)
        self.queue = quarantine_bin.parent / "quarantine-queue"
        self.rules = root / "tcp.smtp"
        self.write_rules(
            f'127.:allow,RELAYCLIENT=""\n:allow,QMAILQUEUE="{self.queue}",DKVERIFY="DEGIJKfh"\n'
        )
        self.state = root / "state" / "train-state.json"
        self.state.parent.mkdir()
        self.write_state(exit_code=0, started=time.time() - 3600)
        self.junk = tree.maildir(f"alice@{DOMAIN}") / ".Junk"
        made = as_uid(89, 89, ["maildirmake", "-f", "Junk", str(self.junk.parent)])
        assert made.returncode == 0, made.stderr
        subscribed = self.junk.parent / "courierimapsubscribed"
        subscribed.write_text("INBOX.Junk\n")
        os.chown(subscribed, 89, 89)
        self.write_config("")

    def write_config(self, extra: str, store: str | None = None) -> Path:
        """The installation's configuration plus `extra` YAML, compiled by
        the real `quarantine config check` (which must accept it). `store`:
        train lines in place of the dbpath one."""
        store = f"  dbpath: {self.bayes}/bayes\n" if store is None else store
        self.tree.write_config(
            f"train:\n  state_file: {self.state}\n{store}"
            f"dkim:\n  keydir: {self.keydir}\n  sign_template: {self.keydir}/%/default\n"
            f"  qmail_remote: {self.tree.qmail_home}/bin/qmail-remote.orig\n"
            "deliver:\n  authserv_ids: [mx.example.test]\n"
            f"verify:\n  authserv_id: mx.example.test\n"
            f"  qmail_queue: {self.tree.qmail_home}/bin/qmail-queue\n"
            f"dns:\n  nameservers: [127.0.0.1]\n  port: {self.dns.port}\n  timeout: 3\n"
            "  spf_ips: [192.0.2.10]\n"
            f"doctor:\n  spamd_user: {SPAMD_USER}\n  remote_user: '89:89'\n"
            f"migrate:\n  tcprules: {self.rules}\n" + extra
        )
        proc = self.quarantine("config", "check")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return self.tree.config_path

    def publish(self, key_record: str) -> None:
        """Serve another DKIM record (a new dnsmasq) and point the config at it."""
        self.dns.stop()
        self.dns = self.serve(records(key_record))
        self.write_config("")

    def write_rules(self, text: str) -> None:
        """The tcp.smtp rules and their cdb, compiled by the real tcprules."""
        self.rules.write_text(text)
        cdb = f"{self.rules}.cdb"
        with self.rules.open("rb") as source:
            proc = subprocess.run(
                ["tcprules", cdb, f"{cdb}.tmp"], stdin=source, capture_output=True, check=False
            )
        assert proc.returncode == 0, proc.stderr

    def write_state(self, exit_code: int, started: float) -> None:
        """The trainer's state file, in the shape quarantine train writes it."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
        summary = "quarantine train: 0 folders of 0 users in 1 domain; none failed."
        if exit_code:
            summary = "quarantine train: ...; FAILED: 3 messages not learned and kept."
        self.state.write_text(
            json.dumps(
                {"started": stamp, "exit_code": exit_code, "summary": summary, "dry_run": False}
            )
        )

    def quarantine(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin), "--config", str(self.tree.config_path), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def doctor(self, *args: str, timeout: float = 300) -> tuple[int, list[dict[str, str | None]]]:
        """`quarantine doctor --json`: exit code and the findings, each
        carrying one of the check ids doctor.CHECK_IDS names."""
        proc = self.quarantine("doctor", "--json", *args, timeout=timeout)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
        findings: list[dict[str, str | None]] = json.loads(proc.stdout)
        unnamed = {f["id"] for f in findings} - set(CHECK_IDS)
        assert not unnamed, f"check ids not in doctor.CHECK_IDS: {unnamed}"
        return proc.returncode, findings


def failures(findings: list[dict[str, str | None]]) -> list[tuple[str | None, str | None]]:
    return [(f["id"], f["subject"]) for f in findings if f["status"] == "fail"]


def records(key_record: str) -> dict[str, str | list[str]]:
    return {
        f"default._domainkey.{DOMAIN}": key_record,
        DOMAIN: SPF,
        f"_dmarc.{DOMAIN}": DMARC,
    }
