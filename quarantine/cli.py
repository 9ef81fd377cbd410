"""The admin command line (click): parses options, calls one function, maps
its result to an exit code. `quarantine deliver` does not come through here
(see main.py); the `deliver` entry below only forwards to it.
"""

from __future__ import annotations

import sys

import click

from quarantine import config as config_module
from quarantine import qmail


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


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def main(argv: list[str]) -> int:
    """Run the click group; return its exit code instead of exiting."""
    try:
        cli.main(args=argv, prog_name="quarantine", standalone_mode=False)
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
    return 0


run = main  # the name the opt-in tests use

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
