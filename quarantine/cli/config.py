"""`quarantine config check` and `quarantine config show`: validate a
configuration file and compile its cache for the mail path; print the
effective configuration.
"""

from __future__ import annotations

import click

from quarantine import config as config_module
from quarantine import qmail
from quarantine.cli.group import ConfigFailure, Context, cli, environ, pass_context


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
    target, _ = config_module.find_path(path or obj.config_path, environ())
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
