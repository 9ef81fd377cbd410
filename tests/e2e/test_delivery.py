"""`quarantine deliver` end to end: real SpamAssassin output delivered through
the domain's .qmail files as qmail-local runs them (preline, uid 89, exit
codes), the installed command, the Maildir on disk, and Courier's imapd
reading it."""

from __future__ import annotations

import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quarantine import sandbox

from .helpers import (
    ALICE,
    ALICE_DTLINE,
    BOB,
    RPLINE,
    assert_inbox_of,
    assert_junk_of,
    files,
    qmail_env,
    run_deliver,
    size_in_name,
    spawn_deliver,
    split_junk_file,
    with_preline,
)

if TYPE_CHECKING:
    import imaplib
    from collections.abc import Callable

    Imap = Callable[..., imaplib.IMAP4_stream]

BOB_DTLINE = b"Delivered-To: example.test-bob@example.test\n"
OURS = b"Authentication-Results: mx.example.test; "


def subscribed(imap: Imap, maildir: Path) -> list[bytes]:
    """The folders Courier's imapd lists as subscribed (LSUB), sorted."""
    typ, lines = imap(maildir).lsub('""', "*")
    assert typ == "OK", lines
    names = [line for line in lines if isinstance(line, bytes) and b"\\Noselect" not in line]
    return sorted(line.rsplit(b" ", 1)[1].strip(b'"') for line in names)


def deliver(tree: sandbox.Tree, address: str, message: bytes) -> sandbox.LocalResult:
    """Deliver as qmail-local would; no traceback may reach qmail's log."""
    result = sandbox.qmail_local(tree, address, message)
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def junked(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> sandbox.Tree:
    """The tree after SpamAssassin's sample spam was delivered to alice."""
    result = deliver(tree, ALICE, sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99]), result
    return tree


# 1. spam to an opted-in user


