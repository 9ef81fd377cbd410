"""Hostile input to `quarantine deliver`: qmail's environment (EXT, HOST) and
the message itself are the sender's to choose. Every case ends in 0 or 99 with
the message intact, or 111; nothing outside the vpopmail tree is touched, and
no Python traceback reaches qmail's log."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quarantine import config as config_module
from quarantine import deliver as deliver_module
from quarantine import sandbox
from quarantine.qmail import MailPathError

from .helpers import (
    ALICE,
    ALICE_DTLINE,
    RPLINE,
    assert_inbox_of,
    assert_junk_of,
    files,
    header_names,
    one_line,
    qmail_env,
    run_deliver,
    size_in_name,
    snapshot,
    split_junk_file,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


# -- qmail's environment ------------------------------------------------------


class Outside:
    """A directory outside the tree that looks like a vpopmail user (a
    Maildir with a .Junk folder, writable by the domain uid), so that a name
    which escaped into a path would find somewhere to write."""

    def __init__(self, tree: sandbox.Tree) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="quarantine-e2e-outside-"))
        self.path.chmod(0o755)
        self.maildir = self.path / "Maildir"
        for sub in ("tmp", "new", "cur", ".Junk/tmp", ".Junk/new", ".Junk/cur"):
            (self.maildir / sub).mkdir(parents=True)
        (self.maildir / ".Junk" / "maildirfolder").touch()
        for path in [self.path, *self.path.rglob("*")]:
            tree.chown(path)
        self.pwned = Path(tempfile.gettempdir()) / f"{self.path.name}-pwned"
        domain_dir = tree.domains["example.test"]
        self.relative = os.path.relpath(self.path, domain_dir)

    def fill(self, template: str) -> str:
        return template.format(rel=self.relative, abs=self.path, pwned=self.pwned)


@pytest.fixture
def outside(tree: sandbox.Tree) -> Iterator[Outside]:
    """An Outside for this test, removed afterwards with any file a payload made."""
    made = Outside(tree)
    try:
        yield made
    finally:
        made.pwned.unlink(missing_ok=True)
        shutil.rmtree(made.path, ignore_errors=True)


LONG = "x" * 10240
HOSTILE_EXT = [
    "{rel}",
    "{rel}/Maildir/..",
    "{abs}",
    "alice/../bob",
    "alice/../../example.test/alice",
    "..",
    ".",
    "",
    ".qmail-alice",
    "$(touch {pwned})",
    "`touch {pwned}`",
    "alice;touch {pwned}",
    "alice|touch {pwned}",
    "alice&&touch {pwned}",
    "alice$(touch pwned)",
    "alice\ntouch {pwned}",
    "alice\x01\x1b[31m\x7f",
    "al\udcffice",
    LONG,
    "alice-" + LONG,
    "alice-../../{rel}",
    "alice-$(touch {pwned})",
]
HOSTILE_HOST = [
    "{rel}",
    "{abs}",
    "example.test/../../..",
    "../example.test",
    "example.test/",
    "..",
    "",
    "$(touch {pwned})",
    "`touch {pwned}`",
    "example.test;touch {pwned}",
    "example.test\n",
    "example.test\x7f",
    LONG,
    LONG[:250] + ".example.test",
]


def check_contained(
    tree: sandbox.Tree,
    outside: Outside,
    before: dict[str, tuple[int, int, int]],
    code: int,
    message: bytes,
) -> None:
    """Nothing outside the tree changed; inside, only alice's Junk got the
    message, and only when the exit code says it was filed."""
    assert not outside.pwned.exists()
    after = snapshot(tree.vpopmail_home, tree.qmail_home, outside.path)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    maildir = str(tree.maildir(ALICE))
    assert all(p.startswith(maildir + "/") or p == maildir for p in changed), sorted(changed)
    if code == 99:
        assert_junk_of(tree, ALICE, message, ALICE_DTLINE)
    else:
        assert changed == set()


@pytest.mark.parametrize("template", HOSTILE_EXT, ids=lambda t: repr(t[:24]))
def test_hostile_ext_stays_inside_the_tree(
    tree: sandbox.Tree,
    outside: Outside,
    quarantine_bin: Path,
    sa_messages: dict[str, bytes],
    template: str,
) -> None:
    """A spam for an EXT with ../, /, shell syntax, control bytes or 10 KB: 0/99/111, no escape."""
    ext = outside.fill(template)
    env = qmail_env(tree, EXT=ext)  # str; a lone surrogate becomes its raw byte in exec's env
    before = snapshot(tree.vpopmail_home, tree.qmail_home, outside.path)
    proc = run_deliver(quarantine_bin, tree, sa_messages["spam"], env)
    one_line(proc.stdout)
    assert proc.returncode in (0, 99, 111), proc
    check_contained(tree, outside, before, proc.returncode, sa_messages["spam"])


@pytest.mark.parametrize("template", HOSTILE_HOST, ids=lambda t: repr(t[:24]))
def test_hostile_host_stays_inside_the_tree(
    tree: sandbox.Tree,
    outside: Outside,
    quarantine_bin: Path,
    sa_messages: dict[str, bytes],
    template: str,
) -> None:
    """A spam for a HOST with ../, /, shell syntax, control bytes or 10 KB: 0/111, no escape."""
    env = qmail_env(tree, HOST=outside.fill(template))
    before = snapshot(tree.vpopmail_home, tree.qmail_home, outside.path)
    proc = run_deliver(quarantine_bin, tree, sa_messages["spam"], env)
    one_line(proc.stdout)
    assert proc.returncode in (0, 111), proc
    check_contained(tree, outside, before, proc.returncode, sa_messages["spam"])


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("EXT", "alice\x00/../../{rel}"),
        ("EXT", "\x00"),
        ("EXT", "alice-\x00{rel}"),
        ("HOST", "example.test\x00/../../{rel}"),
        ("HOST", "\x00example.test"),
    ],
    ids=["ext-nul-traversal", "ext-nul", "ext-extension-nul", "host-nul-traversal", "host-nul"],
)
def test_nul_in_ext_or_host_stays_inside_the_tree(
    tree: sandbox.Tree,
    outside: Outside,
    sa_messages: dict[str, bytes],
    name: str,
    template: str,
) -> None:
    """A NUL cannot pass through exec's environment, so the filter is called in-process with it."""
    env = qmail_env(tree, **{name: outside.fill(template)})
    stdin = io.BytesIO(
        (env["UFLINE"] + env["RPLINE"] + env["DTLINE"]).encode() + sa_messages["spam"]
    )
    before = snapshot(tree.vpopmail_home, tree.qmail_home, outside.path)
    config = config_module.load(str(tree.config_path))
    try:
        code, line = deliver_module.run(deliver_module.parse_args([]), config, env, stdin)
    except MailPathError as exc:
        code, line = exc.code, exc.line()
    assert "\n" not in line
    assert code in (0, 99, 111), line
    check_contained(tree, outside, before, code, sa_messages["spam"])


