"""`quarantine digest` (mail each user a summary of new Junk mail;
quarantine/digest.py), `quarantine digest setup @DOMAIN` (the release
address's .qmail file; quarantine/releasesetup.py) and `quarantine release`
(forwards to quarantine/release.py, which bin/quarantine runs directly).
"""

from __future__ import annotations

import click

from quarantine import qmail
from quarantine.cli.group import (
    ConfigFailure,
    Context,
    check_users,
    discovery_options,
    forwarded_args,
)


@click.group(invoke_without_command=True)
@discovery_options
@click.option("--dry-run", is_flag=True, help="Say who would get a digest; send nothing.")
@click.pass_obj
@click.pass_context
def digest(
    ctx: click.Context,
    obj: Context,
    domains: tuple[str, ...],
    users: tuple[str, ...],
    dry_run: bool,
) -> None:
    """Mail each user a summary of the mail filed into Junk since the last one.

    One message per user (text and HTML) listing date, sender, subject, score
    and rule, each with a release address. digest.enabled says who gets one.
    Exit 0 all sent, 1 some mailbox failed, 2 usage or configuration error."""
    if ctx.invoked_subcommand is not None:
        return
    from quarantine import digest as digest_module
    from quarantine import discovery

    check_users(users)
    options = discovery.Options(domains, users, None, dry_run)
    try:
        result = digest_module.run(obj.config, options)
    except discovery.CommandError as exc:
        raise ConfigFailure(str(exc)) from None
    for line in result.sent:
        click.echo(line)
    for line in result.skipped:
        click.echo(f"note: {line}", err=True)
    for line in result.errors:
        click.echo(f"error: {line}", err=True)
    click.echo(
        f"digest: {len(result.sent)} sent, {result.users} mailboxes looked at, "
        f"{len(result.errors)} errors"
    )
    ctx.exit(result.exit_code)


@digest.command()
@click.argument("target", metavar="@DOMAIN")
@click.option("--remove", is_flag=True, help="Delete the file (release addresses stop working).")
@click.option("--command", "command", metavar="PATH",
              help="The quarantine program for the .qmail line (default: this one).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
@click.option("--force", is_flag=True, help="Write even if the domain's uid cannot run it.")
@click.pass_obj
@click.pass_context
def setup(
    ctx: click.Context,
    obj: Context,
    target: str,
    remove: bool,
    command: str | None,
    dry_run: bool,
    force: bool,
) -> None:
    """Write (or --remove) the domain's .qmail-quarantine-release-default."""
    from quarantine import dotqmail, releasesetup

    try:
        done = releasesetup.setup(
            obj.config, target, command, remove=remove, dry_run=dry_run, force=force
        )
    except dotqmail.BadTarget as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(qmail.USAGE)
    except dotqmail.OptinError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(1)
    click.echo(done.message(dry_run))


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def release(ctx: click.Context) -> None:
    """Release one message from Junk: run by qmail-local for release addresses."""
    from quarantine import release as release_module

    ctx.exit(release_module.main(forwarded_args(ctx)))


COMMANDS = (digest, release)
