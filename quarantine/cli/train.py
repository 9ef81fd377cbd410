"""The trainer's commands: `quarantine train`
(one run), `quarantine stats` (what sits in Junk, what the last run did) and
`quarantine schedule` (runs the trainer on train.schedule with APScheduler).
They take the group's shared Context (quarantine/cli/group.py) as `ctx.obj`.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

import click

from quarantine import config as config_module
from quarantine import discovery
from quarantine import stats as stats_module
from quarantine import train as train_module
from quarantine.cli.group import ConfigFailure, Context, check_users, discovery_options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any


def config_failure(text: str) -> click.ClickException:
    """The group's configuration error (exit 2)."""
    return ConfigFailure(text)


def _age(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return config_module.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None


def _options(
    domains: tuple[str, ...], users: tuple[str, ...], older_than: str | None, dry_run: bool
) -> discovery.Options:
    check_users(users)
    return discovery.Options(domains, users, _age(older_than), dry_run)


class StopOnSignal:
    """SIGTERM and SIGINT ask the run to stop after the current batch (learned
    messages are deleted, the journal synced, the state recorded); a second
    signal of the same kind is not caught again."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.saved: dict[int, object] = {}

    def __enter__(self) -> Callable[[], bool]:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.saved[signum] = signal.signal(signum, self._handle)
        return self.event.is_set

    def _handle(self, signum: int, frame: object) -> None:
        self.event.set()
        click.echo("quarantine train: stopping after the current batch", err=True)
        signal.signal(signum, signal.SIG_DFL)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


@click.command()
@discovery_options
@click.option(
    "--older-than",
    metavar="AGE",
    help="Learn messages older than AGE (5d, 36h, 90m); default train.age.",
)
@click.option(
    "--dry-run", is_flag=True, help="List what would be learned, deleted and moved; change nothing."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for monitoring).")
@click.option(
    "-q", "--quiet", is_flag=True, help="Print the summary only when something failed (for cron)."
)
@click.pass_obj
@click.pass_context
def train(
    ctx: click.Context,
    obj: Context,
    domains: tuple[str, ...],
    users: tuple[str, ...],
    older_than: str | None,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Teach SpamAssassin the aged mail in Junk folders, then delete it.

    Exit 0 all done, 1 some folders failed, 2 usage or configuration error,
    75 another run holds the lock."""
    options = _options(domains, users, older_than, dry_run)
    config = obj.config
    with StopOnSignal() as stop:
        try:
            report = train_module.run(config, options, stop)
        except train_module.TrainError as exc:
            raise config_failure(str(exc)) from None
        except train_module.Locked as exc:
            click.echo(f"quarantine train: {exc}", err=True)
            ctx.exit(train_module.LOCKED)
    code = report.exit_code
    for error in [*report.summary.errors, *report.warnings]:
        click.echo(f"quarantine train: {error}", err=True)
    for note in report.summary.notes:
        click.echo(f"quarantine train: note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=1))
    else:
        if dry_run:
            for item in report.summary.listing:
                to = f" -> {item['to']}" if "to" in item else ""
                click.echo(f"would {item['action']}: {item['path']}{to}")
        if not quiet or code != train_module.OK:
            click.echo(report.paragraph())
    ctx.exit(code)


@click.command()
@discovery_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
@click.pass_context
def stats(
    ctx: click.Context,
    obj: Context,
    domains: tuple[str, ...],
    users: tuple[str, ...],
    as_json: bool,
) -> None:
    """What sits in the Junk folders (per domain and user) and what the last
    `quarantine train` run did."""
    options = _options(domains, users, None, True)
    try:
        data = stats_module.stats(obj.config, options)
    except discovery.CommandError as exc:
        raise config_failure(str(exc)) from None
    errors = data["errors"]
    assert isinstance(errors, list)
    for error in errors:
        click.echo(f"quarantine stats: {error}", err=True)
    if as_json:
        click.echo(json.dumps(data, indent=1))
    else:
        for line in _stats_lines(data):
            click.echo(line)
    ctx.exit(1 if errors else 0)


def _stats_lines(data: dict[str, object]) -> Iterator[str]:
    rows = data["folders"]
    age = data["age_seconds"]
    assert isinstance(rows, list) and isinstance(age, int)
    due_head = f"older than {discovery.age_text(age)}"
    yield f"{'mailbox':<40} {'folder':<10} {'messages':>9} {'bytes':>12} {due_head:>14}  oldest"
    totals = {"messages": 0, "bytes": 0, "due": 0}
    domain = None
    for row in rows:
        assert isinstance(row, dict)
        if row["domain"] != domain and domain is not None:
            yield ""
        domain = row["domain"]
        for key in totals:
            totals[key] += int(row[key])
        oldest = row["oldest"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(oldest)) if oldest else "-"
        yield (
            f"{row['address']:<40} {row['folder']:<10} {row['messages']:>9} "
            f"{row['bytes']:>12} {row['due']:>14}  {when}"
        )
    yield (
        f"{'total (' + str(len(rows)) + ' folders)':<51} {totals['messages']:>9} "
        f"{totals['bytes']:>12} {totals['due']:>14}"
    )
    store = data.get("bayes")
    if isinstance(store, dict):
        yield ""
        if "error" in store:
            yield f"bayes: {store['store'] or 'store'}: not read: {store['error']}"
        else:
            yield f"bayes: {store['store']}: nspam {store['nspam']}, nham {store['nham']}"
    last = data.get("last_run")
    if isinstance(last, dict):
        yield ""
        yield f"last run: {last.get('started', '?')}, exit {last.get('exit_code', '?')}"
        yield str(last.get("summary", ""))
    else:
        yield ""
        yield "last run: none recorded"


@click.command()
@click.option("--now", is_flag=True, help="Also run once right away.")
@click.pass_obj
@click.pass_context
def schedule(ctx: click.Context, obj: Context, now: bool) -> None:
    """Run `quarantine train`, then `quarantine cleanup`, on train.schedule
    (cron syntax), `quarantine digest` on digest.schedule and `quarantine keys
    rotate` on keys.schedule when they are set, until stopped.

    One run at a time; a run missed by up to train.misfire_grace still
    starts; SIGTERM or SIGINT stops it cleanly (a run in progress finishes
    its current batch first). One log line per run on stderr. For
    daemontools, runit or systemd (Type=simple)."""
    import logging

    from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
        BackgroundScheduler,
    )
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    config = obj.config
    tcfg = config.train
    trigger = _cron(config, "train.schedule", tcfg.schedule, CronTrigger)
    try:
        train_module.check_config(config)
    except train_module.TrainError as exc:
        raise config_failure(str(exc)) from None
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    stop = threading.Event()
    busy = threading.Lock()

    def log(text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sys.stderr.write(f"{stamp} quarantine schedule: {text}\n")
        sys.stderr.flush()

    def job() -> None:
        with busy:
            if stop.is_set():
                return
            try:
                report = train_module.run(config, discovery.Options(), stop.is_set)
            except (train_module.TrainError, train_module.Locked) as exc:
                code = train_module.USAGE
                if isinstance(exc, train_module.Locked):
                    code = train_module.LOCKED
                log(f"run exit {code}: {exc}")
                return
            except Exception as exc:  # keep the scheduler alive; the next run may work
                log(f"run failed: {type(exc).__name__}: {exc}")
                return
            for error in [*report.summary.errors[:20], *report.warnings]:
                log(f"error: {error}")
            log(f"run exit {report.exit_code}: {report.paragraph()}")
            cleanup()

    def cleanup() -> None:
        """The nightly `quarantine cleanup` as well (cleanup.tmp_age), so a
        site that runs only this service still loses its tmp/ debris."""
        from quarantine import tmpclean

        if stop.is_set():
            return
        try:
            swept = tmpclean.run(config, discovery.Options())
        except Exception as exc:  # keep the scheduler alive
            log(f"cleanup failed: {type(exc).__name__}: {exc}")
            return
        for error in swept.sweep.errors[:20]:
            log(f"cleanup error: {error}")
        log(f"cleanup exit {swept.exit_code}: {swept.paragraph()}")

    scheduler = BackgroundScheduler()

    def add(run: Callable[[], None], when: object, name: str) -> None:
        """One run at a time; a missed one still starts within misfire_grace."""
        scheduler.add_job(
            run,
            when,
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=tcfg.misfire_grace or None,
        )

    keys_trigger = _keys_trigger(config, CronTrigger)
    if keys_trigger is not None:
        add(lambda: _rotate_keys(config, busy, stop, log), keys_trigger, "keys")
    add(job, trigger, "train")
    if now:
        scheduler.add_job(job, id="train-now", max_instances=1)
    digest_trigger = _digest_trigger(config)
    if digest_trigger is not None:

        def digest_job() -> None:
            from quarantine import digest as digest_module

            with busy:
                if stop.is_set():
                    return
                try:
                    result = digest_module.run(config, discovery.Options())
                except Exception as exc:  # keep the scheduler alive
                    log(f"digest failed: {type(exc).__name__}: {exc}")
                    return
                for error in result.errors[:20]:
                    log(f"digest error: {error}")
                log(f"digest exit {result.exit_code}: {len(result.sent)} sent")

        add(digest_job, digest_trigger, "digest")

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    log(f"started: train.schedule {tcfg.schedule!r}, next run {_next(trigger)}")
    if digest_trigger is not None:
        log(f"digest.schedule {config.digest.schedule!r}, next digest {_next(digest_trigger)}")
    if keys_trigger is not None:
        log(f"keys.schedule {config.keys.schedule!r}, next key rotation {_next(keys_trigger)}")
        overdue = _keys_overdue(config)
        if overdue:
            log(overdue)
    scheduler.start()
    # The scheduler and the runs live in threads; this one only waits for a
    # stop, with a short timeout. Python runs signal handlers in this thread,
    # and a signal the kernel hands to another thread (one in fork, select or
    # waitpid for a run) does not wake a wait without a timeout: with
    # BlockingScheduler's wait until the next run, a SIGTERM sent while the
    # cleanup ran was not acted on at all (the schedule tests hung about half
    # the time).
    while not stop.wait(0.5):
        pass
    scheduler.shutdown(wait=False)
    if busy.locked():
        log("stopping: waiting for the current run to finish its batch")
    with busy:
        pass
    log("stopped")
    ctx.exit(0)


def _cron(config: config_module.Config, setting: str, line: str, cron: Any) -> Any:
    """The trigger (`cron`: apscheduler's CronTrigger) of the crontab `line`
    that the setting named `setting` holds; a configuration error (exit 2)
    naming the file and the setting when it is not one."""
    try:
        return cron.from_crontab(line)
    except ValueError as exc:
        raise config_failure(f"{config.source or '(defaults)'}: {setting}: {exc}") from None


def _digest_trigger(config: config_module.Config) -> object | None:
    """The cron trigger of digest.schedule, None when it is not set."""
    from apscheduler.triggers.cron import CronTrigger

    if not config.digest.schedule:
        return None
    trigger: object = _cron(config, "digest.schedule", config.digest.schedule, CronTrigger)
    return trigger


def _keys_trigger(config: config_module.Config, cron: Any) -> Any:
    """The CronTrigger of keys.schedule, None when it is off (the default)."""
    if not config.keys.schedule:
        return None
    return _cron(config, "keys.schedule", config.keys.schedule, cron)


def _keys_overdue(config: config_module.Config) -> str:
    """A warning naming the domains whose active keys are past keys.max_age
    (the next scheduled run rolls them all at once); "" when none are."""
    from quarantine.auth import keystate, rotation

    try:
        entries = rotation.status(config)
    except (rotation.RotationError, keystate.StateError) as exc:
        return f"keys: cannot read the key state: {exc}"
    due = [
        str(e["domain"])
        for e in entries
        if isinstance(e.get("active"), dict)
        and int(e["active"]["age_seconds"]) >= config.keys.max_age  # type: ignore[index]
    ]
    if not due:
        return ""
    named = ", ".join(due[:5]) + (f" and {len(due) - 5} more" if len(due) > 5 else "")
    return (
        f"keys: {len(due)} domain{'s' if len(due) > 1 else ''} ({named}) with keys older "
        "than keys.max_age: the next key rotation rolls them (see quarantine keys status)"
    )


def _rotate_keys(
    config: config_module.Config,
    busy: threading.Lock,
    stop: threading.Event,
    log: Callable[[str], None],
) -> None:
    """One `quarantine keys rotate` run (never at the same time as a training
    run: one job at a time keeps the load predictable)."""
    from quarantine.auth import keystate, rotation

    with busy:
        if stop.is_set():
            return
        try:
            report = rotation.rotate(config)
        except (rotation.RotationError, keystate.Locked, keystate.StateError) as exc:
            log(f"keys rotate: {exc}")
            return
        except Exception as exc:  # keep the scheduler alive; the next run may work
            log(f"keys rotate failed: {type(exc).__name__}: {exc}")
            return
        for line in report.lines:
            log(f"keys: {line}")
        for problem in report.problems:
            log(f"keys error: {problem}")
        log(f"keys rotate exit {report.exit_code}")


def _next(trigger: object) -> str:
    import datetime

    fire = trigger.get_next_fire_time(None, datetime.datetime.now().astimezone())  # type: ignore[attr-defined]
    return fire.strftime("%Y-%m-%d %H:%M %Z") if fire else "never"


COMMANDS = (train, stats, schedule)


def add_to(group: click.Group) -> None:
    """Register the commands on `group`: a test's own group (the real one
    gets COMMANDS in quarantine/cli/__init__.py)."""
    for command in COMMANDS:
        group.add_command(command)
