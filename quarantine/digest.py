"""`quarantine digest`: mails each user with new mail in Junk since their
last digest one summary of it (quarantine/digestmail.py writes the message),
each line with a release address, and records per Maildir what was covered.

Who gets one is `digest.enabled` (all, opted-in: the junk filter is on for
the mailbox, off), per user, domain or as the default. Over the vpopmail tree
it uses discovery's walk and, as root, privsep's workers that drop to each
domain's uid/gid before any user file is opened; folders and files are opened
relative to their directory with O_NOFOLLOW. The release key is read (or made)
by the parent, before the fork.
"""

from __future__ import annotations

import os
import stat
import time
from contextlib import ExitStack

from quarantine import digestmail, discovery, privsep
from quarantine.digestmail import Entry
from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Set

    from quarantine import vpopmail
    from quarantine.config import Config

STATE_FILE = "quarantine-digest"  # in the Maildir: `since <unix time>`, then `seen NAME` lines
MARGIN = 300  # seconds before the last scan looked at again (a delivery named before it,
# linked into new/ after it); what that scan listed is in the state and not listed twice
HEADER_LIMIT = 64 * 1024  # bytes of a Junk message read for its summary line
MAX_FILES = 100_000  # Junk files looked at per mailbox
OK, FAILED, USAGE = 0, 1, 2
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def policy(cfg: Config, domain: str, user: str) -> str:
    """all, opted-in or off for one mailbox: its own entry in digest.enabled,
    else its domain's (`@domain`), else the default."""
    table = cfg.digest.enabled
    return table.get(f"{user}@{domain}") or table.get(f"@{domain}") or table["default"]


def filter_users(
    cfg: Config,
    domain: vpopmail.Domain,
    users: Iterable[tuple[str, str]],
    wanted: Set[str] = frozenset(),
) -> Iterator[tuple[str, str]]:
    """The (user, home) of `users` who get a digest (only the addresses in
    `wanted`, when given), as they come: a user under `opted-in` is looked
    up when their turn comes (their `.qmail-USER`, else `.qmail-default`, read
    once), through the domain directory's descriptor, so a run for one user
    reads one or two files, not every `.qmail` file of the domain."""
    from quarantine.filterchain import has_filter
    from quarantine.qmailfile import DomainDir, OptinError, qmail_name

    directory: DomainDir | None = None
    default_on: bool | None = None
    with ExitStack() as stack:
        for user, home in users:
            if wanted and f"{user}@{domain.name}" not in wanted:
                continue
            mode = policy(cfg, domain.name, user)
            if mode == "off":
                continue
            if mode == "opted-in":
                if directory is None:
                    directory = stack.enter_context(DomainDir(domain))
                name = qmail_name(user)
                try:
                    text = None if directory.is_link(name) else directory.read(name)[0]
                except OptinError:  # not a file qmail-local reads: the default applies
                    text = None
                if text is None:
                    if default_on is None:
                        default_on = has_filter(directory.read(".qmail-default")[0])
                    on = default_on
                else:
                    on = has_filter(text)
                if not on:
                    continue
            yield user, home


def arrival(name: str, fallback: float) -> float:
    """When a message reached its folder, from the Maildir name
    (`1700000000.M123456P...`: seconds and microseconds), else `fallback`."""
    head, _, rest = name.partition(".")
    if not (head.isascii() and head.isdigit()) or len(head) > 12:
        return fallback
    seconds = float(head)
    if rest.startswith("M"):
        digits = ""
        for ch in rest[1:7]:
            if ch not in "0123456789":
                break
            digits += ch
        if digits:
            seconds += int(digits) / 1_000_000
    return seconds


def read_state(top: int) -> tuple[float, set[str]]:
    """(when the last digest's scan started, the names it listed from the
    MARGIN before that); (0, empty) when there was none."""
    try:
        fd = os.open(STATE_FILE, _FILE, dir_fd=top)
    except OSError:
        return 0.0, set()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0.0, set()
        data = os.read(fd, 1 << 20).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)
    since, seen = 0.0, set()
    for line in data.split("\n"):
        word, _, value = line.partition(" ")
        if word == "since":
            try:
                since = float(value)
            except ValueError:
                return 0.0, set()
        elif word == "seen" and value:
            seen.add(value)
    return since, seen


