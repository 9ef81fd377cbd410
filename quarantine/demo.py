"""`quarantine demo`: the main job end to end on an embedded default. Builds a
throwaway vpopmail tree (one domain, two users), opts one user in, runs real
SpamAssassin over its own sample spam and ham, delivers every message to both
users through their `.qmail` files as qmail-local would, and shows where each
one landed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from quarantine import config as config_module
from quarantine import dotqmail, sandbox

SAMPLES = Path("/usr/share/doc/spamassassin/examples")
GTUBE = (
    b"From: demo@spam.example\nTo: alice@example.test\nSubject: GTUBE test\n"
    b"Message-ID: <gtube-demo@spam.example>\nDate: Tue, 24 Nov 2026 01:23:23 +0000\n\n"
    b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\n"
)


def spamassassin(message: bytes, home: Path) -> bytes:
    """Run Debian's spamassassin (local tests only) and return the tagged message."""
    program = shutil.which("spamassassin")
    if program is None:
        raise click.ClickException("spamassassin is not installed (apt-get install spamassassin)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C"}
    proc = subprocess.run(
        [program, "-L"], input=message, capture_output=True, env=env, check=False, timeout=120
    )
    if proc.returncode != 0 or not proc.stdout:
        raise click.ClickException(f"spamassassin failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def spam_status(message: bytes) -> str:
    head = message.split(b"\n\n", 1)[0].replace(b"\n\t", b" ").replace(b"\n ", b" ")
    for line in head.split(b"\n"):
        if line.lower().startswith(b"x-spam-status:"):
            words = line[14:].decode("latin-1").split()
            return " ".join(w for w in words[:2])
    return "(none)"


def quarantine_command() -> str:
    """The installed `quarantine` script that is running this demo."""
    candidate = Path(sys.argv[0])
    if candidate.name == "quarantine" and candidate.is_file():
        return str(candidate.resolve())
    beside = Path(sys.executable).parent / "quarantine"
    if beside.is_file():
        return str(beside)
    found = shutil.which("quarantine")
    if found is None:
        raise click.ClickException("cannot find the installed quarantine script")
    return found


def run_demo(keep: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="quarantine-demo-"))
    uid, gid = (89, 89) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    tree = sandbox.make_tree(root, uid, gid)
    tree.add_domain("example.test")
    for user in ("alice", "bob"):
        tree.add_user(f"{user}@example.test")
    cfg = config_module.load(str(tree.config_path))
    change = dotqmail.optin(cfg, "alice@example.test", command=quarantine_command())
    click.echo(f"vpopmail tree: {root}  (domain example.test, users alice and bob)")
    click.echo(f"quarantine optin alice@example.test -> {change.path}:")
    for line in Path(change.path).read_text().splitlines():
        click.echo(f"    {line}")

    sa_home = root / "sa-home"
    sa_home.mkdir()
    click.echo("\nrunning SpamAssassin (spamassassin -L) on its sample messages...")
    messages = {
        "sample-spam.txt": spamassassin((SAMPLES / "sample-spam.txt").read_bytes(), sa_home),
        "sample-nonspam.txt": spamassassin((SAMPLES / "sample-nonspam.txt").read_bytes(), sa_home),
        "gtube": spamassassin(GTUBE, sa_home),
    }
    click.echo("")
    header = f"{'message':<20} {'X-Spam-Status':<18} {'to':<20} {'exit':<6} landed in"
    click.echo(header)
    click.echo("-" * len(header))
    for name, message in messages.items():
        for user in ("alice", "bob"):
            address = f"{user}@example.test"
            before = {p: set(_files(tree, address, p)) for p in ("", "Junk")}
            result = sandbox.qmail_local(tree, address, message)
            landed = [
                f"{'Maildir/.' + folder if folder else 'Maildir'}/new/{Path(p).name[:28]}..."
                for folder in ("", "Junk")
                for p in set(_files(tree, address, folder)) - before[folder]
            ]
            codes = ",".join(str(c) for c in result.codes) or "-"
            where = ", ".join(landed) or f"nowhere ({result.status})"
            click.echo(f"{name:<20} {spam_status(message):<18} {address:<20} {codes:<6} {where}")
    click.echo(
        "\nexit 99: filed into Junk, later .qmail lines skipped; exit 0: next line (vdelivermail)"
    )
    alice = tree.maildir("alice@example.test")
    click.echo(f"\n{alice}/courierimapsubscribed:")
    click.echo("    " + (alice / "courierimapsubscribed").read_text().strip())
    for path in tree.messages("alice@example.test", "Junk")[:1]:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("X-Quarantine:"):
                click.echo(f"\nfirst Junk message's header:\n    {line}")
    if keep:
        click.echo(f"\nthe tree is kept: {root}")
    else:
        sandbox.remove(tree)
        click.echo("\nthe tree was removed (--keep leaves it for a look)")


def _files(tree: sandbox.Tree, address: str, folder: str) -> list[str]:
    return [str(p) for p in tree.messages(address, folder or None)]
