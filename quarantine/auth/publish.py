"""Putting a DKIM key record into DNS, or withdrawing it (an empty `p=`), the
three ways `keys.publish` names: `print` (say what to add and remove, for DNS
run elsewhere), `tinydns` (edit the `data` file in marked lines, idempotently,
through backup.read and backup.write, then run make or tinydns-data) and
`nsupdate` (RFC 2136 with TSIG, dnspython).
"""

from __future__ import annotations

import os
import re
import subprocess

from quarantine import backup, names
from quarantine.auth import records
from quarantine.auth.records import Record
from quarantine.config import Config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from quarantine.auth.resolver import Resolver

WITHDRAWN = "v=DKIM1; p="  # RFC 6376 3.6.1: an empty p= means the key is revoked
MARK = "#quarantine-keys "  # a marked line: the record line after it is ours
WAS = "#quarantine-keys-was "  # someone else's line for a name we took over
MAX_DATA = 64 * 1024 * 1024
BUILD_TIMEOUT = 300


class PublishError(Exception):
    """The record could not be published or withdrawn (exit 1; retried next run)."""


class Publisher:
    """Puts `text` at `name` (replacing what is there) and says what it did."""

    method = ""

    def __init__(self, cfg: Config, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.say = say

    def put(self, name: str, text: str, old: str | None = None) -> None:
        raise NotImplementedError


class Print(Publisher):
    """For DNS this host does not run: print what to add (BIND and tinydns-data
    lines) and, for a withdrawal, what it replaces; DNS is checked later."""

    method = "print"

    def put(self, name: str, text: str, old: str | None = None) -> None:
        record = Record("dkim", name, text)
        ttl = self.cfg.dns.ttl
        verb = "withdraw (replace the record by)" if text == WITHDRAWN else "publish"
        self.say(f"{verb} {name}:")
        self.say(f"  bind:    {records.bind_line(record, ttl)}")
        self.say(f"  tinydns: {records.tinydns_line(record, ttl)}")
        if old is not None:
            self.say(f"  (it replaces {records.bind_line(Record('dkim', name, old), ttl)})")


def _txt_owner(line: str) -> str | None:
    """The owner name of a tinydns-data TXT line (`'fqdn:...`), unescaped and
    lower case; None for any other line."""
    if not line.startswith("'"):
        return None
    owner = line[1:].split(":", 1)[0]
    owner = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), owner)
    return owner.rstrip(".").lower()


def edit_tinydns(text: str, name: str, line: str) -> str:
    """`text` (a tinydns `data` file) with `line` as the one record at
    `name`: our earlier marked line for it replaced, anyone else's TXT line
    for it commented out (`#quarantine-keys-was`, so it can be put back).
    Editing twice gives the same file."""
    name = name.rstrip(".").lower()
    out: list[str] = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    skip = False
    for current in lines:
        if skip:
            skip = False
            continue
        if current.startswith(MARK):
            if current[len(MARK) :].strip().lower() == name:
                skip = True  # drop our old marker and the record after it
                continue
            out.append(current)
            continue
        if _txt_owner(current) == name:
            out.append(WAS + current)
            continue
        out.append(current)
    out.append(MARK + name)
    out.append(line)
    return "\n".join(out) + "\n"


class Tinydns(Publisher):
    """Edit `keys.tinydns_data` (kept a regular file with its mode and owner;
    a symlink there is refused, not followed) and rebuild data.cdb: `make` in its
    directory when there is a Makefile (as tinydns-conf sets up), else
    `tinydns-data` there."""

    method = "tinydns"

    def __init__(
        self,
        cfg: Config,
        say: Callable[[str], None],
        run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
    ) -> None:
        super().__init__(cfg, say)
        self.path = cfg.keys.tinydns_data
        self.run = run

    def put(self, name: str, text: str, old: str | None = None) -> None:
        line = records.tinydns_line(Record("dkim", name, text), self.cfg.dns.ttl)
        try:
            state, data = backup.read(self.path, MAX_DATA)
        except backup.FileError as exc:
            raise PublishError(str(exc)) from None
        if state.kind == "symlink":
            raise PublishError(
                f"{self.path} is a symlink (to {names.show(state.target)}): not followed, "
                "nothing written; keys.tinydns_data must be the data file itself"
            )
        if data is None:
            raise PublishError(f"{self.path}: no such file")
        before = data.decode("latin-1")
        after = edit_tinydns(before, name, line)
        if after != before:
            try:
                backup.write(self.path, after.encode("latin-1"), state)
            except backup.FileError as exc:
                raise PublishError(str(exc)) from None
            self._outdate_cdb()
        self.build()
        self.say(f"{self.path}: {name} {'withdrawn' if text == WITHDRAWN else 'published'}")

    def _outdate_cdb(self) -> None:
        """make compares modification times, and two edits within one clock
        tick of the kernel's file timestamps leave data no newer than the
        data.cdb built between them: set data.cdb a second back so the
        rebuild is never skipped."""
        cdb = os.path.join(os.path.dirname(self.path) or ".", "data.cdb")
        try:
            made = os.stat(cdb, follow_symlinks=False).st_mtime_ns
            edited = os.stat(self.path).st_mtime_ns
            if made >= edited - 1_000_000_000:
                back = edited - 1_000_000_000
                os.utime(cdb, ns=(back, back), follow_symlinks=False)
        except OSError:
            pass  # no data.cdb yet: make builds it anyway

    def build(self) -> None:
        directory = os.path.dirname(self.path) or "."
        if os.path.exists(os.path.join(directory, "Makefile")):
            argv = ["make", "-s", "-C", directory]
        else:
            argv = ["tinydns-data"]
        try:
            proc = self.run(
                argv, cwd=directory, capture_output=True, timeout=BUILD_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PublishError(f"{' '.join(argv)} in {directory}: {exc}") from None
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout or b"").decode("utf-8", "replace").strip()
            raise PublishError(
                f"{' '.join(argv)} in {directory} exited {proc.returncode}: {said[-300:]}"
            )


