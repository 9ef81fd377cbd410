"""The two old setups `quarantine migrate` adopts, built on a sandbox tree as
their documentation lays them out: a QmailToaster (signconf.xml with a global
and a per-domain entry, keys under control/domainkeys/DOMAIN/SELECTOR owned by
qmailq, the 384-bit dknewkey key, the Perl qmail-remote wrapper) and a
jms-patched qmail (control/dksign, DKSIGN/DKVERIFY/QMAILQUEUE=qmail-dk in
tcp.smtp), each with a maildrop junk filter in .qmail files, spfbehavior, a
tcp.smtp.cdb made by the real tcprules and a root crontab sa-learn loop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quarantine import sandbox

DATA = Path(__file__).parent / "data" / "migrate"
WEAK_KEY = (DATA / "dknewkey-384.pem").read_bytes()  # a real 384-bit key, as dknewkey made them
QMAILQ_UID = 502  # QmailToaster's qmailq
QMAIL_GID = 501  # and its group qmail
DOMAIN = "example.test"
TCPRULES = "/usr/bin/tcprules"

# The filter of the old how-tos (vuserinfo, test -d, maildirmake, subscribe, to).
CLASSIC_FILTER = """\
HOME_DIR=`{vpopmail}/bin/vuserinfo -d $EXT@$HOST`
if (/^X-Spam-Status: Yes/)
{{
  `test -d $HOME_DIR/Maildir/.Junk`
  if ( $RETURNCODE == 1 )
  {{
    `maildirmake -f Junk $HOME_DIR/Maildir`
    `echo INBOX.Junk >> $HOME_DIR/Maildir/courierimapsubscribed`
  }}
  to "$HOME_DIR/Maildir/.Junk/"
}}
"""

# QmailToaster's variant: ham handed to vdelivermail by the filter itself.
TOASTER_FILTER = """\
SHELL="/bin/sh"
import EXT
import HOST
VHOME=`{vpopmail}/bin/vuserinfo -d $EXT@$HOST`

if ( /^X-Spam-Status: Yes/ )
{{
   `test -d $VHOME/Maildir/.Junk`
   if ( $RETURNCODE == 1 )
   {{
      `maildirmake -f Junk $VHOME/Maildir`
      `echo INBOX.Junk >> $VHOME/Maildir/courierimapsubscribed`
   }}
   to "$VHOME/Maildir/.Junk/"
}}
to "| {vpopmail}/bin/vdelivermail '' bounce-no-mailbox"
"""

SIGNCONF = """\
<dkimsign>
  <!-- per default sign all mails using dkim -->
  <global algorithm="rsa-sha256" domain="{control}/me"
          keyfile="{control}/domainkeys/{me}/dkim1" method="simple" selector="dkim1">
    <types id="dkim" />
  </global>
  <!-- use dkim + domainkey for {domain} -->
  <{domain} domain="{domain}" keyfile="{control}/domainkeys/{domain}/dkim1" selector="dkim1">
    <types id="dkim" />
    <types id="domainkey" method="nofws" />
  </{domain}>
  <!-- no signing for lists.{domain} -->
  <lists.{domain} />
