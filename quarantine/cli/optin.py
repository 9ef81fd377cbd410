"""`quarantine optin`, `optout` and `optins`: the per-user and per-domain
switches of the junk filter (quarantine/dotqmail.py edits the .qmail files).
"""

from __future__ import annotations

import click

from quarantine import qmail
from quarantine.cli.group import Context, cli, pass_context

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.dotqmail import Change


class OptinFailure(click.ClickException):
    """optin/optout/optins refused or failed: exit 1."""


class OptinUsage(OptinFailure):
    """An address that is no `user@domain` or `@domain`: exit 2, as for usage."""

    exit_code = qmail.USAGE


def _optin_failure(exc: Exception) -> OptinFailure:
    from quarantine.dotqmail import BadTarget

    return OptinUsage(str(exc)) if isinstance(exc, BadTarget) else OptinFailure(str(exc))


def _show_change(change: Change, dry_run: bool) -> None:
    """What optin or optout did; the diff, message and notes escape every name."""
    from quarantine.names import show

    if dry_run and change.changed:
        click.echo(change.diff(), nl=False)
        click.echo(f"(dry run: {show(change.path)} not written)", err=True)
    else:
        click.echo(change.message())
    for note in change.notes:
        click.echo(f"note: {note}", err=True)


@cli.command()
@click.argument("target", metavar="USER@DOMAIN|@DOMAIN")
@click.option("--command", "command", metavar="PATH",
              help="The quarantine program for the .qmail line (default: this one).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the change as a diff; write nothing.")
@click.option("--force", is_flag=True,
              help="Write even if the domain's uid seems unable to run the filter.")  # fmt: skip
@pass_context
def optin(obj: Context, target: str, command: str | None, dry_run: bool, force: bool) -> None:
    """Put the junk filter first in .qmail-USER (or the domain's .qmail-default).

    A new .qmail-USER gets the domain's normal delivery line after the filter."""
    from quarantine import dotqmail

    try:
        change = dotqmail.optin(obj.config, target, command, dry_run=dry_run, force=force)
    except dotqmail.OptinError as exc:
        raise _optin_failure(exc) from None
    _show_change(change, dry_run)


@cli.command()
@click.argument("target", metavar="USER@DOMAIN|@DOMAIN")
@click.option("--dry-run", is_flag=True, help="Print the change as a diff; write nothing.")
@pass_context
def optout(obj: Context, target: str, dry_run: bool) -> None:
    """Remove the junk filter lines optin added (and a file it created)."""
    from quarantine import dotqmail

    try:
        change = dotqmail.optout(obj.config, target, dry_run=dry_run)
    except dotqmail.OptinError as exc:
        raise _optin_failure(exc) from None
    _show_change(change, dry_run)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {address, file}.")
@pass_context
def optins(obj: Context, as_json: bool) -> None:
    """List who is opted in, one address per line (@DOMAIN: the whole domain)."""
    from quarantine import dotqmail
    from quarantine.names import show

    try:
        found = dotqmail.optins(obj.config)
    except dotqmail.OptinError as exc:
        raise _optin_failure(exc) from None
    if as_json:
        import json

        rows = [{"address": e.address, "file": e.path} for e in found.entries]
        click.echo(json.dumps(rows, indent=2))
    else:
        for entry in found.entries:
            click.echo(show(entry.address))
    if found.problems:
        raise OptinFailure("\n".join(found.problems))
