"""Opt-in management (quarantine/dotqmail.py and the optin/optout/optins
commands) on a vpopmail tree built by hand, and filters/maildrop-junk run
through Debian's real maildrop."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quarantine import cli, config, dotqmail
from quarantine.filterchain import access_problem

if TYPE_CHECKING:
    from collections.abc import Iterator

DOMAIN = "example.test"
ALIAS = "alias.test"
VDELIVERMAIL = "| /home/vpopmail/bin/vdelivermail '' delete\n"
UID = GID = 89
FILTERS = Path(__file__).resolve().parent.parent / "filters"


class Tree:
    """root/qmail/{users/assign,bin/preline}, root/vpopmail/domains/example.test
    (alice, bob, john.doe; alias.test points at it), root/bin/quarantine and
    root/quarantine.yaml."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.qmail = root / "qmail"
        self.vpopmail = root / "vpopmail"
        self.domain = self.vpopmail / "domains" / DOMAIN
        self.config_path = root / "quarantine.yaml"
        self.command = root / "bin" / "quarantine"
        (self.qmail / "users").mkdir(parents=True)
        (self.qmail / "bin").mkdir()
        self.command.parent.mkdir()
        self.domain.mkdir(parents=True, mode=0o700)
        self.domain.chmod(0o700)
        os.chown(self.domain, UID, GID)
        (self.qmail / "users" / "assign").write_text(
            f"+{DOMAIN}-:{DOMAIN}:{UID}:{GID}:{self.domain}:-::\n"
            f"+{ALIAS}-:{DOMAIN}:{UID}:{GID}:{self.domain}:-::\n"
            ".\n"
        )
        (self.domain / "vpasswd").write_text(
            "".join(
                f"{user}:x:1:0::{self.domain}/{user}:NOQUOTA\n"
                for user in ("alice", "bob", "john.doe")
            )
        )
        (self.domain / ".qmail-default").write_text(VDELIVERMAIL)
        script(self.qmail / "bin" / "preline", '#!/bin/sh\nexec "$@"\n')
        script(self.command, "#!/usr/bin/python3\n")
        self.config_path.write_text(
            f"vpopmail:\n  home: {self.vpopmail}\nqmail:\n  home: {self.qmail}\n"
        )
        self.cfg = config.load(str(self.config_path))

    @property
    def filter_line(self) -> str:
        return f"|{self.qmail}/bin/preline {self.command} deliver --config {self.config_path}\n"

    def qmail_file(self, name: str) -> Path:
        return self.domain / f".qmail-{name}"

    def files(self) -> list[str]:
        return sorted(p.name for p in self.domain.iterdir())


def script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def traversable() -> Iterator[Path]:
    """A fresh directory every uid can enter. pytest's tmp_path lies under
    /tmp/pytest-of-root (mode 0700), which uid 89 cannot enter: the health
    check would rightly refuse every program in it."""
    root = Path(tempfile.mkdtemp(prefix="quarantine-optin-"))
    root.chmod(0o755)  # uid 89 must traverse it, as it does /home or /opt
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture
def tree(traversable: Path) -> Tree:
    if os.geteuid() != 0:
        pytest.skip("builds files owned by uid 89: run the tests as root")
    return Tree(traversable)


def optin(tree: Tree, target: str, **kwargs: object) -> dotqmail.Change:
    return dotqmail.optin(tree.cfg, target, str(tree.command), **kwargs)  # type: ignore[arg-type]


# -- optin ----------------------------------------------------------------------


def test_optin_user_creates_the_file_with_the_domains_delivery(tree: Tree) -> None:
    change = optin(tree, "alice@example.test")
    path = tree.qmail_file("alice")
    assert (change.action, change.written, change.path) == ("created", True, str(path))
    lines = path.read_text().splitlines(keepends=True)
    assert lines[0].startswith("# quarantine: junk filter, added by 'quarantine optin', which ")
    assert "(rest sha256:" in lines[0]
    assert lines[1:] == [tree.filter_line, VDELIVERMAIL]
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (UID, GID)
    assert change.message() == f"alice@example.test: opted in: created {path}"


