"""`os` for the modules `quarantine deliver` runs: the posix calls they make,
a str environment and the few `os.path` functions they use, without importing
`os` (with _collections_abc, about 1.5 ms of a start without `site`). In a
process that has imported `os` anyway, `environ` is os.environ itself.
"""

import builtins
import sys
from posix import (
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_EXCL,
    O_NOFOLLOW,
    O_NONBLOCK,
    O_RDONLY,
    O_RDWR,
    O_WRONLY,
    POSIX_SPAWN_CLOSE,
    POSIX_SPAWN_DUP2,
    X_OK,
    access,
    chown,
    close,
    fchown,
    fstat,
    fsync,
    geteuid,
    getpid,
    kill,
    link,
    listdir,
    lstat,
    mkdir,
    open,
    pipe,
    posix_spawn,
    pread,
    readlink,
    readv,
    rename,
    rmdir,
    stat,
    stat_result,
    uname,
    unlink,
    urandom,
    waitpid,
    waitstatus_to_exitcode,
    write,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from typing import IO, Any

__all__ = [
    "O_APPEND",
    "O_CLOEXEC",
    "O_CREAT",
    "O_DIRECTORY",
    "O_EXCL",
    "O_NOFOLLOW",
    "O_NONBLOCK",
    "O_RDONLY",
    "O_RDWR",
    "O_WRONLY",
    "POSIX_SPAWN_CLOSE",
    "POSIX_SPAWN_DUP2",
    "S_IMODE",
    "S_ISDIR",
    "S_ISLNK",
    "S_ISREG",
    "X_OK",
    "access",
    "chown",
    "close",
    "environ",
    "fchown",
    "fdopen",
    "fsdecode",
    "fsencode",
    "fstat",
    "fsync",
    "geteuid",
    "getpid",
    "kill",
    "link",
    "listdir",
    "lstat",
    "mkdir",
    "open",
    "path",
    "pipe",
    "posix_spawn",
    "pread",
    "readlink",
    "readv",
    "rename",
    "rmdir",
    "stat",
    "stat_result",
    "uname",
    "unlink",
    "urandom",
    "waitpid",
    "waitstatus_to_exitcode",
    "write",
]

_S_IFMT, _S_IFDIR, _S_IFREG, _S_IFLNK = 0o170000, 0o040000, 0o100000, 0o120000


def S_ISDIR(mode: int) -> bool:
    """stat.S_ISDIR, without importing `stat`."""
    return mode & _S_IFMT == _S_IFDIR


def S_ISREG(mode: int) -> bool:
    """stat.S_ISREG."""
    return mode & _S_IFMT == _S_IFREG


def S_ISLNK(mode: int) -> bool:
    """stat.S_ISLNK."""
    return mode & _S_IFMT == _S_IFLNK


def S_IMODE(mode: int) -> int:
    """stat.S_IMODE: the permission bits."""
    return mode & 0o7777


def _environ() -> "MutableMapping[str, str]":
    real = sys.modules.get("os")
    if real is not None:
        live: MutableMapping[str, str] = real.environ
        return live
    import posix

    code = sys.getfilesystemencoding()
    return {
        key.decode(code, "surrogateescape"): value.decode(code, "surrogateescape")
        for key, value in posix.environ.items()
    }


environ = _environ()


def fdopen(fd: int, mode: str = "r", buffering: int = -1) -> "IO[Any]":
    """os.fdopen: the built-in open() on a descriptor."""
    return builtins.open(fd, mode, buffering)


def fsencode(name: "str | bytes") -> bytes:
    """os.fsencode, for str and bytes."""
    if isinstance(name, bytes):
        return name
    return name.encode(sys.getfilesystemencoding(), "surrogateescape")


def fsdecode(name: "str | bytes") -> str:
    """os.fsdecode, for str and bytes."""
    if isinstance(name, str):
        return name
    return name.decode(sys.getfilesystemencoding(), "surrogateescape")


class path:
    """posixpath's functions the mail path uses, for str paths."""

    @staticmethod
    def join(first: str, *rest: str) -> str:
        out = first
        for part in rest:
            if part.startswith("/"):
                out = part
            elif not out or out.endswith("/"):
                out += part
            else:
                out += "/" + part
        return out

    @staticmethod
    def dirname(name: str) -> str:
        head = name[: name.rfind("/") + 1]
        if head and head != "/" * len(head):
            head = head.rstrip("/")
        return head

    @staticmethod
    def basename(name: str) -> str:
        return name[name.rfind("/") + 1 :]

    @staticmethod
    def _mode(name: str) -> "int | None":
        try:
            return stat(name).st_mode & _S_IFMT
        except (OSError, ValueError):
            return None

    @staticmethod
    def exists(name: str) -> bool:
        return path._mode(name) is not None

    @staticmethod
    def isdir(name: str) -> bool:
        return path._mode(name) == _S_IFDIR

    @staticmethod
    def isfile(name: str) -> bool:
        return path._mode(name) == _S_IFREG

    @staticmethod
    def split(name: str) -> "tuple[str, str]":
        cut = name.rfind("/") + 1
        head, tail = name[:cut], name[cut:]
        if head and head != "/" * len(head):
            head = head.rstrip("/")
        return head, tail

    @staticmethod
    def realpath(name: str) -> str:
        """posixpath.realpath, not strict: every symlink followed (a loop
        left as it stands), `.` and `..` resolved, made absolute."""
        found, _ = path._join_real("", name, {})
        if not found.startswith("/"):
            from posix import getcwd

            found = path.join(getcwd(), found)
        parts: list[str] = []
        for part in found.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    @staticmethod
    def _join_real(done: str, rest: str, seen: "dict[str, str | None]") -> "tuple[str, bool]":
        """posixpath._joinrealpath."""
        if rest.startswith("/"):
            rest, done = rest[1:], "/"
        while rest:
            name, _, rest = rest.partition("/")
            if not name or name == ".":
                continue
            if name == "..":
                if done:
                    done, name = path.split(done)
                    if name == "..":
                        done = path.join(done, "..", "..")
                else:
                    done = ".."
                continue
            candidate = path.join(done, name)
            try:
                is_link = lstat(candidate).st_mode & _S_IFMT == _S_IFLNK
            except (OSError, ValueError):
                is_link = False
            if not is_link:
                done = candidate
                continue
            if candidate in seen:
                known = seen[candidate]
                if known is not None:
                    done = known
                    continue
                return path.join(candidate, rest), False  # a symlink loop
            seen[candidate] = None
            done, ok = path._join_real(done, readlink(candidate), seen)
            if not ok:
                return path.join(done, rest), False
            seen[candidate] = done
        return done, True
