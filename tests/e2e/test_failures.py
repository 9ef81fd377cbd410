"""When `quarantine deliver` cannot do its job it exits 111 (qmail keeps the
message and retries) with one log line, and leaves no partial file behind;
when the recipient is simply not ours it exits 0."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quarantine import sandbox

from .helpers import ALICE, files, one_line, qmail_env, run_deliver, snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def deferred(result: sandbox.LocalResult) -> str:
    """qmail-local's view of a filter that exited 111: a deferral, and the
    vdelivermail line after it never ran. Returns the filter's log line."""
    assert (result.status, result.codes) == ("deferral", [111]), result
    return one_line(result.output)


def no_mail_anywhere(tree: sandbox.Tree) -> None:
    for address in (ALICE, "bob@example.test"):
        maildir = tree.maildir(address)
        assert tree.messages(address) == []
        assert tree.messages(address, "Junk") == []
        assert files(maildir / "tmp") == []
        assert files(maildir / ".Junk" / "tmp") == []


# -- disk full ------------------------------------------------------------


@pytest.fixture
def small_disk(tree: sandbox.Tree) -> Iterator[Path]:
    """A 256 KB tmpfs holding an empty Maildir owned by the domain."""
    mount = Path(tempfile.mkdtemp(prefix="quarantine-e2e-full-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)], check=True
    )
    try:
        maildir = mount / "Maildir"
        maildir.mkdir(mode=0o700)
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(mode=0o700)
        for path in [maildir, *maildir.iterdir()]:
            tree.chown(path)
        yield maildir
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def make_junk(tree: sandbox.Tree, maildir: Path) -> Path:
    """A .Junk folder as maildirmake -f makes it."""
    junk = maildir / ".Junk"
    junk.mkdir(mode=0o700)
    for sub in ("tmp", "new", "cur"):
        (junk / sub).mkdir(mode=0o700)
    (junk / "maildirfolder").touch(mode=0o600)
    for path in [junk, *junk.iterdir()]:
        tree.chown(path)
    return junk


def fill(path: Path) -> Path:
    """Write a file into `path` until its filesystem is full; returns the file."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            os.write(fd, b"f" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


@needs_root
def test_disk_full_defers_and_leaves_nothing(
    tree: sandbox.Tree,
    small_disk: Path,
    quarantine_bin: Path,
    sa_messages: dict[str, bytes],
) -> None:
    """A 1 MB spam into a 256 KB filesystem: 111, one `(#4.` line, nothing in .Junk/new or tmp."""
    make_junk(tree, small_disk)
    head = sa_messages["spam"].split(b"\n\n", 1)[0] + b"\n\n"
    message = head + (b"z" * 79 + b"\n") * (1024 * 1024 // 80)
    proc = run_deliver(quarantine_bin, tree, message, qmail_env(tree), "--maildir", str(small_disk))
    line = one_line(proc.stdout)
    assert proc.returncode == 111, line
    assert "(#4." in line
    assert files(small_disk / ".Junk" / "new") == []
    assert files(small_disk / ".Junk" / "tmp") == []
    assert files(small_disk / "new") == []
    assert files(small_disk / "tmp") == []


@needs_root
def test_retry_after_disk_full_subscribes_junk(
    tree: sandbox.Tree,
    small_disk: Path,
    quarantine_bin: Path,
    sa_messages: dict[str, bytes],
) -> None:
    """Disk full at the first spam (111); with space back the retry files it and subscribes Junk."""
    filler = fill(small_disk.parent)
    first = run_deliver(
        quarantine_bin, tree, sa_messages["spam"], qmail_env(tree), "--maildir", str(small_disk)
    )
    assert first.returncode == 111, first.stdout
    filler.unlink()
    retry = run_deliver(
        quarantine_bin, tree, sa_messages["spam"], qmail_env(tree), "--maildir", str(small_disk)
    )
    assert retry.returncode == 99, retry.stdout
    assert len(files(small_disk / ".Junk" / "new")) == 1
    assert (small_disk / "courierimapsubscribed").read_bytes() == b"INBOX.Junk\n"


# -- configuration ----------------------------------------------------------


@needs_root
def test_unreadable_config_defers_naming_the_file(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """A config file the domain uid cannot read: 111, and the log line names the file."""
    tree.config_path.chmod(0o600)  # root's; the filter runs as uid 89
    line = deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
    assert str(tree.config_path) in line
    assert "(#4." in line
    no_mail_anywhere(tree)


@pytest.mark.parametrize(
    "text",
    [
        "deliver:\n  junk_folder: [1, 2]\n",
        "deliver:\n  no_such_key: 1\n",
        "deliver: [unclosed\n",
        "\x00\xff binary garbage\n",
        "deliver:\n  junk_folder: ../../../tmp\n",
    ],
    ids=["wrong-type", "unknown-key", "bad-yaml", "binary", "folder-escaping"],
)
def test_invalid_config_defers_naming_the_file(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], text: str
) -> None:
    """An invalid config file: 111 for spam and ham alike, and the log line names the file."""
    tree.config_path.write_text(text, encoding="latin-1")
    for message in (sa_messages["spam"], sa_messages["ham"]):
        line = deferred(sandbox.qmail_local(tree, ALICE, message))
        assert str(tree.config_path) in line
    no_mail_anywhere(tree)


# -- qmail's environment and vpopmail's files -------------------------------


@pytest.mark.parametrize(
    "missing", [("EXT",), ("HOST",), ("EXT", "HOST")], ids=["no-ext", "no-host", "neither"]
)
def test_missing_ext_or_host_defers(
    tree: sandbox.Tree,
    quarantine_bin: Path,
    sa_messages: dict[str, bytes],
    missing: tuple[str, ...],
) -> None:
    """Not run by qmail-local (no EXT or HOST) and no --maildir: 111, nothing filed."""
    env = qmail_env(tree, **dict.fromkeys(missing))
    proc = run_deliver(quarantine_bin, tree, sa_messages["spam"], env)
    line = one_line(proc.stdout)
    assert proc.returncode == 111, line
    assert "(#4." in line
    no_mail_anywhere(tree)


def test_missing_users_assign_defers(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """No qmail users/assign: the lookup cannot be done, 111."""
    (tree.qmail_home / "users" / "assign").unlink()
    line = deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
    assert "assign" in line
    no_mail_anywhere(tree)


@needs_root
def test_unreadable_vpasswd_defers(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """The domain's vpasswd unreadable by the domain uid: the lookup failed, 111."""
    vpasswd = tree.domains["example.test"] / "vpasswd"
    os.chown(vpasswd, 0, 0)
    vpasswd.chmod(0o600)
    line = deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
    assert "vpasswd" in line
    no_mail_anywhere(tree)


@pytest.mark.parametrize(
    ("ext", "host"),
    [("carol", "example.test"), ("alice", "other.test")],
    ids=["unknown-user", "unknown-domain"],
)
def test_unknown_recipient_is_left_alone(
    tree: sandbox.Tree, quarantine_bin: Path, sa_messages: dict[str, bytes], ext: str, host: str
) -> None:
    """A spam for an address vpopmail does not know: 0 for the next line, nothing written."""
    before = snapshot(tree.vpopmail_home)
    proc = run_deliver(
        quarantine_bin, tree, sa_messages["spam"], qmail_env(tree, EXT=ext, HOST=host)
    )
    line = one_line(proc.stdout)
    assert proc.returncode == 0, line
    assert "not a vpopmail user" in line
    assert snapshot(tree.vpopmail_home) == before


def test_user_directory_outside_the_tree_defers(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], opt_in_user: Callable[[str], Path]
) -> None:
    """A vpasswd entry whose directory lies outside vpopmail's tree: 111, nothing written there."""
    outside = Path(tempfile.mkdtemp(prefix="quarantine-e2e-home-"))
    try:
        outside.chmod(0o755)
        for sub in ("tmp", "new", "cur"):
            (outside / "Maildir" / sub).mkdir(parents=True)
        for path in [outside, *outside.rglob("*")]:
            tree.chown(path)
        vpasswd = tree.domains["example.test"] / "vpasswd"
        with vpasswd.open("a") as handle:
            handle.write(f"carol:$1$x$y:1:0:carol:{outside}:NOQUOTA\n")
        opt_in_user("carol@example.test")
        before = snapshot(outside)
        line = deferred(sandbox.qmail_local(tree, "carol@example.test", sa_messages["spam"]))
        assert "outside" in line
        assert snapshot(outside) == before
    finally:
        shutil.rmtree(outside, ignore_errors=True)


