"""The click group every admin command registers on, and what the commands
share: the --config option loaded on demand (Context), the configuration
error (exit 2), the --domain/--user options of the commands that walk the
mailboxes, and the arguments of a command forwarded to its own program.
Imports no command module, so each of them can import it.
"""

from __future__ import annotations

import click

from quarantine import config as config_module
from quarantine import qmail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    F = TypeVar("F", bound=Callable[..., object])


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


def discovery_options(command: F) -> F:
    """--domain DOMAIN and --user USER@DOMAIN (each repeatable), given to the
    command as `domains` and `users`: train, stats, cleanup, digest."""
    user = click.option(
        "--user",
        "users",
        multiple=True,
        metavar="USER@DOMAIN",
        help="Only this mailbox (repeatable).",
    )
    domain = click.option(
        "--domain",
        "domains",
        multiple=True,
        metavar="DOMAIN",
        help="Only this domain (repeatable).",
    )
    return domain(user(command))


def check_users(users: tuple[str, ...]) -> None:
    """Each --user must name a mailbox as user@domain (a usage error)."""
    for user in users:
        if "@" not in user:
            raise click.BadParameter(f"{user!r}: give user@domain", param_hint="--user")


def forwarded_args(ctx: click.Context) -> list[str]:
    """The arguments of a command that forwards to its own program (deliver,
    release), with the group's --config put first unless they name one."""
    args = list(ctx.args)
    found = ctx.find_object(Context)
    if found is not None and found.config_path and "--config" not in args:
        args = ["--config", found.config_path, *args]
    return args


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