# -- the message ------------------------------------------------------------

SPAM_STATUS = b"X-Spam-Status: Yes, score=9.9 required=5.0 tests=SOMETHING autolearn=no\n"


def noise(size: int) -> bytes:
    """`size` reproducible random bytes, NULs and lone CRs included."""
    return random.Random(size).randbytes(size)  # noqa: S311 - reproducible, not secret


def filler_headers(size: int) -> bytes:
    lines = [b"X-Filler-%05d: %s\n" % (n, b"f" * 60) for n in range(size // 76 + 1)]
    return b"".join(lines)


def message_cases(sa: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    """name -> (message, where it must land: junk, inbox or either)."""
    spam = sa["spam"]
    return {
        "no-header": (
            b"Just a line of text, no header at all.\n\nAnd a second paragraph.\n",
            "inbox",
        ),
        "empty": (b"", "inbox"),
        "blank-line-only": (b"\n", "inbox"),
        "binary-64k": (noise(65536), "inbox"),
        "binary-body-spam": (SPAM_STATUS + b"Subject: bin\n\n" + noise(65536), "junk"),
        "crlf-spam": (spam.replace(b"\n", b"\r\n"), "junk"),
        "header-without-newline": (SPAM_STATUS.rstrip(b"\n"), "junk"),
        "nul-in-header": (
            SPAM_STATUS + b"X-Bad\x00Name: 1\nSubject: nul\x00here\n\nbody\x00\n",
            "junk",
        ),
        "mbox-from-line": (b"From evil@example Tue Nov 24 01:23:23 2026\n" + spam, "either"),
        "200k-header-line": (
            SPAM_STATUS + b"X-Long: " + b"y" * 200_000 + b"\nSubject: long\n\nbody\n",
            "junk",
        ),
        "forged-no-above-yes": (
            b"X-Spam-Status: No, score=-10.0\nX-Spam-Flag: NO\n" + spam,
            "junk",
        ),
        "forged-no-folded": (
            b"X-Spam-Status: No,\n\tscore=-10.0 required=5.0\n\ttests=NONE\nX-Spam-Flag:\n NO\n"
            + spam,
            "junk",
        ),
        "forged-no-twice": (b"X-Spam-Status: No, score=-1.0\n" * 2 + spam, "junk"),
        # Sites that `remove_header spam Flag`: X-Spam-Status is SpamAssassin's only word.
        "forged-no-above-yes-no-flag": (
            b"X-Spam-Status: No, score=-10.0\n" + spam.replace(b"X-Spam-Flag: YES\n", b""),
            "junk",
        ),
        "forged-auth-results": (
            b"Authentication-Results: evil.example; dkim=pass header.d=bank.example\n"
            b"Authentication-Results: (mx.example.test) evil.example; "
            b"dkim=pass header.d=bank.example\n" + spam,
            "junk",
        ),
        "header-over-limit-yes-first": (
            SPAM_STATUS + filler_headers(20_000) + b"Subject: big\n\nbody\n",
            "junk",
        ),
        "header-over-limit-yes-last": (
            filler_headers(20_000) + SPAM_STATUS + b"Subject: big\n\nbody\n",
            "either",
        ),
    }


MESSAGE_CASES = list(message_cases({"spam": b"", "ham": b""}))
TRUSTING = (
    "deliver:\n"
    "  header_limit: 4096\n"
    "  authserv_ids: [mx.example.test]\n"
    "  trusted_domains: [bank.example]\n"
)


@pytest.mark.parametrize("case", MESSAGE_CASES)
def test_hostile_message_is_delivered_intact(
    tree: sandbox.Tree, sa_messages: dict[str, bytes], case: str
) -> None:
    """Odd, binary, forged or oversized messages land where expected, byte for byte."""
    tree.write_config(TRUSTING)
    message, where = message_cases(sa_messages)[case]
    result = sandbox.qmail_local(tree, ALICE, message)
    assert "Traceback" not in result.output, result.output
    assert result.status == "success", result
    landed = {(99,): "junk", (0, 0): "inbox"}[tuple(result.codes)]
    assert where in (landed, "either"), result
    if landed == "junk":
        assert_junk_of(tree, ALICE, message, ALICE_DTLINE)
    else:
        assert_inbox_of(tree, ALICE, message, ALICE_DTLINE)


def test_forged_x_quarantine_comes_after_ours(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """A sender's own `X-Quarantine: inbox` is not the first X-Quarantine header: ours is."""
    forged = b"X-Quarantine: inbox; rule=trusted-dkim; spam=no (mx.example.test)\n"
    result = sandbox.qmail_local(tree, ALICE, forged + sa_messages["spam"])
    assert (result.status, result.codes) == ("success", [99]), result
    [path] = tree.messages(ALICE, "Junk")
    data = path.read_bytes()
    names = [n.lower() for n in header_names(data)]
    assert names[:3] == [b"return-path", b"delivered-to", b"x-quarantine"]
    assert names.count(b"x-quarantine") == 1
    assert data.split(b"\n")[2].startswith(b"X-Quarantine: junk; rule=spamassassin;")
    rest = split_junk_file(data)[3]
    assert rest.split(b":", 1)[1] == forged.split(b":", 1)[1] + sa_messages["spam"]


def test_fifty_megabyte_spam_is_filed_whole(
    tree: sandbox.Tree, sa_messages: dict[str, bytes]
) -> None:
    """A 50 MB spam: filed into Junk, header intact, size and `,S=` exact, body byte-identical."""
    head = sa_messages["spam"].split(b"\n\n", 1)[0] + b"\n\n"
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_+/\n"
    body = line * (50 * 1024 * 1024 // len(line) + 1)
    message = head + body
    result = sandbox.qmail_local(tree, ALICE, message)
    assert (result.status, result.codes) == ("success", [99]), result
    [path] = tree.messages(ALICE, "Junk")
    assert tree.messages(ALICE) == []
    with path.open("rb") as handle:
        assert handle.readline() == RPLINE
        assert handle.readline() == ALICE_DTLINE
        assert handle.readline().startswith(b"X-Quarantine: junk; rule=spamassassin;")
        assert handle.read(len(head)) == head
        digest = hashlib.sha256()
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(body).digest()
    size = path.stat().st_size
    assert size == len(RPLINE + ALICE_DTLINE) + len(
        split_junk_file(path.read_bytes()[:4096])[2]
    ) + len(message)
    assert size_in_name(path) == size
    assert files(tree.maildir(ALICE) / ".Junk" / "tmp") == []


def test_newlines_in_rpline_and_dtline_do_not_inject_headers(
    tree: sandbox.Tree, quarantine_bin: Path, sa_messages: dict[str, bytes]
) -> None:
    """Not behind preline, RPLINE/DTLINE with newlines add no header above ours."""
    env = qmail_env(
        tree,
        RPLINE="Return-Path: <a@sender.example>\nX-Quarantine: inbox; forged\n",
        DTLINE="Delivered-To: example.test-alice@example.test\nX-Injected: yes\n",
    )
    ran = run_deliver(quarantine_bin, tree, sa_messages["spam"], env, preline=False)
    assert ran.returncode == 99, ran.stdout
    one_line(ran.stdout)
    [path] = tree.messages(ALICE, "Junk")
    data = path.read_bytes()
    names = [n.lower() for n in header_names(data)]
    assert names[:3] == [b"return-path", b"delivered-to", b"x-quarantine"]
    assert b"x-injected" not in names
    assert names.count(b"x-quarantine") == 1
    assert data.endswith(sa_messages["spam"])
