"""`quarantine doctor`: check the whole installation and print one line per
finding, or JSON; quarantine/doctor.py does the work. Exit 0 nothing failed,
1 something did, 2 usage.
"""

from __future__ import annotations

import click

from quarantine import discovery
from quarantine.cli.group import ConfigFailure, Context, environ


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of findings.")
@click.option(
    "--domain", "domains", multiple=True, metavar="DOMAIN", help="Only this domain (repeatable)."
)
@click.pass_obj
@click.pass_context
def doctor(ctx: click.Context, obj: Context, as_json: bool, domains: tuple[str, ...]) -> None:
    """Check the installation: filter lines, Bayes database, keys, DNS,
    configuration, queue wiring, trainer, Maildirs.

    One line per finding: `ok|warn|FAIL  CHECK-ID  SUBJECT  message -> fix`.
    As root, mailbox checks run as each domain's uid. Exit 0 when nothing
    is FAIL, 1 when something is, 2 on usage errors."""
    from quarantine import doctor as doctor_module

    try:
        findings = doctor_module.run(obj.config_path, environ(), domains)
    except discovery.CommandError as exc:
        raise ConfigFailure(str(exc)) from None
    if as_json:
        click.echo(doctor_module.as_json(findings))
    else:
        for line in doctor_module.lines(findings):
            click.echo(line)
    ctx.exit(doctor_module.exit_code(findings))


COMMANDS = (doctor,)
