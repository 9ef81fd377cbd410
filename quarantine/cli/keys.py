"""Key roll-over commands: `quarantine keys status [--json]` (per domain the
active selector, its age, what is pending and retiring) and `quarantine keys
rotate [--domain D]... [--now]` (one run of quarantine/auth/rotation.py).
Exit 0 ok, 1 a domain could not be advanced, 2 configuration, 75 locked.
"""

from __future__ import annotations

import json

import click

from quarantine import qmail
from quarantine.cli.group import ConfigFailure, Context

LOCKED = 75


class Problem(click.ClickException):
    """A state file that cannot be read or written: exit 1."""

    exit_code = 1


@click.group()
def keys() -> None:
    """Roll every signing domain's DKIM keys over (docs/keys.md)."""


@keys.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for monitoring).")
@click.pass_obj
def keys_status(obj: Context, as_json: bool) -> None:
    """Per domain: the active selector and its age, what signs now, what is
    published and waiting for DNS, and what is retiring."""
    from quarantine.auth import keystate, rotation

    try:
        entries = rotation.status(obj.config)
    except rotation.RotationError as exc:
        raise ConfigFailure(str(exc)) from None
    except keystate.StateError as exc:
        raise Problem(str(exc)) from None
    if as_json:
        click.echo(json.dumps(entries, indent=1, sort_keys=True))
        return
    for line in rotation.status_lines(entries):
        click.echo(line)


@keys.command("rotate")
@click.option(
    "--domain", "domains", multiple=True, metavar="DOMAIN", help="Only this domain (repeatable)."
)
@click.option("--now", is_flag=True, help="Start a new key whatever the active one's age.")
@click.pass_obj
@click.pass_context
def keys_rotate(ctx: click.Context, obj: Context, domains: tuple[str, ...], now: bool) -> None:
    """Advance every signing domain's keys one run: make a new key when the
    active one is older than keys.max_age (or with --now), publish it, sign
    with it once every nameserver serves it, withdraw the old one after
    keys.overlap. Safe to run again at any time; a killed run is resumed."""
    from quarantine.auth import keystate, rotation

    try:
        report = rotation.rotate(obj.config, domains, now)
    except rotation.RotationError as exc:
        raise ConfigFailure(str(exc)) from None
    except keystate.Locked as exc:
        click.echo(f"quarantine keys: {exc}", err=True)
        ctx.exit(LOCKED)
    except keystate.StateError as exc:
        raise Problem(str(exc)) from None
    for line in report.lines:
        click.echo(qmail.log_safe(line))
    for problem in report.problems:
        click.echo(f"quarantine keys: {qmail.log_safe(problem)}", err=True)
    ctx.exit(report.exit_code)


COMMANDS = (keys,)
