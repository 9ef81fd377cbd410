"""One walk over the vpopmail installation for every command that works on
mailboxes: the domains (users/assign and the domains directory, hashed too),
the mailboxes of a domain, the Maildir of a mailbox and its named folders.
Only directory listings and vpasswd; nothing followed through a symlink.
"""

from __future__ import annotations

import os
import stat

from quarantine import maildir as md
from quarantine import vpopmail
from quarantine.kinds import HAM, SPAM
from quarantine.names import show
from quarantine.qmail import LookupFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Protocol

    from quarantine.config import Config

    class Notes(Protocol):
        """Where find_folders reports a symlinked folder (train's Summary)."""

        notes: list[str]

        def skip(self, reason: str, n: int = 1) -> None: ...


class CommandError(Exception):
    """A problem with the configuration, the host or the selection (exit 2)."""


class Options:
    """What one run does beyond the configuration: --domain, --user,
    --older-than (seconds), --dry-run."""

    __slots__ = ("age", "domains", "dry_run", "users")

    def __init__(
        self,
        domains: Iterable[str] = (),
        users: Iterable[str] = (),
        age: int | None = None,
        dry_run: bool = False,
    ) -> None:
        self.domains = tuple(d.lower() for d in domains)
        self.users = tuple(u.lower() for u in users)
        self.age = age
        self.dry_run = dry_run


def age_text(seconds: int) -> str:
    """An age as reports and --older-than write it: 5d, 36h, 90m, 45s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def find_domains(cfg: Config, options: Options) -> list[vpopmail.Domain]:
    """Every vpopmail domain once: from users/assign (alias domains map to their
    real domain) and from the domains directory (hashed `domains/X/name` too).
    Only directory listings: no user file is opened here."""
    found: dict[str, vpopmail.Domain] = {}
    aliases: dict[str, str] = {}
    try:
        for host, domain in vpopmail.read_assign(cfg):
            aliases[host] = domain.name
            if vpopmail.valid_domain(domain.name):
                found.setdefault(domain.name, domain)
    except LookupFailed:
        if os.path.exists(vpopmail.assign_path(cfg)):
            raise
    paths = {os.path.realpath(d.path) for d in found.values()}
    for domain in _scan_domains_dir(os.path.join(cfg.vpopmail.home, "domains")):
        if domain.name not in found and os.path.realpath(domain.path) not in paths:
            found[domain.name] = domain
    wanted = {aliases.get(d, d) for d in options.domains}
    wanted |= {aliases.get(u.rpartition("@")[2], u.rpartition("@")[2]) for u in options.users}
    if options.domains or options.users:
        unknown = sorted(w for w in wanted if w not in found)
        if unknown:
            raise CommandError(f"no such vpopmail domain: {', '.join(map(show, unknown))}")
        return [found[name] for name in sorted(wanted)]
    return [found[name] for name in sorted(found)]


def domains_to_visit(cfg: Config, options: Options) -> list[vpopmail.Domain]:
    """find_domains for a command: an unreadable users/assign is CommandError."""
    try:
        return find_domains(cfg, options)
    except LookupFailed as exc:
        raise CommandError(show(str(exc))) from None


def _is_domain_dir(path: str) -> bool:
    """Does the directory `path` hold a vpasswd, vpasswd.cdb or .qmail-default?
    Looked at through a descriptor: a directory swapped for a symlink since it
    was listed is not followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        names = ("vpasswd", "vpasswd.cdb", ".qmail-default")
        return any(_lexists_at(fd, name) for name in names)
    finally:
        os.close(fd)


def _lexists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return True


def _scan_domains_dir(top: str) -> Iterator[vpopmail.Domain]:
    """Domain directories under ~vpopmail/domains, one hash level deep."""
    for path, name, st in _subdirs(top):
        if _is_domain_dir(path) and vpopmail.valid_domain(name.lower()):
            yield vpopmail.Domain(name.lower(), path, st.st_uid, st.st_gid)
        elif len(name) == 1:
            for sub, subname, subst in _subdirs(path):
                if _is_domain_dir(sub) and vpopmail.valid_domain(subname.lower()):
                    yield vpopmail.Domain(subname.lower(), sub, subst.st_uid, subst.st_gid)


