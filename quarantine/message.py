"""Reading a message as qmail hands it over: the header block is read and
parsed (bounded), the body is never held in memory, only streamed on.

Bytes in, bytes out: nothing is decoded except header values (as Latin-1, which
cannot fail), and nothing of email.* is imported (it costs 25 ms a start).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

CHUNK = 1 << 16
MAX_LINE = 1 << 16


class Head:
    """The start of a message: preline's From_ line (if any), the raw header
    lines (kept byte for byte), and the parsed (name, value) pairs."""

    __slots__ = ("complete", "from_line", "headers", "lines", "size")

    def __init__(self) -> None:
        self.from_line = b""  # preline's mbox From_ line, not part of the message
        self.lines: list[bytes] = []  # raw lines as read, folded lines included
        self.headers: list[tuple[str, str]] = []  # (lower-case name, unfolded value)
        self.complete = False  # the blank line ending the header was seen
        self.size = 0  # bytes of `lines`

    def values(self, name: str) -> "list[str]":
        """Every value of header `name` (lower case), top to bottom."""
        return [v for n, v in self.headers if n == name]

    def starts_with_trace(self) -> bool:
        """Does the message begin with a Return-Path: line (preline's, or qmail's)?"""
        return bool(self.lines) and self.lines[0][:12].lower() == b"return-path:"


def read_head(stream: "BinaryIO", limit: int) -> "Head":
    """Read up to the end of the header block, or `limit` bytes of it. What is
    read past a malformed header stays in `lines` and is written out as is."""
    head = Head()
    first = stream.readline(MAX_LINE)
    if first.startswith(b"From "):
        head.from_line = first
        first = stream.readline(MAX_LINE)
    line = first
    name = ""
    value: list[str] = []
    while line:
        head.lines.append(line)
        head.size += len(line)
        stripped = line.rstrip(b"\r\n")
        if not stripped:
            head.complete = True
            break
        if line[:1] in (b" ", b"\t") and name:
            value.append(stripped.decode("latin-1"))
        else:
            if name:
                head.headers.append((name, _unfold(value)))
                name = ""
            colon = stripped.find(b":")
            field = stripped[:colon]
            if colon <= 0 or not _is_field_name(field):
                break  # not a header line: the body starts here (malformed message)
            name = field.decode("ascii").lower()
            value = [stripped[colon + 1 :].decode("latin-1")]
        if head.size >= limit or not line.endswith(b"\n"):
            break  # an endless header or a line past MAX_LINE: stop parsing here
        line = stream.readline(MAX_LINE)
    if name:
        head.headers.append((name, _unfold(value)))
    return head


def _unfold(parts: "list[str]") -> str:
    return " ".join(part.strip() for part in parts).strip()


def is_header_line(line: bytes) -> bool:
    """Does `line` start a header field (`Name: value`)?"""
    colon = line.find(b":")
    return colon > 0 and _is_field_name(line[:colon])


def _is_field_name(field: bytes) -> bool:
    """RFC 5322 field name: printable ASCII except colon and space."""
    return all(33 <= byte <= 126 for byte in field)


def copy_rest(stream: "BinaryIO", write: "Callable[[bytes], object]") -> int:
    """Stream what is left of `stream` to `write` (a callable taking bytes);
    returns the number of bytes copied."""
    total = 0
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return total
        write(chunk)
        total += len(chunk)


def drain(stream: "BinaryIO") -> None:
    """Read stdin to its end. preline writes the whole message into a pipe; a
    filter that exits before reading it all can make preline die of SIGPIPE,
    which qmail-local reports as a crash and retries."""
    while stream.read(CHUNK):
        pass


def header_fields(message: bytes) -> "tuple[list[bytes], int]":
    """The raw header fields of a whole message (continuation lines included,
    line ends kept) and the offset where the body starts (after the empty
    line): quarantine-queue's view, which holds the message in memory. Split
    by one regular expression, so a field folded over millions of lines costs
    no Python loop."""
    import re

    end, start = _header_bounds(message)
    fields: list[bytes] = []
    begin = 0
    for match in re.compile(rb"\n(?![ \t])").finditer(message, 0, end):
        cut = match.end()
        fields.append(message[begin:cut])
        begin = cut
    if begin < end:
        fields.append(message[begin:end])
    return fields, start


def _header_bounds(message: bytes) -> "tuple[int, int]":
    """(end of the header fields, start of the body): the first empty line
    (LF or CRLF) lies between them; without one, both are the length."""
    if message[:1] == b"\n":
        return 0, 1
    if message[:2] == b"\r\n":
        return 0, 2
    ends = ((message.find(b"\n\n"), 2), (message.find(b"\n\r\n"), 3))
    found = [(i + 1, i + n) for i, n in ends if i >= 0]
    return min(found) if found else (len(message), len(message))


def field_count(message: bytes, end: int) -> int:
    """How many header fields start before offset `end`: lines that are not
    continuation lines, counted at C speed (no field becomes an object)."""
    lines = message.count(b"\n", 0, end) + (not message.endswith(b"\n", 0, end))
    folded = message.count(b"\n ", 0, end) + message.count(b"\n\t", 0, end)
    return lines - folded


def body_offset(message: bytes) -> int:
    """Where the body of a message held in memory starts: after the first
    empty line (the same line `header_fields` stops at), or its length."""
    return _header_bounds(message)[1]


def field_spans(
    message: bytes, names: "tuple[bytes, ...]", end: int
) -> "Iterator[tuple[int, int]]":
    """(start, stop) of each raw field called one of `names` (lower case)
    among the header fields before offset `end`, top to bottom. A regular
    expression finds them, so only the fields asked for cost Python objects:
    what a header block with a huge number of fields is read with."""
    import re

    alternatives = b"|".join(re.escape(name) for name in names)
    pattern = re.compile(rb"(?:\A|\n)(?:" + alternatives + rb")[ \t]*:", re.IGNORECASE)
    next_field = re.compile(rb"\n(?![ \t])")
    for match in pattern.finditer(message, 0, end):
        start = match.start() + (message[match.start() : match.start() + 1] == b"\n")
        stop = next_field.search(message, match.end(), end)
        yield start, (stop.start() + 1 if stop else end)


def fields_named(message: bytes, names: "tuple[bytes, ...]", end: int, limit: int) -> "list[bytes]":
    """The first `limit` raw fields that `field_spans` finds."""
    out: list[bytes] = []
    for start, stop in field_spans(message, names, end):
        out.append(message[start:stop])
        if len(out) >= limit:
            break
    return out


def addresses(values: "list[str]") -> "list[tuple[str, str]]":
    """(display name, address) of every address in the header values: what
    `email.utils.getaddresses` gives, from the module it is built on.
    email.utils itself imports socket, urllib, datetime and random, about
    10 ms that quarantine-queue would pay on every message for nothing; and
    email._parseaddr's `calendar` (with datetime and locale, for dates only)
    is loaded only if something uses it."""
    from quarantine.lazyimport import import_with, on_first_use

    parseaddr = import_with("email._parseaddr", {"calendar": on_first_use("calendar")})
    return list(parseaddr.AddressList(", ".join(values)).addresslist)


def field_name(raw: bytes) -> str:
    """A raw field's name, lower case."""
    return raw.split(b":", 1)[0].strip().lower().decode("latin-1")


def field_value(raw: bytes) -> str:
    """A raw field's value, unfolded, decoded leniently as UTF-8 (see
    `deliver_value` for how `read_head`, and so `quarantine deliver`, reads it)."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    return value.replace(b"\r\n", b"").replace(b"\n", b"").strip().decode("utf-8", "replace")


def deliver_value(raw: bytes) -> str:
    """A raw field's value exactly as `read_head` gives it to the verdict:
    Latin-1, each line stripped, joined by one space. It differs from
    `field_value` where a lone byte 0x85 or 0xA0 stands (whitespace in
    Latin-1, an undecodable byte in UTF-8)."""
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    return _unfold(value.decode("latin-1").split("\n"))
