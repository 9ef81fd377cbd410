"""Commands that handle one message or run the filter: `quarantine deliver`
(forwards to quarantine/deliver.py), `sign`, `verify` and `demo`.
"""

from __future__ import annotations

import sys

import click

from quarantine.cli.group import Context, cli, forwarded_args, pass_context


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def deliver(ctx: click.Context) -> None:
    """The junk filter qmail-local runs: |preline quarantine deliver."""
    from quarantine import deliver as deliver_module

    ctx.exit(deliver_module.main(forwarded_args(ctx)))


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
