"""The doctor's walk over the mailboxes, run as each domain's uid/gid (root
forks one worker per owner, privsep.in_owner_groups): `filter.runnable` (every
`.qmail` line naming quarantine runs by an absolute path the uid can execute,
script and interpreter), `tmp.debris` and `imap.subscribed`, and `domain.dir`
for a domain directory the walk refuses.
"""

from __future__ import annotations

import os
import shutil
import stat

from quarantine import discovery, filterchain, privsep, qmailfile, tmpclean, vpopmail
from quarantine import maildir as md
from quarantine.health import access
from quarantine.health.findings import Finding, fail, ok, warn
from quarantine.qmail import LookupFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from quarantine.config import Config

MAX_DOT_QMAIL = 1024 * 1024  # a larger `.qmail` file is not read
SHOWN = 3  # mailboxes named in a domain's summary line
IMAP_SERVERS = ("courier", "dovecot")


def check(cfg: Config, domains: list[vpopmail.Domain]) -> Iterator[Finding]:
    """The findings for `domains`, each group of domains checked as its
    owner: root's workers drop to the uid/gid users/assign gives them."""

    def work(
        group: list[vpopmail.Domain], _stop: Callable[[], bool], _uid: int | None, _more: bool
    ) -> dict[str, object]:
        walker = Walker(cfg)
        found: list[list[str | None]] = []
        for domain in group:
            found.extend(f.as_list() for f in walker.domain(domain))
        return {"findings": found}

    for result in privsep.in_owner_groups(domains, work, lambda: False):
        items = result.get("findings")
        for item in items if isinstance(items, list) else []:
            yield Finding.from_list(item)
        errors = result.get("errors")
        for error in errors if isinstance(errors, list) else []:
            yield fail(
                "domain.dir",
                str(error).partition(":")[0],
                str(error),
                "give the domain directory the uid/gid users/assign names (not root)",
            )


