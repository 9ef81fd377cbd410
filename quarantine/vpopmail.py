"""Finding things in a vpopmail installation: a domain's directory and uid/gid
from qmail's `users/assign`, a user's directory from the domain's `vpasswd`
(or `vuserinfo -d`), and the checks that keep names from the network out of
paths they do not belong in.

Every name that arrives from qmail's environment (EXT, HOST) is attacker
controlled; `valid_user` and `valid_domain` run before any of them touches a
path, and no shell is ever involved.
"""

import time

from quarantine import fastos as os
from quarantine.fastos import S_ISLNK, S_ISREG
from quarantine.qmail import LookupFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from quarantine.config import Config

MAX_USER = 64
MAX_DOMAIN = 253
VUSERINFO_TIMEOUT = 30.0  # seconds; a stuck lookup defers rather than hangs


def valid_user(name: str) -> bool:
    """A vpopmail user name that can safely become one path component (and,
    not starting with `-`, never an option to vuserinfo)."""
    if not name or len(name) > MAX_USER or name[0] in ".-":
        return False
    return all(33 <= ord(ch) <= 126 and ch not in "/:\\" for ch in name)


def valid_domain(name: str) -> bool:
    """A domain name that can safely become one path component."""
    if not name or len(name) > MAX_DOMAIN or name[0] in ".-" or ".." in name:
        return False
    return all(ch.isascii() and (ch.isalnum() or ch in "-._") for ch in name)


class Domain:
    """A domain as qmail routes it: `name` is the real domain (an alias domain
    maps to its real one), `path` the domain directory, uid/gid its owner."""

    __slots__ = ("gid", "name", "path", "uid")

    def __init__(self, name: str, path: str, uid: int, gid: int) -> None:
        self.name = name
        self.path = path
        self.uid = uid
        self.gid = gid

    def __repr__(self) -> str:
        return f"Domain({self.name!r}, {self.path!r}, {self.uid}, {self.gid})"


class Mailbox:
    """A vpopmail user: the address it was found under and its Maildir."""

    __slots__ = ("domain", "home", "user")

    def __init__(self, user: str, domain: "Domain", home: str) -> None:
        self.user = user
        self.domain = domain
        self.home = home  # the user directory; the Maildir is home/Maildir

    @property
    def maildir(self) -> str:
        return os.path.join(self.home, "Maildir")

    @property
    def address(self) -> str:
        return f"{self.user}@{self.domain.name}"


def _read_lines(path: str, dir_fd: "int | None" = None) -> "list[bytes]":
    """A table file's lines; a file that cannot be read is a lookup failure.
    With `dir_fd` (a directory root opened safely) the file is `path`'s last
    component in that directory, and only a regular file, not a symlink."""
    try:
        if dir_fd is None:
            with open(path, "rb") as handle:
                return handle.read().split(b"\n")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        with open(os.open(os.path.basename(path), flags, dir_fd=dir_fd), "rb") as handle:
            if not S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise LookupFailed(f"cannot read {path}: not a regular file")
            return handle.read().split(b"\n")
    except OSError as exc:
        raise LookupFailed(f"cannot read {path}: {exc.strerror}") from None


def assign_path(config: "Config") -> str:
    return os.path.join(config.qmail.home, "users", "assign")


def read_assign(config: "Config") -> "Iterator[tuple[str, Domain]]":
    """The vpopmail domains in users/assign: (routed host, Domain). Alias
    domains appear under their own host with their real domain's directory."""
    for raw in _read_lines(assign_path(config)):
        line = raw.decode("latin-1")
        if line == ".":
            break
        if not line.startswith("+"):
            continue
        fields = line[1:].split(":")
        # +host-:realdomain:uid:gid:dir:-::  (vpopmail's add_domain_assign)
        if len(fields) < 5 or not fields[0].endswith("-") or not fields[2].isdigit():
            continue
        if not fields[3].isdigit() or not fields[4].startswith("/"):
            continue
        host = fields[0][:-1].lower()
        yield host, Domain(fields[1].lower(), fields[4], int(fields[2]), int(fields[3]))


def find_domain(config: "Config", host: str) -> "Domain | None":
    """The domain qmail delivers `host` to, or None when it is not a vpopmail
    domain here. LookupFailed when users/assign cannot be read."""
    host = host.lower()
    if not valid_domain(host):
        return None
    for routed, domain in read_assign(config):
        if routed == host:
            return domain
    return None


def candidates(ext: str) -> "list[str]":
    """User names to try for an extension, as vdelivermail does: the whole
    EXT, then shortened at each dash from the right (`a-b-c`, `a-b`, `a`)."""
    ext = ext.lower()
    names = [ext]
    while "-" in ext:
        ext = ext.rsplit("-", 1)[0]
        if ext:
            names.append(ext)
    return names


def find_mailbox(config: "Config", domain: "Domain", ext: str) -> "Mailbox | None":
    """The Mailbox for EXT in `domain`, or None when vpopmail knows no such
    user (not ours to judge). LookupFailed when the lookup itself failed."""
    for name in candidates(ext):
        if not valid_user(name):
            continue
        home = user_home(config, domain, name)
        if home is not None:
            check_inside(config, domain, home)
            return Mailbox(name, domain, home)
    return None


def user_home(
    config: "Config", domain: "Domain", user: str, dir_fd: "int | None" = None
) -> "str | None":
    """`user`'s directory, or None when vpopmail knows no such user. `dir_fd`:
    the domain directory already open, so vpasswd is read through it."""
    vuserinfo = config.vpopmail.vuserinfo
    if vuserinfo is None:
        return vpasswd_home(domain, user, dir_fd)
    if not os.access(vuserinfo, os.X_OK):
        raise LookupFailed(f"vpopmail.vuserinfo {vuserinfo} is not executable")
    return _vuserinfo_home(vuserinfo, f"{user}@{domain.name}")