def test_spam_is_filed_into_junk_and_ends_the_qmail_file(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """SpamAssassin's spam exits 99 (vdelivermail does not run) and lands in .Junk/new only."""
    result = deliver(tree, ALICE, sa_messages["spam"])
    assert result.status == "success"
    assert result.codes == [99]
    assert result.output.startswith("quarantine: junk alice@example.test -> .Junk/new/")
    assert tree.messages(ALICE) == []
    assert len(tree.messages(ALICE, "Junk")) == 1
    assert files(tree.maildir(ALICE) / "cur") == []


def test_junk_file_is_trace_lines_our_header_and_the_untouched_message(
    junked: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """Return-Path, Delivered-To, `X-Quarantine: junk; rule=spamassassin`, then SA's bytes."""
    [path] = junked.messages(ALICE, "Junk")
    return_path, delivered_to, ours, rest = split_junk_file(path.read_bytes())
    assert return_path == RPLINE
    assert delivered_to == ALICE_DTLINE
    assert ours.startswith(b"X-Quarantine: junk; rule=spamassassin; spam=yes score=1000")
    assert rest == sa_messages["spam"]
    assert size_in_name(path) == path.stat().st_size


def test_junk_folder_is_made_like_maildirmake(junked: sandbox.Tree) -> None:
    """.Junk: tmp, new, cur, an empty maildirfolder; the domain's uid/gid; no group/other write."""
    folder = junked.maildir(ALICE) / ".Junk"
    assert sorted(p.name for p in folder.iterdir()) == ["cur", "maildirfolder", "new", "tmp"]
    assert (folder / "maildirfolder").read_bytes() == b""
    [message] = files(folder / "new")
    for path in [folder, *folder.iterdir(), message]:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (junked.uid, junked.gid), path
        assert not stat.S_IMODE(st.st_mode) & 0o022, path
    for sub in ("tmp", "new", "cur"):
        assert stat.S_ISDIR((folder / sub).lstat().st_mode)
    assert stat.S_ISREG((folder / "maildirfolder").lstat().st_mode)
    assert files(folder / "tmp") == []


def test_junk_folder_is_subscribed_once(junked: sandbox.Tree) -> None:
    """courierimapsubscribed is created holding exactly one `INBOX.Junk` line."""
    path = junked.maildir(ALICE) / "courierimapsubscribed"
    assert path.read_bytes() == b"INBOX.Junk\n"
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (junked.uid, junked.gid)
    assert not stat.S_IMODE(st.st_mode) & 0o022


def test_fresh_maildir_subscribes_dovecot_too(junked: sandbox.Tree) -> None:
    """deliver.subscribe auto on a Maildir no IMAP server has served yet:
    Dovecot's subscriptions file (its 2.3 form) lists Junk as well."""
    path = junked.maildir(ALICE) / "subscriptions"
    assert path.read_bytes() == b"V\t2\n\nJunk\n"
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (junked.uid, junked.gid, 0o600)


@pytest.mark.parametrize(
    ("mode", "files"),
    [("courier", ["courierimapsubscribed"]), ("dovecot", ["subscriptions"]), ("off", [])],
)
def test_subscribe_as_configured(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], mode: str, files: list[str]
) -> None:
    tree.write_config(f"deliver:\n  subscribe: {mode}\n")
    result = deliver(tree, ALICE, sa_messages["spam"])
    assert result.codes == [99], result
    maildir = tree.maildir(ALICE)
    found = [n for n in ("courierimapsubscribed", "subscriptions") if (maildir / n).exists()]
    assert found == files


def test_courier_imap_shows_the_junk_message(junked: sandbox.Tree, imap: Imap) -> None:
    """Courier's imapd lists INBOX.Junk as subscribed, selects 1 message and returns our header."""
    session = imap(junked.maildir(ALICE))
    typ, folders = session.lsub('""', "*")
    assert typ == "OK"
    assert any(line.endswith(b' "INBOX.Junk"') for line in folders if line), folders
    typ, exists = session.select("INBOX.Junk")
    assert (typ, exists) == ("OK", [b"1"])
    typ, fetched = session.fetch("1", "(BODY.PEEK[HEADER.FIELDS (X-QUARANTINE)])")
    assert typ == "OK"
    header = fetched[0][1]
    assert isinstance(header, bytes)
    assert header.startswith(b"X-Quarantine: junk; rule=spamassassin;")
    typ, inbox = session.select("INBOX")
    assert (typ, inbox) == ("OK", [b"0"])


# 2. ham and GTUBE


def test_ham_is_left_to_vdelivermail(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """SpamAssassin's ham: deliver exits 0, vdelivermail delivers it once to the inbox."""
    result = deliver(tree, ALICE, sa_messages["ham"])
    assert (result.status, result.codes) == ("success", [0, 0])
    assert result.output.startswith("quarantine: inbox, left for the next line")
    assert_inbox_of(tree, ALICE, sa_messages["ham"], ALICE_DTLINE)


def test_ham_creates_no_junk_folder(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """No .Junk and no subscription file appear for a user who got only ham."""
    deliver(tree, ALICE, sa_messages["ham"])
    maildir = tree.maildir(ALICE)
    assert sorted(p.name for p in maildir.iterdir()) == ["cur", "new", "tmp"]


def test_gtube_is_junk(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """Our GTUBE message, after SpamAssassin, is filed into Junk."""
    result = deliver(tree, ALICE, sa_messages["gtube"])
    assert (result.status, result.codes) == ("success", [99])
    path = assert_junk_of(tree, ALICE, sa_messages["gtube"], ALICE_DTLINE)
    assert b"\nX-Quarantine: junk; rule=spamassassin;" in path.read_bytes()


# 3. who is filtered


def test_user_not_opted_in_gets_spam_in_inbox(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """bob has no .qmail-bob: .qmail-default's vdelivermail puts spam in his inbox."""
    result = deliver(tree, BOB, sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [0])
    assert result.dot_qmail == tree.domains["example.test"] / ".qmail-default"
    assert_inbox_of(tree, BOB, sa_messages["spam"], BOB_DTLINE)
    assert not (tree.maildir(BOB) / ".Junk").exists()


def test_extension_address_falls_to_qmail_default(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """alice-news@ has no .qmail-alice-news or -default: qmail uses .qmail-default, no filter."""
    result = deliver(tree, "alice-news@example.test", sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [0])
    assert result.dot_qmail == tree.domains["example.test"] / ".qmail-default"
    dtline = b"Delivered-To: example.test-alice-news@example.test\n"
    assert_inbox_of(tree, ALICE, sa_messages["spam"], dtline)


def test_alias_domain_reaches_the_real_mailbox(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """alice@alias.test (vaddaliasdomain): qmail uses the real domain's .qmail-alice; Junk."""
    tree.add_alias("alias.test", "example.test")
    result = deliver(tree, "alice@alias.test", sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99]), result
    dtline = b"Delivered-To: alias.test-alice@alias.test\n"
    assert_junk_of(tree, ALICE, sa_messages["spam"], dtline)


@pytest.mark.parametrize("hashed_domain", [False, True], ids=["flat-domain", "hashed-domain"])
def test_hashed_user_directory_is_found(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    opt_in_user: Callable[[str], Path],
    hashed_domain: bool,
) -> None:
    """A user in vpopmail's big-domain layout (domains/[h/]D/0/dave) gets spam in that Junk."""
    domain = "big.test" if hashed_domain else "example.test"
    if hashed_domain:
        tree.add_domain(domain, hashed=True)
    maildir = tree.add_user(f"dave@{domain}", subdir="0")
    opt_in_user(f"dave@{domain}")
    result = deliver(tree, f"dave@{domain}", sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99]), result
    assert len(files(maildir / ".Junk" / "new")) == 1
    assert files(maildir / "new") == []


@pytest.mark.parametrize(
    ("address", "owner", "dtline"),
    [
        (BOB, BOB, BOB_DTLINE),
        ("alice-news@example.test", ALICE, b"Delivered-To: example.test-alice-news@example.test\n"),
    ],
    ids=["user", "extension"],
)
def test_domain_opt_in_filters_users_and_extensions(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    opt_in_user: Callable[[str], Path],
    address: str,
    owner: str,
    dtline: bytes,
) -> None:
    """With the filter on top of .qmail-default, bob and alice-news@ (as alice) get Junk."""
    opt_in_user("example.test")
    result = deliver(tree, address, sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99]), result
    assert result.dot_qmail == tree.domains["example.test"] / ".qmail-default"
    assert_junk_of(tree, owner, sa_messages["spam"], dtline)


def test_domain_opt_in_leaves_unknown_users_to_vdelivermail(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], opt_in_user: Callable[[str], Path]
) -> None:
    """Spam for carol@ (no such user): the filter exits 0, vdelivermail's `delete` decides."""
    opt_in_user("example.test")
    before = sorted(str(p) for p in tree.domains["example.test"].rglob("*"))
    result = deliver(tree, "carol@example.test", sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [0, 0]), result
    assert "not a vpopmail user" in result.output
    assert sorted(str(p) for p in tree.domains["example.test"].rglob("*")) == before


# 4. the folder and the subscription on later deliveries


def test_second_spam_reuses_folder_and_subscription(
    junked: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """A second spam goes into the same .Junk; courierimapsubscribed still has one line."""
    maildir = junked.maildir(ALICE)
    folder_inode = (maildir / ".Junk").stat().st_ino
    result = deliver(junked, ALICE, sa_messages["gtube"])
    assert (result.status, result.codes) == ("success", [99])
    assert (maildir / ".Junk").stat().st_ino == folder_inode
    assert len(junked.messages(ALICE, "Junk")) == 2
    assert (maildir / "courierimapsubscribed").read_bytes() == b"INBOX.Junk\n"
    assert [p.name for p in maildir.iterdir() if p.name.startswith(".")] == [".Junk"]


def test_junk_unsubscribed_by_the_user_stays_unsubscribed(
    junked: sandbox.Tree, sa_messages: dict[str, bytes], imap: Imap
) -> None:
    """After the user UNSUBSCRIBEs INBOX.Junk in Courier, later spam is filed, not resubscribed."""
    maildir = junked.maildir(ALICE)
    assert imap(maildir).unsubscribe("INBOX.Junk")[0] == "OK"
    result = deliver(junked, ALICE, sa_messages["gtube"])
    assert (result.status, result.codes) == ("success", [99])
    assert len(junked.messages(ALICE, "Junk")) == 2
    assert subscribed(imap, maildir) == []


def test_junk_deleted_by_the_user_is_made_and_subscribed_again(
    junked: sandbox.Tree, sa_messages: dict[str, bytes], imap: Imap
) -> None:
    """After the user DELETEs INBOX.Junk in Courier, the next spam recreates and subscribes it."""
    maildir = junked.maildir(ALICE)
    session = imap(maildir)
    assert session.delete("INBOX.Junk")[0] == "OK"
    session.logout()
    assert not (maildir / ".Junk").exists()
    result = deliver(junked, ALICE, sa_messages["gtube"])
    assert (result.status, result.codes) == ("success", [99])
    assert_junk_of(junked, ALICE, sa_messages["gtube"], ALICE_DTLINE)
    assert subscribed(imap, maildir) == [b"INBOX.Junk"]


SENT_DRAFTS = b"INBOX.Sent\nINBOX.Drafts\n"
SENT_DRAFTS_JUNK = [b"INBOX.Drafts", b"INBOX.Junk", b"INBOX.Sent"]


@pytest.mark.parametrize(
    ("before", "after", "listed"),
    [
        (b"INBOX.Sent\nINBOX.Drafts\n", SENT_DRAFTS + b"INBOX.Junk\n", SENT_DRAFTS_JUNK),
        (b"INBOX.Sent\nINBOX.Drafts", SENT_DRAFTS + b"INBOX.Junk\n", SENT_DRAFTS_JUNK),
        (b"INBOX.Sent\nINBOX.Junk\nINBOX.Drafts\n", None, SENT_DRAFTS_JUNK),
        (b"inbox.Junk\n", None, [b"INBOX.Junk"]),  # Courier ignores the case of INBOX
    ],
    ids=["other-lines", "no-trailing-newline", "already-subscribed", "inbox-lower-case"],
)
def test_existing_subscriptions_are_kept(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    imap: Imap,
    before: bytes,
    after: bytes | None,
    listed: list[bytes],
) -> None:
    """Lines already in courierimapsubscribed stay; INBOX.Junk is added once; Courier agrees."""
    maildir = tree.maildir(ALICE)
    (maildir / "courierimapsubscribed").write_bytes(before)
    tree.chown(maildir / "courierimapsubscribed")
    result = deliver(tree, ALICE, sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99])
    assert (maildir / "courierimapsubscribed").read_bytes() == (after or before)
    assert subscribed(imap, maildir) == listed


def test_crlf_subscription_line_does_not_count_as_subscribed(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], imap: Imap
) -> None:
    """A courierimapsubscribed with CRLF lines still gets INBOX.Junk subscribed for Courier."""
    maildir = tree.maildir(ALICE)
    (maildir / "courierimapsubscribed").write_bytes(b"INBOX.Sent\r\nINBOX.Junk\r\n")
    tree.chown(maildir / "courierimapsubscribed")
    result = deliver(tree, ALICE, sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99])
    assert b"INBOX.Junk" in subscribed(imap, maildir)


# 5. concurrency


def test_concurrent_spam_deliveries(tree: sandbox.Tree, sa_messages: dict[str, bytes]) -> None:
    """20 spams to alice at once: all filed, one folder, one subscription line, empty tmp/."""
    messages = [b"X-Test-Sequence: %d\n" % n + sa_messages["spam"] for n in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda m: deliver(tree, ALICE, m), messages))
    assert [(r.status, r.codes) for r in results] == [("success", [99])] * 20, results
    maildir = tree.maildir(ALICE)
    filed = sorted(split_junk_file(p.read_bytes())[3] for p in tree.messages(ALICE, "Junk"))
    assert filed == sorted(messages)
    assert tree.messages(ALICE) == []
    assert [p.name for p in maildir.iterdir() if p.name.startswith(".")] == [".Junk"]
    assert (maildir / "courierimapsubscribed").read_bytes() == b"INBOX.Junk\n"
    assert files(maildir / "tmp") == []
    assert files(maildir / ".Junk" / "tmp") == []


