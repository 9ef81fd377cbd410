"""optin, optout and optins run as root on a vpopmail tree whose owner (uid 89)
turns hostile: a domain or hash directory swapped for a symlink to another
uid's files, a domain directory swapped mid-edit, a domain directory of the
wrong owner, file names that would forge output lines. Then the primitives
they rest on: vpopmail.open_dir_safely and names.show."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quarantine import cli, config, dotqmail, sandbox, vpopmail
from quarantine.names import show

if TYPE_CHECKING:
    from collections.abc import Iterator

    from quarantine.config import Config

DOMAIN = "example.test"
HASHED = "hashed.test"  # lives in domains/h/, as vpopmail's big installations hash them
UID = GID = 89
OTHER = 7790  # another uid, as qmail's alias user: code runs as it from its .qmail files
VICTIM = b"# the alias user's catch-all\n" + (
    dotqmail.MARKER_ADDED.encode() + b"\n|/var/qmail/bin/preline /opt/q/bin/quarantine deliver\n"
    b"|/usr/local/bin/alias-handler\n"
)  # a marker pair in it: an optout through the link would edit it too
ESCAPED = "ev\\x0ail\\x1b[2J"  # show() of the hostile extension below
HOSTILE = "ev\nil\x1b[2J"

Snapshot = dict[str, tuple[bytes, int, int, int, int]]


class Tree:
    """A sandbox vpopmail tree (quarantine/sandbox.py) laid out as vpopmail
    installs it: domains/ belongs to uid 89, so uid 89 can replace any
    directory in it. example.test with alice, hashed.test in domains/h/."""

    def __init__(self, command: Path) -> None:
        self.sandbox = sandbox.make_tree()
        self.root = self.sandbox.root
        self.command = command
        self.domain = self.sandbox.add_domain(DOMAIN)
        self.sandbox.add_domain(HASHED, hashed=True)
        self.sandbox.add_user(f"alice@{DOMAIN}")
        self.domains = self.sandbox.vpopmail_home / "domains"
        os.chown(self.domains, UID, GID)
        self.cfg: Config = config.load(str(self.sandbox.config_path))

    def run(self, *args: str) -> int:
        """The command line, as the admin runs it (cli.run, in this process)."""
        command = ["--command", str(self.command)] if args[0] == "optin" else []
        return cli.run(["--config", str(self.sandbox.config_path), *args, *command])

    def victim(self, parent: Path, name: str = "alias") -> Path:
        """A directory of another uid with a `.qmail-default` (qmail's alias
        directory, say), where root must never write for uid 89."""
        parent.mkdir(exist_ok=True)
        victim = parent / name
        victim.mkdir()
        (victim / ".qmail-default").write_bytes(VICTIM)
        (victim / ".qmail-default").chmod(0o644)
        for path in (victim, victim / ".qmail-default"):
            os.chown(path, OTHER, OTHER)
        victim.chmod(0o755)
        return victim


@pytest.fixture
def tree(quarantine_bin: Path) -> Iterator[Tree]:
    assert os.geteuid() == 0, "these tests give files to uids 89 and 7790: run them as root"
    made = Tree(quarantine_bin)
    try:
        yield made
    finally:
        sandbox.remove(made.sandbox)


def snapshot(directory: Path) -> Snapshot:
    """Every entry of `directory`: content (or link target), inode, mtime, owner, mode."""
    found: Snapshot = {}
    for path in directory.iterdir():
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            data = os.fsencode(os.readlink(path))
        else:
            data = b"(directory)" if stat.S_ISDIR(st.st_mode) else path.read_bytes()
        found[path.name] = (data, st.st_ino, st.st_mtime_ns, st.st_uid, st.st_mode)
    return found


def swap_for_link(directory: Path, target: Path) -> Path:
    """What uid 89 does: move `directory` aside and leave a symlink to
    `target` in its place. Returns where the real directory went."""
    moved = directory.with_name(f".{directory.name}.moved")
    directory.rename(moved)
    directory.symlink_to(target)
    os.lchown(directory, UID, GID)
    return moved


# -- a symlink where a directory was ------------------------------------------------


@pytest.mark.parametrize("command", ["optin", "optout"])
def test_a_domain_directory_swapped_for_a_symlink_is_refused(
    tree: Tree, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    victim = tree.victim(tree.root / "qmail")
    before = snapshot(victim)
    moved = swap_for_link(tree.domain, victim)
    real = snapshot(moved)
    assert tree.run(command, f"@{DOMAIN}") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"Error: {DOMAIN}: {tree.domain} is a symlink in a directory uid {UID} can change: "
        f"not followed (name the real directory in {tree.domain}'s place)\n"
    )
    assert snapshot(victim) == before
    assert (victim / ".qmail-default").read_bytes() == VICTIM
    assert snapshot(moved) == real


def test_a_symlinked_hash_directory_is_refused(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """domains/h/hashed.test, with domains/h (uid 89's) swapped for a link to
    a directory holding a `hashed.test` of another uid."""
    elsewhere = tree.root / "elsewhere"
    victim = tree.victim(elsewhere, HASHED)
    before = snapshot(victim)
    swap_for_link(tree.domains / "h", elsewhere)
    assert tree.run("optin", f"@{HASHED}") == 1
    err = capsys.readouterr().err
    assert f"{tree.domains}/h is a symlink in a directory uid {UID} can change" in err
    assert snapshot(victim) == before


def test_an_admins_symlink_is_followed_but_another_uids_directory_is_refused(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link in a directory only root can change is the admin's and is
    followed; the directory it reaches must still belong to the assign uid."""
    victim = tree.victim(tree.root / "qmail")
    before = snapshot(victim)
    os.chown(tree.domains, 0, 0)
    swap_for_link(tree.domain, victim)
    assert tree.run("optin", f"@{DOMAIN}") == 1
    err = capsys.readouterr().err
    assert f"{tree.domain} is owned by uid {OTHER}, but users/assign gives" in err
    assert snapshot(victim) == before


@pytest.mark.parametrize("command", ["optin", "optout"])
def test_a_domain_directory_of_another_uid_is_refused(
    tree: Tree, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    default = tree.domain / ".qmail-default"
    default.write_bytes(VICTIM)
    os.chown(tree.domain, OTHER, OTHER)
    before = snapshot(tree.domain)
    assert tree.run(command, f"@{DOMAIN}") == 1
    assert capsys.readouterr().err == (
        f"Error: {DOMAIN}: {tree.domain} is owned by uid {OTHER}, but users/assign gives "
        f"{DOMAIN} uid {UID}: refusing to work in it\n"
    )
    assert snapshot(tree.domain) == before


def test_optins_reports_an_unsafe_domain_and_lists_the_others(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tree.run("optin", f"@{HASHED}") == 0
    capsys.readouterr()
    swap_for_link(tree.domain, tree.victim(tree.root / "qmail"))
    assert tree.run("optins") == 1
    out, err = capsys.readouterr()
    assert out == f"@{HASHED}\n"
    assert err.startswith(f"Error: {DOMAIN}: {tree.domain} is a symlink in a directory uid 89")
    assert err.count("\n") == 1


def test_vpasswd_is_read_through_the_directory_and_never_through_a_symlink(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    """uid 89 points vpasswd at a root-only file: root does not read it (it
    would learn whether a line there starts with `alice:`)."""
    vpasswd = tree.domain / "vpasswd"
    private = tree.root / "private"
    private.write_bytes(vpasswd.read_bytes())
    private.chmod(0o600)
    vpasswd.unlink()
    vpasswd.symlink_to(private)
    assert tree.run("optin", f"alice@{DOMAIN}") == 1
    err = capsys.readouterr().err
    assert err == f"Error: cannot read {vpasswd}: Too many levels of symbolic links\n"
    assert not (tree.domain / ".qmail-alice").exists()


# -- a swap after the directory was opened ------------------------------------------


def test_a_swap_before_the_write_leaves_the_link_alone(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uid 89 swaps the domain directory for a link while optin checks the
    filter chain, after it found no .qmail-alice and before it writes one
    (the stamp check cannot tell: absent before, absent in the link's target):
    the file lands in the directory that was read, nothing goes through the link."""
    victim = tree.victim(tree.root / "qmail")
    before = snapshot(victim)
    moved: list[Path] = []
    check_chain = dotqmail.check_chain

    def swap_then_check(cfg: Config, domain: vpopmail.Domain, program: str) -> list[str]:
        moved.append(swap_for_link(tree.domain, victim))
        return check_chain(cfg, domain, program)

    monkeypatch.setattr(dotqmail, "check_chain", swap_then_check)
    change = dotqmail.optin(tree.cfg, f"alice@{DOMAIN}", str(tree.command))
    assert (change.action, change.written) == ("created", True)
    assert snapshot(victim) == before
    written = moved[0] / ".qmail-alice"
    lines = written.read_text().splitlines(keepends=True)
    assert lines[1].startswith(f"|{tree.sandbox.qmail_home}/bin/preline {tree.command} deliver")
    assert lines[2:] == [f"| {tree.sandbox.vpopmail_home}/bin/vdelivermail '' delete\n"]
    assert (written.stat().st_uid, written.stat().st_gid) == (UID, GID)
    names = sorted(p.name for p in moved[0].iterdir())
    assert names == [".qmail-alice", ".qmail-default", "alice", "vpasswd"]


class SwapAfterOpen:
    """Once armed, swaps example.test for a link to `victim` (another uid's
    directory) right after vpopmail.open_domain_dir returns; `moved` is where
    the real directory went."""

    def __init__(self, tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tree = tree
        self.monkeypatch = monkeypatch
        self.victim = tree.victim(tree.root / "qmail")
        self.moved: list[Path] = []

    def arm(self) -> None:
        open_domain_dir = vpopmail.open_domain_dir

        def open_then_swap(domain: vpopmail.Domain) -> int:
            fd = open_domain_dir(domain)
            if domain.name == DOMAIN and not self.moved:
                self.moved.append(swap_for_link(self.tree.domain, self.victim))
            return fd

        self.monkeypatch.setattr(vpopmail, "open_domain_dir", open_then_swap)


@pytest.fixture
def swap(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> SwapAfterOpen:
    return SwapAfterOpen(tree, monkeypatch)


def test_after_the_open_every_read_and_write_goes_through_the_directory_opened(
    tree: Tree, swap: SwapAfterOpen
) -> None:
    """vpasswd (the victim has none), .qmail-default (the new file copies
    its delivery line) and the new .qmail-alice: all in the real directory."""
    before = snapshot(swap.victim)
    swap.arm()
    change = dotqmail.optin(tree.cfg, f"alice@{DOMAIN}", str(tree.command))
    assert (change.action, change.written) == ("created", True)
    lines = (swap.moved[0] / ".qmail-alice").read_text().splitlines(keepends=True)
    assert lines[2:] == [f"| {tree.sandbox.vpopmail_home}/bin/vdelivermail '' delete\n"]
    assert snapshot(swap.victim) == before


def test_optout_after_a_swap_deletes_in_the_directory_opened(
    tree: Tree, swap: SwapAfterOpen
) -> None:
    assert dotqmail.optin(tree.cfg, f"alice@{DOMAIN}", str(tree.command)).written
    (swap.victim / ".qmail-alice").write_bytes(VICTIM)  # what an optout through the link edits
    before = snapshot(swap.victim)
    swap.arm()
    change = dotqmail.optout(tree.cfg, f"alice@{DOMAIN}")
    assert (change.action, change.written) == ("deleted", True)
    assert not (swap.moved[0] / ".qmail-alice").exists()
    assert snapshot(swap.victim) == before


# -- names that would forge output lines --------------------------------------------


def test_optins_prints_a_hostile_file_name_escaped_on_one_line(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tree.run("optin", f"alice@{DOMAIN}") == 0
    capsys.readouterr()
    alice = tree.domain / ".qmail-alice"
    hostile = tree.domain / f".qmail-{HOSTILE}"
    hostile.write_bytes(alice.read_bytes())
    os.chown(hostile, UID, GID)
    assert tree.run("optins") == 0
    out = capsys.readouterr().out
    assert out == f"alice@{DOMAIN}\n{ESCAPED}@{DOMAIN}\n"
    assert "\x1b" not in out
    assert tree.run("optins", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["address"] for row in rows] == [f"alice@{DOMAIN}", f"{HOSTILE}@{DOMAIN}"]


def test_problems_notes_and_diffs_escape_names_and_content(
    tree: Tree, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tree.domain / f".qmail-{HOSTILE}"
    os.mkfifo(fifo)
    assert tree.run("optins") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"Error: {tree.domain}/.qmail-{ESCAPED} is not a regular file; edit it by hand\n"
    fifo.unlink()
    plain = tree.domain / f".qmail-{HOSTILE}"
    plain.write_text("&elsewhere@example.org\n")
    assert tree.run("optin", "--dry-run", f"@{DOMAIN}") == 0
    out, err = capsys.readouterr()
    assert "\x1b" not in out + err
    assert f"note: {ESCAPED}@{DOMAIN} has its own .qmail-{ESCAPED}, which " in err
    assert err.count("\n") == 2  # the note and the dry-run line
    (tree.domain / ".qmail-default").write_text("|/bin/true \x1b]0;owned\x07\n")
    assert tree.run("optin", "--dry-run", f"@{DOMAIN}") == 0
    out = capsys.readouterr().out
    assert " |/bin/true \\x1b]0;owned\\x07\n" in out
    assert "\x1b" not in out and "\x07" not in out


# -- vpopmail.open_dir_safely -----------------------------------------------------------


@pytest.fixture
def base() -> Iterator[Path]:
    """A fresh directory only root can change (root's, mode 0755)."""
    root = Path(tempfile.mkdtemp(prefix="quarantine-opendir-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def inode(path: str) -> int:
    """The inode of the directory open_dir_safely reaches for `path`."""
    fd = vpopmail.open_dir_safely(path)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_a_symlink_in_a_directory_only_root_can_change_is_followed(base: Path) -> None:
    (base / "real" / "sub").mkdir(parents=True)
    (base / "link").symlink_to("real")
    (base / "absolute").symlink_to(base / "real" / "sub")
    assert inode(f"{base}/link/sub") == (base / "real" / "sub").stat().st_ino
    assert inode(f"{base}/absolute") == (base / "real" / "sub").stat().st_ino
    assert inode(f"{base}/./link//") == (base / "real").stat().st_ino


@pytest.mark.parametrize(("owner", "mode"), [(UID, 0o755), (0, 0o775), (0, 0o757)])
def test_a_symlink_in_a_directory_another_uid_can_change_is_refused(
    base: Path, owner: int, mode: int
) -> None:
    (base / "real").mkdir()
    shared = base / "shared"
    shared.mkdir()
    (shared / "link").symlink_to(base / "real")
    os.chown(shared, owner, owner)
    shared.chmod(mode)
    with pytest.raises(vpopmail.UnsafeDirectory) as caught:
        vpopmail.open_dir_safely(f"{shared}/link")
    assert str(caught.value).startswith(
        f"{shared}/link is a symlink in a directory uid {owner} can change: not followed"
    )


def test_dot_dot_is_the_real_parent(base: Path) -> None:
    (base / "real" / "sub").mkdir(parents=True)
    (base / "other").mkdir()
    (base / "link").symlink_to("real/sub")
    assert inode(f"{base}/other/../real") == (base / "real").stat().st_ino
    assert inode(f"{base}/link/..") == (base / "real").stat().st_ino  # as the kernel does
    assert inode("/../..") == Path("/").stat().st_ino


def test_too_many_symlinks_are_refused(base: Path) -> None:
    (base / "a").symlink_to("b")
    (base / "b").symlink_to("a")
    (base / "self").symlink_to("self/x")
    for name in ("a", "self"):
        with pytest.raises(vpopmail.UnsafeDirectory, match="too many symlinks"):
            vpopmail.open_dir_safely(f"{base}/{name}")


def test_missing_and_wrong_components(base: Path) -> None:
    (base / "dangling").symlink_to("nowhere")
    (base / "file").write_text("")
    with pytest.raises(FileNotFoundError):
        vpopmail.open_dir_safely(f"{base}/missing/x")
    with pytest.raises(FileNotFoundError):
        vpopmail.open_dir_safely(f"{base}/dangling")
    with pytest.raises(NotADirectoryError):
        vpopmail.open_dir_safely(f"{base}/file")
    with pytest.raises(vpopmail.UnsafeDirectory, match="not an absolute path"):
        vpopmail.open_dir_safely("relative/dir")
    domain = vpopmail.Domain(DOMAIN, f"{base}/file", 0, 0)
    with pytest.raises(vpopmail.UnsafeDirectory, match="is not a directory"):
        vpopmail.open_domain_dir(domain)


# -- names.show -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("alice", "alice"),
        ("café ünïcode", "café ünïcode"),
        ("a\nb", "a\\x0ab"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("tab\there", "tab\\x09here"),
        ("\x7f\x85", "\\x7f\\x85"),  # DEL and C1 NEL
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("back\\x0aslash", "back\\\\x0aslash"),  # a literal backslash cannot forge an escape
        (b"\xff\xfe.qmail", "\\xff\\xfe.qmail"),
        (os.fsdecode(b"caf\xe9"), "caf\\xe9"),  # an undecodable byte from listdir
        (b"caf\xc3\xa9", "café"),
    ],
)
def test_show_writes_one_printable_line(name: str | bytes, shown: str) -> None:
    assert show(name) == shown
    assert shown.isprintable()
