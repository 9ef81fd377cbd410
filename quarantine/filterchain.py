"""The junk filter's line in a `.qmail` file: writing it, recognising it (and
the marker line optin puts above it), and checking that the domain's uid can
run the whole chain (preline, the quarantine script, its `#!` interpreters).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys

from quarantine.config import DEFAULT_PATH
from quarantine.names import show
from quarantine.qmailfile import OptinError, quoted, split_lines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.config import Config
    from quarantine.qmailfile import DomainDir
    from quarantine.vpopmail import Domain

MARKER = "# quarantine: junk filter"  # how every marker line starts (also hand-made ones)
MARKER_ADDED = f"{MARKER}, added by 'quarantine optin'; 'quarantine optout' removes it"
MARKER_CREATED = (
    f"{MARKER}, added by 'quarantine optin', which created this file; "
    "'quarantine optout' deletes it (rest sha256:{digest})"
)
DIGEST_TAG = "(rest sha256:"
# qmail-local runs a `|` line with /bin/sh -c: the paths we put on it may hold
# only characters that need no shell quoting.
PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._+,-=@%:")


def command_path(command: str | None = None) -> str:
    """The absolute path of the quarantine command to put on the line: the
    one given, else the running `quarantine` script, else the one on PATH."""
    if command:
        return os.path.abspath(command)
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "quarantine" and os.path.isfile(argv0):
        return os.path.abspath(argv0)
    found = shutil.which("quarantine")
    if found is None:
        raise OptinError("cannot find the quarantine command; name it with --command PATH")
    return os.path.abspath(found)


def filter_line(cfg: Config, program: str) -> str:
    """`|<qmail>/bin/preline <program> deliver [--config FILE]`. qmail-local
    does not pass $QUARANTINE_CONFIG on, so a config file other than the
    default path has to be named on the line itself."""
    words = [os.path.join(cfg.qmail.home, "bin", "preline"), program, "deliver"]
    config = config_file(cfg)
    if config is not None:
        words += ["--config", config]
    return program_line(words)


def program_line(words: list[str]) -> str:
    """`|WORD WORD ...`, a `.qmail` program line. qmail-local runs it with
    /bin/sh -c, so each word may hold only PLAIN characters (no quoting is
    ever needed); OptinError names the first word that does not."""
    for word in words:
        if not set(word) <= PLAIN:
            raise OptinError(
                f"{quoted(word)} cannot go on a .qmail line: qmail-local runs it through "
                "/bin/sh, so it may hold only letters, digits and / . _ + , - = @ % :"
            )
    return "|" + " ".join(words)


def is_filter_line(line: str) -> bool:
    """A `|[preline [-flags]] .../quarantine deliver ...` program line."""
    line = line.rstrip("\n")
    if not line.startswith("|"):
        return False
    words = line[1:].split()
    i = 0
    if words and os.path.basename(words[0]) == "preline":
        i = 1
        while i < len(words) and words[i].startswith("-"):
            i += 1
    return (
        len(words) > i + 1
        and os.path.basename(words[i]) == "quarantine"
        and (words[i + 1] == "deliver")
    )


def is_marker_line(line: str) -> bool:
    return line.startswith(MARKER)


def has_filter(text: str | None) -> bool:
    """Whether a `.qmail` file's text (None: no file) has a filter line."""
    return any(is_filter_line(x) for x in split_lines(text or ""))


def marker_pairs(lines: list[str]) -> list[int]:
    """Indexes of marker lines directly followed by a filter line."""
    return [
        i
        for i in range(len(lines) - 1)
        if is_marker_line(lines[i]) and is_filter_line(lines[i + 1])
    ]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("latin-1")).hexdigest()[:16]


def recorded_digest(marker: str) -> str:
    return marker.partition(DIGEST_TAG)[2].partition(")")[0]


def config_file(cfg: Config) -> str | None:
    """The config file to name on the line: None for built-in defaults or
    the default path (which deliver finds by itself)."""
    if cfg.source is None:
        return None
    path = os.path.abspath(cfg.source)
    return None if path == DEFAULT_PATH else path


def default_delivery(cfg: Config, directory: DomainDir) -> list[str]:
    """The delivery lines of the domain's `.qmail-default`, without comments
    and without our own filter; vdelivermail bounce-no-mailbox when none."""
    text, _ = directory.read(".qmail-default")
    kept = []
    for line in split_lines(text or ""):
        bare = line.rstrip("\n").rstrip(" \t")
        if bare and not bare.startswith("#") and not is_filter_line(bare):
            kept.append(bare + "\n")
    if kept:
        return kept
    return [f"| {cfg.vpopmail.home}/bin/vdelivermail '' bounce-no-mailbox\n"]


