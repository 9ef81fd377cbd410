"""`quarantine migrate`: read an existing qmail installation (maildrop junk
filters in .qmail files, the DKIM patch's tcpserver rules and dksign, QmailToaster's
signconf.xml, keys, spfbehavior, a cron sa-learn loop), plan the move onto
quarantine, carry it out after saving every file it touches, and undo it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass

from quarantine import backup, legacy, migratemail, tcprules
from quarantine.config import CACHE_SUFFIX, DEFAULT_PATH, Config
from quarantine.migrateplan import CHANGE, MANUAL, NOTE, OK, Edit, Plan, Programs
from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

DK_WRAPPERS = frozenset(["qmail-dk", "qmail-dkim", "qmail-dk.sh", "qmail-dkim.sh"])


def build(
    cfg: Config,
    programs: Programs,
    config_path: str,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Plan:
    """Read the installation and plan the migration (nothing is written)."""
    now = {
        name: dict(vars_of(getattr(cfg, name))) for name in ("dkim", "verify", "deliver", "train")
    }
    plan = Plan(config_path=config_path, current=now)
    migratemail.plan_dot_qmail(plan, cfg, programs, config_path, force, progress)
    rules = _read_rules(cfg)
    template, domainkeys = _plan_signing(plan, cfg, rules)
    _plan_rules(plan, programs, rules)
    _plan_spf(plan, cfg)
    _plan_cron(plan, cfg, programs, config_path)
    if template is not None:
        changed = plan.set("dkim", "sign_template", template)
        plan.add("signing", template, CHANGE if changed else OK, "dkim.sign_template "
                 "(the selector is the key's file name)")  # fmt: skip
        if domainkeys:
            plan.set("dkim", "domainkeys", True)
        _plan_remote(plan, cfg, programs)
    return plan


def vars_of(section: object) -> dict[str, object]:
    """A configuration section's keys and values."""
    return {name: getattr(section, name) for name in getattr(section, "__slots__", ())}


# ---------------------------------------------------------------- signing


