"""Removes the debris a killed delivery leaves in a Maildir's `tmp/` (and in
`tmp/` of each of its Maildir++ folders) once nothing has touched it for
`cleanup.tmp_age` (36 hours, the Maildir spec's rule for readers), for one
Maildir or for every vpopmail mailbox (`quarantine cleanup`).

What goes, when its newest of atime, mtime and ctime is older than the age:
regular files; symlinks, FIFOs and sockets as directory entries (never
followed, never opened); and the half-built folders `maildir.ensure_folder`
leaves as `tmp/.folder-<unique>/` (only with nothing in them but empty
tmp/new/cur and `maildirfolder`). Everything else stays: new/ and cur/ are
never read, other directories and device nodes are counted and kept.

Security: every directory is opened relative to its parent with O_NOFOLLOW
(a `tmp/` or `.Folder` that is a symlink is not followed) and every removal is
an unlink/rmdir of a name relative to that descriptor. Listings use O_NOATIME
where allowed, so a dry run does not make debris look young. Over the
vpopmail tree it uses the trainer's discovery (which refuses a domain
directory reached through a symlink a non-root uid can change, or not owned
by the domain's users/assign uid) and, as root, its forked children that
drop to each domain's uid/gid for good (privsep.in_owner_groups).
"""

from __future__ import annotations

import errno
import os
import stat
import time

from quarantine import discovery, privsep
from quarantine.names import show
from quarantine.qmail import LookupFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from quarantine import vpopmail
    from quarantine.config import Config

DEFAULT_AGE = 36 * 3600  # cr.yp.to/proto/maildir.html: "not accessed for 36 hours"
BUILD_PREFIX = ".folder-"  # maildir.ensure_folder builds tmp/.folder-<unique>/
BUILD_PARTS = {"tmp": stat.S_ISDIR, "new": stat.S_ISDIR, "cur": stat.S_ISDIR,
               "maildirfolder": stat.S_ISREG}  # fmt: skip
MAX_ERRORS = 200  # error lines kept per run (every failure is still counted)
OK, FAILED, USAGE = 0, 1, 2
KEPT_REASONS = {
    "young": "younger than {age}",
    "directory": "directories not made by a delivery",
    "device": "device nodes",
    "not a folder build": "tmp/.folder-* directories with other content",
    "symlinked tmp": "tmp/ symlinks (not followed)",
    "symlinked folder": "folder symlinks (not followed)",
    "symlinked maildir": "Maildir symlinks (not followed)",
}


class Sweep:
    """What one or more Maildirs' cleaning did (or, in a dry run, would do):
    counts, kept entries by reason, errors; mergeable and JSON-able, so a
    forked child can send it back."""

    COUNTS = (
        "domains",
        "users",
        "maildirs",
        "tmp_dirs",
        "files",
        "links",
        "special",
        "folder_builds",
        "bytes",
        "vanished",
        "failed",
    )

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.kept: dict[str, int] = {}
        self.errors: list[str] = []
        self.listing: list[dict[str, str]] = []

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def keep(self, reason: str) -> None:
        self.kept[reason] = self.kept.get(reason, 0) + 1

    def fail(self, text: str) -> None:
        self.counts["failed"] += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)

    @property
    def removed(self) -> int:
        c = self.counts
        return c["files"] + c["links"] + c["special"] + c["folder_builds"]

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "kept": dict(self.kept),
            "errors": list(self.errors),
            "listing": list(self.listing),
        }

    def merge(self, other: dict[str, object]) -> None:
        counts = other.get("counts", {})
        kept = other.get("kept", {})
        assert isinstance(counts, dict) and isinstance(kept, dict)
        for name in self.COUNTS:
            self.counts[name] += int(counts.get(name, 0))
        for reason, n in kept.items():
            self.kept[str(reason)] = self.kept.get(str(reason), 0) + int(n)
        errors = other.get("errors", [])
        listing = other.get("listing", [])
        assert isinstance(errors, list) and isinstance(listing, list)
        if "counts" not in other:  # in_owner_groups' own report: a refused or dead worker
            self.counts["failed"] += len(errors)
        self.errors.extend(errors[: max(0, MAX_ERRORS - len(self.errors))])
        self.listing.extend(listing)


