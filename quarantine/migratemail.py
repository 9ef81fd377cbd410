"""The `.qmail` part of `quarantine migrate`: every domain's `.qmail*` files
and each mailbox's own `.qmail`, read through the domain directory's descriptor
(no symlink followed), and each maildrop junk-filter line planned into the
`quarantine deliver` line; unknown filters reported and left alone.
"""

from __future__ import annotations

import os
import stat

from quarantine import backup, discovery, maildrop, vpopmail
from quarantine.config import DEFAULT_PATH, Config
from quarantine.filterchain import MARKER, check_chain, program_line
from quarantine.migrateplan import Edit, Plan, Programs
from quarantine.names import show
from quarantine.qmail import LookupFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


MARKER_MIGRATED = (
    f"{MARKER}, put in place of a maildrop filter line by 'quarantine migrate' "
    "('quarantine migrate --undo' puts the old line back)"
)
MAX_DOT_QMAIL = 1 << 20


def deliver_line(cfg: Config, programs: Programs, config_path: str, inbox: bool) -> str:
    """`|<qmail>/bin/preline <quarantine> deliver [--inbox] [--config FILE]`
    (OptinError for a path the line cannot hold)."""
    words = [os.path.join(cfg.qmail.home, "bin", "preline"), programs.quarantine, "deliver"]
    if inbox:
        words.append("--inbox")
    if os.path.abspath(config_path) != DEFAULT_PATH:
        words += ["--config", os.path.abspath(config_path)]
    return program_line(words)


class _Walk:
    """What one plan_dot_qmail run shares: where it reports, what the new
    lines name, the Junk folders seen, and each filter file's verdict (read
    and judged once, however many lines run it)."""

    __slots__ = ("cfg", "config_path", "filters", "folders", "force", "lines", "plan", "programs")

    def __init__(
        self, plan: Plan, cfg: Config, programs: Programs, config_path: str, force: bool
    ) -> None:
        self.plan = plan
        self.cfg = cfg
        self.programs = programs
        self.config_path = config_path
        self.force = force
        self.folders: set[str] = set()
        self.filters: dict[str, tuple[maildrop.Filter | None, str, str]] = {}
        self.lines: dict[bool, str] = {}

    def deliver_line(self, inbox: bool) -> str:
        if inbox not in self.lines:
            self.lines[inbox] = deliver_line(self.cfg, self.programs, self.config_path, inbox)
        return self.lines[inbox]

    def filter(self, where: str, path: str) -> maildrop.Filter | None:
        """The filter at `path`, or None with a `manual` finding for `where`."""
        if path not in self.filters:
            self.filters[path] = _judge(path)
        found, problem, fix = self.filters[path]
        if found is None:
            self.plan.add("qmail", where, "manual", problem, fix)
        return found


