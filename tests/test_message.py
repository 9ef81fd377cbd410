"""Reading the header block from the stream qmail hands over (bounded, bytes kept)."""

from __future__ import annotations

import io

from quarantine.message import copy_rest, read_head

PRELINE = b"From a@b.example Tue Nov 24 01:23:23 2026\nReturn-Path: <a@b.example>\n"


def test_preline_from_line_is_split_off() -> None:
    stream = io.BytesIO(PRELINE + b"Subject: hi\n\nbody\n")
    head = read_head(stream, 1 << 20)
    assert head.from_line.startswith(b"From a@b.example")
    assert head.starts_with_trace()
    assert head.complete
    assert head.values("subject") == ["hi"]
    assert stream.read() == b"body\n"


def test_folded_and_repeated_headers() -> None:
    raw = (
        b"X-Spam-Status: Yes, score=7.2 required=5.0 tests=A,\n\tB autolearn=no\n"
        b"X-Spam-Status: No\n\n"
    )
    head = read_head(io.BytesIO(raw), 1 << 20)
    assert head.values("x-spam-status") == [
        "Yes, score=7.2 required=5.0 tests=A, B autolearn=no",
        "No",
    ]
    assert b"".join(head.lines) == raw


def test_crlf_line_ends() -> None:
    head = read_head(io.BytesIO(b"Subject: a\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n"), 1 << 20)
    assert head.values("x-spam-flag") == ["YES"]
    assert head.complete


def test_no_headers_at_all() -> None:
    stream = io.BytesIO(b"just a body line\nmore\n")
    head = read_head(stream, 1 << 20)
    assert head.headers == []
    assert b"".join(head.lines) + stream.read() == b"just a body line\nmore\n"


def test_binary_junk_is_kept_byte_for_byte() -> None:
    data = bytes(range(256)) * 100
    stream = io.BytesIO(data)
    head = read_head(stream, 1 << 20)
    assert b"".join(head.lines) + stream.read() == data


def test_header_limit_stops_parsing_but_keeps_bytes() -> None:
    raw = b"".join(b"X-Filler-%d: %s\n" % (i, b"x" * 100) for i in range(1000)) + b"\nbody\n"
    stream = io.BytesIO(raw)
    head = read_head(stream, 10_000)
    assert 10_000 <= head.size < 10_200
    assert not head.complete
    assert b"".join(head.lines) + stream.read() == raw


def test_endless_line_is_cut_at_max_line() -> None:
    raw = b"Subject: " + b"x" * 200_000 + b"\n\nbody\n"
    stream = io.BytesIO(raw)
    head = read_head(stream, 1 << 20)
    assert b"".join(head.lines) + stream.read() == raw


def test_copy_rest_streams_everything() -> None:
    out = io.BytesIO()
    assert copy_rest(io.BytesIO(b"y" * 300_000), out.write) == 300_000
    assert out.getvalue() == b"y" * 300_000
