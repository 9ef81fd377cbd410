"""Work as each mailbox owner: group domains by their uid/gid, fork one worker
per group that drops root for good (setgroups, setgid, setuid) and dies with
its parent (PR_SET_PDEATHSIG), and bring its JSON result back to the parent.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys

from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from quarantine import vpopmail
    from quarantine.config import Config

    Work = Callable[
        [list[vpopmail.Domain], Callable[[], bool], int | None, bool], dict[str, object]
    ]

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def subprocess_env(cfg: Config, uid: int | None) -> dict[str, str]:
    """A small, fixed environment for sa-learn/spamc: PATH, LANG=C and a HOME
    the uid owns (its passwd entry, else vpopmail's home)."""
    env = {"PATH": os.environ.get("PATH") or "/usr/bin:/bin", "LANG": "C"}
    home = os.environ.get("HOME")
    if uid is not None:
        import pwd

        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            home = cfg.vpopmail.home
    if home:
        env["HOME"] = home
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    return env


def drop_privileges(uid: int, gid: int) -> None:
    """For good: supplementary groups, gid, then uid (real, effective, saved)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.geteuid() != uid or os.getegid() != gid:  # pragma: no cover - kernel says no
        raise OSError(1, f"could not switch to uid {uid}, gid {gid}")


def stop_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies
    (prctl PR_SET_PDEATHSIG; Linux only, a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:  # pragma: no cover
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def by_owner(domains: list[vpopmail.Domain]) -> list[tuple[tuple[int, int], list[vpopmail.Domain]]]:
    groups: dict[tuple[int, int], list[vpopmail.Domain]] = {}
    for domain in domains:
        groups.setdefault((domain.uid, domain.gid), []).append(domain)
    return sorted(groups.items())


def in_owner_groups(
    domains: list[vpopmail.Domain], work: Work, stop: Callable[[], bool]
) -> Iterator[dict[str, object]]:
    """Run `work(domains, stop, uid, more)` once per uid/gid group, one group at
    a time (`more`: groups follow). As root each group runs in a forked child
    that drops to its uid/gid for good before `work` starts and sends its
    result back as JSON; a stop request is passed on to it as SIGTERM. Not
    root: one in-process call for all domains, as the current user."""
    if os.geteuid() != 0:
        yield work(domains, stop, None, False)
        return
    groups = by_owner(domains)
    for index, ((uid, gid), group) in enumerate(groups):
        if stop():
            yield {"stopped": True}
            return
        if uid == 0 or gid == 0:
            names = ", ".join(d.name for d in group)
            yield {
                "errors": [f"{names}: owned by uid {uid} gid {gid}; refusing to work as root"],
                "failed_folders": [d.name for d in group],
            }
            continue
        yield _forked(uid, gid, group, work, stop, index + 1 < len(groups))


def run_as(uid: int, gid: int, work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """`work()` as uid/gid: as root in a forked child that drops to them for
    good (as in_owner_groups does) and sends its JSON-able result back; not
    root, or asked for root itself, in this process."""
    if os.geteuid() != 0 or uid == 0:
        return work()
    return _forked(uid, gid, [], lambda _g, _stop, _uid, _more: work(), lambda: False, False)


def _forked(
    uid: int,
    gid: int,
    group: list[vpopmail.Domain],
    work: Work,
    stop: Callable[[], bool],
    more: bool,
) -> dict[str, object]:
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            os.close(read_fd)
            stopped: list[bool] = []
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stopped.append(True))
            drop_privileges(uid, gid)
            # The parent killed (SIGKILL, the OOM killer): stop after the
            # current batch, as on SIGTERM, rather than work on for hours
            # holding the lock with nobody to report to. (After the switch:
            # a change of uid or gid clears this setting.)
            stop_with_parent()
            if os.getppid() != parent:  # it died before the line above
                stopped.append(True)
            result = work(group, lambda: bool(stopped), uid, more)
            code = 0
        except BaseException as exc:  # report it; never unwind into the parent's code
            result = {"errors": [f"uid {uid}: {type(exc).__name__}: {show(str(exc))}"]}
        try:
            data = json.dumps(result).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    forwarded = False
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], 0.2)
            if not ready:
                if stop() and not forwarded:
                    forwarded = True
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                continue
            chunk = pipe.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    try:
        result = json.loads(b"".join(chunks))
    except ValueError:
        names = ", ".join(d.name for d in group)
        return {
            "errors": [
                f"the worker for uid {uid} ({names}) died ({os.waitstatus_to_exitcode(status)})"
            ],
            "failed_folders": [d.name for d in group],
        }
    assert isinstance(result, dict)
    return result