def write_state(maildir: str, since: float, entries: list[Entry]) -> None:
    """Record the scan's start and the names listed from MARGIN before it,
    atomically (a tmp/ file, fsync, rename)."""
    from quarantine import maildir as md

    lines = [f"since {since:.6f}"]
    # Names without the `:2,...` flags an IMAP server adds when the user reads one.
    lines += [f"seen {e.name.split(':', 1)[0]}" for e in entries
              if e.arrived >= since - MARGIN and e.name.isprintable()]  # fmt: skip
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    md.rewrite(maildir, STATE_FILE, data, md.Owner.of(maildir), 0o600)


def junk_entries(
    top: int,
    folder: str,
    since: float,
    seen: Set[str] = frozenset(),
    heads: int | None = None,
) -> tuple[list[Entry], int]:
    """The messages in Maildir++ `folder` (new/ and cur/) that arrived at or
    after `since` and are not in `seen`, newest first, and how many entries
    were left out as unsafe (not regular files). Names are taken newest
    first by the time in them (at most MAX_FILES looked at, each with an
    lstat, never following a symlink); only the first `heads` (all when
    None) are opened for their summary line, the others are counted and
    recorded with an empty one."""
    try:
        junk = os.open("." + folder, _DIR, dir_fd=top)
    except OSError:
        return [], 0
    subs: dict[str, int] = {}
    try:
        for sub in ("new", "cur"):
            try:
                subs[sub] = os.open(sub, _DIR, dir_fd=junk)
            except OSError:
                continue
        found, skipped = _listed(subs, since, seen)
        entries: list[Entry] = []
        for when, name, sub in found:
            if heads is not None and len(entries) >= heads:
                entries.append(Entry.counted(name, when))
                continue
            try:
                head = _head(subs[sub], name)
            except FileNotFoundError:  # gone since the listing (released, expunged)
                continue
            except OSError:  # swapped for a symlink or something else since
                skipped += 1
                continue
            entries.append(digestmail.entry_of(name, when, head))
    finally:
        for fd in subs.values():
            os.close(fd)
        os.close(junk)
    return entries, skipped