def test_optin_user_keeps_an_existing_file_after_the_filter(tree: Tree) -> None:
    original = "&bob@elsewhere.test\n./bob/Maildir/\n"
    path = tree.qmail_file("bob")
    path.write_text(original)
    path.chmod(0o644)
    change = optin(tree, "bob@example.test")
    assert change.action == "added"
    assert path.read_text() == f"{dotqmail.MARKER_ADDED}\n{tree.filter_line}{original}"
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, UID, GID)


def test_optin_domain_puts_the_filter_first_in_qmail_default(tree: Tree) -> None:
    tree.qmail_file("bob").write_text("&bob@elsewhere.test\n")
    change = optin(tree, "@example.test")
    path = tree.qmail_file("default")
    assert change.action == "added"
    assert change.address == "@example.test"
    assert path.read_text() == f"{dotqmail.MARKER_ADDED}\n{tree.filter_line}{VDELIVERMAIL}"
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, UID, GID)
    assert any("bob@example.test has its own .qmail-bob" in n for n in change.notes)


def test_a_new_user_file_copies_delivery_lines_but_not_the_domains_filter(tree: Tree) -> None:
    optin(tree, "@example.test")
    optin(tree, "alice@example.test")
    lines = tree.qmail_file("alice").read_text().splitlines(keepends=True)
    assert lines[1:] == [tree.filter_line, VDELIVERMAIL]


def test_without_qmail_default_the_new_file_bounces_unknown_users(tree: Tree) -> None:
    tree.qmail_file("default").unlink()
    optin(tree, "alice@example.test")
    lines = tree.qmail_file("alice").read_text().splitlines(keepends=True)
    assert lines[2] == f"| {tree.vpopmail}/bin/vdelivermail '' bounce-no-mailbox\n"


def test_user_names_become_qmails_file_names(tree: Tree) -> None:
    change = optin(tree, "John.Doe@Example.TEST")
    assert change.address == "john.doe@example.test"
    assert change.path == str(tree.domain / ".qmail-john:doe")
    assert (tree.domain / ".qmail-john:doe").is_file()


def test_optin_twice_changes_nothing(tree: Tree) -> None:
    optin(tree, "alice@example.test")
    optin(tree, "@example.test")
    before = {p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
              for p in tree.domain.iterdir()}  # fmt: skip
    again = [optin(tree, "alice@example.test"), optin(tree, "@example.test")]
    assert [c.action for c in again] == ["unchanged", "unchanged"]
    assert not any(c.written or c.changed for c in again)
    after = {p: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
             for p in tree.domain.iterdir()}  # fmt: skip
    assert after == before


def test_optin_with_another_command_updates_only_the_filter_line(tree: Tree) -> None:
    optin(tree, "alice@example.test")
    first = tree.qmail_file("alice").read_text().splitlines(keepends=True)
    other = tree.root / "bin" / "other" / "quarantine"
    other.parent.mkdir()
    script(other, "#!/usr/bin/python3\n")
    change = dotqmail.optin(tree.cfg, "alice@example.test", str(other))
    assert change.action == "updated"
    lines = tree.qmail_file("alice").read_text().splitlines(keepends=True)
    assert lines[0] == first[0] and lines[2:] == first[2:]
    assert lines[1] == tree.filter_line.replace(str(tree.command), str(other))
    assert dotqmail.optout(tree.cfg, "alice@example.test").action == "deleted"


def test_a_hand_written_filter_line_is_left_alone(tree: Tree) -> None:
    text = f"|/usr/bin/preline {tree.command} deliver\n{VDELIVERMAIL}"
    tree.qmail_file("alice").write_text(text)
    change = optin(tree, "alice@example.test")
    assert change.action == "unchanged"
    assert any("did not write" in n for n in change.notes)
    assert tree.qmail_file("alice").read_text() == text
    with pytest.raises(dotqmail.OptinError, match="no marker line"):
        dotqmail.optout(tree.cfg, "alice@example.test")
    assert tree.qmail_file("alice").read_text() == text


