"""`bayes.owner`: the Bayes database the trainer learns into (train.dbpath, or
the learning uid's ~/.spamassassin/bayes) and its directory must be writable by
the uid that learns (each domain's, or spamd's with the spamc backend) and
readable by the uid spamd runs as. Asked as those uids (health/access.py).
"""

from __future__ import annotations

import os

from quarantine import bayes, privsep
from quarantine.health import access
from quarantine.health.findings import OK, Finding, fail, ok, warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.config import Config
    from quarantine.vpopmail import Domain

CHECK = "bayes.owner"
FILES = ("_toks", "_seen")  # what a DBM Bayes store is; _journal comes and goes
SPAMD_USERS = ("debian-spamd", "spamd")  # Debian's, and the usual elsewhere
MIN_LEARNED = 200  # bayes_min_spam_num and bayes_min_ham_num, SpamAssassin's defaults


def spamd_user(setting: str | None) -> tuple[access.Who | None, str]:
    """The uid/gid spamd reads the database as, and how it was found:
    doctor.spamd_user, else a running spamd child's uid, else a passwd
    entry spamd packages create."""
    if setting:
        return access.who(setting), f"doctor.spamd_user {setting}"
    running = _running_spamd()
    if running is not None:
        return running, "the running spamd"
    for name in SPAMD_USERS:
        found = access.who(name)
        if found is not None:
            return found, f"user {name}"
    return None, "no doctor.spamd_user, no spamd running, no spamd user"


def _running_spamd() -> access.Who | None:
    """The uid/gid of a spamd process that is not root (its children run
    as the user of `-u`)."""
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read(4096).split(b"\0")
            with open(f"/proc/{pid}/status", "rb") as handle:
                status = handle.read(4096).decode("latin-1")
        except OSError:
            continue
        if not argv or b"spamd" not in os.path.basename(argv[0]):
            continue
        ids = {}
        for line in status.splitlines():
            name, _, rest = line.partition(":")
            if name in ("Uid", "Gid") and rest.split():
                ids[name] = int(rest.split()[1])  # the effective id
        if ids.get("Uid", 0) != 0 and "Gid" in ids:
            return access.Who(ids["Uid"], ids["Gid"], f"spamd (uid {ids['Uid']})")
    return None


def learners(cfg: Config, domains: list[Domain]) -> list[access.Who]:
    """Who learns: with sa-learn, each domain owner (the trainer's workers
    drop to them); with spamc, spamd's children."""
    if os.geteuid() != 0:
        return [access.Who(os.geteuid(), os.getegid(), f"uid {os.geteuid()} (running the trainer)")]
    return [
        access.Who(uid, gid, f"uid {uid} gid {gid}")
        for (uid, gid), _ in privsep.by_owner(domains)
        if uid and gid
    ]


def check(cfg: Config, domains: list[Domain]) -> list[Finding]:
    tcfg = cfg.train
    refused = bayes.problems(tcfg)
    if refused:
        return [fail(CHECK, "train.bayes", "; ".join(refused), "correct train.bayes")]
    if bayes.is_redis(tcfg):
        return [_redis(cfg)]
    if tcfg.per_user and tcfg.dbpath and any(p in tcfg.dbpath for p in ("%u", "%l", "%d")):
        return [ok(CHECK, tcfg.dbpath, "per-user Bayes stores: not checked one by one")]
    spamd, how = spamd_user(cfg.doctor.spamd_user)
    if tcfg.backend == "spamc":
        if spamd is None:
            return [
                warn(
                    CHECK,
                    "spamd",
                    f"cannot tell which uid spamd learns as ({how})",
                    "set doctor.spamd_user",
                )
            ]
        who = [spamd]
    else:
        who = learners(cfg, domains)
    if not who:
        return [ok(CHECK, tcfg.dbpath or "~/.spamassassin", "no domain to learn for")]
    stores: dict[str, list[access.Who]] = {}
    for person in who:
        prefix = tcfg.dbpath or os.path.join(_home(cfg, person), ".spamassassin", "bayes")
        stores.setdefault(prefix, []).append(person)
    found = [_store(prefix, people, spamd, how) for prefix, people in sorted(stores.items())]
    return [_counted(cfg, f, stores[f.subject][0]) if f.status == OK else f for f in found]