def newest(st: os.stat_result) -> float:
    """The last time anything happened to an entry. ctime counts because it
    cannot be set back: a tool copying an old message into tmp/ with its
    mtime preserved (cp -p, an IMAP server) still looks young."""
    return max(st.st_atime, st.st_mtime, st.st_ctime)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int | None = None) -> int:
    """A directory descriptor that refuses a symlink in the last component,
    with O_NOATIME when we may (the owner, or root): listing it then leaves
    its access time alone."""
    try:
        return os.open(name, _DIR_FLAGS | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _names(dir_fd: int) -> list[str]:
    with os.scandir(dir_fd) as entries:
        return [entry.name for entry in entries]


class Cleaner:
    """Cleans Maildirs: entries of tmp/ whose newest time is before `cutoff`."""

    def __init__(self, cutoff: float, dry_run: bool, sweep: Sweep | None = None) -> None:
        self.cutoff = cutoff
        self.dry_run = dry_run
        self.sweep = sweep or Sweep()

    def _enter(self, name: str, dir_fd: int | None, label: str, symlinked: str) -> int | None:
        """`name` (relative to `dir_fd`) opened as a directory; None when it is
        gone, not a directory, or a symlink (kept as `symlinked`, never
        followed, also when swapped in between the lstat and the open). Any
        other error is a failure named with `label`."""
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                self.sweep.keep(symlinked)
                return None
            if not stat.S_ISDIR(mode):
                return None
            return _open_dir(name, dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a symlink meanwhile
                self.sweep.keep(symlinked)
            else:
                self.sweep.fail(f"{show(label)}: cannot open: {exc.strerror}")
            return None

    def maildir(self, path: str) -> None:
        """tmp/ of the Maildir `path`, then tmp/ of each of its `.Folder`s."""
        fd = self._enter(path, None, path, "symlinked maildir")
        if fd is None:
            return
        try:
            self.sweep.add("maildirs")
            self._tmp(fd, path)
            try:
                names = sorted(n for n in _names(fd) if n.startswith("."))
            except OSError as exc:
                self.sweep.fail(f"{show(path)}: cannot list: {exc.strerror}")
                return
            for name in names:
                self._folder(fd, path, name)
        finally:
            os.close(fd)

    def _folder(self, maildir_fd: int, maildir: str, name: str) -> None:
        label = os.path.join(maildir, name)
        fd = self._enter(name, maildir_fd, label, "symlinked folder")  # None: a dot file
        if fd is None:
            return
        try:
            if all(_is_dir(fd, sub) for sub in ("new", "cur")):
                self._tmp(fd, label)
        finally:
            os.close(fd)

    def _tmp(self, parent_fd: int, parent: str) -> None:
        label = os.path.join(parent, "tmp")
        fd = self._enter("tmp", parent_fd, label, "symlinked tmp")
        if fd is None:
            return
        try:
            self.sweep.add("tmp_dirs")
            try:
                entries = os.scandir(fd)
            except OSError as exc:
                self.sweep.fail(f"{show(label)}: cannot list: {exc.strerror}")
                return
            with entries:
                try:
                    for entry in entries:
                        self._entry(fd, label, entry.name)
                except OSError as exc:  # reading the directory failed part way (EIO)
                    self.sweep.fail(f"{show(label)}: cannot list: {exc.strerror}")
        finally:
            os.close(fd)

    def _entry(self, tmp_fd: int, tmp: str, name: str) -> None:
        path = os.path.join(tmp, name)
        try:
            st = os.stat(name, dir_fd=tmp_fd, follow_symlinks=False)
        except FileNotFoundError:
            self.sweep.add("vanished")  # delivered (linked to new/, unlinked) meanwhile
            return
        except OSError as exc:
            self.sweep.fail(f"{show(path)}: {exc.strerror}")
            return
        if newest(st) >= self.cutoff:
            self.sweep.keep("young")  # perhaps a delivery writing it right now
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._build(tmp_fd, tmp, name, st)
            return
        if stat.S_ISREG(mode):
            kind, what = "files", "file"
        elif stat.S_ISLNK(mode):
            kind, what = "links", "symlink"
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            kind, what = "special", "FIFO" if stat.S_ISFIFO(mode) else "socket"
        else:
            self.sweep.keep("device")
            return
        if self._remove(path, what, lambda: os.unlink(name, dir_fd=tmp_fd)):
            self.sweep.add(kind)
            if kind == "files":
                self.sweep.add("bytes", st.st_size)

    def _remove(self, path: str, what: str, remove: Callable[[], None]) -> bool:
        """Remove (or, in a dry run, list) one entry; False when it did not go."""
        if self.dry_run:
            self.sweep.listing.append({"action": f"remove {what}", "path": show(path)})
            return True
        try:
            remove()
        except FileNotFoundError:
            self.sweep.add("vanished")
            return False
        except OSError as exc:
            self.sweep.fail(f"{show(path)}: cannot remove: {exc.strerror}")
            return False
        return True

    def _build(self, tmp_fd: int, tmp: str, name: str, st: os.stat_result) -> None:
        """A `.folder-*` directory ensure_folder was building when it was
        killed: tmp/new/cur (empty) and maildirfolder, or fewer. Anything
        else in tmp/ that is a directory is not ours and stays."""
        path = os.path.join(tmp, name)
        if not name.startswith(BUILD_PREFIX):
            self.sweep.keep("directory")
            return
        try:
            fd = _open_dir(name, tmp_fd)
        except FileNotFoundError:
            self.sweep.add("vanished")
            return
        except OSError as exc:
            self.sweep.fail(f"{show(path)}: cannot open: {exc.strerror}")
            return
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                self.sweep.keep("not a folder build")  # replaced since the lstat
                return
            verdict = self._build_parts(fd, path)
            if verdict != "ok":
                if verdict:
                    self.sweep.keep(verdict)
                return

            def remove() -> None:
                for part in BUILD_PARTS:
                    try:
                        if part == "maildirfolder":
                            os.unlink(part, dir_fd=fd)
                        else:
                            os.rmdir(part, dir_fd=fd)
                    except FileNotFoundError:
                        pass
                os.rmdir(name, dir_fd=tmp_fd)

            if self._remove(path + "/", "half-built folder", remove):
                self.sweep.add("folder_builds")
        finally:
            os.close(fd)

    def _build_parts(self, fd: int, path: str) -> str:
        """ "ok" when the build holds only old, empty parts; else why it stays
        (a reason for `kept`, or "" when an error was already counted)."""
        try:
            names = _names(fd)
        except OSError as exc:
            self.sweep.fail(f"{show(path)}: cannot list: {exc.strerror}")
            return ""
        for part in names:
            check = BUILD_PARTS.get(part)
            if check is None:
                return "not a folder build"
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if not check(st.st_mode):
                    return "not a folder build"
                if newest(st) >= self.cutoff:
                    return "young"
                if stat.S_ISDIR(st.st_mode):
                    sub = _open_dir(part, fd)
                    try:
                        if _names(sub):
                            return "not a folder build"  # a build never holds mail
                    finally:
                        os.close(sub)
                elif st.st_size:
                    return "not a folder build"
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.sweep.fail(f"{show(path)}/{show(part)}: {exc.strerror}")
                return ""
        return "ok"


def _is_dir(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def clean_maildir(
    path: str, age: int = DEFAULT_AGE, *, now: float | None = None, dry_run: bool = False
) -> Sweep:
    """Clean tmp/ of the Maildir `path` and of its folders; see the module."""
    cleaner = Cleaner((time.time() if now is None else now) - age, dry_run)
    cleaner.maildir(path)
    return cleaner.sweep


# --- every vpopmail mailbox (`quarantine cleanup`) ----------------------------


class Report:
    """The outcome of `run`: the merged Sweep, when, how long, how."""

    def __init__(
        self, sweep: Sweep, started: float, seconds: float, age: int, dry_run: bool
    ) -> None:
        self.sweep = sweep
        self.started = started
        self.seconds = seconds
        self.age = age
        self.dry_run = dry_run

    @property
    def exit_code(self) -> int:
        return FAILED if self.sweep.counts["failed"] or self.sweep.errors else OK

    def as_dict(self) -> dict[str, object]:
        s = self.sweep
        data: dict[str, object] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
            "age_seconds": self.age,
            "exit_code": self.exit_code,
            **s.counts,
            "removed": s.removed,
            "kept": dict(sorted(s.kept.items())),
            "errors": s.errors,
        }
        if self.dry_run:
            data["listing"] = s.listing
        return data

    def paragraph(self) -> str:
        """The one-paragraph summary an admin reads in cron's mail."""
        c = self.sweep.counts
        verb = "would remove" if self.dry_run else "removed"
        text = (
            f"quarantine cleanup{' (dry run)' if self.dry_run else ''}: "
            f"{c['tmp_dirs']} tmp/ director{'y' if c['tmp_dirs'] == 1 else 'ies'} in "
            f"{c['maildirs']} Maildir{_s(c['maildirs'])} of {c['users']} user{_s(c['users'])} "
            f"in {c['domains']} domain{_s(c['domains'])}; {verb} {c['files']} "
            f"file{_s(c['files'])} ({c['bytes']} bytes), {c['links']} symlink{_s(c['links'])}, "
            f"{c['special']} FIFO{_s(c['special'])} or socket{_s(c['special'])}, "
            f"{c['folder_builds']} half-built folder{_s(c['folder_builds'])}"
        )
        kept = self.sweep.kept
        if kept:
            age = discovery.age_text(self.age)
            parts = [
                f"{n} {KEPT_REASONS.get(r, r).format(age=age)}"
                for r, n in sorted(kept.items(), key=lambda kv: -kv[1])
            ]
            text += f"; kept {sum(kept.values())} ({', '.join(parts)})"
        if c["failed"]:
            text += f"; FAILED: {c['failed']} (listed above)"
        else:
            text += "; none failed"
        return text + f". {self.seconds:.1f} s."


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def run(cfg: Config, options: discovery.Options) -> Report:
    """Clean every mailbox of the vpopmail tree (or those `options` names) as
    the trainer walks it. Raises discovery.CommandError (exit 2) for an unknown
    domain or an unreadable users/assign; everything else is in the Report."""
    started = time.time()
    clock = time.monotonic()
    age = options.age if options.age is not None else cfg.cleanup.tmp_age
    domains = discovery.domains_to_visit(cfg, options)
    wanted = set(options.users)

    def work(
        group: list[vpopmail.Domain], halt: Callable[[], bool], uid: int | None, more: bool
    ) -> dict[str, object]:
        cleaner = Cleaner(time.time() - age, options.dry_run)
        for domain in group:
            try:
                users = list(discovery.find_users(cfg, domain))
            except LookupFailed as exc:
                cleaner.sweep.fail(f"{domain.name}: {exc}")
                continue
            cleaner.sweep.add("domains")
            for user, home in users:
                if wanted and f"{user}@{domain.name}" not in wanted:
                    continue
                maildir = discovery.maildir_of(cfg, domain, home)
                if maildir is None:
                    continue
                cleaner.sweep.add("users")
                cleaner.maildir(maildir)
        return cleaner.sweep.as_dict()

    sweep = Sweep()
    for result in privsep.in_owner_groups(domains, work, lambda: False):
        sweep.merge(result)
    return Report(sweep, started, time.monotonic() - clock, age, options.dry_run)