def test_the_config_file_is_named_unless_it_is_the_default_path() -> None:
    line = dotqmail.filter_line(config.defaults(), "/opt/q/bin/quarantine")
    assert line == "|/var/qmail/bin/preline /opt/q/bin/quarantine deliver"
    with pytest.raises(dotqmail.OptinError, match=r"cannot go on a \.qmail line"):
        dotqmail.filter_line(config.defaults(), "/opt/my venv/bin/quarantine")
    with pytest.raises(dotqmail.OptinError, match=r"cannot go on a \.qmail line"):
        dotqmail.filter_line(config.defaults(), "/opt/q/bin/quarantine;reboot")


def test_every_program_line_is_checked_alike(tmp_path: Path) -> None:
    """optin's filter line, digest setup's release line and migrate's
    deliver line are all filterchain.program_line: the same words refused
    with the same reason, the config file named by the same rule."""
    from quarantine import filterchain, migratemail, migrateplan, releasesetup
    from quarantine.configschema import build

    assert filterchain.program_line(["/a/b", "x=y"]) == "|/a/b x=y"
    cfg = config.defaults()
    bad = "/opt/my venv/bin/quarantine"
    programs = migrateplan.Programs(bad)
    said = []
    for make in (
        lambda: filterchain.program_line([bad]),
        lambda: dotqmail.filter_line(cfg, bad),
        lambda: releasesetup.release_line(cfg, bad),
        lambda: migratemail.deliver_line(cfg, programs, config.DEFAULT_PATH, False),
    ):
        with pytest.raises(dotqmail.OptinError) as caught:
            make()
        said.append(str(caught.value))
    assert len(set(said)) == 1 and said[0].startswith(f"'{bad}' cannot go on a .qmail line")
    checked = config.parse_text("{}", "x")
    for source, named in ((None, ""), (config.DEFAULT_PATH, ""), (str(tmp_path / "q.yaml"), "q")):
        line = releasesetup.release_line(build(checked, source), "/opt/q/bin/quarantine")
        expected = f" --config {tmp_path / 'q.yaml'}" if named else ""
        assert line == f"|/opt/q/bin/quarantine release{expected}"


def test_the_running_script_is_the_default_command(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(tree.command), "optin"])
    assert dotqmail.command_path() == str(tree.command)
    dotqmail.optin(tree.cfg, "alice@example.test")
    assert tree.qmail_file("alice").read_text().splitlines(keepends=True)[1] == tree.filter_line


# -- optout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "original",
    [
        b"&bob@elsewhere.test\n./bob/Maildir/\n",
        b"# bob's forward \xe9\n&bob@elsewhere.test  \n\n|/usr/bin/vacation bob",  # no final \n
    ],
)
def test_optout_restores_an_existing_file_byte_for_byte(tree: Tree, original: bytes) -> None:
    path = tree.qmail_file("bob")
    path.write_bytes(original)
    optin(tree, "bob@example.test")
    assert path.read_bytes() != original
    change = dotqmail.optout(tree.cfg, "bob@example.test")
    assert change.action == "removed"
    assert path.read_bytes() == original
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, UID, GID)


def test_optout_restores_qmail_default(tree: Tree) -> None:
    optin(tree, "@example.test")
    assert dotqmail.optout(tree.cfg, "@example.test").action == "removed"
    assert tree.qmail_file("default").read_text() == VDELIVERMAIL


def test_optout_deletes_a_file_optin_created(tree: Tree) -> None:
    optin(tree, "alice@example.test")
    change = dotqmail.optout(tree.cfg, "alice@example.test")
    assert (change.action, change.after) == ("deleted", None)
    assert not tree.qmail_file("alice").exists()
    assert ".qmail-alice" not in tree.files()


def test_optout_keeps_a_created_file_someone_added_to(tree: Tree) -> None:
    optin(tree, "alice@example.test")
    path = tree.qmail_file("alice")
    path.write_text(path.read_text() + "&alice@elsewhere.test\n")
    change = dotqmail.optout(tree.cfg, "alice@example.test")
    assert change.action == "removed"
    assert path.read_text() == VDELIVERMAIL + "&alice@elsewhere.test\n"


