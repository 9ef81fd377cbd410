"""Files changed safely and put back byte for byte: every path is reached
through its directory's descriptor (no symlink a non-root uid can change is
followed, nor the file itself), written atomically with its mode, owner and
times kept, and saved first into a backup that `restore` puts back exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import asdict, dataclass

from quarantine import vpopmail
from quarantine.names import show

MAX_FILE = 64 << 20  # a file larger than this is not one migrate edits
MANIFEST = "manifest.json"
TEMP_TAG = ".quarantine-tmp."
VERSION = 1


class FileError(Exception):
    """A file could not be read, saved, written or restored (printable text)."""


class MissingDirectory(FileError):
    """The directory that would hold the path does not exist."""


@dataclass
class State:
    """What is at a path: `kind` file, symlink or absent; for a file its
    mode, owner, modification time and the digest of its bytes."""

    path: str
    kind: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    target: str = ""  # a symlink's
    blob: str = ""  # the saved copy's name in the backup
    derived: bool = False  # rebuilt from another file (a cache): not checked by undo

    def same(self, other: State) -> bool:
        """The same content (and kind) as `other`: nobody changed it since."""
        return (self.kind, self.sha256, self.target) == (other.kind, other.sha256, other.target)


def open_parent(path: str) -> tuple[int, str]:
    """A descriptor of the directory holding `path` (vpopmail.open_dir_safely)
    and the last component, which is never `.`, `..` or empty."""
    if not path.startswith("/"):
        raise FileError(f"{show(path)}: not an absolute path")
    directory, name = os.path.split(path.rstrip("/"))
    if name in ("", ".", ".."):
        raise FileError(f"{show(path)}: not a file name")
    try:
        return vpopmail.open_dir_safely(directory or "/"), name
    except vpopmail.UnsafeDirectory as exc:
        raise FileError(str(exc)) from None
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise MissingDirectory(f"{show(directory)}: {exc.strerror}") from None
    except OSError as exc:
        raise FileError(f"{show(directory)}: {exc.strerror}") from None


def read(path: str, limit: int = MAX_FILE) -> tuple[State, bytes | None]:
    """The state of `path` and, for a regular file, its bytes. A symlink is
    reported as one, never followed; anything but a file, symlink or nothing
    is refused."""
    try:
        fd, name = open_parent(path)
    except MissingDirectory:
        return State(path, "absent"), None
    try:
        return read_at(fd, name, path, limit)
    finally:
        os.close(fd)


def read_at(dir_fd: int, name: str, path: str, limit: int = MAX_FILE) -> tuple[State, bytes | None]:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return State(path, "absent"), None
    except OSError as exc:
        raise FileError(f"{show(path)}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=dir_fd)
        return _state(path, "symlink", st, target=target), None
    if not stat.S_ISREG(st.st_mode):
        raise FileError(f"{show(path)}: not a regular file")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise FileError(f"{show(path)}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise FileError(f"{show(path)}: not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileError(f"{show(path)}: larger than {limit} bytes")
    state = _state(path, "file", st, sha256=hashlib.sha256(data).hexdigest())
    return state, data


def _state(path: str, kind: str, st: os.stat_result, sha256: str = "", target: str = "") -> State:
    mode, uid, gid, mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns
    return State(path, kind, mode, uid, gid, mtime, sha256=sha256, target=target)


def write(path: str, data: bytes, like: State, *, keep_time: bool = False) -> None:
    """Replace `path` with `data` atomically: a temporary file beside it with
    the mode and owner of `like` (the state it had), fsync, rename, fsync of
    the directory. `keep_time` also gives it `like`'s modification time."""
    fd, name = open_parent(path)
    try:
        write_at(fd, name, path, data, like, keep_time=keep_time)
    finally:
        os.close(fd)


