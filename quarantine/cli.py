"""The admin command line (click): parses options, calls one function, maps
its result to an exit code. `quarantine deliver` does not come through here
(see main.py); the `deliver` entry below only forwards to it.
"""

from __future__ import annotations

import sys

import click

from quarantine import cli_auth, cli_cleanup, cli_train, qmail
from quarantine import config as config_module

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.dotqmail import Change


class ConfigFailure(click.ClickException):
    """A configuration error: exit 2, as for usage errors."""

    exit_code = qmail.USAGE


class Context:
    """What every subcommand shares: the --config option, loaded on demand."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: config_module.Config | None = None

    @property
    def config(self) -> config_module.Config:
        if self._config is None:
            try:
                self._config = config_module.load(self.config_path)
            except qmail.ConfigError as exc:
                raise ConfigFailure(str(exc)) from None
        return self._config


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="Configuration file (default: $QUARANTINE_CONFIG, then /etc/quarantine/quarantine.yaml).",
)
@click.version_option(package_name="quarantine")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Junk filing, Bayes training and mail authentication for qmail + vpopmail."""
    ctx.obj = Context(config_path)


cli_train.add_to(cli)  # train, stats, schedule
cli_auth.add_to(cli)  # keygen, dns, dns check
cli_cleanup.add_to(cli)  # cleanup (Maildir tmp/ debris)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def deliver(ctx: click.Context) -> None:
    """The junk filter qmail-local runs: |preline quarantine deliver."""
    from quarantine import deliver as deliver_module

    args = list(ctx.args)
    path = ctx.find_object(Context)
    if path is not None and path.config_path and "--config" not in args:
        args = ["--config", path.config_path, *args]
    ctx.exit(deliver_module.main(args))


@cli.group("config")
def config_group() -> None:
    """Check or show the configuration."""


@config_group.command("check")
@click.argument("path", required=False, metavar="[FILE]")
@pass_context
def config_check(obj: Context, path: str | None) -> None:
    """Validate a configuration file and compile it for the mail path.

    Also checks that the directories and programs it names exist here. The
    compiled copy (FILE.cache, beside it) lets `quarantine deliver` skip the
    YAML parser; it is only used while FILE is unchanged."""
    target, _ = config_module.find_path(path or obj.config_path, _environ())
    if target is None:
        config = config_module.defaults()
        lines: dict[str, int] = {}
    else:
        try:
            config = config_module.load_file(target, read_cache=False)
            with open(target, "rb") as handle:
                lines = config_module.key_lines(handle.read())
        except (qmail.ConfigError, OSError) as exc:
            raise ConfigFailure(str(exc)) from None
    problems = config_module.host_problems(config, lines)
    if problems:
        raise ConfigFailure("\n".join(problems))
    for warning in config_module.trust_warnings(config):
        click.echo(f"warning: {warning}", err=True)
    if target is None:
        click.echo(f"no configuration file ({config_module.DEFAULT_PATH} does not exist): "
                   "the built-in defaults apply and fit this host")  # fmt: skip
    else:
        click.echo(f"{target}: ok")


@config_group.command("show")
@pass_context
def config_show(obj: Context) -> None:
    """Print the effective configuration (file values over built-in defaults)."""
    config = obj.config
    click.echo(f"# from {config.source or 'built-in defaults'}")
    click.echo(config_module.dump_yaml(config), nl=False)


# -- opt-in management: quarantine/dotqmail.py does the work ------------------


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


# -- end of opt-in management -------------------------------------------------


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False), metavar="FILE")
@pass_context
def sign(obj: Context, path: str) -> None:
    """Sign a message file as quarantine-remote would; print the signed message."""
    from quarantine.auth.sign import sign_file

    code, data = sign_file(obj.config, path)
    if code:
        from quarantine.names import show

        click.echo(show(data), err=True)
        raise click.exceptions.Exit(code)
    # Bytes as they are: a message is not text in any one charset, and a
    # re-encoded byte would break the signature just made.
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False), metavar="FILE")
@pass_context
def verify(obj: Context, path: str) -> None:
    """Verify a message file as quarantine-queue would ($TCPREMOTEIP for SPF);
    print the Authentication-Results header and the policy's verdict."""
    from quarantine.auth.verify import verify_file

    code, text = verify_file(obj.config, path)
    click.echo(text, nl=not text.endswith("\n"))
    if code:
        raise click.exceptions.Exit(code)


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the throwaway tree for a look afterwards.")
def demo(keep: bool) -> None:
    """Run the filter end to end on a throwaway vpopmail tree with real SpamAssassin."""
    from quarantine.demo import run_demo

    run_demo(keep)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def main(argv: list[str]) -> int:
    """Run the click group; return its exit code instead of exiting."""
    try:
        # Outside standalone mode click returns what ctx.exit() was given.
        code = cli.main(args=argv, prog_name="quarantine", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        exc.show()
        return qmail.USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 1
    return code if isinstance(code, int) else 0


run = main  # the name the opt-in tests use

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