def test_optout_takes_out_a_marked_filter_line_written_by_other_tools(tree: Tree) -> None:
    """The e2e fixtures write their own marker text; the marker prefix is the contract."""
    text = (
        "# quarantine: junk filter (quarantine optin alice@example.test); `quarantine optout`\n"
        f"|{tree.qmail}/bin/preline /opt/venv/bin/quarantine deliver --config /x.yaml\n"
        + VDELIVERMAIL
    )
    tree.qmail_file("alice").write_text(text)
    assert [e.address for e in dotqmail.optins(tree.cfg).entries] == ["alice@example.test"]
    assert dotqmail.optout(tree.cfg, "alice@example.test").action == "removed"
    assert tree.qmail_file("alice").read_text() == VDELIVERMAIL


def test_optout_when_not_opted_in_changes_nothing(tree: Tree) -> None:
    change = dotqmail.optout(tree.cfg, "alice@example.test")
    assert (change.action, change.written) == ("unchanged", False)
    assert change.message().startswith("alice@example.test: not opted in, no change to ")
    assert ".qmail-alice" not in tree.files()


# -- optins ---------------------------------------------------------------------


def test_optins_lists_domains_and_users_once(tree: Tree) -> None:
    assert dotqmail.optins(tree.cfg).entries == ()
    tree.qmail_file("bob").write_text("&bob@elsewhere.test\n")  # no filter: not listed
    optin(tree, "alice@example.test")
    optin(tree, "john.doe@example.test")
    optin(tree, "@example.test")
    found = dotqmail.optins(tree.cfg)
    assert [e.address for e in found.entries] == [
        "@example.test",
        "alice@example.test",
        "john.doe@example.test",
    ]
    assert found.entries[2].path == str(tree.domain / ".qmail-john:doe")
    assert found.problems == ()


# -- aliases, hostile names, refusals ----------------------------------------------


def test_an_alias_domain_resolves_to_the_real_domain(tree: Tree) -> None:
    change = optin(tree, "alice@alias.test")
    assert change.address == "alice@example.test"
    assert change.path == str(tree.qmail_file("alice"))
    assert any("alias.test is an alias of example.test" in n for n in change.notes)
    assert optin(tree, "alice@example.test").action == "unchanged"
    assert optin(tree, "@alias.test").path == str(tree.qmail_file("default"))


@pytest.mark.parametrize(
    "target",
    [
        "../x@example.test",
        "a/b@example.test",
        "al\0ice@example.test",
        "alice\n@example.test",
        "a" * 10240 + "@example.test",
        "alice@../../etc",
        "alice@example.test/../x",
        "alice@example..test",
        "alice",
        "",
        "default@example.test",
        "alice-default@example.test",
    ],
)
def test_hostile_targets_are_refused_and_nothing_is_written(tree: Tree, target: str) -> None:
    before = tree.files()
    with pytest.raises(dotqmail.BadTarget) as caught:
        optin(tree, target)
    assert len(str(caught.value)) < 200
    with pytest.raises(dotqmail.BadTarget):
        dotqmail.optout(tree.cfg, target)
    assert tree.files() == before
    assert sorted(p.name for p in tree.root.iterdir()) == [
        "bin", "qmail", "quarantine.yaml", "quarantine.yaml.cache", "vpopmail"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("carol@example.test", "carol@example.test: no such user in vpopmail"),
        ("alice@nowhere.test", "nowhere.test is not a vpopmail domain here"),
    ],
)
def test_unknown_users_and_domains_are_refused(tree: Tree, target: str, message: str) -> None:
    with pytest.raises(dotqmail.OptinError, match=message) as caught:
        optin(tree, target)
    assert not isinstance(caught.value, dotqmail.BadTarget)
    assert ".qmail-carol" not in tree.files()


def test_dry_run_writes_nothing_and_shows_the_diff(tree: Tree) -> None:
    before = tree.files()
    change = optin(tree, "alice@example.test", dry_run=True)
    assert (change.action, change.written) == ("created", False)
    assert tree.files() == before
    diff = change.diff()
    assert diff.startswith(f"--- /dev/null\n+++ {tree.qmail_file('alice')}\n")
    assert f"+{tree.filter_line}" in diff
    assert f"+{VDELIVERMAIL}" in diff
    optin(tree, "@example.test")
    text = tree.qmail_file("default").read_text()
    change = dotqmail.optout(tree.cfg, "@example.test", dry_run=True)
    assert change.action == "removed" and not change.written
    assert f"-{tree.filter_line}" in change.diff()
    assert tree.qmail_file("default").read_text() == text