def write_at(
    dir_fd: int, name: str, path: str, data: bytes, like: State, *, keep_time: bool = False
) -> None:
    temp = f"{name}{TEMP_TAG}{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    mode = like.mode if like.kind == "file" else 0o644
    try:
        try:
            out = os.open(temp, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:  # left by a run that died with our pid
            os.unlink(temp, dir_fd=dir_fd)
            out = os.open(temp, flags, 0o600, dir_fd=dir_fd)
        try:
            if like.kind == "file" and os.geteuid() == 0:
                os.fchown(out, like.uid, like.gid)
            os.fchmod(out, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            os.fsync(out)
            if keep_time:
                os.utime(out, ns=(like.mtime_ns, like.mtime_ns))
        finally:
            os.close(out)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise FileError(f"cannot write {show(path)}: {exc.strerror}") from None


def symlink(path: str, target: str, like: State | None = None) -> None:
    """Make `path` a symlink to `target`, atomically (over whatever is there)."""
    fd, name = open_parent(path)
    temp = f"{name}{TEMP_TAG}{os.getpid()}"
    try:
        try:
            os.unlink(temp, dir_fd=fd)
        except FileNotFoundError:
            pass
        os.symlink(target, temp, dir_fd=fd)
        if like is not None and os.geteuid() == 0:
            os.chown(temp, like.uid, like.gid, dir_fd=fd, follow_symlinks=False)
        os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
    except OSError as exc:
        try:  # a failed chown or rename leaves no temp link behind
            os.unlink(temp, dir_fd=fd)
        except OSError:
            pass
        raise FileError(f"cannot make {show(path)} a symlink: {exc.strerror}") from None
    finally:
        os.close(fd)


def rename(source: str, target: str) -> None:
    """Move `source` to `target` in the same directory (a key set aside, the
    real qmail-remote moved to qmail-remote.orig)."""
    if os.path.dirname(source) != os.path.dirname(target):
        raise FileError(f"{show(source)} and {show(target)} are not in one directory")
    fd, name = open_parent(source)
    try:
        os.rename(name, os.path.basename(target), src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
    except OSError as exc:
        raise FileError(f"cannot rename {show(source)}: {exc.strerror}") from None
    finally:
        os.close(fd)


def remove(path: str) -> None:
    fd, name = open_parent(path)
    try:
        os.unlink(name, dir_fd=fd)
        os.fsync(fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise FileError(f"cannot remove {show(path)}: {exc.strerror}") from None
    finally:
        os.close(fd)


class Backup:
    """One --apply's saved files: `DIR/<time>-<pid>/` (mode 0700) holding a
    copy of each file before the change and the manifest of every path's
    state before and after. Written before the first change, so even an
    apply that dies half way can be undone."""

    def __init__(self, root: str) -> None:
        self.root = root
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.dir = os.path.join(root, f"{stamp}-{os.getpid()}")
        self.entries: list[dict[str, object]] = []
        self._made = False

    def _make(self) -> None:
        if self._made:
            return
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            os.mkdir(self.dir, 0o700)
        except OSError as exc:
            raise FileError(f"cannot make {show(self.dir)}: {exc.strerror}") from None
        self._made = True

    def save(self, path: str, derived: bool = False) -> State:
        """Copy `path` (as it is now) into the backup; its state."""
        self._make()
        try:
            state, data = read(path)
        except OSError as exc:
            raise FileError(f"cannot save {show(path)}: {exc.strerror or exc}") from None
        state.derived = derived
        if data is not None:
            state.blob = f"{len(self.entries):05d}"
            blob = os.path.join(self.dir, state.blob)
            try:
                fd = os.open(blob, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise FileError(
                    f"cannot save {show(path)} as {show(blob)}: {exc.strerror or exc}"
                ) from None
        self.entries.append({"before": asdict(state), "after": None})
        return state

    def record_after(self) -> None:
        """The state each saved path was left in (for --undo's check)."""
        for entry in self.entries:
            before = entry["before"]
            assert isinstance(before, dict)
            state, _ = read(str(before["path"]))
            entry["after"] = asdict(state)

    def commit(self, status: str) -> None:
        """Write the manifest (atomically): `applying`, `applied` or `rolled back`."""
        self._make()
        text = json.dumps(
            {"version": VERSION, "status": status, "created": time.time(), "entries": self.entries},
            indent=1,
        )
        like = State(os.path.join(self.dir, MANIFEST), "file", 0o600, os.geteuid(), os.getegid())
        write(like.path, text.encode(), like)


def last_backup(root: str) -> tuple[str, dict[str, object]] | None:
    """The newest backup not yet undone: its directory and manifest."""
    try:
        names = sorted(os.listdir(root), reverse=True)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FileError(f"{show(root)}: {exc.strerror}") from None
    for name in names:
        path = os.path.join(root, name, MANIFEST)
        try:
            with open(path, encoding="utf-8") as handle:
                manifest = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("status") == "applied":
            return os.path.join(root, name), manifest
    return None


def entry_states(manifest: dict[str, object]) -> list[tuple[State, State | None]]:
    """(before, after) of every path in a manifest, in the order saved."""
    entries = manifest.get("entries")
    if not isinstance(entries, list):
        raise FileError("backup manifest without entries")
    out = []
    for entry in entries:
        before = State(**entry["before"])
        after = State(**entry["after"]) if entry.get("after") else None
        out.append((before, after))
    return out


def changed_since(pairs: list[tuple[State, State | None]]) -> list[str]:
    """The paths that are no longer as the apply left them."""
    out = []
    for before, after in pairs:
        if before.derived:
            continue
        now, _ = read(before.path)
        if after is None or not now.same(after):
            out.append(before.path)
    return out


def restore(directory: str, state: State) -> None:
    """Put `state.path` back as `state` says, bytes, mode, owner and time."""
    if state.kind == "absent":
        remove(state.path)
    elif state.kind == "symlink":
        symlink(state.path, state.target, state)
    else:
        blob = os.path.join(directory, state.blob)
        try:
            with open(blob, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise FileError(
                f"cannot read {show(blob)}, the saved copy of {show(state.path)}: "
                f"{exc.strerror or exc}"
            ) from None
        if hashlib.sha256(data).hexdigest() != state.sha256:
            raise FileError(f"the saved copy of {show(state.path)} is damaged")
        write(state.path, data, state, keep_time=True)


def mark(directory: str, manifest: dict[str, object], status: str) -> None:
    manifest = {**manifest, "status": status}
    path = os.path.join(directory, MANIFEST)
    like = State(path, "file", 0o600, os.geteuid(), os.getegid())
    write(path, json.dumps(manifest, indent=1).encode(), like)
