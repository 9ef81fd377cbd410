"""`queue.wired`: when quarantine-queue is configured (deliver trusts results
only it writes, or the tcpserver rules name it or DKVERIFY), a rule of the
compiled tcp.smtp cdb, which is what tcpserver reads, must set QMAILQUEUE to
it; the rules file and the cdb both read with quarantine/tcprules.py.
"""

from __future__ import annotations

import os
import shutil

from quarantine import tcprules
from quarantine.health.findings import Finding, fail, ok, warn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.config import Config

CHECK = "queue.wired"
PROGRAM = "quarantine-queue"
PLACES = ("/etc/tcp.smtp",)  # the classic place, after migrate.tcprules
STRANGER = "192.0.2.1"  # TEST-NET-1: an address no rule names on purpose


def rules_path(cfg: Config) -> str | None:
    """migrate.tcprules (QmailToaster's place by default), else the classic
    /etc/tcp.smtp, whichever exists."""
    return next((p for p in (cfg.migrate.tcprules, *PLACES) if os.path.exists(p)), None)


def is_queue(value: str | None) -> bool:
    return value is not None and os.path.basename(value.strip()) == PROGRAM


def check(cfg: Config) -> Finding:
    source = rules_path(cfg)
    trusted = bool(cfg.deliver.authserv_ids)
    if source is None:
        if trusted:
            return fail(
                CHECK,
                "tcp.smtp",
                "deliver.authserv_ids trusts quarantine-queue's results, but no "
                f"tcp.smtp rules file is here ({cfg.migrate.tcprules} or {' or '.join(PLACES)})",
                "set migrate.tcprules to the rules file qmail-smtpd's tcpserver uses",
            )
        return ok(CHECK, "tcp.smtp", "no tcp.smtp rules file and quarantine-queue not configured")
    cdb = tcprules.cdb_path(source)
    try:
        written = tcprules.read_source(source).rules
    except (OSError, tcprules.RulesError) as exc:
        return fail(CHECK, source, f"cannot read the rules: {exc}")
    rebuild = f"tcprules {cdb} {cdb}.tmp < {source}"
    named = [r for r in written if is_queue(r.get("QMAILQUEUE"))]
    try:
        database = tcprules.read_cdb(cdb)
        compiled = database.rules()
    except (OSError, tcprules.RulesError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        if trusted or named:
            return fail(CHECK, cdb, f"cannot read the compiled rules: {reason}", rebuild)
        return ok(CHECK, source, "quarantine-queue not configured (and no cdb)")
    wired = [r for r in compiled if is_queue(r.get("QMAILQUEUE"))]
    dkverify = any(r.get("DKVERIFY") is not None for r in [*written, *compiled])
    if not (trusted or wired or named or dkverify):
        return ok(CHECK, source, "quarantine-queue not configured")
    if not wired:
        if named:
            return fail(
                CHECK,
                cdb,
                f"{source} sets QMAILQUEUE to {PROGRAM}, but its compiled "
                "cdb (what tcpserver reads) does not: incoming mail is not verified",
                rebuild,
            )
        program = shutil.which(PROGRAM) or f"/usr/local/bin/{PROGRAM}"
        return fail(
            CHECK,
            cdb,
            f"no rule sets QMAILQUEUE to {PROGRAM}: incoming mail is not "
            "verified and forged Authentication-Results stay",
            f'add QMAILQUEUE="{program}" to the :allow rules of {source}, then {rebuild}',
        )
    programs = sorted({(r.get("QMAILQUEUE") or "").strip() for r in wired})
    broken = [p for p in programs if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if broken:
        return fail(
            CHECK,
            cdb,
            f"QMAILQUEUE names {broken[0]}, which is not an executable file: "
            "qmail-smtpd refuses every message (451)",
            f"install {PROGRAM} there or correct the rule, then {rebuild}",
        )
    stranger = tcprules.match(database, STRANGER)
    if stranger is not None and not stranger.deny and not is_queue(stranger.get("QMAILQUEUE")):
        return warn(
            CHECK,
            cdb,
            f"{len(wired)} rule(s) set QMAILQUEUE to {PROGRAM}, but not the rule a client "
            f"from the internet gets ({stranger.address or 'the default'!r}): its mail is "
            "not verified",
            f"add QMAILQUEUE to that rule too, then {rebuild}",
        )
    return ok(CHECK, cdb, f"{len(wired)} rule(s) set QMAILQUEUE to {', '.join(programs)}")