@pytest.mark.parametrize(("mode", "why"), [(0o770, "group or world writable"),
                                           (0o702, "group or world writable"),
                                           (0o1700, "sticky")])  # fmt: skip
def test_an_unsafe_domain_directory_is_refused(tree: Tree, mode: int, why: str) -> None:
    tree.domain.chmod(mode)
    before = tree.files()
    with pytest.raises(dotqmail.OptinError, match=why):
        optin(tree, "alice@example.test")
    assert tree.files() == before


def test_files_qmail_local_would_mishandle_are_refused(tree: Tree) -> None:
    tree.qmail_file("alice").write_text("+list\n&a@b.test\n")
    with pytest.raises(dotqmail.OptinError, match=r"\+list"):
        optin(tree, "alice@example.test")
    tree.qmail_file("alice").write_text("# nothing but a comment\n")
    with pytest.raises(dotqmail.OptinError, match="no delivery line"):
        optin(tree, "alice@example.test")
    tree.qmail_file("alice").unlink()
    tree.qmail_file("alice").symlink_to("/etc/passwd")
    with pytest.raises(dotqmail.OptinError, match="is a symbolic link; edit it by hand"):
        optin(tree, "alice@example.test")
    with pytest.raises(dotqmail.OptinError, match="is a symbolic link; edit it by hand"):
        dotqmail.optout(tree.cfg, "alice@example.test")
    assert tree.qmail_file("alice").is_symlink()
    assert dotqmail.optins(tree.cfg).problems == ()


# -- the health check ---------------------------------------------------------------


def test_a_script_uid_89_cannot_reach_is_refused(tree: Tree) -> None:
    private = tree.root / "private"
    (private / "bin").mkdir(parents=True)
    private.chmod(0o700)
    command = private / "bin" / "quarantine"
    script(command, "#!/usr/bin/python3\n")
    with pytest.raises(dotqmail.OptinError) as caught:
        dotqmail.optin(tree.cfg, "alice@example.test", str(command))
    message = str(caught.value)
    assert f"uid 89 gid 89 cannot enter {private} (mode 0700, owner 0:0)" in message
    assert "--force" in message
    assert ".qmail-alice" not in tree.files()
    change = dotqmail.optin(tree.cfg, "alice@example.test", str(command), force=True)
    assert change.written and tree.qmail_file("alice").is_file()


def test_an_interpreter_uid_89_cannot_reach_is_refused(tree: Tree) -> None:
    private = tree.root / "home"
    (private / "venv").mkdir(parents=True)
    private.chmod(0o700)
    (private / "venv" / "python").symlink_to(sys.executable)
    script(tree.command, f"#!{private}/venv/python\n")
    with pytest.raises(
        dotqmail.OptinError,
        match=re.escape(f"interpreter of {tree.command}: {private}/venv/python: uid 89"),
    ):
        optin(tree, "alice@example.test")
    script(tree.command, "#!/bin/sh\n'''exec' \"/nonexistent/python\" \"$0\" \"$@\"\n' '''\n")
    with pytest.raises(
        dotqmail.OptinError, match="/nonexistent/python: cannot stat /nonexistent: No such file"
    ):
        optin(tree, "alice@example.test")
    launcher = (Path(__file__).parents[1] / "bin" / "quarantine").read_text()
    script(tree.command, launcher)  # the python3 beside it, which is missing here
    with pytest.raises(
        dotqmail.OptinError, match=re.escape(f"{tree.command.parent}/python3: No such file")
    ):
        optin(tree, "alice@example.test")
    script(tree.command, "#!python\n")
    with pytest.raises(dotqmail.OptinError, match="'python' is not an absolute path"):
        optin(tree, "alice@example.test")
    assert ".qmail-alice" not in tree.files()


def test_unexecutable_preline_and_unreadable_config_are_refused(tree: Tree) -> None:
    (tree.qmail / "bin" / "preline").chmod(0o744)
    tree.config_path.chmod(0o600)
    with pytest.raises(dotqmail.OptinError) as caught:
        optin(tree, "@example.test")
    message = str(caught.value)
    assert f"preline: {tree.qmail}/bin/preline: uid 89 gid 89 cannot execute it" in message
    assert f"configuration file: {tree.config_path}: uid 89 gid 89 cannot read it" in message
    assert tree.qmail_file("default").read_text() == VDELIVERMAIL


