"""The digest and release by mail, end to end: real SpamAssassin output filed
into Junk through the domain's .qmail files (the sandbox's qmail-local), the
installed `quarantine digest` injecting through the sandbox's qmail-inject,
the digest read back from the user's Maildir and parsed, its HTML rendered by
headless Chromium, and replies to release addresses delivered through
`.qmail-quarantine-release-default` as qmail-local would."""

from __future__ import annotations

import base64
import email
import imaplib
import os
import re
import struct
import subprocess
import tempfile
import time
import zlib
from email.message import Message
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from quarantine import releasetoken, sandbox

from .helpers import ALICE, BOB, snapshot

if TYPE_CHECKING:
    from collections.abc import Callable

CHROMIUM = "/usr/bin/chromium"
# Headless, and nothing that reaches for the network (a closed one here).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic"]  # fmt: skip
HOSTILE_SUBJECTS = [
    "<script>alert('x')</script> & <b>bold</b>",
    "=?utf-8?q?=3Cimg_src=3Dhttp://evil.example/x.png=3E?=",
    "=?utf-8?b?" + base64.b64encode(b"line1\r\nBcc: victim@example.org").decode() + "?=",
    "=?utf-8?q?=E2=80=AEgnp.exe_invoice?=",
    "plain subject",
]
HOSTILE_FROM = "=?utf-8?q?Boss_=3Cceo=40example.test=3E?= <attacker@evil.example>"


def spam(sa_spam: bytes, subject: str, sender: str = "Sender <sender@example.net>") -> bytes:
    """SpamAssassin's sample spam (as spamassassin left it) with another
    Subject and From."""
    out = sa_spam.replace(b"Subject: Test spam mail (GTUBE)", f"Subject: {subject}".encode())
    return out.replace(b"From: Sender <sender@example.net>", f"From: {sender}".encode())