class Walker:
    """One worker's checks; what it learns about a program path (as this
    uid) is remembered, so ten thousand `.qmail` files cost one probe each."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.known: dict[tuple[str, str, int, int], str | None] = {}

    def domain(self, domain: vpopmail.Domain) -> list[Finding]:
        try:
            users = list(discovery.find_users(self.cfg, domain))
        except LookupFailed as exc:
            return [fail("domain.dir", domain.name, str(exc), _dir_fix(domain))]
        inside: list[str] = []  # the homes inside the vpopmail tree
        homes: list[tuple[str, str | None]] = []  # (address, its Maildir)
        for user, home in users:
            try:
                vpopmail.check_inside(self.cfg, domain, home)
            except LookupFailed:
                continue
            inside.append(home)
            homes.append((f"{user}@{domain.name}", discovery.maildir_of(self.cfg, domain, home)))
        out = self._filters(domain, self._dot_qmails(domain, inside))
        out += self._debris(domain, homes)
        out += self._subscribed(domain, homes)
        return out

    # -- filter.runnable ---------------------------------------------------------

    def _dot_qmails(self, domain: vpopmail.Domain, homes: list[str]) -> Iterator[tuple[str, str]]:
        """(path, text) of each `.qmail*` file of the domain directory, then
        of each home's `.qmail`, read one at a time as the check asks for it."""
        yield from self._domain_dot_qmails(domain)
        for home in homes:
            path = os.path.join(home, ".qmail")
            text = _read_plain(path)
            if text is not None:
                yield path, text

    def _domain_dot_qmails(self, domain: vpopmail.Domain) -> Iterator[tuple[str, str]]:
        """(path, text) of each `.qmail*` file in the domain directory, read
        through its descriptor, never through a symlink."""
        try:
            fd = os.open(domain.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            for name in sorted(os.listdir(fd)):
                if name.startswith(".qmail") and qmailfile.TEMP_TAG not in name:
                    text = _read_plain(name, fd)
                    if text is not None:
                        yield os.path.join(domain.path, name), text
        finally:
            os.close(fd)

    def _filters(self, domain: vpopmail.Domain, files: Iterable[tuple[str, str]]) -> list[Finding]:
        problems: dict[tuple[str, str], list[str]] = {}  # (problem, fix) -> files
        lines = 0
        programs: set[str] = set()
        for path, text in files:
            for number, line in enumerate(text.split("\n"), 1):
                for problem, fix, program in self._line(domain, line):
                    if program:
                        programs.add(program)
                    if problem is None:
                        lines += 1
                        continue
                    problems.setdefault((f"line {number}: {problem}", fix), []).append(path)
        if not problems:
            if not lines:
                return [ok("filter.runnable", domain.name, "no .qmail line runs quarantine")]
            names = ", ".join(sorted(programs))
            return [
                ok(
                    "filter.runnable",
                    domain.name,
                    f"{lines} .qmail line{'s' if lines != 1 else ''} run {names}, "
                    f"runnable by uid {domain.uid} gid {domain.gid}",
                )
            ]
        out = []
        for (problem, fix), paths in problems.items():
            subject = paths[0] + (f" (+{len(paths) - 1} more)" if len(paths) > 1 else "")
            out.append(fail("filter.runnable", subject, problem, fix))
        return out

    def _line(
        self, domain: vpopmail.Domain, line: str
    ) -> Iterator[tuple[str | None, str, str | None]]:
        """(problem or None, fix, program) for each mention of quarantine on
        a `|` line: bare names fail, absolute ones must be runnable."""
        if not line.startswith("|"):
            return
        words = line[1:].split()
        named = [i for i, w in enumerate(words) if os.path.basename(w) == "quarantine"]
        for index in named:
            word = words[index]
            if not word.startswith("/"):
                found = shutil.which("quarantine") or "/usr/local/bin/quarantine"
                yield (
                    f"names {word!r} without an absolute path: qmail-local runs the line "
                    "with qmail's PATH, and preline bounces the mail when it cannot run it",
                    f"write {found} (the absolute path) in place of {word!r}",
                    None,
                )
                continue
            problem = self._runnable(word, domain)
            preline = words[0] if index > 0 and os.path.basename(words[0]) == "preline" else ""
            if problem is None and preline.startswith("/"):
                problem = self._may(preline, "x", domain)
            if problem is None and "--config" in words[index:]:
                at = words.index("--config", index)
                if at + 1 < len(words):
                    problem = self._may(words[at + 1], "r", domain)
            yield (problem, _access_fix(problem, domain), word)

    def _runnable(self, program: str, domain: vpopmail.Domain) -> str | None:
        """The script readable and executable, and each `#!` interpreter
        (pip's venv Python included) executable, by the domain's uid."""
        problem = self._may(program, "rx", domain)
        if problem is not None:
            return problem
        for interpreter in filterchain.interpreters(program):
            if not interpreter.startswith("/"):
                return f"{program}: {interpreter}"
            problem = self._may(interpreter, "x", domain)
            if problem is not None:
                return f"the interpreter of {program}: {problem}"
        return None

    def _may(self, path: str, want: str, domain: vpopmail.Domain) -> str | None:
        key = (path, want, domain.uid, domain.gid)
        if key not in self.known:
            self.known[key] = access.blocked(path, want, domain.uid, domain.gid)
        return self.known[key]

    # -- tmp.debris -------------------------------------------------------------

    def _debris(
        self, domain: vpopmail.Domain, homes: list[tuple[str, str | None]]
    ) -> list[Finding]:
        age = self.cfg.cleanup.tmp_age
        files = 0
        where: list[str] = []
        errors: list[str] = []
        for address, maildir in homes:
            if maildir is None:
                continue
            sweep = tmpclean.clean_maildir(maildir, age, dry_run=True)
            errors.extend(sweep.errors)
            if sweep.removed:
                files += sweep.removed
                where.append(address)
        age_text = discovery.age_text(age)
        if errors:
            return [
                warn(
                    "tmp.debris",
                    domain.name,
                    f"cannot read tmp/: {errors[0]}"
                    + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""),
                )
            ]
        if not files:
            return [ok("tmp.debris", domain.name, f"nothing in tmp/ older than {age_text}")]
        return [
            warn(
                "tmp.debris",
                domain.name,
                f"{files} entr{'y' if files == 1 else 'ies'} in tmp/ untouched for over "
                f"{age_text} in {_some(where)}",
                f"quarantine cleanup --domain {domain.name} (or its cron job)",
            )
        ]

    # -- imap.subscribed ------------------------------------------------------------

    def _subscribed(
        self, domain: vpopmail.Domain, homes: list[tuple[str, str | None]]
    ) -> list[Finding]:
        """The Junk folder in the subscriptions of each IMAP server that reads
        the Maildir: those deliver.subscribe names, or with `auto` those whose
        files the Maildir holds (both when it holds neither's), as deliver
        itself decides when it makes the folder."""
        folder = self.cfg.deliver.junk_folder
        mode = self.cfg.deliver.subscribe
        if mode == "off":
            return []
        missing: dict[str, list[str]] = {server: [] for server in IMAP_SERVERS}
        folders = 0
        for address, maildir in homes:
            if maildir is None or not _is_dir(os.path.join(maildir, "." + folder)):
                continue
            folders += 1
            courier, dovecot = md.servers_for(maildir, mode)
            for server, used in (("courier", courier), ("dovecot", dovecot)):
                if used and not md.listed(maildir, folder, server):
                    missing[server].append(address)
        out = []
        for server, where in missing.items():
            if not where:
                continue
            name, line = _subscription(folder, server)
            out.append(
                warn(
                    "imap.subscribed",
                    domain.name,
                    f"{folder} is not subscribed for {server} in {_some(where)}: "
                    "IMAP clients do not show it",
                    f"add the line {line!r} to Maildir/{name} of each",
                )
            )
        if not out:
            said = f"{folders} {folder} folder{'s' if folders != 1 else ''} subscribed"
            out.append(
                ok(
                    "imap.subscribed",
                    domain.name,
                    said if folders else f"no {folder} folder yet: nothing to subscribe",
                )
            )
        return out