def test_access_problem_uses_the_owner_group_or_other_bits(traversable: Path) -> None:
    program = traversable / "prog"
    script(program, "#!/bin/sh\n")
    assert access_problem(str(program), 89, 89, 0o5) is None
    program.chmod(0o750)  # owned by root: uid 89 falls to the "other" bits
    owner = f"{os.getuid()}:{os.getgid()}"
    assert access_problem(str(program), 89, 89, 0o1) == (
        f"{program}: uid 89 gid 89 cannot execute it (mode 0750, owner {owner})"
    )
    assert access_problem(str(program), 89, os.getgid(), 0o5) is None  # group bits
    os.chown(program, 89, 89)
    program.chmod(0o075)  # the owner class alone counts for the owner, as in the kernel
    assert "cannot read and execute it" in str(access_problem(str(program), 89, 89, 0o5))
    assert access_problem(str(program), 90, 89, 0o5) is None
    assert access_problem("relative/x", 89, 89, 0o1) == "relative/x is not an absolute path"


# -- the command line -------------------------------------------------------------------


def run(tree: Tree, *args: str) -> int:
    return cli.run(["--config", str(tree.config_path), *args])


def test_cli_optin_optins_optout(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    command = ["--command", str(tree.command)]
    assert run(tree, "optin", "alice@example.test", *command) == 0
    assert capsys.readouterr().out == (
        f"alice@example.test: opted in: created {tree.qmail_file('alice')}\n"
    )
    assert run(tree, "optin", "@alias.test", *command) == 0
    out, err = capsys.readouterr()
    assert out == f"@example.test: opted in: filter added to {tree.qmail_file('default')}\n"
    assert "note: alias.test is an alias of example.test" in err
    assert run(tree, "optin", "alice@example.test", *command) == 0
    assert capsys.readouterr().out == (
        f"alice@example.test: already opted in, no change to {tree.qmail_file('alice')}\n"
    )
    assert run(tree, "optins") == 0
    assert capsys.readouterr().out == "@example.test\nalice@example.test\n"
    assert run(tree, "optins", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"address": "@example.test", "file": str(tree.qmail_file("default"))},
        {"address": "alice@example.test", "file": str(tree.qmail_file("alice"))},
    ]
    assert run(tree, "optout", "alice@example.test") == 0
    assert "deleted" in capsys.readouterr().out
    assert run(tree, "optout", "@example.test") == 0
    assert tree.qmail_file("default").read_text() == VDELIVERMAIL
    capsys.readouterr()
    assert run(tree, "optins") == 0
    assert capsys.readouterr().out == ""


def test_cli_dry_run_prints_the_diff(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(tree, "optin", "--dry-run", "alice@example.test", "--command", str(tree.command)) == 0
    )
    out, err = capsys.readouterr()
    assert out.startswith("--- /dev/null\n")
    assert f"+{tree.filter_line}" in out
    assert "dry run" in err
    assert ".qmail-alice" not in tree.files()