def waiting_on_stdin(pid: int) -> bool:
    """Is process `pid` asleep reading a pipe (its stdin, here)?"""
    try:
        return "pipe" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def test_deliveries_released_together_make_one_folder(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], quarantine_bin: Path
) -> None:
    """20 filters started, then handed their spam at one instant, race to create .Junk: all 99."""
    env = qmail_env(tree)
    procs = [spawn_deliver(quarantine_bin, tree, env) for _ in range(20)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(waiting_on_stdin(p.pid) for p in procs):
        time.sleep(0.01)
    messages = [
        with_preline(env, b"X-Test-Sequence: %d\n" % n + sa_messages["spam"]) for n in range(20)
    ]
    for proc, message in zip(procs, messages, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(message)  # smaller than a pipe buffer: does not block
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    outcomes = []
    for proc in procs:
        assert proc.stdout is not None
        with proc.stdout:
            outcomes.append((proc.wait(timeout=60), proc.stdout.read()))
    assert [code for code, _ in outcomes] == [99] * 20, outcomes
    maildir = tree.maildir(ALICE)
    assert len(tree.messages(ALICE, "Junk")) == 20
    assert [p.name for p in maildir.iterdir() if p.name.startswith(".")] == [".Junk"]
    assert (maildir / "courierimapsubscribed").read_bytes() == b"INBOX.Junk\n"
    assert files(maildir / "tmp") == []
    assert files(maildir / ".Junk" / "tmp") == []


# 6. authentication results


def test_dmarc_reject_failure_reported_by_us_is_junk(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """Ham with our own `dmarc=fail (p=reject)` result goes to Junk by the dmarc-reject rule."""
    tree.write_config("deliver:\n  authserv_ids: [mx.example.test]\n")
    message = (
        OURS + b"dmarc=fail (p=reject dis=none) header.from=bank.example\n" + sa_messages["ham"]
    )
    result = deliver(tree, ALICE, message)
    assert (result.status, result.codes) == ("success", [99])
    path = assert_junk_of(tree, ALICE, message, ALICE_DTLINE)
    assert b"\nX-Quarantine: junk; rule=dmarc-reject;" in path.read_bytes()


def test_dmarc_failure_reported_by_a_foreign_server_is_ignored(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """The same result under a foreign authserv-id (evil.example) is not believed: inbox."""
    tree.write_config("deliver:\n  authserv_ids: [mx.example.test]\n")
    message = (
        b"Authentication-Results: evil.example; "
        b"dmarc=fail (p=reject dis=none) header.from=bank.example\n" + sa_messages["ham"]
    )
    result = deliver(tree, ALICE, message)
    assert (result.status, result.codes) == ("success", [0, 0])
    assert_inbox_of(tree, ALICE, message, ALICE_DTLINE)


def test_dkim_pass_from_trusted_domain_keeps_spam_in_inbox(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """Our `dkim=pass header.d=bank.example` with bank.example trusted overrides SpamAssassin."""
    tree.write_config(
        "deliver:\n  authserv_ids: [mx.example.test]\n  trusted_domains: [bank.example]\n"
    )
    message = OURS + b"dkim=pass header.d=bank.example header.s=s1\n" + sa_messages["spam"]
    result = deliver(tree, ALICE, message)
    assert (result.status, result.codes) == ("success", [0, 0])
    assert "trusted-dkim" in result.output
    assert_inbox_of(tree, ALICE, message, ALICE_DTLINE)


# configuration as real readers see it


@pytest.mark.parametrize(
    ("folder", "imap_name"),
    [("Indésirables", b"INBOX.Ind&AOk-sirables"), ("Spam.Old&New", b"INBOX.Spam.Old&-New")],
    ids=["non-ascii", "nested-ampersand"],
)
def test_configured_junk_folder_is_seen_by_courier(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    imap: Imap,
    folder: str,
    imap_name: bytes,
) -> None:
    """junk_folder with non-ASCII, `.` or `&`: Courier lists it subscribed and selects it."""
    tree.write_config(f"deliver:\n  junk_folder: '{folder}'\n")
    result = deliver(tree, ALICE, sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99])
    assert len(tree.messages(ALICE, folder)) == 1
    session = imap(tree.maildir(ALICE))
    typ, lines = session.lsub('""', "*")
    assert typ == "OK"
    assert any(line.endswith(b' "' + imap_name + b'"') for line in lines if line), lines
    assert session.select(f'"{imap_name.decode()}"') == ("OK", [b"1"])


def test_junk_delivery_is_counted_in_the_quota(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    imap: Imap,
    opt_in_user: Callable[[str], Path],
) -> None:
    """A Junk delivery adds `<size> 1` to maildirsize, and Courier's quota report counts it."""
    maildir = tree.add_user("carol@example.test", quota="10000000S")
    opt_in_user("carol@example.test")
    result = deliver(tree, "carol@example.test", sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99])
    [path] = tree.messages("carol@example.test", "Junk")
    size = path.stat().st_size
    assert (maildir / "maildirsize").read_bytes() == b"10000000S\n0 0\n%d 1\n" % size
    typ, data = imap(maildir, "carol").getquotaroot("INBOX")
    assert typ == "OK"
    assert data[1] == [b'"ROOT" (STORAGE %d 9766)' % -(-size // 1024)]


@pytest.mark.parametrize(
    ("policy", "status", "code", "enhanced"),
    [("defer", "deferral", 111, "(#4.2.2)"), ("bounce", "failure", 100, "(#5.2.2)")],
)
def test_spam_over_quota_follows_the_policy(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    opt_in_user: Callable[[str], Path],
    policy: str,
    status: str,
    code: int,
    enhanced: str,
) -> None:
    """deliver.over_quota defer/bounce: a spam that does not fit is deferred/bounced, not filed."""
    tree.write_config(f"deliver:\n  over_quota: {policy}\n")
    maildir = tree.add_user("carol@example.test", quota="1000S")
    opt_in_user("carol@example.test")
    result = deliver(tree, "carol@example.test", sa_messages["spam"])
    assert (result.status, result.codes) == (status, [code]), result
    assert enhanced in result.output
    assert tree.messages("carol@example.test", "Junk") == []
    assert files(maildir / ".Junk" / "tmp") == []
    assert tree.messages("carol@example.test") == []


def test_root_run_hands_created_files_to_the_maildir_owner(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], quarantine_bin: Path
) -> None:
    """Run as root (an admin with --maildir): .Junk, the message and the subscription get 89:89."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root)")
    maildir = tree.maildir(ALICE)
    env = qmail_env(tree)
    proc = run_deliver(
        quarantine_bin, tree, sa_messages["spam"], env, "--maildir", str(maildir), drop_root=False
    )
    assert proc.returncode == 99, proc.stdout
    [message] = tree.messages(ALICE, "Junk")
    created = [
        *(maildir / ".Junk").rglob("*"),
        maildir / ".Junk",
        maildir / "courierimapsubscribed",
        maildir / "subscriptions",
    ]
    assert message in created
    for path in created:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (tree.uid, tree.gid), path


# the pipe from preline

PADDING = b"padding to outgrow any pipe buffer " * 30 + b"\n"


@pytest.mark.parametrize(
    ("case", "overrides", "extra_config"),
    [
        ("ham", {}, ""),
        ("spam", {"EXT": "carol"}, ""),
        ("spam", {"HOST": "other.test"}, ""),
        ("spam", {"EXT": "../../etc"}, ""),
        ("ham", {}, "deliver:\n  header_limit: 1024\n"),
    ],
    ids=["ham", "unknown-user", "unknown-domain", "hostile-ext", "header-over-limit"],
)
def test_exit_zero_comes_after_reading_the_whole_message(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    quarantine_bin: Path,
    case: str,
    overrides: dict[str, str],
    extra_config: str,
) -> None:
    """A 4 MB message left for the next line is read to its end (or preline dies of SIGPIPE)."""
    tree.write_config(extra_config)
    head, body = sa_messages[case].split(b"\n\n", 1)
    filler = b"".join(b"X-Filler-%d: %s" % (n, PADDING) for n in range(40)) if extra_config else b""
    message = head + b"\n" + filler + b"\n" + body + PADDING * (4 * 1024 * 1024 // len(PADDING))
    ran = run_deliver(quarantine_bin, tree, message, qmail_env(tree, **overrides))
    assert ran.returncode == 0, ran.stdout
    assert ran.read_all
    assert tree.messages(ALICE) == tree.messages(ALICE, "Junk") == []