def _redis(cfg: Config) -> Finding:
    """A Redis store has no files to own: it must answer sa-learn."""
    name = bayes.describe(cfg.train.bayes.redis or "")
    counts = bayes.counts(cfg.train, privsep.subprocess_env(cfg, None))
    if "error" in counts:
        return fail(
            CHECK,
            name,
            f"sa-learn cannot read the store: {counts['error']}",
            "start redis-server or correct train.bayes.redis",
        )
    return ok(CHECK, name, f"no files to own; {_said(counts)}")


def _counted(cfg: Config, found: Finding, person: access.Who) -> Finding:
    """An ok store read by sa-learn as the learning uid (--dump magic), so a
    database the permissions allow but sa-learn cannot open still fails."""
    tcfg = cfg.train
    spamds_own = tcfg.backend == "spamc" and not tcfg.dbpath  # bayes.counts does not read it
    if spamds_own or not os.path.exists(found.subject + "_toks"):
        return found
    env = privsep.subprocess_env(cfg, person.uid)

    def work() -> dict[str, object]:
        return bayes.counts(tcfg, env)

    counts = privsep.run_as(person.uid, person.gid, work)
    if "error" in counts:
        why = counts["error"]
        return fail(
            CHECK,
            found.subject,
            f"sa-learn as {person.label} cannot read it: {why}",
            "look at sa-learn --dump magic as that uid; restore or remove the files",
        )
    return ok(CHECK, found.subject, f"{found.message}; {_said(counts)}")


def _said(counts: dict[str, object]) -> str:
    nspam, nham = counts.get("nspam", 0), counts.get("nham", 0)
    text = f"nspam {nspam}, nham {nham}"
    if not (isinstance(nspam, int) and isinstance(nham, int)) or min(nspam, nham) < MIN_LEARNED:
        text += f" (SpamAssassin uses Bayes once it has learned {MIN_LEARNED} of each)"
    return text


def _home(cfg: Config, person: access.Who) -> str:
    return privsep.subprocess_env(cfg, person.uid).get("HOME") or cfg.vpopmail.home


def _store(prefix: str, people: list[access.Who], spamd: access.Who | None, how: str) -> Finding:
    directory = os.path.dirname(prefix) or "."
    files = [prefix + suffix for suffix in FILES if os.path.lexists(prefix + suffix)]
    problems: list[str] = []
    fixes: list[str] = []
    if not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        for person in people:
            answer = access.probe(person, [(parent, "wx")])[0]
            if answer is not None:
                problems.append(f"{person.label} cannot create {directory}: {answer}")
                fixes.append(f"mkdir {directory}; chown {person.uid}:{person.gid} {directory}")
        if problems:
            return fail(CHECK, prefix, "; ".join(problems), "; ".join(fixes))
        return ok(CHECK, prefix, f"not made yet: {directory} will be made on the first run")
    for person in people:
        wanted = [(directory, "wx"), *((f, "rw") for f in files)]
        for (path, _), answer in zip(wanted, access.probe(person, wanted), strict=True):
            if answer is not None:
                problems.append(f"{person.label} (the learning uid) cannot write: {answer}")
                fixes.append(f"chown {person.uid}:{person.gid} {path}")
    if spamd is not None:
        wanted = [(directory, "X"), *((f, "r") for f in files)]
        for (path, _), answer in zip(wanted, access.probe(spamd, wanted), strict=True):
            if answer is not None:
                problems.append(f"{spamd.label} (spamd, {how}) cannot read: {answer}")
                fixes.append(f"chmod {'a+x' if path == directory else 'a+r'} {path}")
    if problems:
        return fail(CHECK, prefix, "; ".join(problems), "; ".join(dict.fromkeys(fixes)))
    learning = ", ".join(p.label for p in people)
    if spamd is None:
        return warn(
            CHECK,
            prefix,
            f"writable by {learning}; cannot tell spamd's uid ({how})",
            "set doctor.spamd_user",
        )
    made = f"{len(files)} file{'s' if len(files) != 1 else ''}" if files else "no files yet"
    return ok(CHECK, prefix, f"{made}, writable by {learning}, readable by {spamd.label}")
