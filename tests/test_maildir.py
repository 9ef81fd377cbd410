"""Maildir delivery, folder creation, subscriptions and maildirsize."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quarantine import maildir as md
from quarantine.qmail import DiskError


@pytest.fixture
def box(tmp_path: Path) -> Path:
    root = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    root.chmod(0o700)
    return root


def owner(path: Path) -> md.Owner:
    return md.Owner.of(str(path))


def test_delivery_lands_in_new_with_size(box: Path) -> None:
    d = md.Delivery(str(box), owner(box))
    d.write(b"Subject: x\n\n")
    d.write(b"body\n")
    name = d.commit()
    assert name.endswith(",S=17")
    assert (box / "new" / name).read_bytes() == b"Subject: x\n\nbody\n"
    assert list((box / "tmp").iterdir()) == []
    assert stat.S_IMODE((box / "new" / name).stat().st_mode) == 0o600


def test_unique_names_differ() -> None:
    names = {md.unique_name() for _ in range(1000)}
    assert len(names) == 1000
    assert all(":" not in n and "/" not in n and not n.startswith(".") for n in names)


def test_abort_leaves_nothing(box: Path) -> None:
    d = md.Delivery(str(box), owner(box))
    d.write(b"partial")
    d.abort()
    assert list((box / "tmp").iterdir()) == []
    assert list((box / "new").iterdir()) == []


def test_missing_tmp_is_a_disk_error(box: Path) -> None:
    (box / "tmp").rmdir()
    with pytest.raises(DiskError):
        md.Delivery(str(box), owner(box))


def test_folder_is_made_like_maildirmake(box: Path) -> None:
    assert md.ensure_folder(str(box), "Junk", owner(box)) is True
    junk = box / ".Junk"
    assert sorted(p.name for p in junk.iterdir()) == ["cur", "maildirfolder", "new", "tmp"]
    assert (junk / "maildirfolder").read_bytes() == b""
    assert stat.S_IMODE(junk.stat().st_mode) == 0o700
    assert md.ensure_folder(str(box), "Junk", owner(box)) is False
    assert [p.name for p in (box / "tmp").iterdir()] == []


def test_folder_mode_follows_maildir_without_group_write(box: Path) -> None:
    box.chmod(0o775)
    md.ensure_folder(str(box), "Junk", owner(box))
    assert stat.S_IMODE((box / ".Junk").stat().st_mode) == 0o755


def test_incomplete_folder_is_repaired(box: Path) -> None:
    (box / ".Junk").mkdir()
    (box / ".Junk" / "new").mkdir()
    md.ensure_folder(str(box), "Junk", owner(box))
    assert md.is_maildir(str(box / ".Junk"))


def test_symlinked_folder_is_refused(box: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (box / ".Junk").symlink_to(outside)
    with pytest.raises(DiskError, match="not a directory"):
        md.ensure_folder(str(box), "Junk", owner(box))
    assert list(outside.iterdir()) == []


def test_courier_subscription_added_once_keeping_lines(box: Path) -> None:
    sub = box / "courierimapsubscribed"
    sub.write_bytes(b"INBOX.Sent\nINBOX.Drafts")  # last line without newline
    assert md.subscribe(str(box), "Junk", owner(box)) == ["courierimapsubscribed"]
    assert md.subscribe(str(box), "Junk", owner(box)) == []
    assert sub.read_bytes() == b"INBOX.Sent\nINBOX.Drafts\nINBOX.Junk\n"


def test_courier_inbox_prefix_case_is_ignored(box: Path) -> None:
    (box / "courierimapsubscribed").write_bytes(b"inbox.Junk\n")
    assert md.subscribe(str(box), "Junk", owner(box)) == []


def test_courier_file_created_when_missing(box: Path) -> None:
    assert md.subscribe(str(box), "Junk", owner(box), "courier") == ["courierimapsubscribed"]
    assert (box / "courierimapsubscribed").read_bytes() == b"INBOX.Junk\n"
    assert not (box / "subscriptions").exists()


def test_auto_subscribes_both_servers_on_a_new_maildir(box: Path) -> None:
    """A Maildir no IMAP server has touched: a Dovecot user must see Junk too."""
    changed = md.subscribe(str(box), "Junk", owner(box))
    assert changed == ["courierimapsubscribed", "subscriptions"]
    assert (box / "courierimapsubscribed").read_bytes() == b"INBOX.Junk\n"
    assert (box / "subscriptions").read_bytes() == b"V\t2\n\nJunk\n"
    assert (box / "subscriptions").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("signs", "written"),
    [
        (["courierimapuiddb"], ["courierimapsubscribed"]),
        (["courierimapkeywords", "courierimapsubscribed"], ["courierimapsubscribed"]),
        (["dovecot-uidlist", "dovecot.index.log"], ["subscriptions"]),
        (["dovecot-uidlist", "courierimapuiddb"], ["courierimapsubscribed", "subscriptions"]),
    ],
    ids=["courier", "courier-subscribed", "dovecot", "both-servers"],
)
def test_auto_follows_the_files_each_server_leaves(
    box: Path, signs: list[str], written: list[str]
) -> None:
    for name in signs:
        (box / name).write_bytes(b"")
    md.subscribe(str(box), "Junk", owner(box))
    for name in ("courierimapsubscribed", "subscriptions"):
        text = (box / name).read_bytes() if (box / name).exists() else b""
        assert (b"Junk" in text) == (name in written), name


@pytest.mark.parametrize(
    ("mode", "written"),
    [
        ("courier", ["courierimapsubscribed"]),
        ("dovecot", ["subscriptions"]),
        ("both", ["courierimapsubscribed", "subscriptions"]),
        ("off", []),
    ],
)
def test_fixed_modes(box: Path, mode: str, written: list[str]) -> None:
    (box / "dovecot-uidlist").write_bytes(b"")  # auto would say Dovecot only
    assert md.subscribe(str(box), "Junk", owner(box), mode) == written


def test_ensure_folder_subscribes_as_configured(box: Path) -> None:
    md.ensure_folder(str(box), "Junk", owner(box), subscribe_to="dovecot")
    assert (box / "subscriptions").read_bytes() == b"V\t2\n\nJunk\n"
    assert not (box / "courierimapsubscribed").exists()
    md.ensure_folder(str(box), "Spam", owner(box), subscribe_to="off")
    assert (box / "subscriptions").read_bytes() == b"V\t2\n\nJunk\n"


def test_dovecot_v1_and_v2(box: Path) -> None:
    (box / "subscriptions").write_bytes(b"Sent\n")
    md.subscribe(str(box), "Junk", owner(box))
    assert (box / "subscriptions").read_bytes() == b"Sent\nJunk\n"
    (box / "subscriptions").write_bytes(b"V\t2\n\nSent\n")
    md.subscribe(str(box), "Spam.Old", owner(box))
    assert (box / "subscriptions").read_bytes() == b"V\t2\n\nSent\nSpam\tOld\n"


def test_quota_parse_and_over(box: Path) -> None:
    (box / "maildirsize").write_bytes(b"10000S,5C\n4000 2\n  1000   1\n")
    quota = md.read_quota(str(box))
    assert quota is not None
    assert (quota.bytes_limit, quota.count_limit) == (10000, 5)
    assert (quota.bytes_used, quota.count_used) == (5000, 3)
    assert not quota.over(5000)
    assert quota.over(5001)


def test_quota_add_and_recalculate(box: Path) -> None:
    (box / "maildirsize").write_bytes(b"1000000S\n0 0\n")
    md.add_quota(str(box), 123, 1, owner(box))
    assert (box / "maildirsize").read_bytes() == b"1000000S\n0 0\n123 1\n"
    (box / "new" / "1.M1P1.h,S=500").write_bytes(b"x" * 500)
    md.ensure_folder(str(box), "Junk", owner(box))
    (box / ".Junk" / "cur" / "2.M1P1.h:2,S").write_bytes(b"y" * 70)
    (box / "maildirsize").write_bytes(b"1000000S\n" + b"1 1\n" * 2600)  # past 5120 bytes
    md.add_quota(str(box), 10, 1, owner(box))
    assert (box / "maildirsize").read_bytes() == b"1000000S\n570 2\n"


def test_no_maildirsize_no_quota(box: Path) -> None:
    assert md.read_quota(str(box)) is None
    md.add_quota(str(box), 1, 1, owner(box))
    assert not (box / "maildirsize").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_root_hands_files_to_maildir_owner(box: Path) -> None:
    os.chown(box, 89, 89)
    md.ensure_folder(str(box), "Junk", owner(box))
    md.subscribe(str(box), "Junk", owner(box))
    d = md.Delivery(str(box / ".Junk"), owner(box))
    d.write(b"x")
    name = d.commit()
    for path in (box / ".Junk", box / ".Junk" / "new", box / ".Junk" / "maildirfolder",
                 box / "courierimapsubscribed", box / ".Junk" / "new" / name):  # fmt: skip
        assert (path.stat().st_uid, path.stat().st_gid) == (89, 89), path
