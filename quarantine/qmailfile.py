"""The `.qmail` files of a vpopmail domain directory, read and written safely:
through a descriptor of the directory (O_NOFOLLOW, no symlink followed), atomic
replace with the domain's owner, size-bounded reads, qmail-local's file names.
"""

from __future__ import annotations

import errno
import os
import stat

from quarantine import vpopmail
from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.vpopmail import Domain

    Stamp = tuple[int, int, int]  # inode, mtime, size: a concurrent edit changes one

TEMP_TAG = ".quarantine-tmp."  # `.` never occurs in a name qmail-local looks up
MODE = 0o600
MAX_FILE = 1024 * 1024  # a .qmail file larger than this is not one we edit


class OptinError(Exception):
    """optin/optout/optins refused or failed; the message says why (exit 1)."""

    code = 1


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


def qmail_name(user: str | None) -> str:
    """qmail-local's file name for a user: lower-cased, `.` turned into `:`."""
    if user is None:
        return ".qmail-default"
    return ".qmail-" + user.lower().replace(".", ":")


def address_of(name: str, domain: Domain) -> str | None:
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


def check_editable(path: str, lines: list[str]) -> None:
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


def split_lines(text: str) -> list[str]:
    """Split on `\\n` only (qmail's line end), keeping it on each line."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def quoted(text: str) -> str:
    """A name from the command line for an error message: quoted, escaped,
    and cut short when absurdly long."""
    return "'" + show(text if len(text) <= 60 else text[:60] + "...") + "'"
