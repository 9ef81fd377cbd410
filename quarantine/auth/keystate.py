"""The rotation state of every signing domain's keys (`keys.state_file`):
generations of keys moving new -> published -> active -> retiring -> retired,
read strictly and written atomically (backup.write), and the lock one
`quarantine keys rotate` run holds.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass, field

from quarantine import backup
from quarantine.auth.keys import KeyUsage, check_name

STATES = ("new", "published", "active", "retiring", "retired")
KEY_TYPES = ("rsa", "ed25519")
VERSION = 1
MAX_STATE = 4 * 1024 * 1024
KEEP_RETIRED = 5  # retired generations kept per domain, for the record


class StateError(Exception):
    """The state file cannot be read, parsed or written (exit 1)."""


class Locked(Exception):
    """Another rotation holds the lock (exit 75)."""


@dataclass
class Generation:
    """The keys made together in one rotation (an RSA key, and an ed25519 key
    when dual signing), with the time each state was entered. `adopted`: a
    key that was signing before rotation took over the domain."""

    selectors: dict[str, str]  # key type -> selector
    state: str
    times: dict[str, float] = field(default_factory=dict)
    adopted: bool = False
    note: str = ""  # what it waits for, as the last run found it

    @property
    def name(self) -> str:
        return self.selectors.get("rsa") or next(iter(self.selectors.values()))

    def enter(self, state: str, now: float) -> None:
        self.state = state
        self.times[state] = now
        self.note = ""

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "selectors": dict(self.selectors),
            "state": self.state,
            "times": dict(self.times),
        }
        if self.adopted:
            out["adopted"] = True
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class DomainState:
    """One signing domain's generations, oldest first."""

    generations: list[Generation] = field(default_factory=list)

    def in_state(self, *states: str) -> list[Generation]:
        return [g for g in self.generations if g.state in states]

    def active(self) -> Generation | None:
        found = self.in_state("active")
        return found[-1] if found else None

    def pending(self) -> Generation | None:
        found = self.in_state("new", "published")
        return found[-1] if found else None

    def used_selectors(self) -> set[str]:
        return {s for g in self.generations for s in g.selectors.values()}

    def prune(self) -> None:
        """Keep the last KEEP_RETIRED retired generations."""
        retired = self.in_state("retired")
        for old in retired[: max(0, len(retired) - KEEP_RETIRED)]:
            self.generations.remove(old)


@dataclass
class State:
    domains: dict[str, DomainState] = field(default_factory=dict)

    def domain(self, name: str) -> DomainState:
        return self.domains.setdefault(name, DomainState())

    def as_json(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "domains": {
                name: {"generations": [g.as_json() for g in d.generations]}
                for name, d in sorted(self.domains.items())
            },
        }


def _generation(raw: object, where: str) -> Generation:
    if not isinstance(raw, dict):
        raise StateError(f"{where}: not an object")
    selectors = raw.get("selectors")
    state = raw.get("state")
    times = raw.get("times", {})
    if not isinstance(selectors, dict) or not selectors:
        raise StateError(f"{where}: no selectors")
    checked: dict[str, str] = {}
    for kind, selector in selectors.items():
        if kind not in KEY_TYPES or not isinstance(selector, str):
            raise StateError(f"{where}: bad selector entry {kind!r}")
        try:
            checked[kind] = check_name(selector, "selector")
        except KeyUsage as exc:
            raise StateError(f"{where}: {exc}") from None
    if state not in STATES:
        raise StateError(f"{where}: unknown state {state!r}")
    if not isinstance(times, dict) or not all(
        k in STATES and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in times.items()
    ):
        raise StateError(f"{where}: bad times")
    note = raw.get("note", "")
    return Generation(
        checked,
        str(state),
        {str(k): float(v) for k, v in times.items()},
        bool(raw.get("adopted", False)),
        note if isinstance(note, str) else "",
    )


def parse(text: bytes, path: str) -> State:
    """The state in `text` (StateError naming `path` when it is not one)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise StateError(f"{path}: not a version {VERSION} key state")
    domains = data.get("domains")
    if not isinstance(domains, dict):
        raise StateError(f"{path}: no domains")
    state = State()
    for name, raw in domains.items():
        try:
            domain = check_name(name, "domain")
        except KeyUsage as exc:
            raise StateError(f"{path}: {exc}") from None
        generations = raw.get("generations") if isinstance(raw, dict) else None
        if not isinstance(generations, list):
            raise StateError(f"{path}: {domain}: no generations")
        state.domains[domain] = DomainState(
            [_generation(g, f"{path}: {domain}[{i}]") for i, g in enumerate(generations)]
        )
    return state


def load(path: str) -> State:
    """The state file's contents; an empty state when there is no file yet."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_STATE + 1)
    except FileNotFoundError:
        return State()
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}") from None
    if len(text) > MAX_STATE:
        raise StateError(f"{path}: larger than {MAX_STATE} bytes")
    return parse(text, path)


def save(path: str, state: State) -> None:
    """Replace the state file in one step with backup.write (a temporary file
    beside it with its mode and owner, fsync, rename, fsync of the directory):
    a crash leaves the old or the new file, never a torn one."""
    data = (json.dumps(state.as_json(), indent=1, sort_keys=True) + "\n").encode()
    try:
        like, _ = backup.read(path, MAX_STATE)
        backup.write(path, data, like)
    except backup.FileError as exc:
        raise StateError(str(exc)) from None


class Lock:
    """An exclusive, non-blocking flock on `STATE_FILE.lock` for one run;
    the kernel drops it when the process dies, however it dies."""

    def __init__(self, state_path: str) -> None:
        self.path = state_path + ".lock"
        self.fd = -1

    def __enter__(self) -> Lock:
        directory = os.path.dirname(self.path) or "."
        try:
            os.makedirs(directory, 0o755, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot open: {exc.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise Locked(f"{self.path}: another key rotation is running") from None
            raise StateError(f"{self.path}: cannot lock: {exc.strerror}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