def vpasswd_path(domain: "Domain") -> str:
    return os.path.join(domain.path, "vpasswd")


def read_vpasswd(domain: "Domain", dir_fd: "int | None" = None) -> "Iterator[tuple[str, str, str]]":
    """(user, home directory, quota) for each line of the domain's vpasswd."""
    for raw in _read_lines(vpasswd_path(domain), dir_fd):
        # name:crypted:uid:gid:gecos:dir:quota[:clear]
        fields = raw.decode("latin-1").split(":")
        if len(fields) >= 6 and fields[5].startswith("/"):
            yield fields[0], fields[5], fields[6] if len(fields) > 6 else ""


def vpasswd_home(domain: "Domain", user: str, dir_fd: "int | None" = None) -> "str | None":
    for name, home, _quota in read_vpasswd(domain, dir_fd):
        if name.lower() == user:
            return home
    return None


def _vuserinfo_home(program: str, address: str) -> "str | None":
    """`vuserinfo -d user@domain` prints the user directory on one line. Run
    with posix_spawn and argv (no shell): the address cannot inject anything."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.posix_spawn(
            program,
            [program, "-d", address],
            {"PATH": "/usr/bin:/bin"},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, write_fd, 1),
                (os.POSIX_SPAWN_CLOSE, read_fd),
            ],
        )
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise LookupFailed(f"cannot run {program}: {exc.strerror}") from None
    os.close(write_fd)
    chunks: list[bytes] = []
    kept = 0
    import select  # here: the lookup in vpasswd runs no program

    deadline = time.monotonic() + VUSERINFO_TIMEOUT
    with os.fdopen(read_fd, "rb", buffering=0) as out:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([out], [], [], left)[0]:
                import signal  # only here: it costs a millisecond to import

                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise LookupFailed(f"{program} -d {address} timed out")
            chunk = out.read(4096)
            if not chunk:
                break
            if kept < 65536:
                chunks.append(chunk)
                kept += len(chunk)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode("latin-1").strip()
    code = os.waitstatus_to_exitcode(status)
    if code == 0 and text.startswith("/") and "\n" not in text:
        return text
    if "no such user" in text.lower() or (code != 0 and "not found" in text.lower()):
        return None
    raise LookupFailed(f"{program} -d {address} failed (exit {code}): {text[:80]}")


def check_inside(config: "Config", domain: "Domain", home: str) -> None:
    """A user directory must lie inside the vpopmail tree: under the domain's
    directory or vpopmail's home. Refuse (defer) anything else."""
    real = os.path.realpath(home)
    for root in (domain.path, config.vpopmail.home):
        base = os.path.realpath(root)
        if real.startswith(base.rstrip("/") + "/"):
            return
    raise LookupFailed(f"user directory {home} lies outside the vpopmail tree")


# --- opening the tree as root ----------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
MAX_LINKS = 40  # as the kernel's own limit on symlinks in one path


class UnsafeDirectory(Exception):
    """A directory that a root-run command must not work in: reached through
    a symlink someone other than root can change, not a directory, or not
    owned by the uid users/assign gives its domain."""


def _trusted(st: "os.stat_result") -> bool:
    """A directory only root can change: its symlinks are the admin's."""
    return st.st_uid == 0 and not st.st_mode & 0o022


def open_dir_safely(path: str) -> int:
    """A descriptor of directory `path`, walked from `/` one component at a
    time. A symlink is followed only where it sits in a directory that only
    root can change (`/home -> /data/home`, the admin's); one in a directory
    any other uid can write (`domains/example.com` swapped for a link by uid
    89) is refused with UnsafeDirectory, so root never works through a path a
    mailbox owner controls. OSError when a component does not exist."""
    from quarantine.names import show

    if not path.startswith("/"):
        raise UnsafeDirectory(f"{show(path)}: not an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    walked: list[str] = []
    # One descriptor per directory walked: `..` goes back to the one before,
    # never through a path that could have changed meanwhile.
    stack = [os.open("/", _DIR_FLAGS)]
    links = 0
    try:
        while parts:
            part = parts.pop(0)
            fd = stack[-1]
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    walked.pop()
                continue
            try:
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not S_ISLNK(st.st_mode):
                    raise
                here = os.fstat(fd)
                where = show("/" + "/".join([*walked, part]))
                if not _trusted(here):
                    raise UnsafeDirectory(
                        f"{where} is a symlink in a directory uid {here.st_uid} can change: "
                        f"not followed (name the real directory in {show(path)}'s place)"
                    ) from None
                links += 1
                if links > MAX_LINKS:
                    raise UnsafeDirectory(f"{show(path)}: too many symlinks") from None
                target = os.readlink(part, dir_fd=fd)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                    walked = []
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            stack.append(child)
            walked.append(part)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def open_domain_dir(domain: "Domain") -> int:
    """A descriptor of `domain`'s directory for a command running as root:
    reached without following a symlink any uid but root can change, and
    refused (UnsafeDirectory) unless it is a real directory owned by the uid
    users/assign gives the domain. Every file below it is then opened
    relative to this descriptor."""
    from quarantine.names import show

    try:
        fd = open_dir_safely(domain.path)
    except NotADirectoryError:
        raise UnsafeDirectory(f"{show(domain.path)} is not a directory") from None
    st = os.fstat(fd)
    if st.st_uid != domain.uid:
        os.close(fd)
        raise UnsafeDirectory(
            f"{show(domain.path)} is owned by uid {st.st_uid}, but users/assign gives "
            f"{show(domain.name)} uid {domain.uid}: refusing to work in it"
        )
    return fd
