"""What a uid/gid may do with a path, for the doctor's checks: the kernel's own
answer (os.access) when this process runs as that uid (root forks a worker that
drops to it, privsep.run_as), else the mode bits as optin reads them
(filterchain.may); and why not, naming the directory on the way it cannot enter.
"""

from __future__ import annotations

import os

from quarantine import filterchain, privsep

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

BITS = {"r": 0o4, "w": 0o2, "x": 0o1}
WORDS = {
    "r": "read",
    "w": "write",
    "x": "execute",
    "rx": "read and execute",
    "wx": "write in",
    "rw": "read and write",
    "X": "enter",
}


class Who:
    """A uid/gid the checks act as, and how to name it in a message."""

    __slots__ = ("gid", "label", "uid")

    def __init__(self, uid: int, gid: int, label: str) -> None:
        self.uid = uid
        self.gid = gid
        self.label = label

    def __repr__(self) -> str:
        return f"Who({self.uid}, {self.gid}, {self.label!r})"


def who(spec: str) -> Who | None:
    """`NAME` (its passwd uid and primary gid) or `UID:GID`; None when there
    is no such user here."""
    name, sep, group = spec.partition(":")
    if sep and name.isdigit() and group.isdigit():
        return Who(int(name), int(group), f"uid {name} gid {group}")
    import pwd

    try:
        entry = pwd.getpwnam(spec)
    except KeyError:
        return None
    return Who(entry.pw_uid, entry.pw_gid, f"{spec} (uid {entry.pw_uid} gid {entry.pw_gid})")


def blocked(path: str, want: str, uid: int, gid: int) -> str | None:
    """Why uid/gid cannot `want` (letters of r, w, x; X: enter a directory)
    `path`, or None when it can. As that uid the kernel decides; otherwise
    the owner, group and other bits (qmail-local and privsep set the one gid,
    no supplementary groups)."""
    bits = 0o1 if want == "X" else sum(BITS[c] for c in want)
    as_that_uid = os.geteuid() == uid and os.getegid() == gid
    if as_that_uid:
        try:
            if os.access(path, bits):
                return None
        except (OSError, ValueError) as exc:
            return f"cannot check {path}: {exc}"
    else:
        if _may_path(path, bits, uid, gid):
            return None
    where = _first_closed(path, uid, gid, as_that_uid)
    if where is not None:
        return where
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return f"{path}: cannot {WORDS.get(want, want)} it ({filterchain.mode_text(st)})"


def _first_closed(path: str, uid: int, gid: int, kernel: bool) -> str | None:
    """The first directory on the way to `path` (and to where its symlinks
    lead) that uid/gid cannot enter, as a message; None if there is none."""
    for candidate in dict.fromkeys([os.path.normpath(path), os.path.realpath(path)]):
        parts = candidate.split("/")[1:-1]
        directory = "/"
        for part in ["", *parts]:
            directory = os.path.join(directory, part) if part else directory
            try:
                st = os.stat(directory)
            except OSError as exc:
                return f"{path}: {directory}: {exc.strerror}"
            allowed = (
                os.access(directory, os.X_OK) if kernel else filterchain.may(st, uid, gid, 0o1)
            )
            if not allowed:
                return f"{path}: cannot enter {directory} ({filterchain.mode_text(st)})"
    return None


def _may_path(path: str, bits: int, uid: int, gid: int) -> bool:
    if _first_closed(path, uid, gid, False) is not None:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return filterchain.may(st, uid, gid, bits)


def probe(person: Who, wanted: Sequence[tuple[str, str]]) -> list[str | None]:
    """blocked() for each (path, want), asked as `person`: as root in one
    worker that drops to its uid/gid, so the kernel answers (ACLs, every
    directory on the way). A worker that fails answers each with its error."""

    def work() -> dict[str, object]:
        return {"answers": [blocked(p, w, person.uid, person.gid) for p, w in wanted]}

    result = privsep.run_as(person.uid, person.gid, work)
    answers = result.get("answers")
    if isinstance(answers, list) and len(answers) == len(wanted):
        return [a if isinstance(a, str) or a is None else str(a) for a in answers]
    errors = result.get("errors")
    error = "; ".join(map(str, errors)) if isinstance(errors, list) else "no answer"
    return [f"could not check as {person.label}: {error}"] * len(wanted)