def _plan_signing(plan: Plan, cfg: Config, rules: _Rules) -> tuple[str | None, bool]:
    """The signing identities of the old setup into one sign_template; weak
    keys flagged (and set aside where the template would find them)."""
    control = os.path.join(cfg.qmail.home, "control")
    identities: list[legacy.Identity] = []
    domainkeys = False
    try:
        conf = legacy.read_signconf(
            os.path.join(control, "dkim", "signconf.xml"), os.path.join(control, "me")
        )
    except (legacy.LegacyError, backup.FileError) as exc:
        plan.add("signing", "signconf.xml", MANUAL, str(exc), "fix or remove the file")
        conf = None
    if conf is not None:
        for ident in conf:
            if not ident.types:
                plan.add("signing", ident.entry, NOTE, "the old setup did not sign for it")
                continue
            domainkeys = domainkeys or "domainkey" in ident.types
            if ident.entry == "global":
                plan.add(
                    "signing",
                    "global",
                    NOTE,
                    f"signed the mail of every domain without an entry as d={ident.domain}; "
                    "quarantine signs a domain only with a key of its own",
                    "quarantine keys rotate --domain DOMAIN for each domain that sends mail",
                )
            for note in ident.notes:
                plan.add("signing", ident.entry, NOTE, note)
            identities.append(ident)
    templates = set(_dksign_templates(plan, cfg, rules))
    for pattern in sorted(templates):
        domainkeys = True  # qmail-dk signs DomainKeys
        for domain, path in legacy.template_keys(pattern):
            name = os.path.basename(path)
            identities.append(legacy.Identity("template", domain, name, path, frozenset(["dkim"])))
    if not identities:
        return None, False
    good: list[legacy.Identity] = []
    for ident in identities:
        info = legacy.key_info(ident.keyfile)
        subject = ident.domain or ident.entry
        if info.state == "ok":
            good.append(ident)
            plan.add(
                "keys",
                ident.keyfile,
                OK,
                f"{info.kind} {info.bits} bits, d={ident.domain} "
                f"s={ident.selector}, mode {info.mode:04o} owner {info.uid}:{info.gid}",
            )
            problem = key_readable(ident.keyfile, "qmailr")
            if problem:
                plan.add(
                    "keys",
                    ident.keyfile,
                    MANUAL,
                    f"{problem}: quarantine-remote runs as qmailr and would keep the mail queued",
                    f"chgrp qmail {ident.keyfile} && chmod 0640 {ident.keyfile}",
                )
        elif info.state == "weak":
            plan.add(
                "keys",
                subject,
                MANUAL,
                f"{show(ident.keyfile)} is a {info.bits}-bit RSA key: receivers ignore keys "
                f"under 1024 bits (RFC 8301) and it can be factored; it is not carried over, "
                f"and mail from {subject} goes out unsigned until a new key is active",
                f"quarantine keys rotate --domain {subject} (then publish the record it prints)",
            )
        elif info.state == "missing" and os.path.lexists(ident.keyfile + ".weak"):
            plan.add(
                "keys",
                subject,
                MANUAL,
                f"{show(ident.keyfile)} was set aside as weak ({show(ident.keyfile)}.weak); "
                f"mail from {subject} goes out unsigned until a new key is active",
                f"quarantine keys rotate --domain {subject}",
            )
        else:
            plan.add(
                "keys", ident.keyfile, MANUAL, f"key {info.state}: {info.problem}".rstrip(": ")
            )
    template, left = legacy.template_of(good)
    for ident in left:
        plan.add(
            "signing",
            ident.domain,
            MANUAL,
            f"signs with selector {ident.selector} from {show(ident.keyfile)}, which the "
            f"template {show(template or '-')} cannot name",
            f"quarantine keys rotate --domain {ident.domain}",
        )
    if template is None:
        return None, False
    flagged = {i.keyfile for i in identities}
    for domain, path in legacy.template_keys(template, ".weak"):
        if not os.path.lexists(path) and path not in flagged:
            plan.add(
                "keys",
                domain,
                MANUAL,
                f"{show(path)} was set aside as weak ({show(path)}.weak); mail from {domain} "
                "goes out unsigned until a new key is active",
                f"quarantine keys rotate --domain {domain}",
            )
    for domain, path in legacy.template_keys(template):
        if legacy.key_info(path).state == "weak":
            aside = path + ".weak"
            plan.edits.append(
                Edit(
                    "rename",
                    path,
                    f"weak key for {domain} set aside",
                    target=aside,
                    paths=[path, aside],
                )
            )
            plan.add(
                "keys",
                path,
                CHANGE,
                f"renamed to {show(os.path.basename(aside))}: "
                "quarantine-remote would otherwise find it and keep the mail queued",
            )
    return template, domainkeys


def _dksign_templates(plan: Plan, cfg: Config, rules: _Rules) -> list[str]:
    """The `%` templates of control/dksign and of DKSIGN in the rules."""
    out = []
    path = os.path.join(cfg.qmail.home, "control", "dksign")
    try:
        line = legacy.control_line(path)
    except (legacy.LegacyError, backup.FileError) as exc:
        plan.add("signing", path, MANUAL, str(exc))
        line = None
    if line:
        out.append(line)
        plan.add("signing", path, NOTE, f"template {show(line)}")
    if rules.parsed is not None:
        for rule in rules.parsed.rules:
            value = rule.get("DKSIGN")
            if value:
                out.append(value)
    return [t for t in out if t.startswith("/")]


# ---------------------------------------------------------------- tcprules


@dataclass
class _Rules:
    """migrate.tcprules as read, once: its bytes (what --apply checks are
    unchanged), the rules parsed from them, or why there are none (`problem`
    empty: there is no such file)."""

    path: str
    data: bytes | None = None
    parsed: tcprules.RulesFile | None = None
    problem: str = ""
    fix: str = ""


def _read_rules(cfg: Config) -> _Rules:
    """The tcpserver rules file, through its directory's descriptor (the
    file itself no symlink followed)."""
    source = cfg.migrate.tcprules
    refused = "fix the file so tcprules accepts it"
    try:
        state, data = backup.read(source, tcprules.MAX_SOURCE)
    except backup.FileError as exc:
        return _Rules(source, problem=str(exc), fix=refused)
    if state.kind == "absent":
        return _Rules(source)
    if data is None:
        problem = f"{show(source)}: a symlink, not followed"
        return _Rules(source, problem=problem, fix="name the file itself in migrate.tcprules")
    try:
        return _Rules(source, data, tcprules.RulesFile(data, source))
    except tcprules.RulesError as exc:
        return _Rules(source, data, problem=str(exc), fix=refused)


