"""A throwaway qmail + vpopmail installation for the demo and the tests: a
vpopmail-layout tree (users/assign, domains, vpasswd, Maildirs) and a runner
that delivers a message through a domain's `.qmail` files the way qmail-local
does (search order, environment, uid, exit codes), since qmail itself is not
packaged for Debian.

What qmail-local gave a real filter is recorded in
shared/reference/protocols.md §1.1a; this module reproduces it: `/bin/sh -c`
for `|` lines with only qmail's variables and PATH, the domain's uid/gid from
users/assign, the domain directory as cwd, preline's three lines, and
0 continue / 99 stop / 100 bounce / anything else defer.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

# Exit codes qmail-local treats as permanent (qmail-command(8)).
PERMANENT = {64, 65, 70, 76, 77, 78, 100, 112}

PRELINE = r"""#!/bin/sh
# preline stand-in (qmail's preline.c): feed UFLINE, RPLINE and DTLINE, then
# the message, into the command; exit with the command's status.
f=1 r=1 d=1
while [ $# -gt 0 ]; do
  case "$1" in
    -f) f=0 ;; -r) r=0 ;; -d) d=0 ;; -F) f=1 ;; -R) r=1 ;; -D) d=1 ;;
    --) shift; break ;;
    -*) echo "preline: usage: preline cmd [arg ...]"; exit 100 ;;
    *) break ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "preline: usage: preline cmd [arg ...]"; exit 100; }
if [ -z "${UFLINE+x}" ] || [ -z "${RPLINE+x}" ] || [ -z "${DTLINE+x}" ]; then
  echo "preline: fatal: UFLINE, RPLINE, DTLINE not set"; exit 100
fi
command -v "$1" >/dev/null 2>&1 || { echo "preline: fatal: unable to run $1"; exit 111; }
{ [ $f = 1 ] && printf '%s' "$UFLINE"
  [ $r = 1 ] && printf '%s' "$RPLINE"
  [ $d = 1 ] && printf '%s' "$DTLINE"
  cat; } | "$@"
"""

VDELIVERMAIL = r"""#!/usr/bin/python3 -IS
# vdelivermail stand-in (vpopmail's vdelivermail): deliver to EXT@HOST's
# Maildir from the domain's vpasswd; for unknown users follow the second
# argument (delete, bounce-no-mailbox). Exit 0, 100 or 111 as vdelivermail does.
import os, sys, time
if len(sys.argv) != 3:
    print("vdelivermail: invalid syntax in .qmail-default file"); sys.exit(111)
ext = os.environ.get("EXT", "").lower(); host = os.environ.get("HOST", "").lower()
if not ext or not host:
    print("vdelivermail: no EXT/HOST"); sys.exit(100)
home = None
for line in open("vpasswd", encoding="latin-1"):
    f = line.rstrip("\n").split(":")
    if len(f) >= 6 and f[0] in (ext, ext.split("-")[0]):
        home = f[5]; break
if home is None:
    if sys.argv[2] == "delete":
        sys.exit(0)
    print("Sorry, no mailbox here by that name. (#5.1.1)"); sys.exit(100)
md = os.path.join(home, "Maildir")
name = "%d.%d.sandbox" % (time.time(), os.getpid())
data = sys.stdin.buffer.read()
pre = (os.environ.get("RPLINE", "") + os.environ.get("DTLINE", "")).encode()
tmp = os.path.join(md, "tmp", name)
with open(tmp, "wb") as out:
    out.write(pre + data); out.flush(); os.fsync(out.fileno())
