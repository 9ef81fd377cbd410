"""The admin command line (click): the group with every command registered,
and main(), which maps a command's result to an exit code. `quarantine
deliver` does not come through here (bin/quarantine runs quarantine/deliver.py
straight away); the `deliver` command only forwards to it.
"""

from __future__ import annotations

import sys

import click

from quarantine import qmail
from quarantine.cli import auth, cleanup, digest, doctor, keys, migrate, train
from quarantine.cli import config as _config  # noqa: F401  (registers config check/show)
from quarantine.cli import mail as _mail  # noqa: F401  (deliver, sign, verify, demo)
from quarantine.cli import optin as _optin  # noqa: F401  (optin, optout, optins)
from quarantine.cli.group import ConfigFailure, Context, cli, pass_context

__all__ = ["ConfigFailure", "Context", "cli", "main", "pass_context", "run"]

# click.command()s collected in COMMANDS
for _module in (train, auth, cleanup, migrate, digest, keys, doctor):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


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
