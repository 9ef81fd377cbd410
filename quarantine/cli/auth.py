"""Key and DNS record commands: `quarantine
keygen` (a safe dknewkey), `quarantine dns` (the records to publish, BIND or
tinydns-data) and `quarantine dns check` (what DNS serves now). Exit 0 ok,
1 problem found, 2 usage. They take the group's shared Context as `ctx.obj`.
"""

from __future__ import annotations

import click

from quarantine import qmail
from quarantine.cli.group import Context


class Problem(click.ClickException):
    """A refused or failed operation: exit 1."""

    exit_code = 1


class Usage(click.ClickException):
    """A bad name, type or size: exit 2, as for usage errors."""

    exit_code = qmail.USAGE


def _failure(exc: Exception) -> click.ClickException:
    from quarantine.auth import keys

    return Usage(str(exc)) if isinstance(exc, keys.KeyUsage) else Problem(str(exc))


@click.command()
@click.argument("domain")
@click.option("--selector", "-s", metavar="S", help="Selector (default: dkim.selector).")
@click.option(
    "--type",
    "key_type",
    type=click.Choice(["rsa", "ed25519"], case_sensitive=False),
    help="Key type (default: dkim.key_type).",
)
@click.option("--bits", type=int, metavar="N", help="RSA key size (default: dkim.bits, 2048).")
@click.option(
    "--force", is_flag=True, help="Replace an existing key (publish the new record first!)."
)
@click.pass_obj
def keygen(
    obj: Context,
    domain: str,
    selector: str | None,
    key_type: str | None,
    bits: int | None,
    force: bool,
) -> None:
    """Generate a DKIM key for DOMAIN into <keydir>/DOMAIN/SELECTOR.

    The key file is mode 0640, group qmail when that group exists; the DNS
    record goes beside it in SELECTOR.pub. An existing key is never replaced
    without --force. RSA under 1024 bits is refused."""
    from quarantine.auth import keys

    try:
        made = keys.keygen(obj.config, domain, selector, key_type, bits, force)
    except (keys.KeyFailure, OSError) as exc:
        raise _failure(exc) from None
    size = f"{made.bits}-bit RSA" if made.key_type == "rsa" else "ed25519"
    click.echo(f"{made.path}: {size} key for {made.domain}, selector {made.selector}")
    if made.group is None:
        click.echo(
            f"note: no group {keys.KEY_GROUP!r} here: the key is readable by its owner only; "
            "make it readable by the user quarantine-remote runs as",
            err=True,
        )
    click.echo(
        f"{made.pub_path}: publish this TXT record "
        f"(`quarantine dns {made.domain}` prints it as zone file lines):"
    )
    click.echo(f"{made.selector}._domainkey.{made.domain}. IN TXT {made.record}")


class _DnsGroup(click.Group):
    """`dns DOMAIN [options]` prints the records, `dns check DOMAIN` checks
    them: anything that is not a subcommand (or help) goes to the hidden
    `records` command, so a group argument never swallows `check`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["records", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DnsGroup)
def dns() -> None:
    """The DNS records for DOMAIN: print them, or check what DNS serves.

    \b
    quarantine dns DOMAIN [--format bind|tinydns] [--legacy]
        prints the TXT records to publish: SPF, one DKIM record per key,
        DMARC, and with --legacy the DomainKeys policy and ADSP records.
    quarantine dns check DOMAIN [--legacy]
        asks DNS: published, missing or different; exit 1 on any problem."""


@dns.command("records", hidden=True)
@click.argument("domain")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["bind", "tinydns"]),
    default="bind",
    show_default=True,
    help="Zone file syntax.",
)
@click.option("--legacy", is_flag=True, help="Also the DomainKeys policy and ADSP records.")
@click.pass_obj
def dns_records(obj: Context, domain: str, fmt: str, legacy: bool) -> None:
    """Print the TXT records DOMAIN should publish: SPF, DKIM, DMARC."""
    from quarantine.auth import keys, records

    config = obj.config
    try:
        made = records.build(config, domain, legacy)
    except (keys.KeyFailure, records.RecordProblem) as exc:
        raise _failure(exc) from None
    click.echo(records.render(made.records, fmt, config.dns.ttl), nl=False)
    for note in made.notes:
        click.echo(f"note: {note}", err=True)


@dns.command("check")
@click.argument("domain")
@click.option("--legacy", is_flag=True, help="Also the DomainKeys policy and ADSP records.")
@click.pass_obj
def dns_check(obj: Context, domain: str, legacy: bool) -> None:
    """Ask DNS for DOMAIN's records: published, missing or different.

    Exit 0 when all are published and right, 1 on any problem (each with the
    record to publish), 2 on usage errors."""
    from quarantine.auth import dnscheck, keys, records

    try:
        findings = dnscheck.check(obj.config, domain, legacy)
    except (keys.KeyFailure, records.RecordProblem) as exc:
        raise _failure(exc) from None
    for finding in findings:
        for line in finding.lines():
            click.echo(line)
    problems = [f for f in findings if not f.ok]
    if problems:
        # An exception, not ctx.exit(1): cli.main() returns 0 after a ctx.exit
        # in non-standalone mode, and the exit code must reach the shell.
        raise Problem(f"{domain}: {len(problems)} of {len(findings)} records need attention")


COMMANDS = (keygen, dns)


def add_to(group: click.Group) -> None:
    """Register the commands on `group`: a test's own group (the real one
    gets COMMANDS in quarantine/cli/__init__.py)."""
    for command in COMMANDS:
        group.add_command(command)