def test_cli_default_command_is_the_running_script(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(tree.command)])
    assert run(tree, "optin", "alice@example.test") == 0
    assert tree.qmail_file("alice").read_text().splitlines(keepends=True)[1] == tree.filter_line


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["optin", "../x@example.test"], 2, "Error: '../x' is not a valid vpopmail user name"),
        (["optout", "nobody"], 2, "Error: 'nobody' is not an address"),
        (["optin", "carol@example.test"], 1, "Error: carol@example.test: no such user"),
        (["optin", "alice@example.test", "--command"], 2, "requires an argument"),
        (["optin"], 2, "Missing argument"),
    ],
)
def test_cli_failures_exit_codes(
    tree: Tree, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    assert run(tree, *args) == code
    out, err = capsys.readouterr()
    assert message in err
    assert out == ""
    assert tree.files() == [".qmail-default", "vpasswd"]


def test_cli_health_check_failure_is_exit_1(tree: Tree, capsys: pytest.CaptureFixture[str]) -> None:
    tree.config_path.chmod(0o600)
    assert run(tree, "optin", "alice@example.test", "--command", str(tree.command)) == 1
    assert "cannot read it" in capsys.readouterr().err
    assert run(tree, "optin", "alice@example.test", "--command", str(tree.command), "--force") == 0


# -- filters/ -----------------------------------------------------------------------------


def test_the_templates_hold_what_optin_writes(tree: Tree) -> None:
    for name in ("dot-qmail-user", "dot-qmail-default"):
        lines = (FILTERS / name).read_text().splitlines(keepends=True)
        assert lines[0] == dotqmail.MARKER_ADDED + "\n"
        assert lines[1] == "|@QMAIL@/bin/preline @QUARANTINE@ deliver --config @CONFIG@\n"
        assert lines[2] == "| @VPOPMAIL@/bin/vdelivermail '' delete\n"
        assert all(line.startswith("#") for line in lines[3:])
    optin(tree, "@example.test")
    filled = (
        (FILTERS / "dot-qmail-default").read_text().split("# ---", 1)[0]
        .replace("@QMAIL@", str(tree.qmail)).replace("@QUARANTINE@", str(tree.command))
        .replace("@CONFIG@", str(tree.config_path)).replace("@VPOPMAIL@", "/home/vpopmail")
    )  # fmt: skip
    assert tree.qmail_file("default").read_text() == filled


SPAM = (
    "Return-Path: <offers@spam.example>\n"
    "Delivered-To: example.test-alice@example.test\n"
    "From: offers@spam.example\nTo: alice@example.test\nSubject: win\n"
    "X-Spam-Flag: YES\n"
    "X-Spam-Status: Yes, score=12.3 required=5.0 tests=GTUBE\n\tautolearn=no version=4.0.0\n"
    "\nbuy now\n"
)
HAM = (
    "From: friend@ok.example\nTo: alice@example.test\nSubject: hi\n"
    "X-Spam-Status: No, score=0.1 required=5.0 tests=NONE\n\nhello\n"
)


class Maildrop:
    """filters/maildrop-junk installed for an unprivileged uid (nobody, whose
    login shell is nologin) with a vuserinfo stub that logs its arguments."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.domain = root / "domains" / DOMAIN
        self.maildir = self.domain / "alice" / "Maildir"
        self.log = root / "vuserinfo.log"
        self.filter = root / "maildrop-junk"
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True)
        stub = root / "vuserinfo"
        script(
            stub,
            f"""#!/bin/sh
printf '%s\\n' "$*" >> {self.log}
case "$2" in
  alice@example.test) echo {self.domain}/alice ;;
  broken@example.test) echo "vuserinfo: cannot open the database"; exit 1 ;;
  relative@example.test) echo "alice/dir" ;;
  *) echo "no such user $2"; exit 1 ;;