# -- the Maildir --------------------------------------------------------------


@pytest.fixture
def elsewhere(tree: sandbox.Tree) -> Iterator[Path]:
    """A directory outside the tree shaped like a Maildir folder (tmp, new, cur,
    maildirfolder, a courierimapsubscribed), writable by the domain uid."""
    path = Path(tempfile.mkdtemp(prefix="quarantine-e2e-elsewhere-"))
    try:
        path.chmod(0o755)
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir()
        (path / "maildirfolder").touch()
        (path / "courierimapsubscribed").write_bytes(b"INBOX.Private\n")
        for entry in [path, *path.iterdir()]:
            tree.chown(entry)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_junk_symlink_out_of_the_maildir_defers(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], elsewhere: Path
) -> None:
    """.Junk a symlink to a folder elsewhere: 111, and nothing is written through it."""
    maildir = tree.maildir(ALICE)
    (maildir / ".Junk").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
    assert snapshot(elsewhere) == before
    assert (maildir / ".Junk").is_symlink()
    assert tree.messages(ALICE) == []
    assert not (maildir / "courierimapsubscribed").exists()


@pytest.mark.parametrize(
    ("entry", "target"),
    [
        (".Junk/tmp", "tmp"),
        (".Junk/new", "new"),
        ("courierimapsubscribed", "courierimapsubscribed"),
        ("maildirsize", "courierimapsubscribed"),
    ],
)
def test_symlink_inside_the_maildir_is_not_followed(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    elsewhere: Path,
    entry: str,
    target: str,
) -> None:
    """A symlink where a folder or file of the Maildir belongs: 99 or 111, nothing written there."""
    maildir = tree.maildir(ALICE)
    if entry.startswith(".Junk/"):
        for sub in ("tmp", "new", "cur"):
            if sub != entry[6:]:
                (maildir / ".Junk" / sub).mkdir(parents=True)
        (maildir / ".Junk" / "maildirfolder").touch()
        for path in [maildir / ".Junk", *(maildir / ".Junk").iterdir()]:
            tree.chown(path)
    (maildir / entry).symlink_to(elsewhere / target)
    before = snapshot(elsewhere)
    result = sandbox.qmail_local(tree, ALICE, sa_messages["spam"])
    one_line(result.output)
    assert result.codes in ([99], [111]), result
    assert snapshot(elsewhere) == before
    assert (maildir / entry).is_symlink()
    if result.codes == [111]:
        assert files(maildir / ".Junk" / "new") == []


