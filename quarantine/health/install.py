"""The doctor's checks of the installation as a whole: `config.valid` (the file
loads, names directories and programs that exist, and its compiled cache is
fresh), `train.last-run` (the trainer's state file: the last run clean and at
most two days old).
"""

from __future__ import annotations

import os
import time

from quarantine import config as config_module
from quarantine.health.findings import Finding, fail, ok, warn
from quarantine.qmail import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from quarantine.config import Config

LAST_RUN_MAX = 2 * 86400  # seconds: the trainer runs nightly


def load_config(
    explicit: str | None, environ: Mapping[str, str]
) -> tuple[Config | None, list[Finding]]:
    """The configuration as the commands load it (None when it does not),
    and the config.valid findings. Never writes the cache: a stale one is
    reported, not silently refreshed."""
    path, _ = config_module.find_path(explicit, environ)
    if path is None:
        cfg = config_module.defaults()
        found = [
            ok(
                "config.valid",
                "(defaults)",
                f"no file ({config_module.DEFAULT_PATH} does not exist): built-in defaults",
            )
        ]
        return cfg, found + _host(cfg, {})
    fix = f"quarantine config check {path}"
    try:
        cfg = config_module.load_file(path, read_cache=False, write_cache=False)
        with open(path, "rb") as handle:
            lines = config_module.key_lines(handle.read())
    except ConfigError as exc:
        return None, [fail("config.valid", path, str(exc), f"correct it, then {fix}")]
    except OSError as exc:
        return None, [fail("config.valid", path, f"cannot read: {exc.strerror}")]
    return cfg, [cache_finding(path, fix), *_host(cfg, lines)]


def cache_finding(path: str, fix: str) -> Finding:
    """Whether the compiled cache the mail path reads is the file's own."""
    cache = config_module.cache_path(path)
    if not os.path.lexists(cache):
        return warn(
            "config.valid",
            path,
            f"valid, but no compiled cache ({cache}): quarantine deliver parses the YAML "
            "for every message",
            fix,
        )
    try:
        st = os.stat(path)
    except OSError as exc:
        return fail("config.valid", path, f"cannot stat: {exc.strerror}")
    if config_module.cache_is_current(path, st):
        return ok("config.valid", path, "valid; its compiled cache is current")
    try:
        cst = os.stat(cache)
    except OSError as exc:
        return fail("config.valid", path, f"cannot read its cache {cache}: {exc.strerror}", fix)
    if cst.st_uid != st.st_uid or cst.st_mode & 0o022:
        why = (
            f"its cache {cache} is not owned by the file's owner or is writable by others, "
            "so quarantine deliver ignores it"
        )
    elif cst.st_mtime < st.st_mtime:
        why = f"the file changed after its cache {cache} was compiled"
    else:
        why = f"its cache {cache} was compiled from another version of the file or of quarantine"
    return fail("config.valid", path, f"valid, but stale: {why}", fix)


def _host(cfg: Config, lines: Mapping[str, int]) -> list[Finding]:
    subject = cfg.source or "(defaults)"
    found = [
        fail("config.valid", subject, problem, "install it, or correct the setting")
        for problem in config_module.host_problems(cfg, lines)
    ]
    found += [warn("config.valid", subject, text) for text in config_module.trust_warnings(cfg)]
    return found


def last_run(cfg: Config, now: float | None = None) -> Finding:
    """train.last-run from the state file the trainer writes after each run."""
    from quarantine.train import load_state

    path = cfg.train.state_file
    now = time.time() if now is None else now
    state = load_state(path)
    cron = "install the trainer's cron job (cron/quarantine-train.cron) or timer"
    if state is None:
        if os.path.exists(path):
            return fail("train.last-run", path, "unreadable or not the trainer's state", cron)
        return warn("train.last-run", path, "no run recorded yet", cron)
    started = _started(state.get("started"))
    if started is None:
        try:
            started = os.stat(path).st_mtime
        except OSError:
            started = 0.0
    age = now - started
    when = f"{_ago(age)} ago"
    summary = state.get("summary")
    said = f": {summary}" if isinstance(summary, str) else ""
    if state.get("exit_code") not in (0, None):
        return fail(
            "train.last-run",
            path,
            f"the last run ({when}) failed (exit {state.get('exit_code')}){said}",
            "read its errors (quarantine stats --json), fix them, run quarantine train",
        )
    if age > LAST_RUN_MAX:
        return fail(
            "train.last-run",
            path,
            f"the last run was {when}: the nightly run stopped",
            f"{cron}; check its mail",
        )
    return ok("train.last-run", path, f"the last run ({when}) was clean")


def _started(value: object) -> float | None:
    """The trainer's `started` stamp (local time with its UTC offset)."""
    from datetime import datetime

    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
