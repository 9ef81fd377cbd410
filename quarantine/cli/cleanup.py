"""`quarantine cleanup`: removes old debris from the tmp/ directories of every
vpopmail Maildir (quarantine/tmpclean.py does the work). Takes the group's
Context as `ctx.obj`, like the trainer's commands.
"""

from __future__ import annotations

import json

import click

from quarantine import config as config_module
from quarantine import discovery, tmpclean
from quarantine.cli.group import ConfigFailure, Context, check_users, discovery_options


@click.command()
@click.option(
    "--older-than",
    metavar="AGE",
    help="Remove debris untouched for AGE (36h, 2d, 90m); default cleanup.tmp_age (36h).",
)
@discovery_options
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for monitoring).")
@click.option(
    "-q", "--quiet", is_flag=True, help="Print the summary only when something failed (for cron)."
)
@click.pass_obj
@click.pass_context
def cleanup(
    ctx: click.Context,
    obj: Context,
    older_than: str | None,
    domains: tuple[str, ...],
    users: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Remove what killed deliveries left in Maildir tmp/ directories.

    Files, symlinks, FIFOs and half-built folders in tmp/ of each Maildir and
    of its folders, once untouched (atime, mtime and ctime) for AGE. As root
    it works as each domain's uid/gid. Exit 0 all done, 1 something could not
    be removed or read, 2 usage or configuration error."""
    age = None
    if older_than is not None:
        try:
            age = config_module.parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
    check_users(users)
    options = discovery.Options(domains, users, age, dry_run)
    try:
        report = tmpclean.run(obj.config, options)
    except discovery.CommandError as exc:
        raise ConfigFailure(str(exc)) from None
    code = report.exit_code
    for error in report.sweep.errors:
        click.echo(f"quarantine cleanup: {error}", err=True)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=1))
    else:
        if dry_run:
            for item in report.sweep.listing:
                click.echo(f"would {item['action']}: {item['path']}")
        if not quiet or code != tmpclean.OK:
            click.echo(report.paragraph())
    ctx.exit(code)


COMMANDS = (cleanup,)
