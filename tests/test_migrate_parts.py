"""`quarantine migrate`'s parts in process, against what a hostile or broken
tree can hold: a .qmail file of thousands of maildrop lines naming a filter
of the largest size (planned in linear time), tcp.smtp read once for the plan
and the check --apply makes, a cdb swapped for a symlink while tcprules runs
(its target's mode untouched), and a backup that cannot be written or read
(a one-line error, no traceback)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import migrate_support as ms
import pytest

from quarantine import backup, config, maildrop, migrate, migratemail, migrateplan
from quarantine.qmailfile import OptinError

ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="the cdb's owner is set only as root")


@pytest.fixture
def srv() -> Iterator[ms.OldServer]:
    with ms.old_server() as built:
        yield built


def plan_of(srv: ms.OldServer, quarantine_bin: Path) -> tuple[config.Config, migrateplan.Plan]:
    """The whole plan, as `migrate --force` makes it."""
    cfg = config.load_file(str(srv.tree.config_path), write_cache=False)
    programs = migrateplan.Programs(str(quarantine_bin))
    return cfg, migrate.build(cfg, programs, str(srv.tree.config_path), force=True)


def plan_mail(srv: ms.OldServer, program: Path | str) -> migrateplan.Plan:
    """The plan of the .qmail files alone."""
    cfg = config.load_file(str(srv.tree.config_path), write_cache=False)
    plan = migrateplan.Plan(config_path=str(srv.tree.config_path))
    programs = migrateplan.Programs(str(program))
    migratemail.plan_dot_qmail(plan, cfg, programs, str(srv.tree.config_path), True, None)
    return plan


def test_many_maildrop_lines_naming_a_large_filter_are_planned_in_linear_time(
    srv: ms.OldServer, quarantine_bin: Path
) -> None:
    """16k lines, each running a filter padded to nearly 64k: the filter is
    read and judged once, and what follows each line is not searched again
    (76 s and 244 s before)."""
    domain_dir = srv.tree.domains[ms.DOMAIN]
    classic = ms.CLASSIC_FILTER.format(vpopmail=srv.tree.vpopmail_home)
    padded = classic + " \n" * ((maildrop.MAX_FILTER - len(classic)) // 2)
    ms.put(domain_dir / "f", padded, 0o600, (89, 89))
    lines = 16_000
    ms.put(domain_dir / ".qmail-many", "|maildrop f\n" * lines, 0o600, (89, 89))
    with ms.within(10.0):
        plan = plan_mail(srv, quarantine_bin)
    (edit,) = [e for e in plan.edits if e.path.endswith(".qmail-many")]
    new = edit.data.decode().split("\n")
    delivers = [x for x in new if x.startswith("|") and " deliver" in x]
    assert len(delivers) == lines and not [x for x in new if x.startswith("|maildrop")]
    # Ham of every line but the last goes on to the next line; the last one's to the inbox.
    assert [i for i, x in enumerate(delivers) if "--inbox" in x] == [lines - 1]
    changes = [f for f in plan.findings if f.subject.startswith(edit.path + ":")]
    assert len({f.subject for f in changes}) == lines


def test_every_line_running_an_unknown_filter_is_reported(srv: ms.OldServer) -> None:
    """The filter's verdict is kept per file, its finding given per line."""
    domain_dir = srv.tree.domains[ms.DOMAIN]
    ms.put(domain_dir / "odd", 'if (/^Subject: x/)\n{\n to "x"\n}\n', 0o600, (89, 89))
    ms.put(domain_dir / ".qmail-odd", "|maildrop odd\n|maildrop odd\n|maildrop gone\n", 0o600)
    plan = plan_mail(srv, "/usr/bin/quarantine")
    where = str(domain_dir / ".qmail-odd")
    manual = [(f.subject, f.message) for f in plan.findings if f.subject.startswith(where)]
    assert [s for s, _ in manual] == [f"{where}:1", f"{where}:2", f"{where}:3"]
    assert "does not test X-Spam" in manual[0][1] and manual[0][1] == manual[1][1]
    assert "missing" in manual[2][1]
    assert not [e for e in plan.edits if e.path == where]


def test_a_path_the_new_line_cannot_hold_is_refused() -> None:
    cfg = config.defaults()
    programs = migrateplan.Programs("/opt/q/bin/quarantine")
    line = migratemail.deliver_line(cfg, programs, "/etc/q/q.yaml", True)
    preline = f"{cfg.qmail.home}/bin/preline"
    assert line == f"|{preline} /opt/q/bin/quarantine deliver --inbox --config /etc/q/q.yaml"
    with pytest.raises(OptinError, match=r"'/etc/q files/q\.yaml' cannot go on a \.qmail line"):
        migratemail.deliver_line(cfg, programs, "/etc/q files/q.yaml", False)


def test_tcp_smtp_is_read_once_for_the_plan_and_the_check(
    srv: ms.OldServer, quarantine_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules changed and the bytes --apply compares are one read: a
    file edited between two reads could not be planned from one and
    checked against the other."""
    from quarantine import tcprules

    reads: list[str] = []
    real_read, real_regular = backup.read, tcprules._read_regular

    def counted_read(path: str, limit: int = backup.MAX_FILE) -> tuple[backup.State, bytes | None]:
        reads.append(path)
        return real_read(path, limit)

    def counted_regular(path: str, limit: int) -> bytes:
        reads.append(path)
        return real_regular(path, limit)

    monkeypatch.setattr(backup, "read", counted_read)
    monkeypatch.setattr(tcprules, "_read_regular", counted_regular)
    _, plan = plan_of(srv, quarantine_bin)
    assert reads.count(str(srv.rules)) == 1
    (edit,) = [e for e in plan.edits if e.kind == "rules"]
    assert edit.old == srv.rules.read_bytes()


@ROOT
def test_a_cdb_swapped_for_a_symlink_does_not_pass_its_mode_on(
    srv: ms.OldServer, quarantine_bin: Path, tmp_path: Path
) -> None:
    """tcprules leaves a symlink where the cdb was (someone swapped it in):
    the owner and mode of the old cdb are not given to the file it names,
    and every change is put back."""
    victim = tmp_path / "shadow"
    victim.write_text("root:secret\n")
    victim.chmod(0o600)
    fake = ms.put(
        tmp_path / "tcprules", f'#!/bin/sh\ncat >/dev/null\nln -sfn {victim} "$1"\n', 0o755
    )
    text = srv.tree.config_path.read_text()
    srv.tree.config_path.write_text(
        text.replace("migrate:\n", f"migrate:\n  tcprules_program: {fake}\n")
    )
    rules_before = srv.rules.read_bytes()
    cfg, plan = plan_of(srv, quarantine_bin)
    assert [e for e in plan.edits if e.kind == "rules"]
    with pytest.raises(backup.FileError, match="symlink"):
        migrate.apply(plan, cfg)
    assert oct(victim.stat().st_mode & 0o7777) == oct(0o600)
    assert victim.read_text() == "root:secret\n"
    assert srv.rules.read_bytes() == rules_before
    assert not Path(f"{srv.rules}.cdb").is_symlink()


def test_a_backup_that_cannot_be_written_or_read_is_a_file_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("data\n")
    saved = backup.Backup(str(tmp_path / "backups"))
    state = saved.save(str(target))
    os.unlink(os.path.join(saved.dir, state.blob))
    with pytest.raises(backup.FileError, match="saved copy of"):
        backup.restore(saved.dir, state)
    os.rmdir(saved.dir)
    with pytest.raises(backup.FileError, match=r"^cannot save .*file"):
        saved.save(str(target))
    assert target.read_text() == "data\n"