os.link(tmp, os.path.join(md, "new", name + ",S=%d" % (len(pre) + len(data))))
os.unlink(tmp)
print("delivered to", md)
"""


INJECT = r"""#!{python} -I
# qmail-inject stand-in: `-f SENDER`, `-a`, then recipients; each recipient
# gets the message through the sandbox's qmail-local (quarantine.sandbox).
# Every delivery is appended to inject.log beside this script.
import sys
from quarantine import sandbox
sys.exit(sandbox.inject_main({root!r}, sys.argv[1:], sys.stdin.buffer.read()))
"""


class Tree:
    """A vpopmail-layout installation under `root`:

    root/qmail/users/assign      root/qmail/bin/preline
    root/vpopmail/domains/D/     root/vpopmail/bin/vdelivermail
    root/quarantine.yaml         (vpopmail.home and qmail.home point here)
    """

    def __init__(self, root: Path, uid: int = 89, gid: int = 89) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid
        self.vpopmail_home = root / "vpopmail"
        self.qmail_home = root / "qmail"
        self.config_path = root / "quarantine.yaml"
        self.domains: dict[str, Path] = {}
        self.aliases: dict[str, str] = {}
        os.chmod(root, 0o755)  # noqa: S103 - the domain uid must traverse it, as in /home
        for sub in (self.qmail_home / "users", self.qmail_home / "bin",
                    self.vpopmail_home / "domains", self.vpopmail_home / "bin"):  # fmt: skip
            sub.mkdir(parents=True, exist_ok=True)
        self._script(self.qmail_home / "bin" / "preline", PRELINE)
        self._script(self.vpopmail_home / "bin" / "vdelivermail", VDELIVERMAIL)
        self._script(self.inject_path, INJECT.format(python=sys.executable, root=str(root)))
        self.inject_log.write_text("")
        self.inject_log.chmod(0o666)  # the domain uid's programs inject too
        self.write_config("")
        self._write_assign()

    @property
    def inject_path(self) -> Path:
        """The qmail-inject stand-in (for digest.qmail_inject)."""
        return self.qmail_home / "bin" / "qmail-inject"

    @property
    def inject_log(self) -> Path:
        """One line per delivery the qmail-inject stand-in made."""
        return self.qmail_home / "inject.log"

    @classmethod
    def open(cls, root: Path) -> Tree:
        """The Tree already under `root` (from its users/assign), unchanged."""
        tree = cls.__new__(cls)
        tree.root = root
        tree.vpopmail_home = root / "vpopmail"
        tree.qmail_home = root / "qmail"
        tree.config_path = root / "quarantine.yaml"
        tree.domains, tree.aliases = {}, {}
        tree.uid, tree.gid = os.getuid(), os.getgid()
        for line in (tree.qmail_home / "users" / "assign").read_text().splitlines():
            if not line.startswith("+"):
                continue
            host, real, uid, gid, path = line[1:].split(":")[:5]
            tree.uid, tree.gid = int(uid), int(gid)
            if host[:-1] == real:
                tree.domains[real] = Path(path)
            else:
                tree.aliases[host[:-1]] = real
        return tree

    @staticmethod
    def _script(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def write_config(self, extra_yaml: str) -> Path:
        """The config file for this tree, with `extra_yaml` appended."""
        text = (
            f"vpopmail:\n  home: {self.vpopmail_home}\n"
            f"qmail:\n  home: {self.qmail_home}\n" + extra_yaml
        )
        self.config_path.write_text(text)
        return self.config_path

    def _write_assign(self) -> None:
        lines = [
            f"+{host}-:{self.aliases.get(host, host)}:{self.uid}:{self.gid}:"
            f"{self.domains[self.aliases.get(host, host)]}:-::"
            for host in [*self.domains, *self.aliases]
        ]
        (self.qmail_home / "users" / "assign").write_text("".join(f"{x}\n" for x in lines) + ".\n")

    def chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)

    def add_domain(self, name: str, *, hashed: bool = False, instruction: str = "delete") -> Path:
        """A domain as vadddomain makes it: directory, empty vpasswd, and
        `.qmail-default` running vdelivermail."""
        base = self.vpopmail_home / "domains"
        if hashed:
            base = base / name[0]
            base.mkdir(exist_ok=True)
            self.chown(base)
        path = base / name
        path.mkdir(mode=0o700)
        self.chown(path)
        self.domains[name] = path
        vpasswd = path / "vpasswd"
        vpasswd.write_text("")
        self.chown(vpasswd)
        default = path / ".qmail-default"
        default.write_text(f"| {self.vpopmail_home}/bin/vdelivermail '' {instruction}\n")
        default.chmod(0o600)
        self.chown(default)
        self._write_assign()
        return path

    def add_alias(self, alias: str, real: str) -> None:
        """An alias domain (vaddaliasdomain): routed to the real domain's directory."""
        self.aliases[alias] = real
        self._write_assign()

    def add_user(self, address: str, *, quota: str | None = None, subdir: str = "") -> Path:
        """A user as vadduser makes it; returns the Maildir. `subdir` puts the
        user in a hashed directory (`0`, `A/b`) as vpopmail's big domains do."""
        user, domain = address.split("@")
        domain_dir = self.domains[domain]
        parent = domain_dir / subdir if subdir else domain_dir
        parent.mkdir(parents=True, exist_ok=True)
        home = parent / user
        maildir = home / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, mode=0o700)
        for path in [parent, home, maildir, *(maildir / s for s in ("tmp", "new", "cur"))]:
            path.chmod(0o700)
            self.chown(path)
        if quota is not None:
            (maildir / "maildirsize").write_text(f"{quota}\n0 0\n")
            self.chown(maildir / "maildirsize")
        with open(domain_dir / "vpasswd", "a") as handle:
            handle.write(
                f"{user}:$1$x$y:1:0:{user}:{home}:{'NOQUOTA' if quota is None else quota}\n"
            )
        return maildir

    def maildir(self, address: str) -> Path:
        user, domain = address.split("@")
        domain = self.aliases.get(domain, domain)
        for line in (self.domains[domain] / "vpasswd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return Path(fields[5]) / "Maildir"
        raise KeyError(address)

    def messages(self, address: str, folder: str | None = None) -> list[Path]:
        """Files in new/ of the user's inbox or of Maildir++ `folder`."""
        maildir = self.maildir(address)
        new = (maildir / f".{folder}" if folder else maildir) / "new"
        return sorted(new.iterdir()) if new.is_dir() else []


def make_tree(root: Path | None = None, uid: int = 89, gid: int = 89) -> Tree:
    """A new Tree in `root` (a fresh temp dir by default: not /tmp itself,
    whose sticky bit Courier's imapd refuses)."""
    if root is None:
        root = Path(tempfile.mkdtemp(prefix="quarantine-sandbox-"))
    root.mkdir(parents=True, exist_ok=True)
    return Tree(root, uid, gid)


class LocalResult:
    """What qmail-local would report: `status` is success, deferral or failure."""

    def __init__(self) -> None:
        self.status = "success"
        self.codes: list[int] = []
        self.output = ""
        self.forwards: list[str] = []
        self.maildirs: list[Path] = []
        self.dot_qmail: Path | None = None

    def __repr__(self) -> str:
        return f"LocalResult({self.status}, codes={self.codes}, output={self.output!r})"


def qmail_env(tree: Tree, address: str, sender: str, dot_default: str | None) -> dict[str, str]:
    """The environment qmail-local gives a `|` program for a vpopmail address."""
    ext, host = address.rsplit("@", 1)
    host = host.lower()
    real = tree.aliases.get(host, host)
    local = f"{host}-{ext}"
    exts = ext.split("-")
    hosts = host.split(".")
    env = {
        "PATH": f"{tree.qmail_home}/bin:/usr/bin:/bin",
        "USER": real,
        "HOME": str(tree.domains[real]),
        "LOCAL": local,
        "HOST": host,
        "RECIPIENT": f"{local}@{host}",
        "SENDER": sender,
        "NEWSENDER": sender,
        "EXT": ext,
        "EXT2": "-".join(exts[1:]),
        "EXT3": "-".join(exts[2:]),
        "EXT4": "-".join(exts[3:]),
        "HOST2": ".".join(hosts[:-1]),
        "HOST3": ".".join(hosts[:-2]),
        "HOST4": ".".join(hosts[:-3]),
        "DTLINE": f"Delivered-To: {local}@{host}\n".replace("\r", "_"),
        "RPLINE": f"Return-Path: <{sender}>\n",
        "UFLINE": f"From {sender or 'MAILER-DAEMON'} {time.ctime()}\n",
    }
    if dot_default is not None:
        env["DEFAULT"] = dot_default
    return env


def find_dot_qmail(home: Path, ext: str) -> tuple[Path | None, str | None]:
    """qmail-local's search: .qmail-a-b-c, .qmail-a-b-default, .qmail-a-default,
    .qmail-default (lower case, `.` as `:`). Returns (file, DEFAULT value)."""
    name = ext.lower().replace(".", ":")
    exact = home / f".qmail-{name}"
    if exact.is_file():
        return exact, None
    parts = name.split("-")
    for cut in range(len(parts) - 1, -1, -1):
        prefix = "-".join(parts[:cut])
        candidate = home / (f".qmail-{prefix}-default" if prefix else ".qmail-default")
        if candidate.is_file():
            return candidate, "-".join(parts[cut:])
    return None, None


def qmail_local(
    tree: Tree,
    address: str,
    message: bytes,
    *,
    sender: str = "someone@sender.example",
    timeout: float = 120,
) -> LocalResult:
    """Deliver `message` to `address` through the domain's .qmail files."""
    result = LocalResult()
    ext, host = address.rsplit("@", 1)
    real = tree.aliases.get(host.lower(), host.lower())
    home = tree.domains[real]
    dot_qmail, default = find_dot_qmail(home, ext)
    if dot_qmail is None:
        result.status = "failure"
        result.output = "Sorry, no mailbox here by that name. (#5.1.1)"
        return result
    result.dot_qmail = dot_qmail
    mode = dot_qmail.stat().st_mode
    home_mode = home.stat().st_mode
    if mode & 0o002:
        result.status, result.output = "deferral", "Uh-oh: .qmail file is writable. (#4.7.0)"
        return result
    if home_mode & 0o002 or home_mode & stat.S_ISVTX:
        result.status, result.output = "deferral", "Uh-oh: home directory is writable. (#4.7.0)"
        return result
    env = qmail_env(tree, address, sender, default)
    forward_only = bool(mode & stat.S_IXUSR)
    with tempfile.TemporaryFile() as queue_file:
        queue_file.write(message)
        # qmail-local splits on newlines only and strips trailing blanks only.
        for raw in dot_qmail.read_text(encoding="latin-1").split("\n"):
            line = raw.rstrip(" \t")
            if not line or line.startswith("#"):
                continue
            if forward_only and line[0] in "|./":
                result.status = "deferral"
                result.output += "Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)"
                return result
            queue_file.seek(0)
            if line.startswith("|"):
                code = _run_program(tree, line[1:], env, home, queue_file, result, timeout)
                result.codes.append(code)
                if code == 99:
                    break
                if code in PERMANENT:
                    result.status = "failure"
                    return result
                if code != 0:
                    result.status = "deferral"
                    return result
            elif line[0] in "./" and line.endswith("/"):
                _deliver_maildir(home / line if line[0] == "." else Path(line), env, message)
                result.maildirs.append(home / line if line[0] == "." else Path(line))
            elif line[0] in "./":
                result.status, result.output = "deferral", "mbox delivery is not emulated"
                return result
            else:
                result.forwards.append(line.lstrip("&"))
    return result


def _run_program(
    tree: Tree,
    command: str,
    env: dict[str, str],
    home: Path,
    stdin: IO[bytes],
    result: LocalResult,
    timeout: float,
) -> int:
    def drop() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(tree.gid)
            os.setuid(tree.uid)

    proc = subprocess.run(
        ["/bin/sh", "-c", command],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=home,
        env=env,
        preexec_fn=drop,  # the uid switch qmail-lspawn does
        timeout=timeout,
        check=False,
    )
    result.output += proc.stdout.decode("latin-1")
    if proc.returncode < 0:
        result.output += "Aack, child crashed. (#4.3.0)"
        return 111
    code: int = proc.returncode
    return code


def _deliver_maildir(maildir: Path, env: dict[str, str], message: bytes) -> None:
    """qmail-local's maildir_child: RPLINE + DTLINE + message, tmp then new."""
    name = f"{int(time.time())}.{os.getpid()}_{time.monotonic_ns()}.sandbox"
    data = (env["RPLINE"] + env["DTLINE"]).encode() + message
    tmp = maildir / "tmp" / name
    tmp.write_bytes(data)
    os.link(tmp, maildir / "new" / name)
    tmp.unlink()


def inject_main(root: str, args: list[str], message: bytes) -> int:
    """qmail-inject's part for the sandbox: `-f SENDER` and `-a` taken, the
    other arguments are recipients, each delivered by qmail_local (a message
    with no Date or Message-ID gets none added: the programs that inject
    here write their own). Exit 0, as qmail-inject does once it has queued;
    the outcome of each delivery goes to the tree's inject.log."""
    tree = Tree.open(Path(root))
    sender = ""
    recipients = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "-f" and rest:
            sender = rest.pop(0)
        elif arg.startswith("-f"):
            sender = arg[2:]
        elif arg in ("-a", "--"):
            continue
        elif arg.startswith("-"):
            print(f"qmail-inject: usage: unknown option {arg}")
            return 100
        else:
            recipients.append(arg)
    if not recipients:
        print("qmail-inject: no recipients")
        return 100
    with open(tree.inject_log, "a", encoding="utf-8") as log:
        for rcpt in recipients:
            result = qmail_local(tree, rcpt, message, sender=sender)
            output = result.output.replace("\n", "/")
            log.write(f"{rcpt} {result.status} {result.codes} {output}\n")
    return 0


def remove(tree: Tree) -> None:
    shutil.rmtree(tree.root, ignore_errors=True)