def _plan_rules(plan: Plan, programs: Programs, read: _Rules) -> None:
    """QMAILQUEUE=quarantine-queue where the rules ran a DKIM wrapper (DKVERIFY kept)."""
    source, rules = read.path, read.parsed
    if rules is None:
        if read.problem:
            plan.add("rules", source, MANUAL, read.problem, read.fix)
        else:
            plan.add("rules", source, NOTE, "no tcpserver rules file (migrate.tcprules)")
        return
    cdb_file = tcprules.cdb_path(source)
    try:
        if tcprules.read_cdb(cdb_file).records() != rules.records():
            plan.add(
                "rules",
                cdb_file,
                NOTE,
                "was not built from the rules file as it is now; it is rebuilt from the file",
            )
    except tcprules.RulesError as exc:
        plan.add("rules", cdb_file, NOTE, f"cannot be read ({exc}); it is rebuilt")
    queues = set()
    changed = False
    for rule in rules.rules:
        queue = rule.get("QMAILQUEUE")
        wrapper = queue is not None and os.path.basename(queue) in DK_WRAPPERS
        if queue == programs.queue:
            continue
        if queue is not None and not wrapper:
            if rule.get("DKVERIFY") is not None:
                plan.add(
                    "rules",
                    f"{source}:{rule.lineno}",
                    MANUAL,
                    f"QMAILQUEUE names {show(queue)}, not a DKIM wrapper: left as it is",
                    f"make {show(queue)} hand on to {programs.queue}, or chain them by hand",
                )
            continue
        if queue is None and rule.get("DKVERIFY") is None:
            continue
        real = rule.get("DKQUEUE")
        if real:
            queues.add(real)
        rules.put(rule.with_env("QMAILQUEUE", programs.queue))
        changed = True
        plan.add(
            "rules",
            f"{source}:{rule.lineno}",
            CHANGE,
            f"QMAILQUEUE={programs.queue} (was {show(queue or 'unset')}), "
            f"DKVERIFY kept ({show(rule.get('DKVERIFY') or 'unset')})",
        )
    if len(queues) == 1:
        plan.set("verify", "qmail_queue", queues.pop())
    elif len(queues) > 1:
        plan.add(
            "rules",
            source,
            MANUAL,
            "rules name different real qmail-queues (DKQUEUE)",
            "set verify.qmail_queue by hand",
        )
    problem = runnable(programs.queue, "qmaild")
    if changed and problem:
        plan.add("rules", source, MANUAL, f"not changed: {problem}", "install quarantine first")
    elif changed:
        plan.edits.append(
            Edit(
                "rules",
                source,
                "tcpserver rules",
                rules.render(),
                old=read.data,
                paths=[source, cdb_file],
            )
        )


# ---------------------------------------------------------------- spf, cron, remote


def _plan_spf(plan: Plan, cfg: Config) -> None:
    path = os.path.join(cfg.qmail.home, "control", "spfbehavior")
    try:
        level = legacy.spfbehavior(path)
    except (legacy.LegacyError, backup.FileError) as exc:
        plan.add("spf", path, MANUAL, str(exc))
        return
    if level is not None:
        status = CHANGE if plan.set("verify", "spfbehavior", level) else OK
        plan.add("spf", path, status, f"verify.spfbehavior: {level} (SPFBEHAVIOR still wins)")


