"""Opt-in management: put the junk filter line first in a vpopmail domain's
`.qmail-USER` or `.qmail-default`, take exactly that out again, list who has
it. Atomic, idempotent edits; names validated before they touch a path; no shell.

Security: run as root, it works only through a descriptor of the domain
directory (vpopmail.open_domain_dir), never through a path a mailbox owner
could swap for a symlink, and every name it prints goes through names.show.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import sys
from contextlib import contextmanager

from quarantine import vpopmail
from quarantine.config import DEFAULT_PATH
from quarantine.names import show
from quarantine.qmail import LookupFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from quarantine.config import Config
    from quarantine.vpopmail import Domain

    Stamp = tuple[int, int, int]  # inode, mtime, size: a concurrent edit changes one

MARKER = "# quarantine: junk filter"  # how every marker line starts (also hand-made ones)
MARKER_ADDED = f"{MARKER}, added by 'quarantine optin'; 'quarantine optout' removes it"
MARKER_CREATED = (
    f"{MARKER}, added by 'quarantine optin', which created this file; "
    "'quarantine optout' deletes it (rest sha256:{digest})"
)
DIGEST_TAG = "(rest sha256:"
TEMP_TAG = ".quarantine-tmp."  # `.` never occurs in a name qmail-local looks up
MODE = 0o600
MAX_FILE = 1024 * 1024  # a .qmail file larger than this is not one we edit
MAX_TARGET = 320
# qmail-local runs a `|` line with /bin/sh -c: the paths we put on it may hold
# only characters that need no shell quoting.
PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+,-=@%:")


class OptinError(Exception):
    """optin/optout/optins refused or failed; the message says why (exit 1)."""

    code = 1


class BadTarget(OptinError):
    """The address given is not a usable `user@domain` or `@domain` (exit 2)."""

    code = 2


class Target:
    """Where an address's filter line lives: `address` names the real domain
    (`@example.test` for the whole domain), `name` is the `.qmail` file in the
    domain directory and `path` its full path (for messages)."""

    __slots__ = ("address", "domain", "host", "name", "path", "user")

    def __init__(self, address: str, user: str | None, host: str, domain: Domain) -> None:
        self.address = address
        self.user = user
        self.host = host
        self.domain = domain
        self.name = qmail_name(user)
        self.path = os.path.join(domain.path, self.name)


class Change:
    """What optin or optout did (or, for a dry run, would do) to one file.
    `before`/`after` are the file's text, None where it does not exist."""

    __slots__ = ("action", "address", "after", "before", "notes", "path", "written")

    def __init__(
        self,
        address: str,
        path: str,
        action: str,
        before: str | None,
        after: str | None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self.address = address
        self.path = path
        self.action = action  # created added updated removed deleted | unchanged
        self.before = before
        self.after = after
        self.notes = notes
        self.written = False

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def message(self) -> str:
        """One line saying what happened, every name in it escaped."""
        path = show(self.path)
        texts = {
            "created": f"opted in: created {path}",
            "added": f"opted in: filter added to {path}",
            "updated": f"opted in: filter line updated in {path}",
            "removed": f"opted out: filter removed from {path}",
            "deleted": f"opted out: deleted {path} (optin had created it)",
        }
        if self.action in texts:
            return f"{show(self.address)}: {texts[self.action]}"
        state = "already opted in" if _has_filter(self.after) else "not opted in"
        return f"{show(self.address)}: {state}, no change to {path}"

    def diff(self) -> str:
        """A unified diff from the file as it was to the file as it is (would
        be); each line escaped, so the file's bytes cannot reach the terminal."""
        import difflib

        lines = difflib.unified_diff(
            _lines(self.before or ""),
            _lines(self.after or ""),
            fromfile=self.path if self.before is not None else "/dev/null",
            tofile=self.path if self.after is not None else "/dev/null",
        )
        return "".join(show(line.removesuffix("\n")) + "\n" for line in lines)

    def __repr__(self) -> str:
        return f"Change({self.address!r}, {self.path!r}, {self.action!r})"


class OptIn:
    """One address with the filter line: `@domain` or `user@domain`."""

    __slots__ = ("address", "path")

    def __init__(self, address: str, path: str) -> None:
        self.address = address
        self.path = path

    def __repr__(self) -> str:
        return f"OptIn({self.address!r}, {self.path!r})"


class OptIns:
    """Everyone opted in, and the domains that could not be read."""

    __slots__ = ("entries", "problems")

    def __init__(self, entries: tuple[OptIn, ...], problems: tuple[str, ...]) -> None:
        self.entries = entries
        self.problems = problems


# -- the three operations ----------------------------------------------------


def optin(
    cfg: Config,
    target: str,
    command: str | None = None,
    *,
    dry_run: bool = False,
    force: bool = False,
) -> Change:
    """Put the filter first in the target's `.qmail` file. A new `.qmail-USER`
    gets the domain's normal delivery after the filter. `force` skips the
    check that the domain's uid can run the whole chain."""
    with _opened(cfg, target) as (where, directory):
        program = command_path(command)
        line = filter_line(cfg, program)
        before, stamp = directory.read(where.name)
        notes = _notes(where, directory)
        lines = _lines(before or "")
        pairs = _pairs(lines)
        after: str | None
        if pairs:
            after_lines = list(lines)
            for index in pairs:
                after_lines[index + 1] = line + "\n"
            after = "".join(after_lines)
            action = "updated" if after != before else "unchanged"
        elif _has_filter(before):
            notes += (
                f"{show(where.path)} already has a filter line that optin did not write; "
                "left as is",
            )
            after, action = before, "unchanged"
        elif before is None:
            rest = "".join(default_delivery(cfg, directory))
            marker = MARKER_CREATED.format(digest=_digest(rest))
            after, action = f"{marker}\n{line}\n{rest}", "created"
        else:
            _check_editable(where.path, lines)
            after, action = f"{MARKER_ADDED}\n{line}\n{before}", "added"
        change = Change(where.address, where.path, action, before, after, notes)
        if not change.changed:
            return change
        if not force:
            problems = check_chain(cfg, where.domain, program)
            if problems:
                raise OptinError(
                    "refusing to write the filter line, mail would bounce or wait in the queue:\n  "
                    + "\n  ".join(problems)
                    + "\n(fix the permissions, or give --force if you know better)"
                )
        if not dry_run:
            assert after is not None
            directory.write(where.name, after, stamp)
            change.written = True
        return change


def optout(cfg: Config, target: str, *, dry_run: bool = False) -> Change:
    """Remove exactly what optin added: each marker line and the filter line
    right after it. A file optin created that still holds only what optin
    wrote is deleted, so `.qmail-default` applies again."""
    with _opened(cfg, target) as (where, directory):
        before, stamp = directory.read(where.name)
        lines = _lines(before or "")
        pairs = _pairs(lines)
        if not pairs:
            if _has_filter(before):
                raise OptinError(
                    f"{show(where.path)} has a quarantine filter line that optin did not write "
                    "(no marker line above it); edit the file by hand"
                )
            return Change(where.address, where.path, "unchanged", before, before)
        drop = {i for index in pairs for i in (index, index + 1)}
        rest = "".join(x for i, x in enumerate(lines) if i not in drop)
        created = [lines[i] for i in pairs if DIGEST_TAG in lines[i]]
        after: str | None = rest
        action = "removed"
        if created and all(_recorded_digest(m) == _digest(rest) for m in created):
            after, action = None, "deleted"
        change = Change(where.address, where.path, action, before, after)
        if not dry_run:
            if after is None:
                directory.delete(where.name, stamp)
            else:
                directory.write(where.name, after, stamp)
            change.written = True
        return change


def optins(cfg: Config) -> OptIns:
    """Who is opted in: `@domain` when the domain's `.qmail-default` has the
    filter line, `user@domain` for each `.qmail-USER` with it. Every real
    domain in users/assign once (alias domains share their real one's files).
    A domain directory that is unsafe to work in is a problem; the others
    are still listed. Symbolic links are not followed (optin never writes one)."""
    entries: list[OptIn] = []
    problems: list[str] = []
    seen: set[str] = set()
    try:
        domains = [domain for _host, domain in vpopmail.read_assign(cfg)]
    except LookupFailed as exc:
        raise OptinError(show(str(exc))) from None
    for domain in domains:
        if domain.path in seen:
            continue
        seen.add(domain.path)
        try:
            with DomainDir(domain) as directory:
                entries.extend(_opted_in(directory, problems))
        except OptinError as exc:
            problems.append(str(exc))
    return OptIns(tuple(entries), tuple(problems))


def _opted_in(directory: DomainDir, problems: list[str]) -> list[OptIn]:
    """The addresses whose `.qmail` file in `directory` has the filter line,
    `@domain` first; files that cannot be read are added to `problems`."""
    found: list[OptIn] = []
    for name in directory.names():
        address = _address_of(name, directory.domain)
        if address is None or directory.is_link(name):
            continue  # optin never writes a link; reading it could leave the tree
        try:
            text, _ = directory.read(name)
        except OptinError as exc:
            problems.append(str(exc))
            continue
        if _has_filter(text):
            found.append(OptIn(address, directory.path(name)))
    found.sort(key=lambda e: (not e.address.startswith("@"), e.address))
    return found


# -- the domain directory ------------------------------------------------------


class DomainDir:
    """A domain directory open for root: reached by vpopmail.open_domain_dir
    (no symlink a non-root uid can change on the way, owned by the domain's
    assign uid), then every file below it is read, written, renamed and
    removed relative to `fd` with O_NOFOLLOW, never through a path string.
    A swap of the directory for a symlink after the open changes nothing:
    the edits land in the directory that was opened."""

    __slots__ = ("domain", "fd")

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        try:
            self.fd = vpopmail.open_domain_dir(domain)
        except vpopmail.UnsafeDirectory as exc:
            raise OptinError(f"{show(domain.name)}: {exc}") from None
        except OSError as exc:
            raise OptinError(
                f"{show(domain.name)}: cannot use {show(domain.path)}: {exc.strerror}"
            ) from None

    def __enter__(self) -> DomainDir:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def path(self, name: str) -> str:
        """The path of `name` in this directory, for messages only."""
        return os.path.join(self.domain.path, name)

    def names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.fd))
        except OSError as exc:
            raise OptinError(
                f"{show(self.domain.name)}: cannot list {show(self.domain.path)}: {exc.strerror}"
            ) from None

    def is_link(self, name: str) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False

    def read(self, name: str) -> tuple[str | None, Stamp | None]:
        """A `.qmail` file's text (None when absent) and a stamp to detect a
        concurrent edit. Symlinks and non-regular files are refused."""
        path = show(self.path(name))
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self.fd)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OptinError(f"{path} is a symbolic link; edit it by hand") from None
            raise OptinError(f"cannot read {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OptinError(f"{path} is not a regular file; edit it by hand")
            data = handle.read(MAX_FILE + 1)
        if len(data) > MAX_FILE:
            raise OptinError(f"{path} is larger than {MAX_FILE} bytes; not a .qmail file to edit")
        return data.decode("latin-1"), (st.st_ino, st.st_mtime_ns, st.st_size)

    def stamp(self, name: str) -> Stamp | None:
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def write(self, name: str, text: str, stamp: Stamp | None) -> None:
        """Replace `name` atomically: temp file beside it, 0600, owned by the
        domain's uid/gid (when root), fsync, rename, fsync the directory."""
        temp = f"{name}{TEMP_TAG}{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(temp, flags, MODE, dir_fd=self.fd)
            except FileExistsError:  # left by a crashed run with our pid
                os.unlink(temp, dir_fd=self.fd)
                fd = os.open(temp, flags, MODE, dir_fd=self.fd)
        except OSError as exc:
            raise OptinError(f"cannot create {show(self.path(temp))}: {exc.strerror}") from None
        try:
            try:
                if os.geteuid() == 0:
                    os.fchown(fd, self.domain.uid, self.domain.gid)
                os.fchmod(fd, MODE)
                data = text.encode("latin-1")
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            self._unchanged(name, stamp)
            os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException as exc:
            try:
                os.unlink(temp, dir_fd=self.fd)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise OptinError(f"cannot write {show(self.path(name))}: {exc.strerror}") from None
            raise
        self._sync()

    def delete(self, name: str, stamp: Stamp | None) -> None:
        self._unchanged(name, stamp)
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError as exc:
            raise OptinError(f"cannot delete {show(self.path(name))}: {exc.strerror}") from None
        self._sync()

    def _unchanged(self, name: str, stamp: Stamp | None) -> None:
        if self.stamp(name) != stamp:
            raise OptinError(
                f"{show(self.path(name))} changed while it was being edited; run the command again"
            )

    def _sync(self) -> None:
        """Make the rename or unlink durable: fsync the directory itself."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise OptinError(f"cannot sync {show(self.domain.path)}: {exc.strerror}") from None


@contextmanager
def _opened(cfg: Config, target: str) -> Iterator[tuple[Target, DomainDir]]:
    """The target resolved and its domain directory open, fit to edit in
    (check_domain_dir), and the user found in the domain's vpasswd as read
    through the open directory."""
    where = resolve(cfg, target)
    with DomainDir(where.domain) as directory:
        check_domain_dir(directory)
        if where.user is not None:
            try:
                home = vpopmail.user_home(cfg, where.domain, where.user, directory.fd)
            except LookupFailed as exc:
                raise OptinError(show(str(exc))) from None
            if home is None:
                raise OptinError(f"{show(where.address)}: no such user in vpopmail")
        yield where, directory


# -- names and lines ------------------------------------------------------------


def resolve(cfg: Config, target: str) -> Target:
    """`user@domain` or `@domain` into the `.qmail` file it concerns; an alias
    domain resolves to its real domain. Whether the user exists is asked once
    the domain directory is open (`_opened`)."""
    if len(target) > MAX_TARGET or any(ord(ch) < 33 or ord(ch) > 126 for ch in target):
        raise BadTarget(f"{_show(target)} is not an address (user@domain or @domain)")
    user, at, host = target.rpartition("@")
    if not at:
        raise BadTarget(f"{_show(target)} is not an address: expected user@domain or @domain")
    host = host.lower()
    if not vpopmail.valid_domain(host):
        raise BadTarget(f"{_show(host)} is not a valid domain name")
    if user and not vpopmail.valid_user(user):
        raise BadTarget(f"{_show(user)} is not a valid vpopmail user name")
    user = user.lower()
    name = qmail_name(user or None)
    if user and (user == "default" or user.endswith("-default")):
        raise BadTarget(f"{user}@{host}: {name} would be a qmail wildcard file, not one user's")
    try:
        domain = vpopmail.find_domain(cfg, host)
    except LookupFailed as exc:
        raise OptinError(show(str(exc))) from None
    if domain is None:
        raise OptinError(f"{host} is not a vpopmail domain here (not in users/assign)")
    return Target(f"{user}@{domain.name}", user or None, host, domain)


def qmail_name(user: str | None) -> str:
    """qmail-local's file name for a user: lower-cased, `.` turned into `:`."""
    if user is None:
        return ".qmail-default"
    return ".qmail-" + user.lower().replace(".", ":")


def command_path(command: str | None = None) -> str:
    """The absolute path of the quarantine command to put on the line: the
    one given, else the running `quarantine` script, else the one on PATH."""
    if command:
        return os.path.abspath(command)
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "quarantine" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    found = shutil.which("quarantine")
    if found is None:
        raise OptinError("cannot find the quarantine command; name it with --command PATH")
    return os.path.abspath(found)


def filter_line(cfg: Config, program: str) -> str:
    """`|<qmail>/bin/preline <program> deliver [--config FILE]`. qmail-local
    does not pass $QUARANTINE_CONFIG on, so a config file other than the
    default path has to be named on the line itself."""
    preline = os.path.join(cfg.qmail.home, "bin", "preline")
    words = [preline, program, "deliver"]
    config = _config_file(cfg)
    if config is not None:
        words += ["--config", config]
    for word in (preline, program, config or ""):
        if not set(word) <= PLAIN:
            raise OptinError(
                f"{_show(word)} cannot go on a .qmail line: qmail-local runs it through "
                "/bin/sh, so it may hold only letters, digits and / . _ + , - = @ % :"
            )
    return "|" + " ".join(words)


def is_filter_line(line: str) -> bool:
    """A `|[preline [-flags]] .../quarantine deliver ...` program line."""
    line = line.rstrip("\n")
    if not line.startswith("|"):
        return False
    words = line[1:].split()
    i = 0
    if words and os.path.basename(words[0]) == "preline":
        i = 1
        while i < len(words) and words[i].startswith("-"):
            i += 1
    return (
        len(words) > i + 1
        and os.path.basename(words[i]) == "quarantine"
        and (words[i + 1] == "deliver")
    )


def is_marker_line(line: str) -> bool:
    return line.startswith(MARKER)


def default_delivery(cfg: Config, directory: DomainDir) -> list[str]:
    """The delivery lines of the domain's `.qmail-default`, without comments
    and without our own filter; vdelivermail bounce-no-mailbox when none."""
    text, _ = directory.read(".qmail-default")
    kept = []
    for line in _lines(text or ""):
        bare = line.rstrip("\n").rstrip(" \t")
        if bare and not bare.startswith("#") and not is_filter_line(bare):
            kept.append(bare + "\n")
    if kept:
        return kept
    return [f"| {cfg.vpopmail.home}/bin/vdelivermail '' bounce-no-mailbox\n"]


# -- checks ---------------------------------------------------------------------


def check_domain_dir(directory: DomainDir) -> None:
    """qmail-local refuses a writable home directory and defers all mail
    while it is sticky: refuse to edit files in such a directory."""
    mode = stat.S_IMODE(os.fstat(directory.fd).st_mode)
    path = show(directory.domain.path)
    if mode & 0o022:
        raise OptinError(
            f"{path} is group or world writable (mode {mode:04o}): qmail-local "
            "refuses a writable home directory and anyone could replace its .qmail files; "
            f"run chmod go-w {path} first"
        )
    if mode & stat.S_ISVTX:
        raise OptinError(
            f"{path} is sticky (mode {mode:04o}): qmail-local defers every "
            "delivery while it is (someone is editing .qmail files); clear it first"
        )


def check_chain(cfg: Config, domain: Domain, program: str) -> list[str]:
    """What would stop the domain's uid/gid from running the filter line:
    preline and the quarantine script must be executable, the script and its
    `#!` interpreter readable and executable, the config file readable, and
    every directory on the way searchable (a program the uid cannot run makes
    preline bounce the mail, protocols.md 1.1a). Empty when all is well."""
    uid, gid = domain.uid, domain.gid
    problems: list[str] = []
    euid = os.geteuid()
    if euid not in (0, uid):
        problems.append(
            f"not running as root or as uid {uid}: the file would belong to uid {euid} "
            f"and qmail-local (uid {uid}) could not read it"
        )
    preline = os.path.join(cfg.qmail.home, "bin", "preline")
    checks = [("preline", preline, 0o1), ("the quarantine command", program, 0o5)]
    for interpreter in _interpreters(program):
        if interpreter.startswith("/"):
            checks.append((f"the #! interpreter of {show(program)}", interpreter, 0o5))
        else:
            problems.append(f"the #! line of {show(program)}: {interpreter}")
    config = _config_file(cfg)
    if config is not None:
        checks.append(("the configuration file", config, 0o4))
    for what, path, bits in checks:
        problem = access_problem(path, uid, gid, bits)
        if problem is not None:
            problems.append(f"{what}: {problem}")
    return problems


def access_problem(path: str, uid: int, gid: int, bits: int) -> str | None:
    """Why `uid`/`gid` (no supplementary groups: qmail-local sets only the
    assign gid) cannot reach `path` with `bits` (4 read, 1 execute), or None.
    Every directory on the path, and on the path symlinks lead to, needs x."""
    shown = show(path)
    if not os.path.isabs(path):
        return f"{shown} is not an absolute path"
    for candidate in dict.fromkeys([os.path.normpath(path), os.path.realpath(path)]):
        parent = os.path.dirname(candidate)
        dirs = [parent]
        while parent != "/":
            parent = os.path.dirname(parent)
            dirs.append(parent)
        for directory in reversed(dirs):
            try:
                st = os.stat(directory)
            except OSError as exc:
                return f"{shown}: cannot stat {show(directory)}: {exc.strerror}"
            if not _may(st, uid, gid, 0o1):
                return f"{shown}: uid {uid} gid {gid} cannot enter {show(directory)} ({_mode(st)})"
        try:
            st = os.stat(candidate)
        except OSError as exc:
            return f"{shown}: {exc.strerror}"
        if not stat.S_ISREG(st.st_mode):
            return f"{shown} is not a regular file"
        if not _may(st, uid, gid, bits):
            want = {0o1: "execute", 0o4: "read", 0o5: "read and execute"}[bits]
            return f"{shown}: uid {uid} gid {gid} cannot {want} it ({_mode(st)})"
    return None


def _may(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    mode = st.st_mode
    if uid == 0:
        return not (bits & 0o1) or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if st.st_uid == uid:
        granted = mode >> 6
    elif st.st_gid == gid:
        granted = mode >> 3
    else:
        granted = mode
    return granted & bits == bits


def _mode(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}:{st.st_gid}"


def _interpreters(script: str) -> list[str]:
    """The programs a script's `#!` line starts: the interpreter, and for
    pip's long-path form (`#!/bin/sh` then `'''exec' "/venv/bin/python" ...`)
    the Python it execs. Entries not starting with `/` describe a problem."""
    try:
        with open(script, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return []
    if not head.startswith(b"#!"):
        return []
    first, _, rest = head[2:].partition(b"\n")
    words = first.decode("latin-1").split()
    if not words:
        return ["it is empty"]
    if not words[0].startswith("/"):
        return [f"{_show(words[0])} is not an absolute path: the kernel cannot run the script"]
    found = [words[0]]
    if os.path.basename(words[0]) == "env":
        line = show(" ".join(words))
        found.append(f"#!{line} depends on qmail's PATH; give an absolute #! line")
    second = rest.split(b"\n", 1)[0].decode("latin-1")
    if second.startswith("'''exec' \""):
        found.append(second[len("'''exec' \"") :].split('"', 1)[0])
    return found


def _check_editable(path: str, lines: list[str]) -> None:
    """An existing file we may put a program line in: one that delivers
    somewhere (or ham would vanish) and is no `+list` forward-only file."""
    bare = [x.rstrip("\n").rstrip(" \t") for x in lines]
    if "+list" in bare:
        raise OptinError(
            f"{show(path)} is a forward-only mailing-list file (+list): no program lines"
        )
    if not any(x and not x.startswith("#") and not x.startswith("+") for x in bare):
        raise OptinError(
            f"{show(path)} has no delivery line (qmail-local would drop or default-deliver "
            "the mail): write the delivery line first, then opt in"
        )


# -- small helpers ----------------------------------------------------------------


def _lines(text: str) -> list[str]:
    """Split on `\\n` only (qmail's line end), keeping it on each line."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _pairs(lines: list[str]) -> list[int]:
    """Indexes of marker lines directly followed by a filter line."""
    return [
        i
        for i in range(len(lines) - 1)
        if is_marker_line(lines[i]) and is_filter_line(lines[i + 1])
    ]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("latin-1")).hexdigest()[:16]


def _recorded_digest(marker: str) -> str:
    return marker.partition(DIGEST_TAG)[2].partition(")")[0]


def _config_file(cfg: Config) -> str | None:
    """The config file to name on the line: None for built-in defaults or
    the default path (which deliver finds by itself)."""
    if cfg.source is None:
        return None
    path = os.path.abspath(cfg.source)
    return None if path == DEFAULT_PATH else path


def _address_of(name: str, domain: Domain) -> str | None:
    """The address a `.qmail-EXT` file in a domain directory serves, or None
    for wildcards (`-default`), temp files and other names."""
    if not name.startswith(".qmail-"):
        return None
    ext = name[len(".qmail-") :]
    if ext == "default":
        return f"@{domain.name}"
    if not ext or "." in ext or ext.endswith("-default"):
        return None
    return f"{ext.replace(':', '.')}@{domain.name}"


def _notes(where: Target, directory: DomainDir) -> tuple[str, ...]:
    """What the admin should know beside the change: an alias domain shares
    the real one's files; for `@domain`, users whose own `.qmail-USER`
    (without the filter) keeps `.qmail-default` from reaching them."""
    notes: list[str] = []
    if where.host != where.domain.name:
        notes.append(
            f"{where.host} is an alias of {show(where.domain.name)}: the filter covers both"
        )
    if where.user is None:
        try:
            names = directory.names()
        except OptinError:
            names = []
        for name in names:
            address = _address_of(name, where.domain)
            if address is None or address.startswith("@"):
                continue
            try:
                text, _ = directory.read(name)
            except OptinError:
                continue
            if text is not None and not _has_filter(text):
                notes.append(
                    f"{show(address)} has its own {show(name)}, which .qmail-default does not "
                    "reach: opt it in separately"
                )
    return tuple(notes)


def _has_filter(text: str | None) -> bool:
    """Whether a `.qmail` file's text (None: no file) has a filter line."""
    return any(is_filter_line(x) for x in _lines(text or ""))


def _show(text: str) -> str:
    """A name from the command line for an error message: quoted, escaped,
    and cut short when absurdly long."""
    return "'" + show(text if len(text) <= 60 else text[:60] + "...") + "'"
