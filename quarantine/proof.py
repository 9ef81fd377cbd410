"""What one `sa-learn -D bayes` call proves about each file it was given: its
count line, its per-message lines (read as they come, from a file, not kept
whole), and whether a skip matched SpamAssassin's content key of that very
file or a Message-ID. See docs/train.md, "What proves a file learned".
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections import deque

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# sa-learn's last line on stdout, and its per-message answers under `-D bayes`
# (Mail::SpamAssassin::Plugin::Bayes::_learn_trapped, one per message examined:
# `learned 'KEY'` or `KEY already learnt correctly`; sa-learn never sets
# learn_no_relearn, so "as opposite, not re-learning" is not one of them).
# Mail::SpamAssassin::Logger prints a 10th and later identical line in a row
# once, with " [... logline repeated N times]" (N: how many it stands for).
SUMMARY = re.compile(
    rb"(?m)^Learned tokens from (\d+) message\(s\) \((\d+) message\(s\) examined\)$"
)
VERDICT = re.compile(
    rb"^[^\[\]\n]*\[(\d+)\] dbg: bayes: (?:learned '(.*)', atime: -?\d+"
    rb"|(.*) already learnt correctly, not learning twice)"
    rb"(?: \[\.\.\. logline repeated (\d+) times\])?$"
)
# Mail::SpamAssassin::Message::generate_msgid: sha1_hex(To, Date, body digest).
CONTENT_KEY = re.compile(r"([0-9a-f]{40})@sa_generated\Z")
# A header field whose name ends in Message-ID, as a line of the file starts
# it (SpamAssassin's field-name characters: printable ASCII but the colon).
ID_FIELD = re.compile(rb"[!-9;-~]*message-id[ \t]*:", re.IGNORECASE)
TAIL_KEPT = 4000  # bytes of a call's other output (warnings, errors) kept
GLOB_SPECIAL = frozenset("\\[]{}*?~\"'")  # sa-learn runs every path through Perl's glob()


def glob_quote(path: str) -> str:
    """`path` as sa-learn's ArchiveIterator must get it to open that file:
    it passes every target through Perl's glob() (`*`, `?`, `[...]`, `{a,b}`,
    quotes and `~` act there), after escaping whitespace not already preceded
    by a backslash. A backslash-escaped character is itself."""
    out = []
    for index, ch in enumerate(path):
        if ch in GLOB_SPECIAL or (ch in " \t\n\r\f\v" and index and path[index - 1] == "\\"):
            out.append("\\")
        out.append(ch)
    return "".join(out)


def content_hash() -> hashlib.blake2b:
    """The digest of a file's bytes that names its content in the trainer."""
    return hashlib.blake2b(digest_size=32)


class Transcript:
    """A call's stderr, read line by line: the per-message lines (pid, learned
    or skipped, key, how many messages the line stands for), and the end of
    everything that is not a debug line."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[bytes, bool, str, int]] = []
        self._said: deque[bytes] = deque()
        self._said_size = 0

    def feed(self, lines: Iterable[bytes]) -> Transcript:
        for raw in lines:
            line = raw.rstrip(b"\n")
            if b" dbg: " not in line:
                self._keep(line)
                continue
            match = VERDICT.match(line)
            if match is None:
                continue
            learned = match[2] is not None
            key = (match[2] if learned else match[3]).decode("latin-1")
            self.verdicts.append((match[1], learned, key, int(match[4] or 1)))
        return self

    def _keep(self, line: bytes) -> None:
        self._said.append(line)
        self._said_size += len(line) + 1
        while self._said_size > TAIL_KEPT and len(self._said) > 1:
            self._said_size -= len(self._said.popleft()) + 1

    def said(self) -> bytes:
        """What the program printed on stderr besides debug lines (its end)."""
        return b"\n".join(self._said)


def read_answer(
    paths: list[str], stdout: bytes, stderr: bytes | Transcript
) -> tuple[dict[str, str], dict[str, str], str]:
    """What one `sa-learn -D bayes` call says of each of `paths` (in the order
    given): (learned, skipped, problem), each file with the key SpamAssassin
    named. The count line on stdout ("Learned tokens from N message(s) (M
    message(s) examined)") proves a file learned only when N = M = the files
    still there; otherwise its per-message lines on stderr (one per message
    examined, in argument order, all from one process) tell which. Anything
    else proves nothing: `problem` says so."""
    present = [p for p in paths if os.path.lexists(p)]
    if not present:
        return {}, {}, ""
    counts = SUMMARY.findall(stdout)
    if len(counts) != 1:
        return {}, {}, 'it printed no "Learned tokens from N message(s)" line'
    learned_n, examined = int(counts[0][0]), int(counts[0][1])
    told = stderr if isinstance(stderr, Transcript) else Transcript().feed(stderr.split(b"\n"))
    attributed = (
        sum(times for *_, times in told.verdicts) == examined
        and len({pid for pid, *_ in told.verdicts}) <= 1
        and sum(times for _, was, _, times in told.verdicts if was) == learned_n
    )
    if examined == len(present):
        if attributed:
            each = [(was, key) for _, was, key, times in told.verdicts for _ in range(times)]
            pairs = list(zip(present, each, strict=True))
            learned = {p: key for p, (was, key) in pairs if was}
            skipped = {p: key for p, (was, key) in pairs if not was}
            return learned, skipped, ""
        if learned_n == examined:
            return dict.fromkeys(present, ""), {}, ""
        if learned_n == 0:
            return {}, dict.fromkeys(present, ""), ""
    return (
        {},
        {},
        f"it learned {learned_n} of {examined} messages examined ({len(present)} files given) "
        "and its per-message lines do not say which",
    )


def content_digest(path: str, key: str) -> bytes | None:
    """The digest of the file at `path` (content_hash) when `key`, the key
    sa-learn said it skipped that file by, can only be SpamAssassin's content
    key of the file itself; None when it may be the file's Message-ID, or the
    file cannot be read.

    SpamAssassin 4 looks a message up under two keys, in this order
    (Plugin/Bayes.pm, _learn_trapped): generate_msgid(), sha1_hex of the To
    and Date headers and the digest of the pristine body with
    "@sa_generated" (Message.pm), and get_msgid(), the last Message-ID
    header's text between < and > (also the file's after sa-learn took
    SpamAssassin's markup off). It prints the key that matched. The file's
    Message-ID is built from its own bytes (unfolding only adds spaces), so a
    key whose 40 hex digits the file does not hold, in any case, is not its
    Message-ID, unless a Message-ID field of the file has bytes above 127
    (SpamAssassin re-encodes those). Then the key is the file's content key."""
    match = CONTENT_KEY.match(key)
    if match is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = handle.read()
    if match[1].encode() in data.lower() or _raw_message_id(data):
        return None
    digest = content_hash()
    digest.update(data)
    return digest.digest()


def _raw_message_id(data: bytes) -> bool:
    """Does a Message-ID field (any line that starts one, and its continuation
    lines) hold a byte above 127?"""
    inside = False
    for line in data.split(b"\n"):
        if ID_FIELD.match(line):
            inside = True
        elif not (inside and line[:1] in (b" ", b"\t")):
            inside = False
            continue
        if not line.isascii():
            return True
    return False
