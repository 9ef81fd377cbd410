"""`quarantine cleanup` and quarantine/tmpclean.py: old debris in tmp/ of a
Maildir and of its folders goes (files, symlinks and FIFOs as entries, the
half-built folder a killed `maildir.ensure_folder` leaves), and nothing else
does: not new/ or cur/, not young files, not what a symlinked tmp/ or folder
points at, not directories that are not ours. Then the command over a sandbox
vpopmail tree (as uid 89 under root), its exit codes, and a real
`quarantine deliver` killed with SIGKILL mid-write, cleaned up after.

The newest of atime, mtime and ctime decides, and ctime cannot be set back:
the library tests pass a `now` three days ahead; the command tests use a
short --older-than and wait it out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner, Result

from quarantine import maildir as md
from quarantine import sandbox, tmpclean
from quarantine.cli import cli

if TYPE_CHECKING:
    from collections.abc import Iterator

DAY = 86400
ROOT = os.geteuid() == 0
UID = 89 if ROOT else os.getuid()
GID = 89 if ROOT else os.getgid()
NOW = time.time() + 3 * DAY  # the library tests' clock: every real ctime is old by then
OLD = NOW - 2 * DAY  # older than 36 hours
YOUNG = NOW - 3600  # one hour old


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    made = sandbox.make_tree(uid=UID, gid=GID)
    try:
        made.add_domain("example.test")
        yield made
    finally:
        sandbox.remove(made)


def own(path: Path) -> Path:
    if ROOT:
        os.chown(path, UID, GID, follow_symlinks=False)
    return path


def stamp(path: Path, when: float) -> Path:
    """Set atime and mtime (of a symlink itself, not its target)."""
    os.utime(path, (when, when), follow_symlinks=False)
    return path


def put(directory: Path, name: str, when: float, data: bytes = b"half a message\n") -> Path:
    path = directory / name
    path.write_bytes(data)
    return stamp(own(path), when)


def folder(maildir: Path, name: str) -> Path:
    path = maildir / f".{name}"
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, mode=0o700)
        own(path / sub)
    (path / "maildirfolder").touch()
    own(path / "maildirfolder")
    own(path)
    return path


def killed_folder_build(maildir: Path) -> Path:
    """What a delivery SIGKILLed inside maildir.ensure_folder leaves: the real
    code run (as the domain uid) up to the subscription step, killed there."""
    code = (
        "import os, signal, sys\n"
        "from quarantine import maildir as md\n"
        "md.subscribe = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "md.ensure_folder(sys.argv[1], 'Junk', md.Owner.of(sys.argv[1]), subscribe_to='auto')\n"
    )
    ids: dict[str, object] = {"user": UID, "group": GID, "extra_groups": []} if ROOT else {}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(maildir)], capture_output=True, check=False, **ids
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [build] = [p for p in (maildir / "tmp").iterdir() if p.name.startswith(".folder-")]
    assert sorted(p.name for p in build.iterdir()) == ["cur", "maildirfolder", "new", "tmp"]
    assert not (maildir / ".Junk").exists()
    return build


def stamp_tree(path: Path, when: float) -> None:
    for sub in [path, *path.rglob("*")]:
        stamp(sub, when)


def entries(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*")}


def state(paths: list[Path]) -> dict[str, tuple[int, int, int, int]]:
    """mode, size, mtime and atime of each path, by lstat (which reads no directory)."""
    out = {}
    for path in paths:
        st = path.lstat()
        out[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_atime_ns)
    return out


# --- one Maildir -------------------------------------------------------------


class Box:
    """A Maildir with debris to go and things to keep in every place that matters."""

    def __init__(self, tree: sandbox.Tree) -> None:
        self.maildir = tree.add_user("alice@example.test")
        m = self.maildir
        self.build = killed_folder_build(m)
        stamp_tree(self.build, OLD)
        junk = folder(m, "Junk")
        trash = folder(m, "Trash")
        self.outside = tree.root / "outside.txt"
        self.outside.write_text("not debris\n")
        self.outside.chmod(0o644)
        self.gone = [
            put(m / "tmp", "1700000000.M1P11.host", OLD),
            put(m / "tmp", ".courierimapsubscribed-1700000000.M2P12.host", OLD),
            put(junk / "tmp", "1700000000.M3P13.host,S=9", OLD),
            put(trash / "tmp", "1700000000.M4P14.host", OLD),
        ]
        link = m / "tmp" / "1700000000.M5P15.link"
        link.symlink_to(self.outside)
        self.link = stamp(own(link), OLD)
        fifo = junk / "tmp" / "1700000000.M6P16.fifo"
        os.mkfifo(fifo)
        self.fifo = stamp(own(fifo), OLD)
        sock = trash / "tmp" / "s"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(sock))
        self.socket = stamp(own(sock), OLD)
        self.gone += [self.link, self.fifo, self.socket, self.build]
        # Everything else stays.
        self.kept = [
            put(m / "tmp", "1700000000.M7P17.young", YOUNG),
            put(junk / "tmp", "1700000000.M8P18.young", YOUNG),
            put(m / "new", "1600000000.M9P19.host,S=15", OLD),
            put(m / "cur", "1600000000.M10P20.host,S=15:2,S", OLD),
            put(junk / "new", "1600000000.M11P21.host,S=15", OLD),
            put(junk / "cur", "1600000000.M12P22.host,S=15:2,S", OLD),
        ]
        other_dir = m / "tmp" / "not-ours"
        other_dir.mkdir()
        self.kept.append(put(own(other_dir), "inside", OLD))
        stamp(other_dir, OLD)
        # A .folder-* directory holding mail is no half-built folder: it stays.
        fake = m / "tmp" / ".folder-1700000000.M13P23.host"
        (fake / "new").mkdir(parents=True)
        self.kept.append(put(own(fake / "new"), "1700000000.M14P24.host", OLD))
        stamp_tree(own(fake), OLD)
        self.kept += [other_dir, fake, fake / "new"]


def test_old_debris_goes_and_everything_else_stays(tree: sandbox.Tree) -> None:
    box = Box(tree)
    before = entries(box.maildir)
    sweep = tmpclean.clean_maildir(str(box.maildir), now=NOW)

    assert sweep.errors == []
    assert sweep.counts["maildirs"] == 1
    assert sweep.counts["tmp_dirs"] == 3  # Maildir, .Junk, .Trash
    assert (sweep.counts["files"], sweep.counts["links"], sweep.counts["special"]) == (4, 1, 2)
    assert sweep.counts["folder_builds"] == 1
    assert sweep.counts["failed"] == 0
    assert sweep.kept == {"young": 2, "directory": 1, "not a folder build": 1}
    for path in box.gone:
        assert not os.path.lexists(path), path
    for path in box.kept:
        assert os.path.lexists(path), path
    # What went is exactly the debris (and the parts of the build), nothing more.
    gone_now = before - entries(box.maildir)
    build_parts = {str(box.build / p) for p in ("tmp", "new", "cur", "maildirfolder")}
    assert gone_now == {str(p) for p in box.gone} | build_parts
    assert box.outside.read_text() == "not debris\n"  # the symlink went, not its target
    assert sorted(p.name for p in box.maildir.iterdir()) == [".Junk", ".Trash", "cur", "new", "tmp"]


def test_every_one_of_atime_mtime_ctime_keeps_a_file(tree: sandbox.Tree) -> None:
    """Three files, each old but for one of its times, all stay."""
    m = tree.add_user("alice@example.test")
    now = time.time()
    old = now - 3 * DAY
    recent_atime = put(m / "tmp", "atime", old)
    os.utime(recent_atime, (now - 60, old))
    recent_mtime = put(m / "tmp", "mtime", old)
    os.utime(recent_mtime, (old, now - 60))
    # Copied in with its old times kept (cp -p, an IMAP server's APPEND): only
    # ctime says it just arrived.
    recent_ctime = put(m / "tmp", "ctime", old)
    assert recent_ctime.lstat().st_mtime < now - 2 * DAY

    sweep = tmpclean.clean_maildir(str(m), now=now)
    assert sweep.kept == {"young": 3}
    assert all(p.exists() for p in (recent_atime, recent_mtime, recent_ctime))
    # Seen from two days on, all three are debris.
    sweep = tmpclean.clean_maildir(str(m), now=now + 2 * DAY)
    assert sweep.counts["files"] == 3
    assert list((m / "tmp").iterdir()) == []


def test_a_delivery_in_progress_is_never_touched(tree: sandbox.Tree) -> None:
    """A live Delivery's tmp/ file is young: cleaning with the real clock and
    the default age leaves it, and the delivery then completes."""
    m = tree.add_user("alice@example.test")
    old = put(m / "tmp", "1600000000.M1P1.host", time.time() - 3 * DAY)
    os.utime(old, (0, 0))  # atime/mtime of 1970; its ctime is now: still kept
    delivery = md.Delivery(str(m), md.Owner.of(str(m)))
    delivery.write(b"Subject: hello\n\nbody\n" * 5000)
    delivery.handle.flush()
    sweep = tmpclean.clean_maildir(str(m))
    assert sweep.counts["files"] == 0
    assert sweep.kept == {"young": 2}
    name = delivery.commit()
    assert (m / "new" / name).read_bytes() == b"Subject: hello\n\nbody\n" * 5000
    assert [p.name for p in (m / "tmp").iterdir()] == [old.name]


def test_symlinked_tmp_and_folders_are_not_followed(tree: sandbox.Tree) -> None:
    """The Maildir's owner points .Junk/tmp, a folder and tmp/ of another
    Maildir at directories full of old files: none of those files goes."""
    m = tree.add_user("alice@example.test")
    elsewhere = tree.root / "elsewhere"
    elsewhere.mkdir()
    victims = [put(elsewhere, f"precious{n}", OLD) for n in range(3)]
    for sub in ("tmp", "new", "cur"):
        (elsewhere / sub).mkdir()
        victims.append(put(elsewhere / sub, "precious", OLD))
    junk = folder(m, "Junk")
    os.rmdir(junk / "tmp")
    (junk / "tmp").symlink_to(elsewhere)
    (m / ".Evil").symlink_to(elsewhere)  # a "folder" that is another Maildir
    mine = put(m / "tmp", "1700000000.M1P1.host", OLD)

    sweep = tmpclean.clean_maildir(str(m), now=NOW)
    assert sweep.counts["files"] == 1 and not mine.exists()
    assert sweep.kept == {"symlinked tmp": 1, "symlinked folder": 1}
    assert all(p.exists() for p in victims)

    # A Maildir whose tmp/ itself is a symlink to them.
    bob = tree.add_user("bob@example.test")
    os.rmdir(bob / "tmp")
    (bob / "tmp").symlink_to(elsewhere / "tmp")
    sweep = tmpclean.clean_maildir(str(bob), now=NOW)
    assert sweep.counts["tmp_dirs"] == 0 and sweep.kept == {"symlinked tmp": 1}
    assert all(p.exists() for p in victims)
    # And a Maildir that is itself a symlink (to alice's) is not entered.
    link = tree.root / "Maildir-link"
    link.symlink_to(m)
    again = put(m / "tmp", "1700000000.M2P2.host", OLD)
    sweep = tmpclean.clean_maildir(str(link), now=NOW)
    assert sweep.kept == {"symlinked maildir": 1} and again.exists()


def test_hostile_names_are_removed_and_reported_on_one_line(tree: sandbox.Tree) -> None:
    m = tree.add_user("alice@example.test")
    newline = put(m / "tmp", "evil\nname: injected", OLD)
    raw = os.fsencode(m / "tmp") + b"/latin1-\xe9-\x1b[31m"
    with open(raw, "wb") as handle:
        handle.write(b"x")
    os.utime(raw, (OLD, OLD))
    own(Path(os.fsdecode(raw)))

    dry = tmpclean.clean_maildir(str(m), now=NOW, dry_run=True)
    shown = sorted(item["path"].rsplit("/", 1)[1] for item in dry.listing)
    assert shown == ["evil\\x0aname: injected", "latin1-\\xe9-\\x1b[31m"]
    assert all("\n" not in item["path"] for item in dry.listing)
    assert all(item["path"].isprintable() for item in dry.listing)

    sweep = tmpclean.clean_maildir(str(m), now=NOW)
    assert sweep.counts["files"] == 2
    assert not os.path.lexists(newline) and not os.path.lexists(raw)


def test_dry_run_changes_nothing_not_even_access_times(tree: sandbox.Tree) -> None:
    """A dry run lists exactly what the real run then removes, and leaves every
    time alone: were a listing to bump the half-built folder's atime, the
    real run would see it as young."""
    box = Box(tree)
    paths = [box.maildir, *box.maildir.rglob("*")]
    for path in paths:  # the directories too: reading them now would show up
        if not path.name.endswith(".young"):
            stamp(path, OLD)
    before = state(paths)

    dry = tmpclean.clean_maildir(str(box.maildir), now=time.time(), age=0, dry_run=True)
    assert state(paths) == before
    dry = tmpclean.clean_maildir(str(box.maildir), now=NOW, dry_run=True)
    assert state(paths) == before
    listed = {item["path"].rstrip("/") for item in dry.listing}
    assert listed == {str(p) for p in box.gone}
    assert {item["action"] for item in dry.listing} == {
        "remove file",
        "remove symlink",
        "remove FIFO",
        "remove socket",
        "remove half-built folder",
    }

    real = tmpclean.clean_maildir(str(box.maildir), now=NOW)
    assert real.counts == dry.counts
    assert not any(os.path.lexists(p) for p in listed)


def test_an_entry_that_vanishes_meanwhile_is_no_failure(
    tree: sandbox.Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery (or another cleanup) removes the file between our look and
    our unlink."""
    m = tree.add_user("alice@example.test")
    put(m / "tmp", "1700000000.M1P1.host", OLD)
    real_unlink = os.unlink

    def racing(name: str, *, dir_fd: int | None = None) -> None:
        real_unlink(name, dir_fd=dir_fd)
        real_unlink(name, dir_fd=dir_fd)  # the second one is ours: ENOENT

    monkeypatch.setattr(os, "unlink", racing)
    sweep = tmpclean.clean_maildir(str(m), now=NOW)
    monkeypatch.undo()
    assert sweep.counts["vanished"] == 1
    assert sweep.counts["files"] == 0 and sweep.counts["failed"] == 0
    assert sweep.errors == []