esac
""",
        )
        text = (FILTERS / "maildrop-junk").read_text()
        assert '\nVUSERINFO="/home/vpopmail/bin/vuserinfo"\n' in text
        self.filter.write_text(text.replace("/home/vpopmail/bin/vuserinfo", str(stub)))
        self.filter.chmod(0o600)
        self.user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        if self.user is not None:
            for path in [root, *root.rglob("*")]:
                os.lchown(path, self.user.pw_uid, self.user.pw_gid)

    def run(self, message: str, ext: str, host: str = DOMAIN) -> subprocess.CompletedProcess[str]:
        argv = [shutil.which("maildrop") or "/usr/bin/maildrop", str(self.filter)]
        if self.user is not None:
            argv = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                    "--clear-groups", *argv]  # fmt: skip
        env = {"EXT": ext, "HOST": host, "PATH": "/usr/bin:/bin", "LANG": "C"}
        return subprocess.run(
            argv, input=message, env=env, cwd=self.domain, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    def junk(self) -> list[Path]:
        new = self.maildir / ".Junk" / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def lookups(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def maildrop(traversable: Path) -> Maildrop:
    return Maildrop(traversable)


@pytest.mark.slow
def test_maildrop_files_spam_into_junk_and_subscribes_once(maildrop: Maildrop) -> None:
    for _ in range(2):
        done = maildrop.run(SPAM, "Alice")
        assert done.returncode == 99, done
    junk = maildrop.junk()
    assert len(junk) == 2
    assert junk[0].read_text() == SPAM
    assert (maildrop.maildir / ".Junk" / "maildirfolder").is_file()
    assert (maildrop.maildir / "courierimapsubscribed").read_text() == "INBOX.Junk\n"
    assert maildrop.lookups() == ["-d alice@example.test"] * 2
    assert list((maildrop.maildir / "new").iterdir()) == []


@pytest.mark.slow
def test_maildrop_leaves_ham_to_the_next_line(maildrop: Maildrop) -> None:
    done = maildrop.run(HAM, "alice")
    assert (done.returncode, done.stdout) == (0, "")
    assert maildrop.junk() == []
    assert list((maildrop.maildir / "new").iterdir()) == []
    assert maildrop.lookups() == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ext", "host"),
    [
        ("x;touch {root}/pwned", DOMAIN),
        ("$(touch {root}/pwned)", DOMAIN),
        ("`touch {root}/pwned`", DOMAIN),
        ("../../etc", DOMAIN),
        ("a* -n", DOMAIN),
        ("alice\n", DOMAIN),
        ("alice", "example.test/../../etc"),
        ("alice", "example.test;touch {root}/pwned"),
        ("", DOMAIN),
    ],
)
def test_maildrop_refuses_hostile_names_without_a_shell(
    maildrop: Maildrop, ext: str, host: str
) -> None:
    root = maildrop.root
    done = maildrop.run(SPAM, ext.format(root=root), host.format(root=root))
    assert done.returncode == 0, done
    assert maildrop.lookups() == []
    assert maildrop.junk() == []
    assert not (root / "pwned").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("ext", "code"), [("carol", 0), ("broken", 75), ("relative", 75)])
def test_maildrop_lookup_results(maildrop: Maildrop, ext: str, code: int) -> None:
    done = maildrop.run(SPAM, ext)
    assert done.returncode == code, done
    assert maildrop.lookups() == [f"-d {ext}@example.test"]
    assert maildrop.junk() == []
    if code == 75:
        assert done.stdout.startswith(f"maildrop-junk: cannot look up {ext}@example.test: ")


# -- end to end: what optin writes, run the way qmail-local runs it ------------------------


@pytest.mark.slow
def test_optin_lines_run_under_qmail_local_as_uid_89() -> None:
    """optin on the lead's sandbox tree, with the installed quarantine script,
    then mail through the qmail-local emulator (uid 89, /bin/sh -c, preline):
    spam stops at the filter (99), ham goes on to vdelivermail; after optout
    .qmail-default delivers again."""
    from quarantine import sandbox

    installed = Path(os.environ.get("QUARANTINE_BIN") or Path(sys.executable).parent / "quarantine")
    tree = sandbox.make_tree()
    try:
        tree.add_domain(DOMAIN)
        tree.add_user(f"alice@{DOMAIN}")
        cfg = config.load(str(tree.config_path))
        change = dotqmail.optin(cfg, f"alice@{DOMAIN}", str(installed))
        assert change.action == "created"
        spam = SPAM.replace("Return-Path: <offers@spam.example>\n", "").replace(
            "Delivered-To: example.test-alice@example.test\n", ""
        )
        done = sandbox.qmail_local(tree, f"alice@{DOMAIN}", spam.encode())
        assert (done.status, done.codes) == ("success", [99]), done.output
        assert len(tree.messages(f"alice@{DOMAIN}", "Junk")) == 1
        done = sandbox.qmail_local(tree, f"alice@{DOMAIN}", HAM.encode())
        assert (done.status, done.codes) == ("success", [0, 0]), done.output
        assert len(tree.messages(f"alice@{DOMAIN}")) == 1
        assert dotqmail.optout(cfg, f"alice@{DOMAIN}").action == "deleted"
        done = sandbox.qmail_local(tree, f"alice@{DOMAIN}", spam.encode())
        assert done.dot_qmail == tree.domains[DOMAIN] / ".qmail-default"
        assert (done.status, done.codes) == ("success", [0]), done.output
        assert len(tree.messages(f"alice@{DOMAIN}")) == 2
    finally:
        sandbox.remove(tree)
