"""The click group every admin command registers on, and what the commands
share: the --config option loaded on demand (Context) and the configuration
error (exit 2). Imports no command module, so each of them can import it.
"""

from __future__ import annotations

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


def environ() -> dict[str, str]:
    import os

    return dict(os.environ)