def test_maildir_tmp_symlink_out_of_the_maildir_is_not_written_through(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], elsewhere: Path
) -> None:
    """Maildir/tmp a symlink to a directory elsewhere: 99 or 111, but nothing written there."""
    maildir = tree.maildir(ALICE)
    (maildir / "tmp").rmdir()
    (maildir / "tmp").symlink_to(elsewhere / "tmp")
    before = snapshot(elsewhere)
    result = sandbox.qmail_local(tree, ALICE, sa_messages["spam"])
    one_line(result.output)
    assert result.codes in ([99], [111]), result
    assert snapshot(elsewhere) == before


def test_unwritable_maildir_tmp_defers(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """Maildir/tmp mode 0500 (the filter runs as its owner, uid 89): 111, no .Junk half-made."""
    maildir = tree.maildir(ALICE)
    (maildir / "tmp").chmod(0o500)
    try:
        line = deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
        assert "(#4." in line
        assert sorted(p.name for p in maildir.iterdir()) == ["cur", "new", "tmp"]
        assert files(maildir / "tmp") == []
    finally:
        (maildir / "tmp").chmod(0o700)


def test_unwritable_junk_tmp_defers(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """An existing .Junk whose tmp/ is 0500: 111, nothing in .Junk/new, inbox untouched."""
    junk = tree.maildir(ALICE) / ".Junk"
    for sub in ("tmp", "new", "cur"):
        (junk / sub).mkdir(parents=True, mode=0o700)
    (junk / "maildirfolder").touch()
    for path in [junk, *junk.iterdir()]:
        tree.chown(path)
    (junk / "tmp").chmod(0o500)
    try:
        deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
        assert files(junk / "new") == []
        assert files(junk / "tmp") == []
        assert tree.messages(ALICE) == []
    finally:
        (junk / "tmp").chmod(0o700)


# -- a Maildir in a state deliver cannot use -----------------------------------


def test_read_only_maildir_defers(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """Maildir mode 0500 with no .Junk yet: the folder cannot be put in place.
    111, the Maildir exactly as it was, no debris left in tmp/; once the mode
    is back the retry files the message and subscribes the folder."""
    maildir = tree.maildir(ALICE)
    before = sorted(snapshot(maildir))
    maildir.chmod(0o500)
    try:
        line = deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
        assert "(#4." in line
        assert sorted(snapshot(maildir)) == before  # the same entries: nothing added
        assert files(maildir / "tmp") == []
    finally:
        maildir.chmod(0o700)
    result = sandbox.qmail_local(tree, ALICE, sa_messages["spam"])
    assert result.codes == [99], result
    assert len(tree.messages(ALICE, "Junk")) == 1
    assert (maildir / "courierimapsubscribed").read_text() == "INBOX.Junk\n"


def test_junk_that_is_a_file_defers(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """A regular file where .Junk should be: 111 with a reason, the file and
    the inbox untouched (it is never replaced or written into)."""
    maildir = tree.maildir(ALICE)
    junk = maildir / ".Junk"
    junk.write_bytes(b"not a folder\n")
    tree.chown(junk)
    line = deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
    assert "(#4." in line
    assert junk.read_bytes() == b"not a folder\n"
    assert tree.messages(ALICE) == []
    assert files(maildir / "tmp") == []


@pytest.mark.parametrize("how", ["directory", "unwritable-directory-entry"])
def test_subscription_file_that_is_a_directory_defers(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], how: str
) -> None:
    """courierimapsubscribed is a directory (empty, or holding a file): the
    subscription cannot be written, so the folder is not put in place
    either (it would stay unsubscribed for good). 111; the retry after the
    admin removes the directory files the message and subscribes once."""
    maildir = tree.maildir(ALICE)
    subscribed = maildir / "courierimapsubscribed"
    subscribed.mkdir()
    if how == "unwritable-directory-entry":
        (subscribed / "INBOX.Junk").write_text("x")
    tree.chown(subscribed)
    line = deferred(sandbox.qmail_local(tree, ALICE, sa_messages["spam"]))
    assert "(#4." in line
    assert not (maildir / ".Junk").exists()
    assert tree.messages(ALICE) == []
    assert files(maildir / "tmp") == []
    shutil.rmtree(subscribed)
    result = sandbox.qmail_local(tree, ALICE, sa_messages["spam"])
    assert result.codes == [99], result
    assert subscribed.read_text() == "INBOX.Junk\n"


def test_read_only_subscription_file_is_replaced_not_written(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """courierimapsubscribed mode 0400: the subscription is written as a new
    file renamed over it (the Maildir is the user's), keeping its lines."""
    maildir = tree.maildir(ALICE)
    subscribed = maildir / "courierimapsubscribed"
    subscribed.write_text("INBOX.Sent\n")
    tree.chown(subscribed)
    subscribed.chmod(0o400)
    result = sandbox.qmail_local(tree, ALICE, sa_messages["spam"])
    assert result.codes == [99], result
    assert subscribed.read_text() == "INBOX.Sent\nINBOX.Junk\n"
    assert len(tree.messages(ALICE, "Junk")) == 1