def _plan_cron(plan: Plan, cfg: Config, programs: Programs, config_path: str) -> None:
    command = f"{programs.quarantine} train --quiet"
    if config_path != DEFAULT_PATH:
        command += f" --config {config_path}"
    for path in cfg.migrate.crontabs:
        try:
            state, data = backup.read(path)
        except backup.FileError as exc:
            plan.add("cron", path, MANUAL, str(exc))
            continue
        if data is None:
            if state.kind == "symlink":
                plan.add("cron", path, NOTE, "a symlink, not followed")
            continue
        text = data.decode("latin-1")
        lines = text.split("\n")
        changed = False
        system = path == "/etc/crontab" or "/cron.d/" in path
        for found in legacy.cron_lines(text, system=system):
            where = f"{path}:{found.number}"
            if not found.loop:
                plan.add(
                    "cron",
                    where,
                    MANUAL,
                    "runs sa-learn, but not as the per-file loop over Junk folders: left as it is",
                    "replace it with: " + command,
                )
                continue
            user = f" {found.user}" if found.user else ""
            lines[found.number - 1] = f"{found.schedule}{user} {command}"
            changed = True
            plan.add(
                "cron",
                where,
                CHANGE,
                f"the sa-learn loop becomes `{command}` (same schedule: {found.schedule})",
            )
        if changed:
            new = "\n".join(lines).encode("latin-1")
            plan.edits.append(Edit("write", path, "crontab", new, old=data, paths=[path]))


def _plan_remote(plan: Plan, cfg: Config, programs: Programs) -> None:
    """qmail-remote replaced by quarantine-remote, the real one kept as .orig."""
    remote = os.path.join(cfg.qmail.home, "bin", "qmail-remote")
    orig = remote + ".orig"
    try:
        state, _ = backup.read(remote, 64 << 20)
        orig_state, _ = backup.read(orig, 64 << 20)
    except backup.FileError as exc:
        plan.add("remote", remote, MANUAL, str(exc))
        return
    plan.set("dkim", "qmail_remote", orig)
    if state.kind == "symlink" and state.target == programs.remote:
        plan.add("remote", remote, OK, "already runs quarantine-remote")
        return
    if state.kind == "absent":
        plan.add("remote", remote, MANUAL, "no qmail-remote here (qmail.home?)")
        return
    problem = runnable(programs.remote, "qmailr")
    if problem:
        plan.add("remote", remote, MANUAL, f"not replaced: {problem}", "install quarantine first")
        return
    if orig_state.kind == "absent":
        plan.edits.append(
            Edit("rename", remote, "the real qmail-remote kept", target=orig, paths=[remote, orig])
        )
        plan.add("remote", remote, CHANGE, f"moved to {show(orig)}")
    plan.edits.append(
        Edit("symlink", remote, "signing wrapper", target=programs.remote, paths=[remote])
    )
    plan.add(
        "remote",
        remote,
        CHANGE,
        f"a symlink to {show(programs.remote)} (signs, then runs {show(orig)})",
    )


def key_readable(path: str, user: str) -> str | None:
    """Why `user` (with its primary group) could not read the key at `path`;
    None when it can, or when there is no such user here."""
    import pwd

    from quarantine.filterchain import access_problem

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return access_problem(path, entry.pw_uid, entry.pw_gid, 0o4)


def runnable(program: str, user: str) -> str | None:
    """Why `user` (qmail's, or nobody when it does not exist here) could not
    run `program`: a wrapper qmail cannot start makes qmail-rspawn bounce the
    mail it was to deliver."""
    import pwd

    from quarantine.filterchain import access_problem

    try:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid, gid = 65534, 65534
    problem = access_problem(program, uid, gid, 0o5)
    return f"{user} could not run it: {problem}" if problem else None


# ---------------------------------------------------------------- config file


def config_edit(plan: Plan) -> Edit | None:
    """The configuration file with the plan's keys set (YAML rewritten;
    its comments do not survive, the backup keeps the original)."""
    if not plan.config:
        return None
    import yaml

    from quarantine import config as config_module

    path = plan.config_path
    state, old = backup.read(path)
    if state.kind == "symlink":
        raise backup.FileError(f"{show(path)} is a symlink: name the real file with --config")
    data = yaml.safe_load(old) if old else {}
    if not isinstance(data, dict):
        data = {}
    for section, keys in plan.config.items():
        current = data.get(section)
        data[section] = {**(current if isinstance(current, dict) else {}), **keys}
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    config_module.parse_text(text, path)  # what we write must load
    header = "# quarantine configuration (written by quarantine migrate)\n"
    return Edit(
        "write",
        path,
        "configuration",
        (header + text).encode(),
        old=old,
        paths=[path, config_module.cache_path(path)],
    )