# --- the command -------------------------------------------------------------


def invoke(tree: sandbox.Tree, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--config", str(tree.config_path), "cleanup", *args], catch_exceptions=False
    )


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
    return out


def wait_out(seconds: float) -> None:
    """Let the ctimes of what was just made fall behind --older-than."""
    time.sleep(seconds)


def test_command_cleans_every_mailbox_as_the_domain_uid(tree: sandbox.Tree) -> None:
    """Debris of two users in two domains goes; bob's tmp/ belongs to root and
    is not writable by the domain uid, so his root-owned file stays and is
    reported (as root, that shows the work ran as uid 89: root could have
    removed it); exit 1. Nothing else in the tree changes."""
    tree.add_domain("other.test", hashed=True)
    alice = tree.add_user("alice@example.test")
    bob = tree.add_user("bob@example.test")
    carol = tree.add_user("carol@other.test")
    junk = folder(alice, "Junk")
    old = time.time() - 3 * DAY
    gone = [
        put(alice / "tmp", "1700000000.M1P1.host", old),
        put(junk / "tmp", "1700000000.M2P2.host", old),
        put(carol / "tmp", "1700000000.M3P3.host", old),
    ]
    young = put(carol / "tmp", "1700000000.M4P4.young", time.time() + DAY)
    stuck = bob / "tmp" / "1700000000.M5P5.host"
    stuck.write_bytes(b"root's\n")
    stuck.chmod(0o600)
    os.utime(stuck, (old, old))
    if ROOT:
        os.chown(bob / "tmp", 0, 0)
    (bob / "tmp").chmod(0o555)  # not writable by the domain uid
    wait_out(2.2)
    before = snapshot(tree.vpopmail_home)

    result = invoke(tree, "--older-than", "2s", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["exit_code"] == 1
    assert (report["domains"], report["users"], report["maildirs"]) == (2, 3, 3)
    assert (report["files"], report["failed"], report["kept"]) == (3, 1, {"young": 1})
    assert report["age_seconds"] == 2
    [error] = report["errors"]
    assert error == f"{stuck}: cannot remove: Permission denied"
    assert f"quarantine cleanup: {stuck}: cannot remove: Permission denied" in result.stderr
    assert stuck.lstat().st_size == 7  # (not read: that would make it young)
    assert young.exists()
    after = snapshot(tree.vpopmail_home)
    changed = {p for p in before if before[p] != after.get(p)}
    tmps = {str(alice / "tmp"), str(junk / "tmp"), str(carol / "tmp")}  # their mtimes
    assert changed == {str(p) for p in gone} | tmps
    assert set(after) <= set(before)

    # Once the domain uid may write there, the next run finishes the job: exit 0.
    if ROOT:
        os.chown(bob / "tmp", UID, GID)
    (bob / "tmp").chmod(0o700)
    result = invoke(tree, "--older-than", "2s")
    assert result.exit_code == 0, result.output
    assert not stuck.exists() and young.exists()
    assert "removed 1 file (7 bytes)" in result.stdout
    assert "kept 1 (1 younger than 2s); none failed" in result.stdout


def test_command_dry_run_domain_user_and_config_age(tree: sandbox.Tree) -> None:
    alice = tree.add_user("alice@example.test")
    bob = tree.add_user("bob@example.test")
    old = time.time() - 3 * DAY
    a = put(alice / "tmp", "1700000000.M1P1.host", old)
    b = put(bob / "tmp", "1700000000.M2P2.host", old)
    wait_out(1.2)
    before = snapshot(tree.vpopmail_home)

    # The default age is cleanup.tmp_age, 36h: nothing is that old (ctime).
    result = invoke(tree, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["age_seconds"] == 36 * 3600
    assert json.loads(result.stdout)["kept"] == {"young": 2}
    assert snapshot(tree.vpopmail_home) == before

    tree.write_config("cleanup:\n  tmp_age: 1s\n")
    result = invoke(tree, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == sorted(
        [f"would remove file: {a}", f"would remove file: {b}"]
    )
    assert "quarantine cleanup (dry run):" in result.stdout
    assert "would remove 2 files" in result.stdout
    assert snapshot(tree.vpopmail_home) == before

    result = invoke(tree, "--user", "bob@example.test", "--quiet")
    assert (result.exit_code, result.stdout) == (0, "")
    assert a.exists() and not b.exists()
    result = invoke(tree, "--domain", "example.test", "-q")
    assert (result.exit_code, result.stdout) == (0, "")
    assert not a.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "soon"], "is not a duration"),
        (["--user", "bob"], "give user@domain"),
        (["--domain", "nowhere.test"], "no such vpopmail domain: nowhere.test"),
    ],
)
def test_command_usage_errors_exit_2(tree: sandbox.Tree, args: list[str], message: str) -> None:
    tree.add_user("alice@example.test")
    result = invoke(tree, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_bad_config_age_exits_2(tree: sandbox.Tree) -> None:
    tree.write_config("cleanup:\n  tmp_age: tomorrow\n")
    result = invoke(tree)
    assert result.exit_code == 2
    assert f"{tree.config_path}:6: cleanup.tmp_age: 'tomorrow' is not a duration" in result.output


# --- end to end: a real delivery killed mid-write -----------------------------


def spam(size: int) -> bytes:
    head = (
        b"From: Spammer <spammer@spam.example>\nTo: alice@example.test\n"
        b"Subject: offer\nMessage-ID: <killed@spam.example>\nX-Spam-Flag: YES\n"
        b"X-Spam-Status: Yes, score=15.0 required=5.0 tests=GTUBE autolearn=no\n\n"
    )
    return head + b"buy now " * (size // 8) + b"\n"


def deliver(quarantine_bin: Path, tree: sandbox.Tree) -> subprocess.Popen[bytes]:
    """`quarantine deliver` as qmail-local starts it (environment, cwd, uid)."""
    ids: dict[str, object] = {"user": UID, "group": GID, "extra_groups": []} if ROOT else {}
    return subprocess.Popen(
        [str(quarantine_bin), "deliver", "--config", str(tree.config_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=sandbox.qmail_env(tree, "alice@example.test", "someone@sender.example", None),
        cwd=tree.domains["example.test"],
        **ids,
    )


@pytest.mark.slow
def test_debris_of_a_killed_delivery_is_cleaned_and_mail_untouched(
    tree: sandbox.Tree, quarantine_bin: Path
) -> None:
    """A delivery killed inside ensure_folder leaves a half-built folder in
    tmp/; one killed while writing the message leaves a partial file in
    .Junk/tmp. The default age keeps them; aged, `quarantine cleanup` run by
    root removes both and nothing else, and delivery goes on working."""
    m = tree.add_user("alice@example.test")
    build = killed_folder_build(m)
    inbox = put(m / "new", "1600000000.M1P1.host,S=15", time.time() - 30 * DAY)

    whole = deliver(quarantine_bin, tree)
    out, _ = whole.communicate(spam(2_000), timeout=60)
    assert whole.returncode == 99, out
    [delivered] = (m / ".Junk" / "new").iterdir()

    message = spam(300_000)
    proc = deliver(quarantine_bin, tree)
    assert proc.stdin is not None
    proc.stdin.write(message[:200_000])  # the header and part of the body; then it waits
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    partial: list[Path] = []
    while time.monotonic() < deadline:
        partial = [p for p in (m / ".Junk" / "tmp").iterdir() if p.stat().st_size >= 65536]
        if partial:
            break
        time.sleep(0.01)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    [half] = partial
    assert 0 < half.stat().st_size < len(message)
    assert list((m / ".Junk" / "new").iterdir()) == [delivered]
    debris = [build, half]

    kept = snapshot(m / "new") | snapshot(m / ".Junk" / "new") | snapshot(m / "cur")
    subscribed = (m / "courierimapsubscribed").read_bytes()
    command = [str(quarantine_bin), "--config", str(tree.config_path), "cleanup"]
    fresh = subprocess.run(command, capture_output=True, text=True, check=False)
    assert fresh.returncode == 0, fresh.stderr
    assert "kept 2 (2 younger than 36h)" in fresh.stdout
    assert all(p.exists() for p in debris)

    for path in debris:
        stamp_tree(path, time.time() - 3 * DAY)
    wait_out(1.2)
    aged = subprocess.run([*command, "--older-than", "1s"], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert aged.returncode == 0, aged.stdout + aged.stderr
    assert "removed 1 file (" in aged.stdout and "1 half-built folder" in aged.stdout
    assert list((m / "tmp").iterdir()) == [] and list((m / ".Junk" / "tmp").iterdir()) == []
    assert snapshot(m / "new") | snapshot(m / ".Junk" / "new") | snapshot(m / "cur") == kept
    assert inbox.exists() and delivered.exists()
    assert (m / "courierimapsubscribed").read_bytes() == subscribed

    again = deliver(quarantine_bin, tree)
    out, _ = again.communicate(message, timeout=60)
    assert again.returncode == 99, out
    assert len(list((m / ".Junk" / "new").iterdir())) == 2
