"""Maildir delivery that never loses or half-writes a message: write into
`tmp/`, fsync, link into `new/` under Courier's `,S=size` name, fsync the
directory. Also Maildir++ folders made as `maildirmake -f` makes them (but
atomically), IMAP subscriptions (Courier and Dovecot files), and the
`maildirsize` quota file.

Security: nothing here follows a symlink where a folder or file of the
Maildir is expected; files are created 0600 with O_EXCL; when run as root,
everything created is handed to the owner of the Maildir.
"""

import time

from quarantine import fastos as os
from quarantine.fastos import S_IMODE, S_ISDIR, S_ISREG
from quarantine.qmail import DiskError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

COURIER_SUBSCRIPTIONS = "courierimapsubscribed"
DOVECOT_SUBSCRIPTIONS = "subscriptions"
SUBSCRIBE_MODES = ("auto", "courier", "dovecot", "both", "off")
# Files only one of the two IMAP servers leaves in a Maildir it has served.
COURIER_SIGNS = frozenset(
    [COURIER_SUBSCRIPTIONS, "courierimapuiddb", "courierimapkeywords", "courierimapacl"]
)
DOVECOT_SIGNS = frozenset(
    [DOVECOT_SUBSCRIPTIONS, "dovecot-uidlist", "dovecot-keywords", "dovecot.index",
     "dovecot.index.log", "dovecot.list.index", "dovecot.list.index.log"]
)  # fmt: skip
QUOTA_FILE = "maildirsize"
QUOTA_RECALC_SIZE = 5120  # Maildir++: recalculate once the file grows this big
_deliveries = 0


def _hostname() -> str:
    """The host part of a unique name, with `/` and `:` escaped (maildir(5))."""
    return os.uname().nodename.replace("/", "\\057").replace(":", "\\072") or "localhost"


def unique_name() -> str:
    """`1700000000.M123456P4242Q1R1f2e3d4c.host`: seconds, microseconds, pid,
    delivery count and 64 random bits; unique without any lock."""
    global _deliveries
    _deliveries += 1
    now = time.time()
    seconds = int(now)
    micros = int((now - seconds) * 1_000_000)
    rand = os.urandom(8).hex()
    return f"{seconds}.M{micros}P{os.getpid()}Q{_deliveries}R{rand}.{_hostname()}"


class Owner:
    """Who created files belong to; only applied when running as root."""

    __slots__ = ("gid", "uid")

    def __init__(self, uid: int, gid: int) -> None:
        self.uid = uid
        self.gid = gid

    @classmethod
    def of(cls, path: str) -> "Owner":
        st = os.stat(path)
        return cls(st.st_uid, st.st_gid)

    def apply(self, path: str, fd: "int | None" = None) -> None:
        if os.geteuid() != 0:
            return
        if fd is not None:
            os.fchown(fd, self.uid, self.gid)
        else:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def is_maildir(path: str) -> bool:
    """A directory whose tmp, new and cur are real directories, not symlinks.
    (The Maildir itself may be reached through a link the admin made; the
    vpopmail lookup has already checked where it leads.)"""
    if not os.path.isdir(path):
        return False
    try:
        return all(
            S_ISDIR(os.lstat(os.path.join(path, sub)).st_mode) for sub in ("tmp", "new", "cur")
        )
    except OSError:
        return False


def _open_dir(name: str, dir_fd: "int | None" = None) -> int:
    """A directory file descriptor, refusing a symlink in the last component."""
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)