def check_chain(cfg: Config, domain: Domain, program: str) -> list[str]:
    """What would stop the domain's uid/gid from running the filter line:
    preline and the quarantine script must be executable, the script and its
    `#!` interpreter readable and executable, the config file readable, and
    every directory on the way searchable (a program the uid cannot run makes
    preline bounce the mail, protocols.md 1.1a). Empty when all is well."""
    uid, gid = domain.uid, domain.gid
    problems: list[str] = []
    euid = os.geteuid()
    if euid not in (0, uid):
        problems.append(
            f"not running as root or as uid {uid}: the file would belong to uid {euid} "
            f"and qmail-local (uid {uid}) could not read it"
        )
    preline = os.path.join(cfg.qmail.home, "bin", "preline")
    checks = [("preline", preline, 0o1), ("the quarantine command", program, 0o5)]
    for interpreter in interpreters(program):
        if interpreter.startswith("/"):
            checks.append((f"the #! interpreter of {show(program)}", interpreter, 0o5))
        else:
            problems.append(f"the #! line of {show(program)}: {interpreter}")
    config = config_file(cfg)
    if config is not None:
        checks.append(("the configuration file", config, 0o4))
    for what, path, bits in checks:
        problem = access_problem(path, uid, gid, bits)
        if problem is not None:
            problems.append(f"{what}: {problem}")
    return problems


def access_problem(path: str, uid: int, gid: int, bits: int) -> str | None:
    """Why `uid`/`gid` (no supplementary groups: qmail-local sets only the
    assign gid) cannot reach `path` with `bits` (4 read, 1 execute), or None.
    Every directory on the path, and on the path symlinks lead to, needs x."""
    shown = show(path)
    if not os.path.isabs(path):
        return f"{shown} is not an absolute path"
    for candidate in dict.fromkeys([os.path.normpath(path), os.path.realpath(path)]):
        parent = os.path.dirname(candidate)
        dirs = [parent]
        while parent != "/":
            parent = os.path.dirname(parent)
            dirs.append(parent)
        for directory in reversed(dirs):
            try:
                st = os.stat(directory)
            except OSError as exc:
                return f"{shown}: cannot stat {show(directory)}: {exc.strerror}"
            if not may(st, uid, gid, 0o1):
                return (
                    f"{shown}: uid {uid} gid {gid} cannot enter {show(directory)} ({mode_text(st)})"
                )
        try:
            st = os.stat(candidate)
        except OSError as exc:
            return f"{shown}: {exc.strerror}"
        if not stat.S_ISREG(st.st_mode):
            return f"{shown} is not a regular file"
        if not may(st, uid, gid, bits):
            want = {0o1: "execute", 0o4: "read", 0o5: "read and execute"}[bits]
            return f"{shown}: uid {uid} gid {gid} cannot {want} it ({mode_text(st)})"
    return None


def may(st: os.stat_result, uid: int, gid: int, bits: int) -> bool:
    """Whether uid/gid (its one group, no supplementary ones) gets `bits` (4
    read, 2 write, 1 execute or enter) on the file `st` describes, from the
    owner, group and other bits; root may execute only what has an x bit."""
    mode = st.st_mode
    if uid == 0:
        return not (bits & 0o1) or stat.S_ISDIR(mode) or bool(mode & 0o111)
    if st.st_uid == uid:
        granted = mode >> 6
    elif st.st_gid == gid:
        granted = mode >> 3
    else:
        granted = mode
    return granted & bits == bits


def mode_text(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {st.st_uid}:{st.st_gid}"


def interpreters(script: str) -> list[str]:
    """The programs a script's `#!` line starts: the interpreter, and for
    pip's long-path form (`#!/bin/sh` then `'''exec' "/venv/bin/python" ...`)
    and for quarantine's own launcher (`#!/bin/sh`, the python3 beside it)
    the Python it execs. Entries not starting with `/` describe a problem."""
    try:
        with open(script, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return []
    if not head.startswith(b"#!"):
        return []
    first, _, rest = head[2:].partition(b"\n")
    words = first.decode("latin-1").split()
    if not words:
        return ["it is empty"]
    if not words[0].startswith("/"):
        return [f"{quoted(words[0])} is not an absolute path: the kernel cannot run the script"]
    found = [words[0]]
    if os.path.basename(words[0]) == "env":
        line = show(" ".join(words))
        found.append(f"#!{line} depends on qmail's PATH; give an absolute #! line")
    second = rest.split(b"\n", 1)[0].decode("latin-1")
    if second.startswith("'''exec' \""):
        found.append(second[len("'''exec' \"") :].split('"', 1)[0])
    elif b"\n''':'\n" in head and b'exec "$bin/python3"' in head:
        # Our own launcher (bin/quarantine): the python3 beside the script.
        found.append(os.path.join(os.path.dirname(os.path.realpath(script)), "python3"))
    return found
