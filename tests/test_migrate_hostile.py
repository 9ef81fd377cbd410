"""`quarantine migrate` against what a mailbox owner (uid 89) can plant in the
tree it walks as root: symlinked .qmail files and filters (never followed, their
targets untouched), names with newlines and escape sequences (escaped in every
report line, the file still migrated), filters it does not know (reported,
left alone), and a large tree (progress on stderr)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import migrate_support as ms
import pytest


@pytest.fixture
def srv() -> Iterator[ms.OldServer]:
    with ms.old_server() as built:
        yield built


def maildrop_line(srv: ms.OldServer, filter_path: Path | str) -> str:
    return f"|{srv.tree.qmail_home}/bin/preline /usr/bin/maildrop {filter_path}\n"


def test_symlinked_dot_qmail_and_filter_are_not_followed(
    srv: ms.OldServer, quarantine_bin: Path, tmp_path: Path
) -> None:
    domain_dir = srv.tree.domains[ms.DOMAIN]
    filter_path = srv.tree.vpopmail_home / "etc" / "junkfilter"
    # uid 89 points .qmail-carol at a root file holding a maildrop line.
    outside = tmp_path / "root-owned"
    outside.write_text(maildrop_line(srv, filter_path))
    before = outside.read_bytes()
    (domain_dir / ".qmail-carol").symlink_to(outside)
    # and .qmail-dave's filter at a file of root's.
    secret = tmp_path / "filter-of-root"
    secret.write_text(ms.CLASSIC_FILTER.format(vpopmail=srv.tree.vpopmail_home))
    link = srv.tree.vpopmail_home / "etc" / "dave-filter"
    link.symlink_to(secret)
    ms.put(domain_dir / ".qmail-dave", maildrop_line(srv, link), 0o600, (89, 89))
    dave_before = (domain_dir / ".qmail-dave").read_bytes()

    _, doc, _ = ms.run_json(quarantine_bin, srv, "--apply")
    by_subject = {f["subject"]: f for f in doc["findings"]}
    carol = by_subject[str(domain_dir / ".qmail-carol")]
    assert carol["status"] == "note" and "not followed" in carol["message"]
    assert outside.read_bytes() == before
    assert (domain_dir / ".qmail-carol").is_symlink()
    dave = by_subject[f"{domain_dir}/.qmail-dave:1"]
    assert dave["status"] == "manual" and "symlink" in dave["message"]
    assert (domain_dir / ".qmail-dave").read_bytes() == dave_before
    # The others were migrated all the same.
    alice = (domain_dir / ".qmail-alice").read_text()
    assert "maildrop" not in alice.replace("maildrop filter line", "")
    assert "/quarantine deliver --config " in alice


def test_weird_names_are_escaped_and_still_migrated(
    srv: ms.OldServer, quarantine_bin: Path
) -> None:
    domain_dir = srv.tree.domains[ms.DOMAIN]
    filter_path = srv.tree.vpopmail_home / "etc" / "junkfilter"
    names = [".qmail-we\nird", ".qmail-\x1b[31mred", ".qmail-caf\xe9"]
    for name in names:
        ms.put(domain_dir / name, maildrop_line(srv, filter_path) + "./Maildir/\n", 0o600, (89, 89))
    proc = ms.run(quarantine_bin, srv)
    assert proc.returncode == 1
    for line in proc.stdout.splitlines():
        assert "\x1b" not in line
    assert "we\\x0aird" in proc.stdout and "\\x1b[31mred" in proc.stdout
    assert sum(".qmail-we" in line for line in proc.stdout.splitlines()) >= 2
    proc = ms.run(quarantine_bin, srv, "--apply")
    for name in names:
        text = (domain_dir / name).read_text(encoding="latin-1")
        assert " deliver --config " in text and "maildrop" not in text.split("\n", 1)[1]
    proc = ms.run(quarantine_bin, srv, "--undo")
    assert proc.returncode == 0, proc.stderr
    for name in names:
        assert "maildrop" in (domain_dir / name).read_text(encoding="latin-1")


def test_unknown_filters_are_reported_and_left_alone(
    srv: ms.OldServer, quarantine_bin: Path
) -> None:
    domain_dir = srv.tree.domains[ms.DOMAIN]
    etc = srv.tree.vpopmail_home / "etc"
    score = ms.put(etc / "score", 'if (/^X-Spam-Level: \\*\\*\\*\\*\\*/)\n{\n to "x/"\n}\n', 0o600)
    ms.put(domain_dir / ".qmail-erin", maildrop_line(srv, score), 0o600, (89, 89))
    ms.put(domain_dir / ".qmail-fred", "|preline maildrop -w 90 /etc/f\n", 0o600, (89, 89))
    erin, fred = ((domain_dir / n).read_bytes() for n in (".qmail-erin", ".qmail-fred"))
    _, doc, _ = ms.run_json(quarantine_bin, srv, "--apply")
    manual = {f["subject"]: f["message"] for f in doc["findings"] if f["status"] == "manual"}
    assert "X-Spam-Level" in manual[f"{domain_dir}/.qmail-erin:1"]
    assert "options" in manual[f"{domain_dir}/.qmail-fred:1"]
    assert (domain_dir / ".qmail-erin").read_bytes() == erin
    assert (domain_dir / ".qmail-fred").read_bytes() == fred


def test_a_line_uid_89_could_not_run_is_not_written(
    srv: ms.OldServer, quarantine_bin: Path, tmp_path: Path
) -> None:
    """A quarantine program under a 0700 directory: preline would bounce mail."""
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    program = hidden / "quarantine"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    alice = srv.tree.domains[ms.DOMAIN] / ".qmail-alice"
    before = alice.read_bytes()
    _, doc, _ = ms.run_json(quarantine_bin, srv, "--apply", command=program)
    assert any(f["status"] == "manual" and "could not run" in f["message"] for f in doc["findings"])
    assert alice.read_bytes() == before


def test_progress_for_a_large_tree(srv: ms.OldServer, quarantine_bin: Path) -> None:
    for n in range(60):
        srv.tree.add_domain(f"d{n:02d}.test")
    proc = ms.run(quarantine_bin, srv)
    progress = [x for x in proc.stderr.splitlines() if x.startswith("migrate: ")]
    assert progress[-1] == "migrate: 61/61 domains read"
    assert 2 <= len(progress) <= 25


def test_a_file_changed_between_plan_and_apply_stops_everything(
    srv: ms.OldServer, quarantine_bin: Path
) -> None:
    from quarantine import backup, config, migrate, migrateplan

    cfg = config.load_file(str(srv.tree.config_path), write_cache=False)
    plan = migrate.build(cfg, migrateplan.Programs(str(quarantine_bin)), str(srv.tree.config_path))
    before = srv.snapshot()
    alice = srv.tree.domains[ms.DOMAIN] / ".qmail-alice"
    alice.write_text(alice.read_text() + "# edited meanwhile\n")
    edited = srv.snapshot()
    assert edited != before
    with pytest.raises(backup.FileError, match="changed since it was read"):
        migrate.apply(plan, cfg)
    assert srv.snapshot() == edited
    assert backup.last_backup(str(srv.backup_dir)) is None


def test_a_symlinked_user_directory_is_not_followed(
    srv: ms.OldServer, quarantine_bin: Path, tmp_path: Path
) -> None:
    """uid 89 swaps carol's directory for a link to a directory of root's
    whose .qmail runs maildrop: migrate neither reads nor writes through it."""
    carol = srv.tree.add_user(f"carol@{ms.DOMAIN}").parent
    elsewhere = tmp_path / "root-dir"
    elsewhere.mkdir()
    target = elsewhere / ".qmail"
    target.write_text(maildrop_line(srv, srv.tree.vpopmail_home / "etc" / "junkfilter"))
    before = target.read_bytes()
    for sub in sorted(carol.rglob("*"), reverse=True):
        sub.rmdir()
    carol.rmdir()
    carol.symlink_to(elsewhere)
    _, doc, _ = ms.run_json(quarantine_bin, srv, "--apply")
    note = [f for f in doc["findings"] if f["subject"] == f"{carol}/.qmail"]
    assert note and note[0]["status"] == "note" and "not read" in note[0]["message"]
    assert target.read_bytes() == before


def test_wrappers_that_are_not_installed_are_not_wired(
    srv: ms.OldServer, quarantine_bin: Path, tmp_path: Path
) -> None:
    """A qmail-remote symlink to a missing quarantine-remote would make
    qmail-rspawn bounce every remote delivery: not done, said why."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "quarantine").symlink_to(quarantine_bin)
    remote = srv.tree.qmail_home / "bin" / "qmail-remote"
    before = (remote.read_bytes(), srv.rules.read_bytes())
    _, doc, _ = ms.run_json(quarantine_bin, srv, "--apply", command=bindir / "quarantine")
    manual = {f["area"]: f["message"] for f in doc["findings"] if f["status"] == "manual"}
    assert "quarantine-remote" in manual["remote"] and "could not run" in manual["remote"]
    assert "quarantine-queue" in manual["rules"]
    assert (remote.read_bytes(), srv.rules.read_bytes()) == before
    assert not remote.is_symlink()


def test_the_diff_splits_lines_where_qmail_does(srv: ms.OldServer, quarantine_bin: Path) -> None:
    """qmail reads a line up to `\\n` only: a carriage return or form feed
    inside one is shown escaped in that line, not taken for a line end."""
    alice = srv.tree.domains[ms.DOMAIN] / ".qmail-alice"
    alice.write_bytes(b"# kept\rwith a CR and\x0ca form feed\n" + alice.read_bytes())
    proc = ms.run(quarantine_bin, srv)
    assert " # kept\\x0dwith a CR and\\x0ca form feed" in proc.stdout.splitlines()


def test_undo_with_a_saved_copy_gone_is_a_one_line_error(
    srv: ms.OldServer, quarantine_bin: Path
) -> None:
    _, doc, _ = ms.run_json(quarantine_bin, srv, "--apply")
    directory = Path(doc["backup"])
    for blob in directory.iterdir():
        if blob.name != "manifest.json":
            blob.unlink()
    proc = ms.run(quarantine_bin, srv, "--undo")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("migrate: cannot read ") and "the saved copy of" in line
