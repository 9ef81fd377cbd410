"""The digest message itself: one summary line per Junk message from the
start of its header (encoded words decoded, control and direction characters
removed, length bounded), and the mail with a text and an HTML part (every
text escaped, no remote content: no images, links only `mailto:` our own
release addresses).
"""

from __future__ import annotations

import html
import time
import unicodedata
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import formatdate, make_msgid

FIELD_LIMIT = 200  # characters of a sender or subject shown
_DROP = frozenset(["Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"])


class Entry:
    """One Junk message as a digest line shows it (texts already made safe)."""

    __slots__ = ("arrived", "name", "rule", "score", "sender", "subject")

    def __init__(
        self, name: str, arrived: float, sender: str, subject: str, score: str, rule: str
    ) -> None:
        self.name = name
        self.arrived = arrived
        self.sender = sender
        self.subject = subject
        self.score = score
        self.rule = rule

    @classmethod
    def counted(cls, name: str, arrived: float) -> Entry:
        """A message past the digest's max_lines: counted and recorded as
        seen, never listed, so its file is not read."""
        return cls(name, arrived, "", "", "", "")


def clean(text: str, limit: int = FIELD_LIMIT) -> str:
    """One line of plain text: control, format (bidi overrides, zero-width),
    surrogate and separator characters become spaces, runs of white space one
    space, and at most `limit` characters."""
    chars = [" " if unicodedata.category(ch) in _DROP else ch for ch in text[: limit * 4]]
    line = " ".join("".join(chars).split())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def decoded(raw: object) -> str:
    """A header value with its RFC 2047 encoded words decoded; the raw text
    when they cannot be (a broken charset, an absurd value)."""
    if not raw:
        return ""
    text = str(raw)[:4096]
    try:
        return str(make_header(decode_header(text)))
    except Exception:  # a hostile header: show it as it came
        return text


def _field(value: str, word: str) -> str:
    """`rule=NAME;` or `score=5.3` out of an X-Quarantine / X-Spam-Status value."""
    for part in value.replace(";", " ").replace(",", " ").split():
        if part.startswith(word + "="):
            return part[len(word) + 1 :][:40]
    return ""


def entry_of(name: str, arrived: float, head: bytes) -> Entry:
    """The summary of one Junk message from the start of its file."""
    block = head.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    headers = BytesHeaderParser(policy=compat32).parsebytes(block + b"\n\n")
    ours = str(headers.get("X-Quarantine", "") or "")
    status = str(headers.get("X-Spam-Status", "") or "")
    score = _field(ours, "score") or _field(status, "score")
    rule = _field(ours, "rule") or ("spamassassin" if status.lower().startswith("yes") else "")
    return Entry(
        name,
        arrived,
        clean(decoded(headers.get("From"))) or "(no sender)",
        clean(decoded(headers.get("Subject"))) or "(no subject)",
        clean(score, 12) or "-",
        clean(rule, 40) or "-",
    )


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def text_part(address: str, entries: list[Entry], addresses: list[str], expires: float) -> str:
    shown = entries[: len(addresses)]
    lines = [
        f"Mail held in your Junk folder ({address}) since the last summary:",
        "",
    ]
    for entry, release in zip(shown, addresses, strict=True):
        lines += [
            f"{_when(entry.arrived)}  score {entry.score}  rule {entry.rule}",
            f"  From:    {entry.sender}",
            f"  Subject: {entry.subject}",
            f"  Release: {release}",
            "",
        ]
    rest = len(entries) - len(shown)
    if rest:
        lines += [f"... and {rest} more in your Junk folder.", ""]
    lines += [
        "To have one of these messages moved to your inbox, send an empty",
        "message to its Release address (until " + _when(expires) + ").",
        "Mail left in Junk is learned as spam and deleted after a few days.",
    ]
    return "\n".join(lines) + "\n"


def html_part(address: str, entries: list[Entry], addresses: list[str], expires: float) -> str:
    e = html.escape
    shown = entries[: len(addresses)]
    cell = 'style="padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top"'
    rows = []
    for entry, release in zip(shown, addresses, strict=True):
        rows.append(
            "<tr>"
            f"<td {cell}>{e(_when(entry.arrived))}</td>"
            f"<td {cell}>{e(entry.sender)}</td>"
            f"<td {cell}>{e(entry.subject)}</td>"
            f"<td {cell}>{e(entry.score)}</td>"
            f"<td {cell}>{e(entry.rule)}</td>"
            f'<td {cell}><a href="mailto:{e(release)}?subject=release">release</a></td>'
            "</tr>"
        )
    rest = len(entries) - len(shown)
    more = f"<p>&hellip; and {rest} more in your Junk folder.</p>" if rest else ""
    head = "".join(
        f'<th style="text-align:left;padding:4px 8px;border-bottom:2px solid #999">{h}</th>'
        for h in ("Date", "From", "Subject", "Score", "Rule", "")
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Junk summary</title></head>\n'
        '<body style="font-family:sans-serif;font-size:14px;color:#222;background:#fff">\n'
        f"<p>Mail held in your Junk folder ({e(address)}) since the last summary:</p>\n"
        f'<table style="border-collapse:collapse"><tr>{head}</tr>\n'
        + "\n".join(rows)
        + f"\n</table>\n{more}\n"
        "<p>To have a message moved to your inbox, send an empty message to its "
        f"<b>release</b> address (until {e(_when(expires))}). Mail left in Junk is "
        "learned as spam and deleted after a few days.</p>\n</body></html>\n"
    )


def build(
    address: str,
    sender: str,
    entries: list[Entry],
    addresses: list[str],
    total: int,
    expires: float,
    now: float,
) -> bytes:
    """The digest for `address`: `entries` newest first, the first
    len(addresses) of them listed with those release addresses."""
    message = EmailMessage()
    message["From"] = f"Mail quarantine <{sender}>"
    message["To"] = address
    noun = "message" if total == 1 else "messages"
    message["Subject"] = f"Junk summary: {total} {noun} held for {address}"
    message["Date"] = formatdate(now, localtime=True)
    message["Message-ID"] = make_msgid("digest", sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-generated"
    message["X-Quarantine-Digest"] = "1"
    message.set_content(text_part(address, entries, addresses, expires), charset="utf-8")
    message.add_alternative(
        html_part(address, entries, addresses, expires), subtype="html", charset="utf-8"
    )
    return message.as_bytes()
