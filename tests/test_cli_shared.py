"""What the commands share (quarantine/cli/group.py and the scheduler's
cron lines): --domain/--user given alike to train, stats, cleanup and digest,
the --config a forwarding command (deliver, release) passes on, and a bad
crontab line named with its setting."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from quarantine import cli, config
from quarantine.cli import cleanup, digest, train
from quarantine.cli.group import ConfigFailure, Context, discovery_options, forwarded_args


@click.group()
@click.option("--config", "config_path")
@click.pass_context
def top(ctx: click.Context, config_path: str | None) -> None:
    ctx.obj = Context(config_path)


@top.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def forward(ctx: click.Context) -> None:
    click.echo(repr(forwarded_args(ctx)))


@top.command()
@discovery_options
@click.option("--dry-run", is_flag=True)
def walk(domains: tuple[str, ...], users: tuple[str, ...], dry_run: bool) -> None:
    click.echo(repr((domains, users, dry_run)))


def run(*args: str) -> str:
    result = CliRunner().invoke(top, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output.strip()


def test_forwarded_args_put_the_group_config_first_unless_named() -> None:
    assert run("--config", "/c.yaml", "forward", "-x", "a") == repr(
        ["--config", "/c.yaml", "-x", "a"]
    )
    assert run("--config", "/c.yaml", "forward", "--config", "/d.yaml") == repr(
        ["--config", "/d.yaml"]
    )
    assert run("forward", "a", "--b") == repr(["a", "--b"])


def test_deliver_and_release_forward_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from quarantine import deliver, release

    got: list[list[str]] = []
    monkeypatch.setattr(deliver, "main", lambda args: got.append(args) or 0)
    monkeypatch.setattr(release, "main", lambda args: got.append(args) or 0)
    assert cli.main(["--config", "/c.yaml", "deliver", "--trace"]) == 0
    assert cli.main(["--config", "/c.yaml", "release", "--config", "/d.yaml"]) == 0
    assert got == [["--config", "/c.yaml", "--trace"], ["--config", "/d.yaml"]]


def test_discovery_options_are_the_same_on_every_walking_command() -> None:
    assert run("walk", "--domain", "a.test", "--user", "x@a.test", "--domain", "b.test") == repr(
        (("a.test", "b.test"), ("x@a.test",), False)
    )
    assert run("walk") == repr(((), (), False))
    shapes = set()
    for command in (train.train, train.stats, cleanup.cleanup, digest.digest):
        params = {p.name: p for p in command.params}
        assert isinstance(params["domains"], click.Option) and isinstance(
            params["users"], click.Option
        )
        shapes.add(
            tuple(
                (tuple(params[n].opts), params[n].multiple, params[n].metavar, params[n].help)
                for n in ("domains", "users")
            )
        )
        names = [p.name for p in command.params]
        assert names.index("domains") + 1 == names.index("users"), command.name
    assert shapes == {
        (
            (("--domain",), True, "DOMAIN", "Only this domain (repeatable)."),
            (("--user",), True, "USER@DOMAIN", "Only this mailbox (repeatable)."),
        )
    }


def test_a_bad_crontab_line_names_its_setting(tmp_path: Path) -> None:
    from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]

    path = tmp_path / "q.yaml"
    path.write_text("digest:\n  schedule: '61 * * * *'\n")
    cfg = config.load(str(path))
    with pytest.raises(ConfigFailure, match=rf"^{path}: digest\.schedule: .*61"):
        train._digest_trigger(cfg)
    with pytest.raises(ConfigFailure, match=rf"^{path}: train\.schedule: "):
        train._cron(cfg, "train.schedule", "every day", CronTrigger)
    assert "17" in str(train._cron(cfg, "keys.schedule", "17 4 * * 1", CronTrigger))
