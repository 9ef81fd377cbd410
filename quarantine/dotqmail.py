"""Opt-in management: put the junk filter line first in a vpopmail domain's
`.qmail-USER` or `.qmail-default`, take exactly that out again, list who has
it. Atomic, idempotent edits; names validated before they touch a path; no shell.

Security: run as root, it works only through a descriptor of the domain
directory (vpopmail.open_domain_dir), never through a path a mailbox owner
could swap for a symlink, and every name it prints goes through names.show.
The files themselves are read and written by qmailfile; the filter line is
filterchain's.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from quarantine import vpopmail
from quarantine.filterchain import (
    DIGEST_TAG,
    MARKER_ADDED,
    MARKER_CREATED,
    check_chain,
    command_path,
    default_delivery,
    digest,
    filter_line,
    has_filter,
    marker_pairs,
    recorded_digest,
)
from quarantine.names import show
from quarantine.qmail import LookupFailed
from quarantine.qmailfile import (
    DomainDir,
    OptinError,
    address_of,
    check_domain_dir,
    check_editable,
    qmail_name,
    quoted,
    split_lines,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from quarantine.config import Config
    from quarantine.vpopmail import Domain

__all__ = [
    "DIGEST_TAG",
    "MARKER_ADDED",
    "MARKER_CREATED",
    "MAX_TARGET",
    "BadTarget",
    "Change",
    "DomainDir",
    "OptIn",
    "OptIns",
    "OptinError",
    "Target",
    "address_of",
    "check_chain",
    "check_domain_dir",
    "check_editable",
    "command_path",
    "default_delivery",
    "digest",
    "filter_line",
    "has_filter",
    "marker_pairs",
    "optin",
    "optins",
    "optout",
    "qmail_name",
    "quoted",
    "recorded_digest",
    "resolve",
    "split_lines",
]

MAX_TARGET = 320


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
        state = "already opted in" if has_filter(self.after) else "not opted in"
        return f"{show(self.address)}: {state}, no change to {path}"

    def diff(self) -> str:
        """A unified diff from the file as it was to the file as it is (would
        be); each line escaped, so the file's bytes cannot reach the terminal."""
        import difflib

        lines = difflib.unified_diff(
            split_lines(self.before or ""),
            split_lines(self.after or ""),
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
        lines = split_lines(before or "")
        pairs = marker_pairs(lines)
        after: str | None
        if pairs:
            after_lines = list(lines)
            for index in pairs:
                after_lines[index + 1] = line + "\n"
            after = "".join(after_lines)
            action = "updated" if after != before else "unchanged"
        elif has_filter(before):
            notes += (
                f"{show(where.path)} already has a filter line that optin did not write; "
                "left as is",
            )
            after, action = before, "unchanged"
        elif before is None:
            rest = "".join(default_delivery(cfg, directory))
            marker = MARKER_CREATED.format(digest=digest(rest))
            after, action = f"{marker}\n{line}\n{rest}", "created"
        else:
            check_editable(where.path, lines)
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
        lines = split_lines(before or "")
        pairs = marker_pairs(lines)
        if not pairs:
            if has_filter(before):
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
        if created and all(recorded_digest(m) == digest(rest) for m in created):
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
        address = address_of(name, directory.domain)
        if address is None or directory.is_link(name):
            continue  # optin never writes a link; reading it could leave the tree
        try:
            text, _ = directory.read(name)
        except OptinError as exc:
            problems.append(str(exc))
            continue
        if has_filter(text):
            found.append(OptIn(address, directory.path(name)))
    found.sort(key=lambda e: (not e.address.startswith("@"), e.address))
    return found


# -- opening and resolving ---------------------------------------------------


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


def resolve(cfg: Config, target: str) -> Target:
    """`user@domain` or `@domain` into the `.qmail` file it concerns; an alias
    domain resolves to its real domain. Whether the user exists is asked once
    the domain directory is open (`_opened`)."""
    if len(target) > MAX_TARGET or any(ord(ch) < 33 or ord(ch) > 126 for ch in target):
        raise BadTarget(f"{quoted(target)} is not an address (user@domain or @domain)")
    user, at, host = target.rpartition("@")
    if not at:
        raise BadTarget(f"{quoted(target)} is not an address: expected user@domain or @domain")
    host = host.lower()
    if not vpopmail.valid_domain(host):
        raise BadTarget(f"{quoted(host)} is not a valid domain name")
    if user and not vpopmail.valid_user(user):
        raise BadTarget(f"{quoted(user)} is not a valid vpopmail user name")
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
            address = address_of(name, where.domain)
            if address is None or address.startswith("@"):
                continue
            try:
                text, _ = directory.read(name)
            except OptinError:
                continue
            if text is not None and not has_filter(text):
                notes.append(
                    f"{show(address)} has its own {show(name)}, which .qmail-default does not "
                    "reach: opt it in separately"
                )
    return tuple(notes)
