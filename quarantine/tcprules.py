"""tcpserver's rules for qmail-smtpd: the source file tcprules reads
(`ADDRESS:allow|deny,VAR="value",...`, parsed as ucspi-tcp 0.88's tcprules.c
does), the cdb it compiles (a bounded reader), and a rebuild by the real tcprules.
"""

from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass, replace

from quarantine.names import show
from quarantine.qmailfile import quoted, split_lines

TCPRULES = "/usr/bin/tcprules"
MAX_SOURCE = 16 << 20  # a rules file larger than this is not one
MAX_CDB = 64 << 20  # nor a cdb
CDB_HEADER = 2048  # 256 (position, slots) pairs of little-endian uint32
QUOTES = "\"'|/#%^~!"  # value delimiters render() may choose, in order


class RulesError(Exception):
    """A rules file the real tcprules would refuse, or a cdb that is not one;
    the text names the file (and line) and is printable."""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: the address it matches (`127.0.0.1`, `192.168.`, `=host`,
    `info@ip`, `` for everyone), allow or deny, and the environment it sets in
    order (tcpserver sets them one after the other: the last of a name wins).
    `lineno` is its line in the source (0: read from a cdb)."""

    address: str
    deny: bool = False
    env: tuple[tuple[str, str], ...] = ()
    lineno: int = 0

    @property
    def action(self) -> str:
        return "deny" if self.deny else "allow"

    def get(self, name: str) -> str | None:
        """The value tcpserver leaves in `name` after this rule, or None."""
        value = None
        for key, val in self.env:
            if key == name:
                value = val
        return value

    def with_env(self, name: str, value: str) -> Rule:
        """This rule with `name` set to `value`: in the place of its first
        setting (later duplicates dropped), or appended."""
        _check_name(name)
        out: list[tuple[str, str]] = []
        done = False
        for key, val in self.env:
            if key != name:
                out.append((key, val))
            elif not done:
                out.append((name, value))
                done = True
        if not done:
            out.append((name, value))
        return replace(self, env=tuple(out))

    def without(self, name: str) -> Rule:
        """This rule no longer setting `name`."""
        return replace(self, env=tuple((k, v) for k, v in self.env if k != name))

    def text(self) -> str:
        """The rule as a source line (no newline), each value in the first
        delimiter of QUOTES it does not contain."""
        if ":" in self.address or "\n" in self.address or self.address.startswith("#"):
            raise RulesError(f"{quoted(self.address)}: not an address tcprules can read back")
        parts = [f"{self.address}:{self.action}"]
        for name, value in self.env:
            _check_name(name)
            if "\0" in value or "\n" in value:
                raise RulesError(f"{show(name)}: a value cannot hold a NUL or a newline")
            quote = next((q for q in QUOTES if q not in value), None)
            if quote is None:
                raise RulesError(f"{show(name)}: no delimiter left for this value")
            parts.append(f"{name}={quote}{value}{quote}")
        return ",".join(parts)

    def data(self) -> bytes:
        """What tcprules stores for the rule in the cdb."""
        out = [b"D\0"] if self.deny else []
        out += [b"+" + _raw(k) + b"=" + _raw(v) + b"\0" for k, v in self.env]
        return b"".join(out)

    def cdb_keys(self) -> list[str]:
        """The cdb keys tcprules makes of the address (`1.2.3.4-7` is four)."""
        return address_keys(self.address)


def _check_name(name: str) -> None:
    if not name or any(ch in name for ch in "=,\0\n"):
        raise RulesError(f"{quoted(name)} is not an environment variable name for tcprules")


def address_keys(address: str) -> list[str]:
    """tcprules' doaddressdata: an address without `=` or `@` and with a dash
    is a range in its last-but-one number part (`10.0.0.1-3`, top capped at
    255), one key for each value; anything else is its own key."""
    if "=" in address or "@" in address or "-" not in address:
        return [address]
    dash = address.index("-")
    left = address.rfind(".", 0, dash) + 1
    right = address.find(".", dash + 1)
    right = len(address) if right == -1 else right
    bot, top = _number(address[left:dash], address), _number(address[dash + 1 : right], address)
    top = min(top, 255)
    return [f"{address[:left]}{n}{address[right:]}" for n in range(bot, top + 1)]


def _number(text: str, address: str) -> int:
    """scan_ulong as tcprules checks it: digits only (none is 0)."""
    if text and not (text.isascii() and text.isdigit()):
        raise RulesError(f"{quoted(address)}: not a number range")
    return int(text[:20]) if text else 0


def parse_line(line: str) -> Rule | None:
    """One source line (without its newline) as tcprules reads it: None for a
    comment, a blank line or a line without a colon (tcprules skips those);
    RulesError for what tcprules refuses."""
    if not line or line[0] == "#":
        return None
    text = line.rstrip(" \t\n")
    colon = text.find(":")
    if colon < 0:
        return None
    address, rest = text[:colon], text[colon + 1 :]
    if rest.startswith("deny"):
        deny, rest = True, rest[4:]
    elif rest.startswith("allow"):
        deny, rest = False, rest[5:]
    else:
        raise RulesError("neither allow nor deny after the address")
    env: list[tuple[str, str]] = []
    while rest:
        equals = rest.find("=")
        if rest[0] != "," or equals < 0 or equals + 1 >= len(rest):
            raise RulesError('expected ,NAME="value"')
        name = rest[1:equals]
        quote = rest[equals + 1]
        end = rest.find(quote, equals + 2)
        if end < 0:
            raise RulesError(f"{show(name)}: the value's closing {show(quote)} is missing")
        env.append((name, rest[equals + 2 : end]))
        rest = rest[end + 1 :]
    address_keys(address)  # a bad range is refused here, as tcprules does
    return Rule(address, deny, tuple(env))


class RulesFile:
    """A tcprules source file: its lines kept byte for byte, its rules in
    order. Rules are changed with put(); render() gives the file back with
    only the changed lines rewritten."""

    def __init__(self, data: bytes, path: str = "(rules)") -> None:
        self.path = path
        self.lines = split_lines(_text(data))  # at \n only, as tcprules
        self.rules: list[Rule] = []
        for number, line in enumerate(self.lines, 1):
            try:
                rule = parse_line(line.removesuffix("\n"))
            except RulesError as exc:
                raise RulesError(f"{show(path)}:{number}: {exc}") from None
            if rule is not None:
                self.rules.append(replace(rule, lineno=number))

    def put(self, rule: Rule) -> None:
        """Replace the rule on line `rule.lineno` with `rule`."""
        index = next(i for i, r in enumerate(self.rules) if r.lineno == rule.lineno)
        line = self.lines[rule.lineno - 1]
        self.lines[rule.lineno - 1] = rule.text() + ("\n" if line.endswith("\n") else "")
        self.rules[index] = rule

    def render(self) -> bytes:
        return _raw("".join(self.lines))

    def records(self) -> list[tuple[bytes, bytes]]:
        """(key, data) in the order tcprules adds them to the cdb."""
        return [(_raw(key), rule.data()) for rule in self.rules for key in rule.cdb_keys()]


def read_source(path: str, limit: int = MAX_SOURCE) -> RulesFile:
    """The rules file at `path` (a regular file of at most `limit` bytes)."""
    return RulesFile(_read_regular(path, limit), path)


def _read_regular(path: str, limit: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise RulesError(f"{show(path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RulesError(f"{show(path)}: not a regular file")
        if st.st_size > limit:
            raise RulesError(f"{show(path)}: larger than {limit} bytes")
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise RulesError(f"{show(path)}: larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


def _hash(key: bytes) -> int:
    h = 5381
    for byte in key:
        h = (((h << 5) + h) & 0xFFFFFFFF) ^ byte
    return h


def _u32(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 4], "little")


class Cdb:
    """A constant database as cdb_make writes it, read from memory. Every
    position and length is checked against the data before it is used."""

    def __init__(self, data: bytes, path: str = "(cdb)") -> None:
        self.data = data
        self.path = path
        if len(data) < CDB_HEADER:
            raise RulesError(f"{show(path)}: too short for a cdb")
        self.tables = [(_u32(data, 8 * i), _u32(data, 8 * i + 4)) for i in range(256)]
        for pos, slots in self.tables:
            if pos < CDB_HEADER or pos + 8 * slots > len(data):
                raise RulesError(f"{show(path)}: a hash table outside the file")
        self.end = min(pos for pos, _ in self.tables)  # the records stop here

    def records(self) -> list[tuple[bytes, bytes]]:
        """Every (key, data) in the order they were added."""
        out = []
        pos = CDB_HEADER
        while pos < self.end:
            key, value, pos = self._record(pos)
            out.append((key, value))
        return out

    def _record(self, pos: int) -> tuple[bytes, bytes, int]:
        if pos + 8 > self.end:
            raise RulesError(f"{show(self.path)}: a record runs past the end")
        klen, dlen = _u32(self.data, pos), _u32(self.data, pos + 4)
        start = pos + 8
        stop = start + klen + dlen
        if stop > self.end:
            raise RulesError(f"{show(self.path)}: a record runs past the end")
        return self.data[start : start + klen], self.data[start + klen : stop], stop

    def get(self, key: bytes) -> bytes | None:
        """The first data stored under `key` (cdb_find), or None."""
        h = _hash(key)
        pos, slots = self.tables[h & 0xFF]
        if not slots:
            return None
        slot = (h >> 8) % slots
        for _ in range(slots):
            entry = pos + 8 * slot
            stored, rec = _u32(self.data, entry), _u32(self.data, entry + 4)
            if rec == 0:
                return None
            if stored == h:
                if rec < CDB_HEADER:
                    raise RulesError(f"{show(self.path)}: a slot points into the header")
                found, value, _ = self._record(rec)
                if found == key:
                    return value
            slot = (slot + 1) % slots
        return None

    def rules(self) -> list[Rule]:
        """Each record as the rule tcpserver would apply."""
        return [rule_of(_text(key), value) for key, value in self.records()]


def rule_of(address: str, data: bytes) -> Rule:
    """A cdb record's data as tcpserver's found() reads it: NUL-terminated
    entries, `D` deny, `+NAME=VALUE` set; anything else (and an unterminated
    tail) ignored."""
    deny = False
    env: list[tuple[str, str]] = []
    entries = data.split(b"\0")[:-1]
    for entry in entries:
        if entry[:1] == b"D":
            deny = True
        elif entry[:1] == b"+" and b"=" in entry:
            name, _, value = entry[1:].partition(b"=")
            env.append((_text(name), _text(value)))
    return Rule(address, deny, tuple(env))


def read_cdb(path: str, limit: int = MAX_CDB) -> Cdb:
    """The cdb at `path` (a regular file of at most `limit` bytes)."""
    return Cdb(_read_regular(path, limit), path)


def match(cdb: Cdb, ip: str, host: str | None = None, info: str | None = None) -> Rule | None:
    """The rule tcpserver applies to a connection from `ip` (rules.c's order:
    info@ip, info@=host, ip, =host, ip prefixes ending in a dot, =.host
    suffixes, `=`, then the empty key); None when no rule matches (allowed,
    nothing set)."""
    candidates: list[str] = []
    if info is not None:
        candidates.append(f"{info}@{ip}")
        if host is not None:
            candidates.append(f"{info}@={host}")
    candidates.append(ip)
    if host is not None:
        candidates.append(f"={host}")
    candidates += [ip[:n] for n in range(len(ip), 0, -1) if ip[n - 1] == "."]
    if host is not None:
        candidates += [f"={host[n:]}" for n in range(len(host)) if host[n] == "."]
        candidates.append("=")
    candidates.append("")
    for key in candidates:
        data = cdb.get(_raw(key))
        if data is not None:
            return rule_of(key, data)
    return None


def cdb_path(source: str) -> str:
    """Where the compiled rules of `source` live: beside it, `.cdb` added."""
    return source + ".cdb"


def rebuild(source: str, cdb: str | None = None, program: str = TCPRULES) -> None:
    """Compile `source` into `cdb` with the real tcprules (which writes
    `cdb`.tmp and renames it over `cdb`). RulesError with tcprules' own words
    when it refuses."""
    target = cdb or cdb_path(source)
    try:
        with open(source, "rb") as rules:
            proc = subprocess.run(
                [program, target, target + ".tmp"],
                stdin=rules,
                capture_output=True,
                timeout=300,
                check=False,
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RulesError(f"{show(program)}: {exc}") from None
    if proc.returncode != 0:
        said = _text(proc.stderr or proc.stdout).strip().splitlines()
        first = show(said[0]) if said else ""
        raise RulesError(f"{show(program)} exited {proc.returncode}: {first}")