def _subscription(folder: str, server: str) -> tuple[str, str]:
    """The file the server reads subscriptions from and the line for `folder`."""
    if server == "courier":
        return md.COURIER_SUBSCRIPTIONS, f"INBOX.{folder}"
    return md.DOVECOT_SUBSCRIPTIONS, folder


def _read_plain(name: str, dir_fd: int | None = None) -> str | None:
    """A regular file's text (latin-1), not through a final symlink; None
    when missing, not regular, unreadable or absurdly large."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_DOT_QMAIL:
            return None
        return os.read(fd, MAX_DOT_QMAIL).decode("latin-1")
    except OSError:
        return None
    finally:
        os.close(fd)


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _some(addresses: list[str]) -> str:
    shown = ", ".join(addresses[:SHOWN])
    more = len(addresses) - SHOWN
    count = f"{len(addresses)} mailbox{'es' if len(addresses) != 1 else ''}"
    return f"{count} ({shown}{f' and {more} more' if more > 0 else ''})"


def _dir_fix(domain: vpopmail.Domain) -> str:
    return (
        f"make {domain.path} a real directory owned by uid {domain.uid} gid {domain.gid} "
        "(as users/assign says), mode 0700"
    )


def _access_fix(problem: str | None, domain: vpopmail.Domain) -> str:
    if problem is None:
        return ""
    if "cannot enter" in problem:
        return (
            f"install quarantine where uid {domain.uid} can reach it (pip install into "
            "/usr/local or a venv under /opt), or open the directory named (chmod o+x)"
        )
    return f"chmod a+rx the file named, so uid {domain.uid} gid {domain.gid} can run it"
