"""`quarantine migrate`: move a running qmail server's old junk filter, DKIM
patch and cron loop onto quarantine (quarantine/migrate.py does the work);
a dry run by default, --apply to carry the plan out, --undo to go back.
"""

from __future__ import annotations

import json
import os
import sys

import click

from quarantine.cli.group import ConfigFailure, Context, cli, pass_context

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.config import Config
    from quarantine.migrateplan import Edit, Plan


def _config(obj: Context) -> tuple[Config, str]:
    """The configuration and the file migrate writes its keys into (created
    when it does not exist yet)."""
    from quarantine import config as config_module
    from quarantine.qmail import ConfigError

    path, _ = config_module.find_path(obj.config_path, os.environ)
    path = os.path.abspath(path or config_module.DEFAULT_PATH)
    try:
        if os.path.lexists(path):
            return config_module.load_file(path, write_cache=False), path
        return config_module.defaults(), path
    except ConfigError as exc:
        raise ConfigFailure(str(exc)) from None


def _progress(number: int, total: int) -> None:
    """One stderr line every twentieth of a large tree (and at its end)."""
    step = max(1, total // 20)
    if total >= 50 and (number % step == 0 or number == total):
        click.echo(f"migrate: {number}/{total} domains read", err=True)


def _edit_text(edit: Edit) -> str:
    from quarantine.names import show
    from quarantine.qmailfile import split_lines

    if edit.kind in ("write", "rules"):
        import difflib

        old = split_lines((edit.old or b"").decode("latin-1"))  # at \n only, as qmail reads
        new = split_lines(edit.data.decode("latin-1"))
        lines = difflib.unified_diff(old, new, edit.path, edit.path)
        text = "".join(show(line.removesuffix("\n")) + "\n" for line in lines)
        if edit.kind == "rules":
            text += f"(then: tcprules {show(edit.paths[1])} from {show(edit.path)})\n"
        return text
    return f"{edit.kind} {show(edit.path)} -> {show(edit.target)}  ({edit.why})\n"


def _report(plan: Plan, as_json: bool, mode: str, extra: dict[str, object]) -> None:
    if as_json:
        out: dict[str, object] = {
            "mode": mode,
            "findings": [f.as_json() for f in plan.findings],
            "edits": [
                {"kind": e.kind, "path": e.path, "why": e.why, "target": e.target}
                for e in plan.edits
            ],
            "config": {"file": plan.config_path, "set": plan.config},
            "exit": plan.code,
            **extra,
        }
        click.echo(json.dumps(out, indent=1))
        return
    for finding in plan.findings:
        click.echo(finding.line())
    if mode == "dry-run":
        for edit in plan.edits:
            click.echo(_edit_text(edit), nl=False)
    if plan.config:
        import yaml

        from quarantine.names import show

        click.echo(f"configuration {show(plan.config_path)}:")
        click.echo(yaml.safe_dump(plan.config, sort_keys=False).rstrip())


@cli.command()
@click.option("--apply", "do_apply", is_flag=True, help="Carry the plan out (files saved first).")
@click.option("--undo", is_flag=True, help="Put back every file of the last --apply.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@click.option(
    "--force",
    is_flag=True,
    help="Write .qmail lines the domain's uid cannot run; undo files changed since.",
)
@click.option(
    "--command",
    "command",
    metavar="PATH",
    help="The installed quarantine program the new lines name (default: this one).",
)
@pass_context
@click.pass_context
def migrate(
    ctx: click.Context,
    obj: Context,
    do_apply: bool,
    undo: bool,
    as_json: bool,
    force: bool,
    command: str | None,
) -> None:
    """Move an existing qmail setup onto quarantine (a dry run unless --apply)."""
    from quarantine import backup
    from quarantine import migrate as work
    from quarantine.filterchain import command_path
    from quarantine.migrateplan import Programs
    from quarantine.names import show
    from quarantine.qmailfile import OptinError
    from quarantine.tcprules import RulesError

    if do_apply and undo:
        raise click.UsageError("--apply and --undo exclude each other")
    cfg, path = _config(obj)
    if undo:
        try:
            directory, restored, problems = work.undo(cfg, force=force)
        except backup.FileError as exc:
            directory, restored, problems = "", [], [str(exc)]
        if as_json:
            doc = {"mode": "undo", "backup": directory, "restored": restored, "problems": problems}
            click.echo(json.dumps(doc, indent=1))
        else:
            if not directory:
                click.echo("migrate: nothing to undo")
            for item in restored:
                click.echo(f"restored {show(item)}")
            for problem in problems:
                click.echo(f"migrate: {problem}", err=True)
        ctx.exit(1 if problems else 0)
    try:
        programs = Programs(command_path(command))
        progress = _progress if sys.stderr.isatty() or not as_json else None
        plan = work.build(cfg, programs, path, force=force, progress=progress)
    except (OptinError, backup.FileError) as exc:
        raise click.ClickException(str(exc)) from None
    if not do_apply:
        _report(plan, as_json, "dry-run", {})
        if not as_json:
            click.echo("dry run: nothing written; --apply carries it out", err=True)
        ctx.exit(plan.code)
    try:
        directory = work.apply(plan, cfg)
    except (backup.FileError, RulesError, OptinError) as exc:
        _report(plan, as_json, "apply", {"error": str(exc)})
        click.echo(f"migrate: {exc}", err=True)
        ctx.exit(1)
    _report(plan, as_json, "apply", {"backup": directory})
    if not as_json:
        if directory:
            click.echo(f"applied; saved files in {show(directory)} (quarantine migrate --undo)")
        else:
            click.echo("nothing to change")
    ctx.exit(plan.code)


COMMANDS = (migrate,)
