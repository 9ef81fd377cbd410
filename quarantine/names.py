"""Names from the filesystem, the network and the message, made safe to print:
one name is one printable line, whatever bytes it holds (a newline in a Junk
file name must not forge a report line, an escape sequence must not reach a
terminal)."""

from __future__ import annotations

import os


def show(name: str | bytes) -> str:
    """`name` as printable text: control characters (newline, ESC, DEL, C1),
    the line and paragraph separators, and undecodable bytes written as
    backslash escapes; a backslash itself is doubled so escapes cannot be
    forged."""
    if isinstance(name, bytes):
        raw = name
    else:
        try:
            raw = os.fsencode(name)
        except UnicodeEncodeError:  # a lone surrogate from text, not a file name
            raw = name.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "surrogateescape")
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)
