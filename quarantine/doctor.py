"""`quarantine doctor`: every check over the installation (quarantine/health/),
in a fixed order, each finding one line `ok|warn|FAIL  CHECK-ID  SUBJECT  message
[-> fix]` (the ids: CHECK_IDS) or one JSON object; exit 1 when any is FAIL.
"""

from __future__ import annotations

import json
import time

from quarantine import discovery
from quarantine.health import bayesdb, install, mailboxes, queuewire, signing
from quarantine.health.findings import FAIL, Finding, fail
from quarantine.qmail import LookupFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from quarantine.config import Config
    from quarantine.vpopmail import Domain

OK = 0
PROBLEM = 1
CHECK_IDS = (
    "config.valid",  # the configuration loads; its compiled cache is fresh
    "queue.wired",  # quarantine-queue configured and set as QMAILQUEUE in the tcp.smtp cdb
    "train.last-run",  # the trainer's last run clean and recent
    "bayes.owner",  # the Bayes database writable by the learner, readable by spamd
    "remote.wrapped",  # with signing keys, qmail-remote is quarantine-remote
    "key.size",  # RSA under 1024 bits fails, under 2048 warns
    "key.perms",  # private keys not world-readable, readable by qmail-remote's user
    "domain.dir",  # a domain directory the walk refuses (symlink, wrong owner)
    "filter.runnable",  # .qmail lines naming quarantine: absolute, runnable by the uid
    "tmp.debris",  # Maildir tmp/ entries older than cleanup.tmp_age
    "imap.subscribed",  # Junk subscribed for the IMAP server(s) in use
    "dns.dkim",  # the published key equals the local one
    "dns.spf",  # an SPF record that passes
    "dns.dmarc",  # a DMARC record with the configured policy
)


def run(
    explicit_config: str | None,
    environ: Mapping[str, str],
    domains: Iterable[str] = (),
    now: float | None = None,
) -> list[Finding]:
    """All findings. discovery.CommandError (usage, exit 2) for a --domain
    that is no vpopmail domain; every other problem is a finding."""
    now = time.time() if now is None else now
    cfg, found = install.load_config(explicit_config, environ)
    if cfg is None:
        found.append(
            fail("config.valid", "(all checks)", "the other checks need the configuration: not run")
        )
        return found
    options = discovery.Options(domains)
    try:
        visit = discovery.find_domains(cfg, options)
    except LookupFailed as exc:  # an unreadable users/assign: a finding, not a crash
        found.append(fail("domain.dir", "users/assign", str(exc)))
        visit = []
    found += checks(cfg, visit, now)
    return found


def checks(cfg: Config, visit: list[Domain], now: float) -> list[Finding]:
    """The checks after the configuration, in the order they print."""
    found = [queuewire.check(cfg), install.last_run(cfg, now)]
    found += bayesdb.check(cfg, visit)
    keys, broken = signing.signing_keys(cfg, [d.name for d in visit])
    found.append(signing.check_remote(cfg, keys))
    found += signing.check_keys(cfg, keys) + broken
    found += mailboxes.check(cfg, visit)
    found += signing.check_dns(cfg, keys)
    return found


def exit_code(findings: Iterable[Finding]) -> int:
    return PROBLEM if any(f.status == FAIL for f in findings) else OK


def lines(findings: Iterable[Finding]) -> list[str]:
    return [f.line() for f in findings]


def as_json(findings: Iterable[Finding]) -> str:
    return json.dumps([f.as_dict() for f in findings], indent=1)