</dkimsign>
"""

PERL_REMOTE = """\
#!/usr/bin/perl -T
# QmailToaster's DKIM qmail-remote (Mail::DKIM, signconf.xml), in short.
exec '{qmail}/bin/qmail-remote.orig', @ARGV;
"""

# Stands in for the real qmail-remote: keeps what it was given, reports success.
REAL_REMOTE = """\
#!/bin/sh
cat > "$0.sent"
printf '%s\\n' "$@" > "$0.argv"
printf 'r\\0Kremote accepted message.\\n\\0'
"""


def rsa_2048() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def put(path: Path, data: bytes | str, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    if os.geteuid() == 0:
        os.chown(path, *owner)
    return path


def run(
    quarantine_bin: Path, srv: OldServer, *args: str, command: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`quarantine --config <the tree's> migrate --command <command> ARGS`,
    the new lines naming `command` (the installed quarantine by default)."""
    return subprocess.run(
        [str(quarantine_bin), "--config", str(srv.tree.config_path), "migrate",
         "--command", str(command or quarantine_bin), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )  # fmt: skip


def run_json(
    quarantine_bin: Path, srv: OldServer, *args: str, command: Path | None = None
) -> tuple[int, dict[str, Any], str]:
    """`run` with --json: the exit code, the document and stderr."""
    proc = run(quarantine_bin, srv, "--json", *args, command=command)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(proc.stdout + proc.stderr) from None
    return proc.returncode, doc, proc.stderr


def findings(doc: dict[str, Any], status: str) -> list[dict[str, str]]:
    """The findings of a --json document with this status."""
    return [f for f in doc["findings"] if f["status"] == status]


@contextlib.contextmanager
def old_server(kind: str = "jms", root: Path | None = None) -> Iterator[OldServer]:
    """One of the old setups on a sandbox tree, removed afterwards."""
    built = toaster(root) if kind == "toaster" else jms(root)
    try:
        yield built
    finally:
        sandbox.remove(built.tree)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fail when the body takes `seconds` or more. A body still running at
    three times that is interrupted (a long C call such as one regex search
    only when it returns), so a quadratic run does not hold the suite."""

    def late(_signum: int, _frame: object) -> None:
        raise AssertionError(f"still running after {3 * seconds:g} s (bound: {seconds:g} s)")

    before = signal.signal(signal.SIGALRM, late)
    signal.setitimer(signal.ITIMER_REAL, 3 * seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    took = time.monotonic() - started
    assert took < seconds, f"took {took:.2f} s (bound: {seconds:g} s)"


def tcprules_cdb(source: Path) -> None:
    """tcp.smtp.cdb from tcp.smtp, as `qmailctl cdb` makes it (the real tcprules)."""
    cdb = f"{source}.cdb"
    with source.open("rb") as rules:
        subprocess.run([TCPRULES, cdb, f"{cdb}.tmp"], stdin=rules, check=True)


@dataclass
class OldServer:
    """A sandbox tree dressed as one of the old setups."""

    tree: sandbox.Tree
    kind: str
    rules: Path
    crontab: Path
    backup_dir: Path
    good_key: bytes
    signing_key: Path
    weak_key: Path
    extra: dict[str, Path] = field(default_factory=dict)

    @property
    def control(self) -> Path:
        return self.tree.qmail_home / "control"

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        """Every file, symlink and directory under the tree (Maildirs' mail and
        the backups aside): bytes or target, mode, owner, and a file's mtime."""
        out: dict[str, tuple[object, ...]] = {}
        root = self.tree.root
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if "Maildir" in path.parts or path.is_relative_to(self.backup_dir):
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                out[rel] = (
                    "file",
                    path.read_bytes(),
                    stat.S_IMODE(st.st_mode),
                    st.st_uid,
                    st.st_gid,
                    st.st_mtime_ns,
                )
        return out


def _common(tree: sandbox.Tree, kind: str, me: str) -> dict[str, Path]:
    """What both setups share: control/me, spfbehavior, users, config."""
    control = tree.qmail_home / "control"
    put(control / "me", f"{me}\n")
    put(control / "spfbehavior", "3\n")
    tree.add_domain(DOMAIN)
    tree.add_user(f"alice@{DOMAIN}")
    tree.add_user(f"bob@{DOMAIN}")
    for name in ("qmail-queue", "qmail-queue.orig", "qmail-dk"):
        put(tree.qmail_home / "bin" / name, "#!/bin/sh\nexit 0\n", 0o755)
    return {"control": control}


def _config(tree: sandbox.Tree, rules: Path, crontab: Path, backup_dir: Path) -> None:
    backup_dir.parent.mkdir(parents=True, exist_ok=True)
    tree.write_config(
        f"migrate:\n  backup_dir: {backup_dir}\n  tcprules: {rules}\n  crontabs: [{crontab}]\n"
    )


def toaster(root: Path | None = None) -> OldServer:
    """A QmailToaster: Perl DKIM signing from signconf.xml (global entry with
    the 384-bit dknewkey key of the host's domain, example.test's own 2048-bit
    key), qmail-dk verifying, the maildrop filter in .qmail-default."""
    tree = sandbox.make_tree(root)
    me = f"mail.{DOMAIN}"
    control = _common(tree, "toaster", me)["control"]
    keys = control / "domainkeys"
    good = rsa_2048()
    owner = (QMAILQ_UID, QMAIL_GID)
    signing = put(keys / DOMAIN / "dkim1", good, 0o600, owner)
    weak = put(keys / me / "dkim1", WEAK_KEY, 0o600, owner)
    put(
        control / "dkim" / "signconf.xml",
        SIGNCONF.format(control=control, me=me, domain=DOMAIN),
        0o644,
        owner,
    )
    bin_dir = tree.qmail_home / "bin"
    put(bin_dir / "qmail-remote", PERL_REMOTE.format(qmail=tree.qmail_home), 0o755)
    put(bin_dir / "qmail-remote.orig", REAL_REMOTE, 0o711)
    vpopmail = tree.vpopmail_home
    mailfilter = put(
        vpopmail / "etc" / "mailfilter", TOASTER_FILTER.format(vpopmail=vpopmail), 0o600, (89, 89)
    )
    domain_dir = tree.domains[DOMAIN]
    put(
        domain_dir / ".qmail-default",
        f"| {tree.qmail_home}/bin/preline {'/usr/bin/maildrop'} {mailfilter}\n",
        0o600,
        (tree.uid, tree.gid),
    )
    rules = put(
        root_of(tree) / "etc" / "tcprules.d" / "tcp.smtp",
        f'127.:allow,RELAYCLIENT=""\n'
        f':allow,BADMIMETYPE="",CHKUSER_RCPTLIMIT="50",DKQUEUE="{bin_dir}/qmail-queue.orig",'
        f'QMAILQUEUE="{bin_dir}/qmail-dk",DKVERIFY="DEGIJKfh"\n',
    )
    tcprules_cdb(rules)
    crontab = put(
        root_of(tree) / "var" / "spool" / "cron" / "root",
        "# spam learning\n"
        f"0 2 * * * for f in {vpopmail}/domains/*/*/Maildir/.Junk/cur/*; do "
        '/usr/bin/sa-learn --spam "$f" && rm -f "$f"; done\n',
        0o600,
    )
    backup_dir = root_of(tree) / "var" / "lib" / "quarantine" / "migrate"
    _config(tree, rules, crontab, backup_dir)
    return OldServer(tree, "toaster", rules, crontab, backup_dir, good, signing, weak)


def jms(root: Path | None = None) -> OldServer:
    """A jms-patched qmail: control/dksign and DKSIGN with a `%` template under
    /etc/domainkeys, qmail-dk named by QMAILQUEUE, the real qmail-remote, the
    classic maildrop filter first in .qmail-alice before vdelivermail."""
    tree = sandbox.make_tree(root)
    control = _common(tree, "jms", DOMAIN)["control"]
    keydir = root_of(tree) / "etc" / "domainkeys"
    template = f"{keydir}/%/default"
    put(control / "dksign", f"{template}\n")
    good = rsa_2048()
    signing = put(keydir / DOMAIN / "default", good, 0o640, (0, 0))
    weak = put(keydir / "old.test" / "default", WEAK_KEY, 0o640, (0, 0))
    bin_dir = tree.qmail_home / "bin"
    put(bin_dir / "qmail-remote", REAL_REMOTE, 0o711)
    vpopmail = tree.vpopmail_home
    junkfilter = put(
        vpopmail / "etc" / "junkfilter", CLASSIC_FILTER.format(vpopmail=vpopmail), 0o600, (89, 89)
    )
    domain_dir = tree.domains[DOMAIN]
    put(
        domain_dir / ".qmail-alice",
        f"|{tree.qmail_home}/bin/preline /usr/bin/maildrop {junkfilter}\n"
        f"| {vpopmail}/bin/vdelivermail '' delete\n",
        0o600,
        (tree.uid, tree.gid),
    )
    # bob's own .qmail in his directory, which vdelivermail runs.
    put(
        tree.maildir(f"bob@{DOMAIN}").parent / ".qmail",
        f"|{tree.qmail_home}/bin/preline /usr/bin/maildrop {junkfilter}\n./Maildir/\n",
        0o600,
        (tree.uid, tree.gid),
    )
    rules = put(
        root_of(tree) / "etc" / "tcp.smtp",
        f'127.0.0.1:allow,RELAYCLIENT="",DKSIGN="{template}",QMAILQUEUE="{bin_dir}/qmail-dk"\n'
        f"10.0.0.1-9:deny\n"
        f':allow,DKVERIFY="DEGIJKfh,CGHIJMQRkl",QMAILQUEUE="{bin_dir}/qmail-dk"\n',
    )
    tcprules_cdb(rules)
    crontab = put(
        root_of(tree) / "var" / "spool" / "cron" / "crontabs" / "root",
        "MAILTO=root\n"
        f"30 3 * * * find {vpopmail}/domains -path '*/Maildir/.Junk/*' -type f -mtime +5 | "
        'while read -r f; do sa-learn --spam --no-sync "$f" && rm -f "$f"; done; '
        "sa-learn --sync\n",
        0o600,
    )
    backup_dir = root_of(tree) / "var" / "lib" / "quarantine" / "migrate"
    _config(tree, rules, crontab, backup_dir)
    return OldServer(tree, "jms", rules, crontab, backup_dir, good, signing, weak)


def root_of(tree: sandbox.Tree) -> Path:
    return tree.root