# ---------------------------------------------------------------- apply and undo


def apply(plan: Plan, cfg: Config) -> str:
    """Save every path the plan touches, then make each edit; on a failure,
    put back what was done and raise. Returns the backup directory."""
    edits = list(plan.edits)
    extra = config_edit(plan)
    if extra is not None:
        edits.append(extra)
    if not edits:
        return ""
    saved = backup.Backup(cfg.migrate.backup_dir)
    states: dict[str, backup.State] = {}
    for edit in edits:
        for path in edit.paths:
            if path not in states:
                states[path] = saved.save(path, derived=path.endswith(CACHE_SUFFIX))
    saved.commit("applying")
    for edit in edits:
        now = states[edit.path]
        if edit.old is not None and now.sha256 != hashlib.sha256(edit.old).hexdigest():
            saved.commit("rolled back")
            raise backup.FileError(
                f"{show(edit.path)} changed since it was read; nothing was changed, run again"
            )
    try:
        for edit in edits:
            _do(edit, states, cfg)
        saved.record_after()
    except (backup.FileError, tcprules.RulesError, OSError) as exc:
        for state in reversed(list(states.values())):
            try:
                backup.restore(saved.dir, state)
            except backup.FileError:
                pass
        saved.commit("rolled back")
        raise backup.FileError(f"{exc}; every change was put back") from None
    saved.commit("applied")
    return saved.dir


def _do(edit: Edit, states: dict[str, backup.State], cfg: Config) -> None:
    if edit.kind == "write":
        like = states[edit.path]
        if like.kind != "file":
            like = backup.State(edit.path, "file", 0o644, os.geteuid(), os.getegid())
        backup.write(edit.path, edit.data, like)
        for other in edit.paths[1:]:
            backup.remove(other)  # the configuration's stale cache
    elif edit.kind == "rules":
        backup.write(edit.path, edit.data, states[edit.path])
        cdb_file = edit.paths[1]
        tcprules.rebuild(edit.path, cdb_file, cfg.migrate.tcprules_program)
        before = states[cdb_file]
        if before.kind == "file" and os.geteuid() == 0:
            _keep_owner(cdb_file, before)
    elif edit.kind == "rename":
        backup.rename(edit.path, edit.target)
    elif edit.kind == "symlink":
        backup.symlink(edit.path, edit.target, states.get(edit.path))
    else:  # pragma: no cover
        raise AssertionError(edit.kind)


def _keep_owner(path: str, before: backup.State) -> None:
    """Give the rebuilt file at `path` the owner and mode it had, through a
    descriptor: a symlink put in its place is refused, its target untouched."""
    dir_fd, name = backup.open_parent(path)
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise backup.FileError(f"{show(path)} is a symlink; not followed") from None
        raise backup.FileError(f"cannot open {show(path)}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise backup.FileError(f"{show(path)}: not a regular file")
        os.fchown(fd, before.uid, before.gid)
        os.fchmod(fd, before.mode)
    except OSError as exc:
        raise backup.FileError(f"cannot set the owner of {show(path)}: {exc.strerror}") from None
    finally:
        os.close(fd)


def undo(cfg: Config, *, force: bool = False) -> tuple[str, list[str], list[str]]:
    """Put back every file of the last applied backup, byte for byte, with
    its mode, owner and time. Returns (backup, restored paths, problems);
    paths changed since the apply are problems, and nothing is restored
    then unless `force`."""
    found = backup.last_backup(cfg.migrate.backup_dir)
    if found is None:
        return "", [], []
    directory, manifest = found
    pairs = backup.entry_states(manifest)
    changed = backup.changed_since(pairs)
    if changed and not force:
        return (
            directory,
            [],
            [
                f"{show(path)} changed since migrate --apply; not undone "
                "(--force puts it back anyway)"
                for path in changed
            ],
        )
    restored = []
    for before, _after in reversed(pairs):
        backup.restore(directory, before)
        restored.append(before.path)
    backup.mark(directory, manifest, "undone")
    return directory, restored, []