def quarantine(
    quarantine_bin: Path, tree: sandbox.Tree, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(quarantine_bin), "--config", str(tree.config_path), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def configure(tree: sandbox.Tree, extra: str = "") -> None:
    tree.write_config(
        f"digest:\n  qmail_inject: {tree.inject_path}\n"
        f"  secret_file: {tree.root}/lib/digest.key\n" + extra
    )


def file_junk(tree: sandbox.Tree, address: str, message: bytes) -> None:
    result = sandbox.qmail_local(tree, address, message)
    assert (result.status, result.codes) == ("success", [99]), result


def digests(tree: sandbox.Tree, address: str) -> list[Message]:
    out = []
    for path in tree.messages(address):
        parsed = email.message_from_bytes(path.read_bytes())
        if parsed["X-Quarantine-Digest"] == "1":
            out.append(parsed)
    return out


def parts(digest: Message) -> tuple[str, str]:
    """(text, html) of a digest: multipart/alternative, both UTF-8."""
    assert digest.get_content_type() == "multipart/alternative"
    found = {}
    for part in digest.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found[part.get_content_subtype()] = payload.decode(part.get_content_charset() or "")
    return found["plain"], found["html"]


def release_addresses(text: str) -> list[str]:
    return re.findall(r"Release: (quarantine-release-[a-z2-7]{32}@example\.test)$", text, re.M)


def junk_names(tree: sandbox.Tree, address: str) -> list[str]:
    junk = tree.maildir(address) / ".Junk"
    return sorted(p.name for sub in ("new", "cur") for p in (junk / sub).iterdir())


def message_of(tree: sandbox.Tree, address: str, release: str) -> str:
    """Which Junk file a release address names, checked with the key."""
    key = releasetoken.read_key(str(tree.root / "lib" / "digest.key"))
    token = releasetoken.parse(release.split("@")[0].rsplit("-", 1)[1])
    assert token is not None
    user = address.split("@")[0]
    [name] = [n for n in junk_names(tree, address)
              if releasetoken.matches(key, token, "example.test", user, n)]  # fmt: skip
    return name


class Markup(HTMLParser):
    """Every tag and attribute of an HTML part."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, name, value or "") for name, value in attrs]


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, the filtered scanlines) of a PNG: the signature, IHDR
    and IDAT chunks checked and inflated."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size[0], size[1], zlib.decompress(idat)


@pytest.fixture
def setup_release(tree: sandbox.Tree, quarantine_bin: Path) -> sandbox.Tree:
    configure(tree)
    done = quarantine(quarantine_bin, tree, "digest", "setup", "@example.test")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "created" in done.stdout
    return tree


def test_digest_lists_every_junk_message_once_and_release_by_reply(
    setup_release: sandbox.Tree, quarantine_bin: Path, sa_messages: dict[str, bytes]
) -> None:
    tree = setup_release
    maildir = tree.maildir(ALICE)
    (maildir / "maildirsize").write_bytes(b"10000000S\n0 0\n")
    tree.chown(maildir / "maildirsize")
    for index, subject in enumerate(HOSTILE_SUBJECTS):
        sender = HOSTILE_FROM if index == 0 else "Sender <s@example.net>"
        file_junk(tree, ALICE, spam(sa_messages["spam"], subject, sender))
    names = junk_names(tree, ALICE)
    assert len(names) == len(HOSTILE_SUBJECTS)

    ran = quarantine(quarantine_bin, tree, "digest")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "alice@example.test: 5 messages\n" in ran.stdout
    assert "success" in tree.inject_log.read_text()
    [digest] = digests(tree, ALICE)
    assert digests(tree, BOB) == []  # bob is not opted in (digest.enabled: opted-in)
    assert digest["To"] == ALICE and digest["Bcc"] is None
    assert digest["Auto-Submitted"] == "auto-generated"
    text, html = parts(digest)

    # Every Junk message once, each with its own release address.
    releases = release_addresses(text)
    assert len(releases) == len(set(releases)) == len(names)
    assert sorted(message_of(tree, ALICE, r) for r in releases) == names
    assert sorted(re.findall(r'href="mailto:([^"?]+)\?subject=release"', html)) == sorted(releases)

    # Hostile subjects and names: decoded, shown as text, one line each.
    assert "Subject: <script>alert('x')</script> & <b>bold</b>" in text
    assert "Subject: line1 Bcc: victim@example.org" in text
    assert "\u202e" not in text and "\u202e" not in html
    assert "From:    Boss <ceo@example.test> <attacker@evil.example>" in text
    assert not re.search(r"^Bcc:", text, re.M)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold" in html
    assert "&lt;img src=http://evil.example/x.png&gt;" in html
    markup = Markup()
    markup.feed(html)
    assert set(markup.tags) <= {"html", "head", "meta", "title", "body", "p", "table", "tr",
                                "th", "td", "a", "b"}  # fmt: skip
    for tag, name, value in markup.attrs:  # no remote content, no script
        assert name in ("charset", "style", "href"), (tag, name)
        assert "url(" not in value and "//" not in value
        assert name != "href" or value.startswith("mailto:quarantine-release-")

    # Headless Chromium renders the HTML part to a screenshot.
    with tempfile.TemporaryDirectory(prefix="quarantine-chromium-") as tmp:
        page = Path(tmp) / "digest.html"
        page.write_text(html, encoding="utf-8")
        shot = Path(tmp) / "digest.png"
        argv = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile"]
        proc = subprocess.run(
            [*argv, f"--screenshot={shot}", "--window-size=1000,700", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        width, height, pixels = png_pixels(shot)
        assert (width, height) == (1000, 700)
        assert len(set(pixels)) > 16, "the screenshot is blank"
        if os.environ.get("QUARANTINE_KEEP_SCREENSHOT"):
            shot.replace(os.environ["QUARANTINE_KEEP_SCREENSHOT"])

    # A reply to one release address releases exactly that message.
    quota = (maildir / "maildirsize").read_bytes()
    chosen = releases[1]
    name = message_of(tree, ALICE, chosen)
    inbox_before = {p.name for p in tree.messages(ALICE)}
    reply = f"From: {ALICE}\nTo: {chosen}\nSubject: Re: release\n\n".encode()
    result = sandbox.qmail_local(tree, chosen, reply, sender=ALICE)
    assert (result.status, result.codes) == ("success", [0]), result
    assert "quarantine release: alice@example.test: .Junk/new/" in result.output
    base = name.split(":")[0]
    assert junk_names(tree, ALICE) == sorted(set(names) - {name})
    assert (maildir / "new" / base).is_file()
    assert (maildir / "maildirsize").read_bytes() == quota
    # Noted for the trainer's ham ledger: its next run learns it as ham.
    assert f'"release/{base}"' in (maildir / "quarantine-hamledger").read_text()
    arrived = {p.name for p in tree.messages(ALICE)} - inbox_before
    assert base in arrived and len(arrived) == 2  # the message and one confirmation
    [confirmation] = [email.message_from_bytes((maildir / "new" / n).read_bytes())
                      for n in arrived if n != base]  # fmt: skip
    assert confirmation["Subject"].startswith("Released from quarantine:")
    assert confirmation["To"] == ALICE

    # The same reply again (replayed): nothing.
    before = snapshot(maildir)
    log = tree.inject_log.read_text()
    again = sandbox.qmail_local(tree, chosen, reply, sender=ALICE)
    assert (again.status, again.codes) == ("success", [0]), again
    assert "dropped" in again.output
    assert snapshot(maildir) == before
    assert tree.inject_log.read_text() == log

    # Put back into Junk under the same name, the used token still does nothing.
    os.rename(maildir / "new" / base, maildir / ".Junk" / "cur" / (base + ":2,S"))
    before = snapshot(maildir)
    replay = sandbox.qmail_local(tree, chosen, reply, sender=ALICE)
    assert "dropped" in replay.output and "used before" in replay.output, replay
    assert snapshot(maildir) == before

    # The next digest lists only what arrived since.
    assert quarantine(quarantine_bin, tree, "digest").returncode == 0
    assert len(digests(tree, ALICE)) == 1
    file_junk(tree, ALICE, spam(sa_messages["spam"], "one more"))
    assert quarantine(quarantine_bin, tree, "digest").returncode == 0
    latest = [d for d in digests(tree, ALICE) if "1 message " in str(d["Subject"])]
    assert len(latest) == 1
    assert len(release_addresses(parts(latest[0])[0])) == 1
    assert "Subject: one more" in parts(latest[0])[0]


def test_forged_expired_and_foreign_tokens_do_nothing(
    setup_release: sandbox.Tree, quarantine_bin: Path, sa_messages: dict[str, bytes]
) -> None:
    tree = setup_release
    tree.add_domain("example.org")
    tree.add_user("carol@example.org")
    file_junk(tree, ALICE, spam(sa_messages["spam"], "keep me"))
    ran = quarantine(quarantine_bin, tree, "digest")
    assert ran.returncode == 0, ran.stderr
    [digest] = digests(tree, ALICE)
    [good] = release_addresses(parts(digest)[0])
    token = good.split("@")[0].rsplit("-", 1)[1]
    [name] = junk_names(tree, ALICE)
    key = releasetoken.read_key(str(tree.root / "lib" / "digest.key"))
    expired = releasetoken.make(key, "example.test", "alice", name, time.time() - 60)
    for_bob = releasetoken.make(key, "example.test", "bob", name, time.time() + 3600)
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    other_key = releasetoken.make(os.urandom(32), "example.test", "alice", name, time.time() + 60)
    cases = {
        f"quarantine-release-{flipped}@example.test": "no message",
        f"quarantine-release-{other_key}@example.test": "no message",
        f"quarantine-release-{expired}@example.test": "expired",
        f"quarantine-release-{for_bob}@example.test": "no message",
        f"quarantine-release-{'a' * 40}@example.test": "not a release token",
        "quarantine-release-@example.test": "not a release token",
        f"quarantine-release-{token.upper()}-x@example.test": "not a release token",
    }
    everything = [tree.maildir(ALICE).parent, tree.maildir(BOB).parent]
    before = snapshot(*everything)
    log = tree.inject_log.read_text()
    for address, reason in cases.items():
        result = sandbox.qmail_local(tree, address, b"Subject: x\n\nx\n", sender="evil@x.example")
        assert (result.status, result.codes) == ("success", [0]), (address, result)
        assert "quarantine release: dropped:" in result.output and reason in result.output, (
            address,
            result.output,
        )
        assert result.output.count("\n") == 1
    # The good token at another domain (which has no release file): qmail's
    # own default delivery, nothing of ours runs.
    foreign = sandbox.qmail_local(tree, f"quarantine-release-{token}@example.org", b"\n")
    assert foreign.codes == [0] and "quarantine release" not in foreign.output
    assert snapshot(*everything) == before
    assert tree.inject_log.read_text() == log  # no confirmation, no reply to anyone
    # The real token, in upper case as some software writes it, still works.
    result = sandbox.qmail_local(tree, f"quarantine-release-{token.upper()}@example.test", b"\n")
    assert "alice@example.test: .Junk/new/" in result.output, result
    assert junk_names(tree, ALICE) == []


def test_release_rate_per_mailbox(
    setup_release: sandbox.Tree, quarantine_bin: Path, sa_messages: dict[str, bytes]
) -> None:
    tree = setup_release
    configure(tree, "  release_rate: 1\n")
    for subject in ("first", "second"):
        file_junk(tree, ALICE, spam(sa_messages["spam"], subject))
    assert quarantine(quarantine_bin, tree, "digest").returncode == 0
    [digest] = digests(tree, ALICE)
    first, second = release_addresses(parts(digest)[0])
    assert "-> new/" in sandbox.qmail_local(tree, first, b"\n").output
    assert len(junk_names(tree, ALICE)) == 1
    limited = sandbox.qmail_local(tree, second, b"\n")
    assert "releases in the last hour" in limited.output, limited
    assert len(junk_names(tree, ALICE)) == 1


def test_setup_writes_and_removes_only_its_file(tree: sandbox.Tree, quarantine_bin: Path) -> None:
    configure(tree)
    path = tree.domains["example.test"] / ".qmail-quarantine-release-default"
    dry = quarantine(quarantine_bin, tree, "digest", "setup", "@example.test", "--dry-run")
    assert dry.returncode == 0 and not path.exists(), dry.stderr
    assert quarantine(quarantine_bin, tree, "digest", "setup", "@example.test").returncode == 0
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# quarantine: release addresses")
    assert lines[1] == f"|{quarantine_bin.absolute()} release --config {tree.config_path}"
    assert path.stat().st_mode & 0o777 == 0o600
    if os.geteuid() == 0:
        assert (path.stat().st_uid, path.stat().st_gid) == (tree.uid, tree.gid)
    again = quarantine(quarantine_bin, tree, "digest", "setup", "@example.test")
    assert "no change" in again.stdout
    user = quarantine(quarantine_bin, tree, "digest", "setup", ALICE)
    assert user.returncode == 2, user.stderr
    gone = quarantine(quarantine_bin, tree, "digest", "setup", "@example.test", "--remove")
    assert gone.returncode == 0 and not path.exists(), gone.stderr
    path.write_text("|/bin/true\n")  # the admin's own file of that name
    tree.chown(path)
    refused = quarantine(quarantine_bin, tree, "digest", "setup", "@example.test", "--remove")
    assert refused.returncode == 1 and "edit it by hand" in refused.stderr
    assert path.read_text() == "|/bin/true\n"


@pytest.mark.parametrize(
    ("enabled", "who"),
    [
        ("", [ALICE]),
        ("  enabled: all\n", [ALICE, BOB]),
        ("  enabled: off\n", []),
        ("  enabled: {default: all, bob@example.test: 'off'}\n", [ALICE]),
        ("  enabled: {'@example.test': 'off', alice@example.test: all}\n", [ALICE]),
    ],
    ids=["opted-in", "all", "off", "user-off", "domain-off-user-on"],
)
def test_who_gets_a_digest(
    tree: sandbox.Tree, quarantine_bin: Path, sa_messages: dict[str, bytes],
    enabled: str, who: list[str],
) -> None:  # fmt: skip
    configure(tree, enabled)
    file_junk(tree, ALICE, spam(sa_messages["spam"], "for alice"))
    # bob is not opted in: a message his mail client moved into Junk.
    junk = tree.maildir(BOB) / ".Junk"
    for sub in ("", "/new", "/cur", "/tmp"):
        Path(f"{junk}{sub}").mkdir()
        tree.chown(Path(f"{junk}{sub}"))
    (junk / "new" / "1700000000.M1P1.host,S=20").write_bytes(b"Subject: moved\n\nhello\n")
    ran = quarantine(quarantine_bin, tree, "digest", "--dry-run")
    assert ran.returncode == 0, ran.stderr
    *sent, summary = ran.stdout.splitlines()
    assert sorted(line.split(":")[0] for line in sent) == who
    assert all(line.endswith("1 message (dry run: not sent)") for line in sent)
    assert summary.startswith(f"digest: {len(who)} sent")
    assert digests(tree, ALICE) == [] and digests(tree, BOB) == []


# Dovecot reading what deliver.subscribe wrote (the conftest's `dovecot`
# fixture: its imap binary on a pipe, as the ham-move tests run it).


def subscribed(session: imaplib.IMAP4_stream) -> list[str]:
    """The folders an IMAP session lists as subscribed (LSUB)."""
    typ, lines = session.lsub('""', "*")
    assert typ == "OK", lines
    return sorted(
        line.rsplit(b" ", 1)[1].strip(b'"').decode() for line in lines if isinstance(line, bytes)
    )


@pytest.mark.parametrize(("mode", "listed"), [("auto", ["Junk"]), ("courier", [])])
def test_dovecot_sees_the_new_junk_folder_subscribed(
    tree: sandbox.Tree,
    sa_messages: dict[str, bytes],
    dovecot: Callable[[Path], imaplib.IMAP4_stream],
    mode: str,
    listed: list[str],
) -> None:
    """On a fresh Maildir, deliver.subscribe auto makes Dovecot list Junk as
    subscribed; courier alone (the old behaviour) leaves Dovecot users without it."""
    tree.write_config(f"deliver:\n  subscribe: {mode}\n")
    file_junk(tree, ALICE, sa_messages["spam"])
    assert subscribed(dovecot(tree.maildir(ALICE))) == listed


# Hostile Maildir entries: nothing followed through a symlink.


def test_digest_and_release_follow_no_symlink(
    setup_release: sandbox.Tree, quarantine_bin: Path, sa_messages: dict[str, bytes]
) -> None:
    """A symlink in Junk/new (to bob's mail) is neither summarised nor released,
    and a Junk folder that is a symlink to bob's Junk is not read at all."""
    tree = setup_release
    file_junk(tree, ALICE, spam(sa_messages["spam"], "real one"))
    secret = tree.maildir(BOB) / "new" / "1700000000.M1P1.host,S=40"
    secret.write_bytes(b"Subject: bob's private mail\n\nsecret\n")
    tree.chown(secret)
    link = tree.maildir(ALICE) / ".Junk" / "new" / "1700000001.M1P1.host,S=40"
    link.symlink_to(secret)
    ran = quarantine(quarantine_bin, tree, "digest")
    assert ran.returncode == 0, ran.stderr
    assert "1 Junk entries not regular files, left out" in ran.stderr
    [digest] = digests(tree, ALICE)
    text, html = parts(digest)
    assert len(release_addresses(text)) == 1
    assert "private" not in text and "private" not in html
    # A token made for the symlink's name (as if leaked) does not move it.
    key = releasetoken.read_key(str(tree.root / "lib" / "digest.key"))
    token = releasetoken.make(key, "example.test", "alice", link.name, time.time() + 600)
    result = sandbox.qmail_local(tree, f"quarantine-release-{token}@example.test", b"\n")
    assert "dropped" in result.output and "not a regular file" in result.output, result
    assert link.is_symlink() and secret.read_bytes().endswith(b"secret\n")
    # alice's whole Junk folder a symlink to bob's: nothing of bob's is listed.
    bob_junk = tree.maildir(BOB) / ".Junk"
    for sub in ("", "/new", "/cur", "/tmp"):
        Path(f"{bob_junk}{sub}").mkdir()
        tree.chown(Path(f"{bob_junk}{sub}"))
    (bob_junk / "new" / f"{int(time.time())}.M1P2.host,S=9").write_bytes(b"Subject: bob\n\n")
    junk = tree.maildir(ALICE) / ".Junk"
    junk.rename(tree.maildir(ALICE) / ".Junk-old")
    junk.symlink_to(bob_junk)
    before = len(digests(tree, ALICE))
    assert quarantine(quarantine_bin, tree, "digest").returncode == 0
    assert len(digests(tree, ALICE)) == before


def test_usage_and_configuration_errors(tree: sandbox.Tree, quarantine_bin: Path) -> None:
    configure(tree)
    unknown = quarantine(quarantine_bin, tree, "digest", "--domain", "nope.test")
    assert unknown.returncode == 2 and "no such vpopmail domain" in unknown.stderr
    assert quarantine(quarantine_bin, tree, "digest", "--user", "alice").returncode == 2
    tree.write_config(f"digest:\n  secret_file: {tree.root}/digest.key\n  release_local: Bad-\n")
    bad = quarantine(quarantine_bin, tree, "digest")
    assert bad.returncode == 2 and "digest.release_local" in bad.stderr
    # A key file others could read is refused: every token could be forged.
    configure(tree)
    (tree.root / "lib").mkdir()
    (tree.root / "lib" / "digest.key").write_text(os.urandom(32).hex())
    (tree.root / "lib" / "digest.key").chmod(0o644)
    open_key = quarantine(quarantine_bin, tree, "digest")
    assert open_key.returncode == 2 and "open to other users" in open_key.stderr