_KEY_BLOCK = re.compile(
    r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;', re.DOTALL
)  # tsig-keygen / ddns-confgen output


def read_tsig_key(path: str) -> tuple[str, str, str]:
    """(name, algorithm, secret) from a BIND key file."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(64 * 1024)
    except (OSError, UnicodeDecodeError) as exc:
        raise PublishError(f"{path}: cannot read the TSIG key: {exc}") from None
    match = _KEY_BLOCK.search(text)
    if match is None:
        raise PublishError(f'{path}: no `key "NAME" {{ algorithm ...; secret "..."; }};` block')
    body = match.group(2)
    algorithm = re.search(r"algorithm\s+\"?([A-Za-z0-9.-]+)\"?\s*;", body)
    secret = re.search(r'secret\s+"([A-Za-z0-9+/=]+)"\s*;', body)
    if algorithm is None or secret is None:
        raise PublishError(f"{path}: the key block has no algorithm or secret")
    return match.group(1), algorithm.group(1).lower(), secret.group(1)


class Nsupdate(Publisher):
    """An RFC 2136 update signed with the TSIG key in `keys.nsupdate_key`,
    sent over TCP to `keys.nsupdate_server`: the TXT RRset at the name is
    replaced as a whole (so a repeat changes nothing)."""

    method = "nsupdate"

    def __init__(
        self, cfg: Config, say: Callable[[str], None], zone_of: Callable[[str], str]
    ) -> None:
        super().__init__(cfg, say)
        self.zone_of = zone_of
        if not cfg.keys.nsupdate_key:
            raise PublishError("keys.publish is nsupdate but keys.nsupdate_key is not set")
        self.key = read_tsig_key(cfg.keys.nsupdate_key)

    def put(self, name: str, text: str, old: str | None = None) -> None:
        import dns.exception
        import dns.name
        import dns.query
        import dns.rcode
        import dns.tsig
        import dns.tsigkeyring
        import dns.update

        zone = self.zone_of(name)
        key_name, algorithm, secret = self.key
        keyring = dns.tsigkeyring.from_text({key_name: (algorithm, secret)})
        update = dns.update.UpdateMessage(
            zone + ".", keyring=keyring, keyname=dns.name.from_text(key_name)
        )
        data = " ".join(records.bind_strings(text))
        update.replace(name + ".", self.cfg.dns.ttl, "TXT", data)
        server, port = self.cfg.keys.nsupdate_server, self.cfg.keys.nsupdate_port
        try:
            response = dns.query.tcp(update, server, port=port, timeout=self.cfg.dns.timeout * 2)
        except (OSError, dns.exception.DNSException) as exc:
            raise PublishError(f"update of {name} at {server} port {port}: {exc}") from None
        if response.rcode() != dns.rcode.NOERROR:
            raise PublishError(
                f"update of {name} at {server} port {port}: {dns.rcode.to_text(response.rcode())}"
            )
        self.say(
            f"{server}: {name} {'withdrawn' if text == WITHDRAWN else 'published'} (zone {zone})"
        )


def zone_finder(resolver: Resolver) -> Callable[[str], str]:
    """`zone_of(name)`: the closest enclosing name with NS records (the zone
    the name lives in), asked of `resolver`; remembered per run."""
    found: dict[str, str] = {}

    def zone_of(name: str) -> str:
        labels = name.rstrip(".").lower().split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in found:
                return found[candidate]
            answer = resolver.records(candidate, "NS")
            if any(owner == candidate and kind == "NS" for owner, kind, _ in answer):
                for j in range(i + 1):
                    found[".".join(labels[j:])] = candidate
                return candidate
        raise PublishError(f"no zone with NS records above {name}")

    return zone_of


def publisher(
    cfg: Config, method: str, say: Callable[[str], None], zone_of: Callable[[str], str]
) -> Publisher:
    if method == "tinydns":
        return Tinydns(cfg, say)
    if method == "nsupdate":
        return Nsupdate(cfg, say, zone_of)
    return Print(cfg, say)