def plan_dot_qmail(
    plan: Plan,
    cfg: Config,
    programs: Programs,
    config_path: str,
    force: bool,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Plan the .qmail edits of every domain; the Junk folder the filters used."""
    try:
        domains = discovery.domains_to_visit(cfg, discovery.Options())
    except discovery.CommandError as exc:
        plan.add("qmail", "users/assign", "manual", str(exc))
        return
    walk = _Walk(plan, cfg, programs, config_path, force)
    for number, domain in enumerate(domains, 1):
        if progress is not None:
            progress(number, len(domains))
        _domain(walk, domain)
    folders = walk.folders
    if len(folders) == 1:
        folder = folders.pop()
        if plan.set("deliver", "junk_folder", folder):
            plan.set("train", "folders", [folder])
            plan.add("qmail", folder, "change", f"deliver.junk_folder and train.folders: {folder}")
    elif folders:
        names = ", ".join(sorted(folders))
        plan.add(
            "qmail",
            names,
            "manual",
            "the old filters used different Junk folders",
            "pick one for deliver.junk_folder and list them all in train.folders",
        )


def _domain(walk: _Walk, domain: vpopmail.Domain) -> None:
    plan, cfg = walk.plan, walk.cfg
    try:
        fd = vpopmail.open_domain_dir(domain)
    except (vpopmail.UnsafeDirectory, OSError) as exc:
        text = str(exc) if isinstance(exc, vpopmail.UnsafeDirectory) else exc.strerror
        plan.add("qmail", domain.path, "manual", f"not read: {text}")
        return
    files: list[tuple[str, bytes, backup.State]] = []
    try:
        for name in sorted(os.listdir(fd)):
            if not name.startswith(".qmail") or backup.TEMP_TAG in name:
                continue
            path = os.path.join(domain.path, name)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    plan.add(
                        "qmail",
                        path,
                        "note",
                        "a symlink, not followed; if it runs "
                        "maildrop, edit the file it points at by hand",
                    )
                    continue
                state, data = backup.read_at(fd, name, path, MAX_DOT_QMAIL)
            except (OSError, backup.FileError) as exc:
                plan.add("qmail", path, "manual", f"not read: {exc}")
                continue
            if data is not None:
                files.append((path, data, state))
    finally:
        os.close(fd)
    for path, data in _user_files(plan, cfg, domain):
        files.append((path, data, backup.State(path, "file")))
    chain: list[str] | None = None
    for path, data, _state in files:
        new = _rewrite(walk, domain, path, data)
        if new is None:
            continue
        if chain is None:
            chain = [] if walk.force else check_chain(cfg, domain, walk.programs.quarantine)
        if chain:
            plan.add(
                "qmail",
                path,
                "manual",
                f"not changed: uid {domain.uid} could not run the new line: " + "; ".join(chain),
                "fix the permissions, or give --force",
            )
            continue
        plan.edits.append(Edit("write", path, ".qmail file", new, old=data, paths=[path]))


def _user_files(plan: Plan, cfg: Config, domain: vpopmail.Domain) -> list[tuple[str, bytes]]:
    """Each mailbox's own `.qmail` (run by vdelivermail), inside the tree."""
    out: list[tuple[str, bytes]] = []
    try:
        users = list(discovery.find_users(cfg, domain))
    except LookupFailed as exc:
        plan.add("qmail", domain.name, "manual", f"mailboxes not read: {exc}")
        return out
    for _user, home in users:
        path = os.path.join(home, ".qmail")
        try:
            vpopmail.check_inside(cfg, domain, home)
            state, data = backup.read(path, MAX_DOT_QMAIL)
        except (LookupFailed, backup.FileError) as exc:
            plan.add("qmail", path, "note", f"not read: {exc}")
            continue
        if state.kind == "symlink":
            plan.add("qmail", path, "note", "a symlink, not followed")
        elif data is not None:
            out.append((path, data))
    return out


def _rewrite(walk: _Walk, domain: vpopmail.Domain, path: str, data: bytes) -> bytes | None:
    """The file with each recognised maildrop line replaced; None when
    nothing in it changes."""
    plan = walk.plan
    lines = data.decode("latin-1").split("\n")
    # The last line qmail-local would act on: a filter line before it hands
    # ham on to the lines after; one at or after it is the file's last word.
    last = max(
        (i for i, x in enumerate(lines) if x.strip() and not x.lstrip().startswith("#")),
        default=-1,
    )
    out: list[str] = []
    changed = False
    for index, line in enumerate(lines):
        where = f"{path}:{index + 1}"
        try:
            found = maildrop.parse_line(line, domain.path)
        except maildrop.NotRecognised as exc:
            plan.add("qmail", where, "manual", f"runs maildrop, left as it is: {exc}")
            out.append(line)
            continue
        if found is None:
            out.append(line)
            continue
        flt = walk.filter(where, found.filter)
        if flt is None:
            out.append(line)
            continue
        walk.folders.add(flt.folder)
        inbox = flt.ham == "inbox" or (flt.ham is None and last <= index)
        out += [MARKER_MIGRATED, walk.deliver_line(inbox)]
        if flt.ham is not None and flt.ham.startswith("|"):
            out.append(flt.ham)
        changed = True
        what = "inbox" if inbox else (flt.ham or "the next .qmail line")
        plan.add(
            "qmail",
            where,
            "change",
            f"maildrop filter ({flt.kind}, spam to .{flt.folder}) becomes quarantine "
            f"deliver; ham goes to {show(what)}",
        )
        if flt.ham is None and inbox:
            plan.add(
                "qmail",
                where,
                "note",
                "the filter left ham to maildrop's default "
                "mailbox; it now goes to the user's inbox (deliver --inbox)",
            )
        for note in flt.notes:
            plan.add("qmail", where, "note", note)
    if not changed:
        return None
    return "\n".join(out).encode("latin-1")


def _judge(path: str) -> tuple[maildrop.Filter | None, str, str]:
    """The filter file at `path` recognised; else None, why, and the fix."""
    try:
        state, data = backup.read(path, maildrop.MAX_FILTER)
    except backup.FileError as exc:
        return None, f"filter not read: {exc}", ""
    if data is None:
        why = "a symlink, not followed" if state.kind == "symlink" else "missing"
        return None, f"filter {show(path)} is {why}: line left as it is", ""
    try:
        return maildrop.recognise(data.decode("latin-1")), "", ""
    except maildrop.NotRecognised as exc:
        return (
            None,
            f"filter {show(path)} {exc}: line left as it is",
            "turn it into a quarantine deliver rule by hand, or keep it",
        )