def _subdirs(path: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """Real subdirectories (not symlinks, not dot names) of `path`."""
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                yield entry.path, entry.name, st
    except OSError:
        return


def find_users(cfg: Config, domain: vpopmail.Domain) -> Iterator[tuple[str, str]]:
    """(user, home) of each mailbox in `domain`: from its vpasswd (hashed user
    directories included, as vpasswd names them), or, for a domain without a
    vpasswd file (SQL vpopmail), from the directories holding a Maildir.
    vpasswd is read through the domain directory's descriptor. LookupFailed
    (its text printable) for a domain directory that is a symlink
    a non-root uid can change, or not owned by the uid users/assign gives the
    domain (vpopmail.open_domain_dir), or a vpasswd that cannot be read."""
    try:
        fd = vpopmail.open_domain_dir(domain)
    except vpopmail.UnsafeDirectory as exc:
        raise LookupFailed(str(exc)) from None
    except OSError as exc:
        raise LookupFailed(f"{show(domain.path)}: {exc.strerror}") from None
    try:
        users = list(vpopmail.read_vpasswd(domain, fd)) if _lexists_at(fd, "vpasswd") else None
    except LookupFailed as exc:
        raise LookupFailed(show(str(exc))) from None
    finally:
        os.close(fd)
    if users is None:
        yield from _user_dirs(domain.path, 0)
        return
    for user, home, _quota in users:
        if vpopmail.valid_user(user.lower()):
            yield user.lower(), home


def _user_dirs(path: str, depth: int) -> Iterator[tuple[str, str]]:
    for sub, name, _st in _subdirs(path):
        if os.path.isdir(os.path.join(sub, "Maildir")):
            if vpopmail.valid_user(name.lower()):
                yield name.lower(), sub
        elif len(name) == 1 and depth < 3:
            yield from _user_dirs(sub, depth + 1)


class Folder:
    """A Junk (spam) or rescue (ham) folder of one mailbox."""

    __slots__ = ("address", "kind", "maildir", "name", "path")

    def __init__(self, address: str, maildir: str, name: str, kind: str) -> None:
        self.address = address
        self.maildir = maildir
        self.name = name  # `.Junk`
        self.kind = kind
        self.path = os.path.join(maildir, name)

    @property
    def label(self) -> str:
        """The folder as reports name it (escaped: one printable line)."""
        return show(f"{self.address}/{self.name}")


def find_folders(
    maildir: str,
    address: str,
    spam_names: Iterable[str],
    ham_name: str | None,
    summary: Notes | None = None,
) -> list[Folder]:
    """The Maildir++ folders named like the configured ones (any case): real
    directories with a new/ or cur/. One that is a symlink (to /, to another
    user's Maildir...) is not followed; with `summary`, it is reported there."""
    spam = {n.lower() for n in spam_names}
    ham = ham_name.lower() if ham_name else None
    out = []
    try:
        with os.scandir(maildir) as entries:
            listed = sorted(
                (e.name, e.is_symlink(), e.is_dir(follow_symlinks=False))
                for e in entries
                if e.name.startswith(".")
            )
    except OSError:
        return []
    for name, is_link, is_dir in listed:
        folded = name[1:].lower()
        if folded in spam:
            kind = SPAM
        elif folded == ham:
            kind = HAM
        else:
            continue
        path = os.path.join(maildir, name)
        if is_link:
            if summary is not None:
                summary.skip("symlinked folder")
                summary.notes.append(f"{show(address + '/' + name)}: a symlink, not followed")
            continue
        if is_dir and any(os.path.lexists(os.path.join(path, sub)) for sub in ("new", "cur")):
            out.append(Folder(address, maildir, name, kind))
    return out


def maildir_of(cfg: Config, domain: vpopmail.Domain, home: str) -> str | None:
    """The Maildir under `home`, or None when there is none to use (missing,
    a symlink, or outside the vpopmail tree)."""
    try:
        vpopmail.check_inside(cfg, domain, home)
        if not stat.S_ISDIR(os.lstat(home).st_mode):
            return None
    except (LookupFailed, OSError):
        return None
    maildir = os.path.join(home, "Maildir")
    try:
        if not stat.S_ISDIR(os.lstat(maildir).st_mode):
            return None  # a symlink (to another user's Maildir...) is not followed
    except OSError:
        return None
    return maildir if md.is_maildir(maildir) else None