class Delivery:
    """One message being written into a Maildir (or Maildir++ folder).

        d = Delivery(folder, owner); d.write(...); name = d.commit()

    Until commit() returns, the message exists only in tmp/; abort() (or any
    failure inside commit) removes it, so new/ never holds a partial file."""

    def __init__(self, folder: str, owner: "Owner") -> None:
        self.folder = folder
        self.size = 0
        self.name = ""
        # tmp/ and new/ are opened once, without following symlinks, and every
        # later step is relative to them: nothing can redirect the write.
        try:
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self.tmp_fd = _open_dir("tmp", folder_fd)
                try:
                    self.new_fd = _open_dir("new", folder_fd)
                except OSError:
                    os.close(self.tmp_fd)
                    raise
            finally:
                os.close(folder_fd)
        except OSError as exc:
            raise DiskError(f"{folder} is not a usable Maildir: {exc.strerror}") from None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        for _attempt in range(3):
            self.name = unique_name()
            try:
                fd = os.open(self.name, flags, 0o600, dir_fd=self.tmp_fd)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                self._close_dirs()
                raise DiskError(f"cannot create a file in {folder}/tmp: {exc.strerror}") from None
        else:
            self._close_dirs()
            raise DiskError(f"cannot find a unique tmp/ name in {folder}")
        self.handle = os.fdopen(fd, "wb", buffering=1 << 16)
        try:
            owner.apply(self.name, fd)
        except OSError as exc:
            self.abort()
            raise DiskError(f"cannot chown {folder}/tmp/{self.name}: {exc.strerror}") from None

    def write(self, data: bytes) -> None:
        try:
            self.handle.write(data)
        except OSError as exc:
            self.abort()
            raise DiskError(f"cannot write {self.folder}/tmp/{self.name}: {exc.strerror}") from None
        self.size += len(data)

    def commit(self) -> str:
        """Make the message durable in new/; returns its name there."""
        final = f"{self.name},S={self.size}"
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.link(self.name, final, src_dir_fd=self.tmp_fd, dst_dir_fd=self.new_fd,
                    follow_symlinks=False)  # fmt: skip
        except OSError as exc:
            self.abort()
            raise DiskError(f"cannot deliver into {self.folder}: {exc.strerror}") from None
        try:
            os.unlink(self.name, dir_fd=self.tmp_fd)
        except OSError:
            pass  # delivered; a stale tmp/ file is cleaned by readers after 36 h
        try:
            os.fsync(self.new_fd)
        except OSError as exc:
            # The link may not survive a crash: take it back, let qmail retry.
            try:
                os.unlink(final, dir_fd=self.new_fd)
            except OSError:
                pass
            self._close_dirs()
            raise DiskError(f"cannot sync {self.folder}/new: {exc.strerror}") from None
        self._close_dirs()
        return final

    def abort(self) -> None:
        try:
            self.handle.close()
        except (OSError, AttributeError):
            pass
        try:
            os.unlink(self.name, dir_fd=self.tmp_fd)
        except OSError:
            pass
        self._close_dirs()

    def _close_dirs(self) -> None:
        for fd in (self.tmp_fd, self.new_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.tmp_fd = self.new_fd = -1


def folder_path(maildir: str, folder: str) -> str:
    return os.path.join(maildir, "." + folder)


def ensure_folder(maildir: str, folder: str, owner: "Owner", subscribe_to: str = "off") -> bool:
    """Make sure Maildir++ folder `folder` exists, creating it as
    `maildirmake -f FOLDER MAILDIR` would (tmp, new, cur, an empty
    `maildirfolder`, the Maildir's permissions less group/other write).
    It is built inside tmp/ and renamed into place, so a reader or a
    concurrent delivery sees it whole or not at all. With `subscribe_to`
    (a SUBSCRIBE_MODES word other than `off`), IMAP clients are subscribed
    before the folder appears: a failure there
    leaves no folder behind, so the retry subscribes again. Returns True when
    this call created the folder."""
    target = folder_path(maildir, folder)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise DiskError(f"cannot examine {target}: {exc.strerror}") from None
    if st is not None:
        if not S_ISDIR(st.st_mode):
            raise DiskError(f"{target} exists and is not a directory")
        _complete_folder(target, owner)
        return False
    if not is_maildir(maildir):
        raise DiskError(f"{maildir} is not a Maildir (tmp, new, cur)")
    try:
        mode = S_IMODE(os.stat(maildir).st_mode) & 0o755 | 0o700
        build = os.path.join(maildir, "tmp", f".folder-{unique_name()}")
        os.mkdir(build, mode)
        try:
            owner.apply(build)
            for sub in ("tmp", "new", "cur"):
                os.mkdir(os.path.join(build, sub), mode)
                owner.apply(os.path.join(build, sub))
            fd = os.open(os.path.join(build, "maildirfolder"), os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            owner.apply(os.path.join(build, "maildirfolder"))
            if subscribe_to != "off":
                subscribe(maildir, folder, owner, subscribe_to)
            os.rename(build, target)
        except BaseException as exc:
            import errno

            _remove_tree(build)
            lost_race = isinstance(exc, OSError) and exc.errno in (errno.EEXIST, errno.ENOTEMPTY)
            if lost_race and is_maildir(target):
                return False  # a concurrent delivery made it first
            raise
        from quarantine.fileio import fsync_dir  # here: most deliveries make no folder

        fsync_dir(maildir)
    except OSError as exc:
        raise DiskError(f"cannot create folder {target}: {exc.strerror}") from None
    return True


def _complete_folder(target: str, owner: "Owner") -> None:
    """An existing folder missing a subdirectory (made by hand) is repaired."""
    for sub in ("tmp", "new", "cur"):
        path = os.path.join(target, sub)
        try:
            os.mkdir(path, 0o700)
            owner.apply(path)
        except FileExistsError:
            if not S_ISDIR(os.lstat(path).st_mode):
                raise DiskError(f"{path} is not a directory") from None
        except OSError as exc:
            raise DiskError(f"cannot create {path}: {exc.strerror}") from None


def _remove_tree(path: str) -> None:
    for sub in ("tmp", "new", "cur"):
        try:
            os.rmdir(os.path.join(path, sub))
        except OSError:
            pass
    try:
        os.unlink(os.path.join(path, "maildirfolder"))
    except OSError:
        pass
    try:
        os.rmdir(path)
    except OSError:
        pass


class MaildirLock:
    """flock on the Maildir directory itself: serialises our own rewrites of
    the subscription and quota files (no lock file is left behind)."""

    def __init__(self, maildir: str) -> None:
        self.fd = os.open(maildir, os.O_RDONLY | os.O_DIRECTORY)

    def __enter__(self) -> "MaildirLock":
        import fcntl  # here: a delivery to a Maildir with no quota file takes no lock

        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def rewrite(maildir: str, name: str, data: bytes, owner: "Owner", mode: int) -> None:
    """Replace `maildir/name` atomically (temp file in tmp/, fsync, rename)."""
    temp = os.path.join(maildir, "tmp", f".{name}-{unique_name()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        owner.apply(temp, fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(temp)
        raise
    os.close(fd)
    try:
        os.rename(temp, os.path.join(maildir, name))
    except OSError:
        os.unlink(temp)
        raise


def _read_regular(path: str) -> "bytes | None":
    """The bytes of a regular file, None if absent; never through a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        if not S_ISREG(os.fstat(fd).st_mode):
            raise DiskError(f"{path} is not a regular file")
        from quarantine.fileio import read_fd

        return read_fd(fd)
    finally:
        os.close(fd)


def subscribe(maildir: str, folder: str, owner: "Owner", mode: str = "auto") -> "list[str]":
    """Subscribe IMAP clients to `folder`: `INBOX.<folder>` in Courier's
    courierimapsubscribed, `<folder>` in Dovecot's subscriptions, each file
    created if missing. `mode` (deliver.subscribe) says which: `courier`,
    `dovecot`, `both`, `off`, or `auto` (servers_of: both on a Maildir no
    IMAP server has touched yet). Existing lines are kept, no line is added
    twice. Returns the files changed."""
    courier, dovecot = servers_for(maildir, mode)
    changed = []
    try:
        with MaildirLock(maildir):
            if courier and _subscribe_courier(maildir, folder, owner):
                changed.append(COURIER_SUBSCRIPTIONS)
            if dovecot and _subscribe_dovecot(maildir, folder, owner):
                changed.append(DOVECOT_SUBSCRIPTIONS)
    except OSError as exc:
        raise DiskError(f"cannot subscribe {maildir} to {folder}: {exc.strerror}") from None
    return changed


def servers_of(maildir: str) -> "tuple[bool, bool]":
    """(Courier, Dovecot): which IMAP servers a Maildir is read by, from the
    files each leaves in it. One whose files are there while the other's are
    not is the only one; with neither (a new Maildir) or both, it is both."""
    try:
        names = set(os.listdir(maildir))
    except OSError:
        return True, True
    courier = not names.isdisjoint(COURIER_SIGNS)
    dovecot = not names.isdisjoint(DOVECOT_SIGNS)
    if courier == dovecot:
        return True, True
    return courier, dovecot


def _subscribe_courier(maildir: str, folder: str, owner: "Owner") -> bool:
    path = os.path.join(maildir, COURIER_SUBSCRIPTIONS)
    old = _read_regular(path)
    if _courier_lists(old or b"", folder):
        return False
    wanted = f"INBOX.{folder}".encode()
    data = old or b""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    rewrite(maildir, COURIER_SUBSCRIPTIONS, data + wanted + b"\n", owner, 0o644)
    return True


def _same_courier_name(line: bytes, wanted: bytes) -> bool:
    """Courier compares the leading `INBOX` without regard to case."""
    if line == wanted:
        return True
    return line[:6].upper() == b"INBOX." and line[6:] == wanted[6:]


def _subscribe_dovecot(maildir: str, folder: str, owner: "Owner") -> bool:
    path = os.path.join(maildir, DOVECOT_SUBSCRIPTIONS)
    old = _read_regular(path)
    if old is None:
        old = b"V\t2\n\n"  # the form Dovecot 2.3 writes
    if _dovecot_lists(old, folder):
        return False
    version2 = old.startswith(b"V\t2\n")
    entry = _dovecot_entry(old, folder)
    data = old if not old or old.endswith(b"\n") else old + b"\n"
    if version2 and b"\n\n" not in data:
        data += b"\n"
    rewrite(maildir, DOVECOT_SUBSCRIPTIONS, data + entry + b"\n", owner, 0o600)
    return True


class Quota:
    """A Maildir++ `maildirsize` file: the limits on its first line, and the
    current usage as the sum of the lines after it."""

    __slots__ = ("bytes_limit", "bytes_used", "count_limit", "count_used", "file_size")

    def __init__(self, text: bytes) -> None:
        lines = text.split(b"\n")
        self.bytes_limit: int | None = None
        self.count_limit: int | None = None
        for part in lines[0].decode("latin-1").split(","):
            part = part.strip()
            if part[:-1].isdigit() and part.endswith("S"):
                self.bytes_limit = int(part[:-1])
            elif part[:-1].isdigit() and part.endswith("C"):
                self.count_limit = int(part[:-1])
        self.bytes_used = 0
        self.count_used = 0
        for line in lines[1:]:
            fields = line.split()
            if len(fields) >= 2:
                try:
                    self.bytes_used += int(fields[0])
                    self.count_used += int(fields[1])
                except ValueError:
                    continue
        self.file_size = len(text)

    def over(self, size: int) -> bool:
        """Would one more message of `size` bytes exceed the quota?"""
        if self.bytes_limit and self.bytes_used + size > self.bytes_limit:
            return True
        return bool(self.count_limit and self.count_used + 1 > self.count_limit)


def read_quota(maildir: str) -> "Quota | None":
    """The quota of a Maildir, None when it has no maildirsize file."""
    try:
        text = _read_regular(os.path.join(maildir, QUOTA_FILE))
    except OSError:
        return None
    return Quota(text) if text is not None else None


def add_quota(maildir: str, size: int, count: int, owner: "Owner") -> None:
    """Record a delivery (`size 1`) or a removal (`-size -1`) in maildirsize, if
    there is one; past 5120 bytes the file is recalculated from the Maildir."""
    path = os.path.join(maildir, QUOTA_FILE)
    try:
        os.lstat(path)
    except FileNotFoundError:
        return  # no quota: no lock to take either
    with MaildirLock(maildir):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        try:
            os.write(fd, f"{size} {count}\n".encode())
            grown = os.fstat(fd).st_size >= QUOTA_RECALC_SIZE
        finally:
            os.close(fd)
        if grown:
            recalculate_quota(maildir, owner)


def _message_sizes(folder: str) -> "Iterator[int]":
    for sub in ("new", "cur"):
        try:
            names = os.listdir(os.path.join(folder, sub))
        except OSError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            size = _size_from_name(name)
            if size is None:
                try:
                    size = os.lstat(os.path.join(folder, sub, name)).st_size
                except OSError:
                    continue
            yield size


def _size_from_name(name: str) -> "int | None":
    base = name.split(":", 1)[0]
    for part in base.split(",")[1:]:
        if part.startswith("S=") and part[2:].isdigit():
            return int(part[2:])
    return None


def recalculate_quota(maildir: str, owner: "Owner") -> None:
    """Rewrite maildirsize as its limits plus one line of current usage,
    counting new/ and cur/ of the Maildir and every folder but Trash."""
    path = os.path.join(maildir, QUOTA_FILE)
    text = _read_regular(path)
    if text is None:
        return
    spec = text.split(b"\n", 1)[0]
    total = count = 0
    folders = [maildir] + [
        os.path.join(maildir, name)
        for name in os.listdir(maildir)
        if name.startswith(".")
        and name not in (".", "..", ".Trash")
        and is_maildir(os.path.join(maildir, name))
    ]
    for folder in folders:
        for size in _message_sizes(folder):
            total += size
            count += 1
    rewrite(maildir, QUOTA_FILE, spec + f"\n{total} {count}\n".encode(), owner, 0o600)


def servers_for(maildir: str, mode: str) -> "tuple[bool, bool]":
    """(Courier, Dovecot): whose subscription file subscribe() writes in
    `maildir` under `mode` (deliver.subscribe): `auto` asks servers_of,
    `courier`, `dovecot` and `both` name them, `off` neither."""
    if mode == "auto":
        return servers_of(maildir)
    return mode in ("courier", "both"), mode in ("dovecot", "both")


def listed(maildir: str, folder: str, server: str) -> bool:
    """Whether the subscription file of `server` (courier or dovecot) in
    `maildir` lists `folder`, compared byte for byte as subscribe() compares
    before it adds the name (UTF-8, as it writes it). False when the file is
    missing, a symlink, not a regular file or unreadable."""
    name = COURIER_SUBSCRIPTIONS if server == "courier" else DOVECOT_SUBSCRIPTIONS
    try:
        data = _read_regular(os.path.join(maildir, name))
    except (OSError, DiskError):
        return False
    if data is None:
        return False
    return _courier_lists(data, folder) if server == "courier" else _dovecot_lists(data, folder)


def _courier_lists(data: bytes, folder: str) -> bool:
    """Compared as Courier reads the lines: `INBOX.Junk\\r` (a CRLF file) is another name."""
    wanted = f"INBOX.{folder}".encode()
    return any(_same_courier_name(line, wanted) for line in data.split(b"\n"))


def _dovecot_entry(data: bytes, folder: str) -> bytes:
    """The line for `folder` in a subscriptions file holding `data`: a
    version 2 file separates the levels of a name with TAB."""
    return (folder.replace(".", "\t") if data.startswith(b"V\t2\n") else folder).encode()


def _dovecot_lists(data: bytes, folder: str) -> bool:
    """Whether Dovecot's subscriptions `data` lists `folder` (after a version
    2 header, whose lines end at the blank line)."""
    entry = _dovecot_entry(data, folder)
    version2 = data.startswith(b"V\t2\n")
    body = data.split(b"\n\n", 1)[1] if version2 and b"\n\n" in data else data
    return any(line.rstrip(b"\r") == entry for line in body.split(b"\n"))