def _listed(
    subs: dict[str, int], since: float, seen: Set[str]
) -> tuple[list[tuple[float, str, str]], int]:
    """(arrival, name, sub) of the regular files arrived at or after `since`,
    newest first, and how many were not regular files."""
    names = [
        (_second(name), name, sub)
        for sub, fd in subs.items()
        for name in os.listdir(fd)
        if not name.startswith(".") and name.split(":", 1)[0] not in seen
    ]
    names.sort(reverse=True)  # a name without a time first
    found: list[tuple[float, str, str]] = []
    skipped = 0
    for second, name, sub in names[:MAX_FILES]:
        if second + 1 <= since:
            break  # this one and the rest arrived before `since`
        try:
            st = os.stat(name, dir_fd=subs[sub], follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped += 1
            continue
        when = arrival(name, st.st_mtime)
        if when >= since:
            found.append((when, name, sub))
    found.sort(key=lambda item: (-item[0], item[1]))
    return found, skipped


def _second(name: str) -> float:
    """The whole second a Maildir name starts with (arrival() is within the
    second after it), infinity for a name without one."""
    head = name.partition(".")[0]
    return float(head) if head.isascii() and head.isdigit() and len(head) <= 12 else float("inf")


def _head(directory: int, name: str) -> bytes:
    """The first HEADER_LIMIT bytes of a regular file (O_NOFOLLOW, the kind
    checked again on the open descriptor); OSError when it is no longer one."""
    fd = os.open(name, _FILE, dir_fd=directory)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{name}: not a regular file")
        return os.read(fd, HEADER_LIMIT)
    finally:
        os.close(fd)


class Result:
    """What one run did, mergeable across the per-uid workers (JSON-able)."""

    def __init__(self) -> None:
        self.sent: list[str] = []  # `address: N messages`
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.users = 0

    def as_dict(self) -> dict[str, object]:
        return {"sent": self.sent, "skipped": self.skipped, "errors": self.errors,
                "users": self.users}  # fmt: skip

    def merge(self, other: dict[str, object]) -> None:
        for name in ("sent", "skipped", "errors"):
            value = other.get(name, [])
            if isinstance(value, list):
                getattr(self, name).extend(str(v) for v in value)
        users = other.get("users", 0)
        self.users += users if isinstance(users, int) else 0

    @property
    def exit_code(self) -> int:
        return FAILED if self.errors else OK


def run(
    cfg: Config,
    options: discovery.Options,
    now: float | None = None,
    inject: Callable[[str, str, str, bytes], None] | None = None,
) -> Result:
    """Send the digests (or, with options.dry_run, only say who would get
    one). Raises discovery.CommandError for an unknown domain or a missing
    key that cannot be made."""
    from quarantine import releasetoken
    from quarantine.release import inject as qmail_inject

    send = inject or qmail_inject
    started = time.time() if now is None else now
    domains = discovery.domains_to_visit(cfg, options)
    # `quarantine release` runs as the domains' uid and must read the key: a
    # new key goes to that uid when every domain has the same one (vpopmail's
    # 89:89, normally); with several, give the file a group they share, 0640.
    owners = {(d.uid, d.gid) for d in domains}
    try:
        key = releasetoken.ensure_key(
            cfg.digest.secret_file, owners.pop() if len(owners) == 1 else None
        )
    except (releasetoken.KeyProblem, OSError) as exc:
        raise discovery.CommandError(f"digest.secret_file: {show(str(exc))}") from None
    wanted = set(options.users)

    def work(
        group: list[vpopmail.Domain], halt: Callable[[], bool], uid: int | None, more: bool
    ) -> dict[str, object]:
        result = Result()
        for domain in group:
            try:  # LookupFailed, OptinError...: reported per domain
                users = discovery.find_users(cfg, domain)
                for user, home in filter_users(cfg, domain, users, wanted):
                    maildir = discovery.maildir_of(cfg, domain, home)
                    if maildir is None:
                        continue
                    result.users += 1
                    try:
                        _one(cfg, domain, user, maildir, key, started, options, send, result)
                    except Exception as exc:  # one mailbox must not stop the others
                        address = show(f"{user}@{domain.name}")
                        result.errors.append(f"{address}: {type(exc).__name__}: {show(str(exc))}")
            except Exception as exc:
                result.errors.append(f"{show(domain.name)}: {show(str(exc))}")
        return result.as_dict()

    total = Result()
    for part in privsep.in_owner_groups(domains, work, lambda: False):
        total.merge(part)  # a refused or dead worker reports under "errors" too
    return total


def _one(
    cfg: Config,
    domain: vpopmail.Domain,
    user: str,
    maildir: str,
    key: bytes,
    started: float,
    options: discovery.Options,
    send: Callable[[str, str, str, bytes], None],
    result: Result,
) -> None:
    """One mailbox: its new Junk messages into one digest, then the state."""
    from quarantine import releasetoken, vpopmail

    address = f"{user}@{domain.name}"
    top = vpopmail.open_dir_safely(maildir)
    try:
        since, seen = read_state(top)
        entries, unsafe = junk_entries(
            top, cfg.deliver.junk_folder, since - MARGIN, seen, cfg.digest.max_lines
        )
    finally:
        os.close(top)
    if unsafe:
        result.skipped.append(f"{show(address)}: {unsafe} Junk entries not regular files, left out")
    if not entries:
        return
    expires = started + cfg.digest.token_lifetime
    release = cfg.digest.release_local
    addresses = [
        f"{release}-{releasetoken.make(key, domain.name, user, e.name, expires)}@{domain.name}"
        for e in entries[: cfg.digest.max_lines]
    ]
    sender = cfg.digest.sender or f"postmaster@{domain.name}"
    message = digestmail.build(address, sender, entries, addresses, len(entries), expires, started)
    if options.dry_run:
        result.sent.append(f"{show(address)}: {_count(entries)} (dry run: not sent)")
        return
    send(cfg.digest.qmail_inject, sender, address, message)
    write_state(maildir, started, entries)
    result.sent.append(f"{show(address)}: {_count(entries)}")


def _count(entries: list[Entry]) -> str:
    return f"{len(entries)} message" + ("" if len(entries) == 1 else "s")
