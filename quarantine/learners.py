"""The two ways `quarantine train` teaches SpamAssassin: `sa-learn` over batches
of files (a batch counts once a `--sync` of its store has followed), or
`spamc -L` per message to a spamd pool with N workers. Both run programs by
argv (never a shell) and say, per file, what the program answered: learned
(with the id SpamAssassin keyed it by), already known by its own content,
skipped as already learned, or not told; the caller decides what to delete.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from quarantine import proof
from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from typing import IO

    from quarantine.config import TrainConfig

SPAM, HAM = "spam", "ham"
ARGV_LIMIT = 128 * 1024  # bytes of file arguments per sa-learn call (Linux allows ~2 MiB)
GIVE_UP_AFTER = 3  # consecutive failed calls before the backend is declared broken
SYNC_EVERY = 10  # learned sa-learn batches held back, at most, before a sync
OUTPUT_KEPT = 2000  # characters of a failing program's output kept for the report
LEDGER_SUFFIX = ".quarantine-ledger"  # beside the Bayes files: bayes.quarantine-ledger
SPAMC_LEARNED = b"Message successfully un/learned"
SPAMC_ALREADY = b"Message was already un/learned"
GLOB_SPECIAL = frozenset("\\[]{}*?~\"'")  # sa-learn runs every path through Perl's glob()


class LearnerError(Exception):
    """The backend cannot work at all: its program is missing, or it failed
    GIVE_UP_AFTER times in a row. Nothing more is attempted this run."""


class Store:
    """Where learning goes: a Bayes database path (sa-learn `--dbpath`), a user
    (`-u user@domain`), both, or neither (the program's own default)."""

    __slots__ = ("dbpath", "user")

    def __init__(self, dbpath: str | None = None, user: str | None = None) -> None:
        self.dbpath = dbpath
        self.user = user

    def key(self) -> tuple[str, str]:
        return (self.dbpath or "", self.user or "")

    def __repr__(self) -> str:
        return f"Store({self.dbpath!r}, {self.user!r})"


class Task:
    """One call's worth of learning: messages of one class (`spam` or `ham`)
    into one store. `payload` is the caller's own record of the messages."""

    __slots__ = ("kind", "paths", "payload", "store")

    def __init__(self, kind: str, store: Store, paths: list[str], payload: object = None) -> None:
        self.kind = kind
        self.store = store
        self.paths = paths
        self.payload = payload


class Result:
    """What became of a Task. `ok`: the call (and the sync after it) worked.
    Per file: `learned` maps a path to the id SpamAssassin stored it under
    ('' when the program does not say), `known` a path it skipped by its own
    content key (to that key and the digest of the bytes that showed it:
    proof.content_digest), `skipped` a path it did not learn because it took
    it for one already learned by another key, or did not say which (the id
    it matched, or ''), `vanished` lists files gone when the program looked.
    A file in none of them was not proven learned; `detail` says why (or what
    failed)."""

    __slots__ = ("detail", "known", "learned", "ok", "skipped", "task", "vanished")

    def __init__(
        self,
        task: Task,
        ok: bool,
        detail: str = "",
        vanished: list[str] | None = None,
        learned: dict[str, str] | None = None,
        skipped: dict[str, str] | None = None,
        known: dict[str, tuple[str, bytes]] | None = None,
    ):
        self.task = task
        self.ok = ok
        self.detail = detail
        self.vanished = vanished or []
        self.learned = learned if learned is not None else {}
        self.skipped = skipped if skipped is not None else {}
        self.known = known if known is not None else {}


class Learner:
    """The interface: check() before anything, run(tasks) yields one Result per
    Task (in any order), finish() after the last (sa-learn's journal sync).
    `batch_size` is how many messages the caller should put in one Task."""

    name = "learner"
    batch_size = 1
    calls = 0  # programs run so far
    # Called with a store and the ids its Bayes journal holds, before a sync
    # applies a journal whose messages no answer matched to files.
    on_journal: Callable[[Store, set[str]], None] | None = None

    def check(self) -> None:
        raise NotImplementedError

    def run(self, tasks: Iterable[Task], stop: Callable[[], bool]) -> Iterator[Result]:
        raise NotImplementedError

    def finish(self) -> list[str]:
        """Work owed at the end of the run; returns error messages."""
        return []

    def take_notes(self) -> list[str]:
        """What it did that an admin should hear of (not failures), once."""
        return []

    def fits(self, task: Task, path: str) -> bool:
        """May `path` join `task`, or must the task be sent first?"""
        return len(task.paths) < self.batch_size

    def refuse(self, path: str) -> str | None:
        """A skip reason when the program would misread `path`, else None."""
        return None

    def ledger(self, store: Store) -> tuple[str, str] | None:
        """Where the ledger of `store` lives and the name of the store in it;
        None when there is no place for one."""
        return None


def _check_program(path: str, key: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise LearnerError(f"{show(path)} is not an executable program (train.{key})")


def _tail(text: bytes) -> str:
    """The end of a program's output, as one printable line."""
    line = show(" ".join(text.decode("utf-8", "surrogateescape").split()))
    return line if len(line) <= OUTPUT_KEPT else "..." + line[-OUTPUT_KEPT:]


def glob_quote(path: str) -> str:
    """`path` as sa-learn's ArchiveIterator must get it to open that file:
    it passes every target through Perl's glob() (`*`, `?`, `[...]`, `{a,b}`,
    quotes and `~` act there), after escaping whitespace not already preceded
    by a backslash. A backslash-escaped character is itself."""
    out = []
    for index, ch in enumerate(path):
        if ch in GLOB_SPECIAL or (ch in " \t\n\r\f\v" and index and path[index - 1] == "\\"):
            out.append("\\")
        out.append(ch)
    return "".join(out)


def _host_names() -> set[str]:
    import socket

    name = socket.gethostname()
    return {name, name.split(".")[0], socket.getfqdn()}


def break_stale_lock(path: str) -> str | None:
    """Remove SpamAssassin's NFS-safe Bayes lock (`bayes.lock`, holding
    `HOST.PID`) when its holder is a process of this host that no longer
    exists: a sa-learn that was SIGKILLed (by us on a timeout, by the OOM
    killer, with its whole run) leaves it behind, and every later `--sync`
    then waits five minutes for it and fails, until it is ten minutes old.
    A lock of a live process, of another host or in any other form is left
    alone. Returns what was done, for the report, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode):
            return None
        first = os.read(fd, 256).decode("ascii", "replace").split("\n", 1)[0].strip()
    finally:
        os.close(fd)
    host, _, pid = first.rpartition(".")
    if not pid.isdigit() or int(pid) <= 1 or host not in _host_names():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        pass
    except OSError:  # EPERM: alive, another user's
        return None
    else:
        return None
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            return None  # taken again meanwhile
        os.unlink(path)
    except OSError:
        return None
    return f"removed {path}: a Bayes lock left by sa-learn pid {pid}, which no longer runs"


def _exit_text(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit {code}"


class SaLearn(Learner):
    """`sa-learn --spam|--ham --no-sync [--dbpath D] [-u U] FILE...` in batches
    bounded by count and argv bytes; `sa-learn --sync` per store every
    SYNC_EVERY learned batches and at the end. A batch that fails (non-zero
    exit, killed, timed out), or whose sync fails, is reported whole."""

    name = "sa-learn"

    def __init__(self, cfg: TrainConfig, env: Mapping[str, str]) -> None:
        self.program = cfg.sa_learn
        self.batch_size = max(1, cfg.batch_size)
        self.max_size = cfg.max_size
        self.timeout = cfg.timeout or None
        self.env = dict(env)
        self.stores: dict[tuple[str, str], Store] = {}
        self.failures = 0
        self.argvs: list[list[str]] = []  # every call's argv
        self.notes: list[str] = []
        self.seen: set[tuple[str, str]] = set()  # stores learned into this run

    def check(self) -> None:
        _check_program(self.program, "sa_learn")

    def fits(self, task: Task, path: str) -> bool:
        # Counted unquoted: glob_quote at most doubles a path, and Linux
        # allows some 2 MiB of arguments.
        if len(task.paths) >= self.batch_size:
            return False
        used = sum(len(p) + 1 for p in task.paths)
        return not task.paths or used + len(path) + 1 <= ARGV_LIMIT

    def refuse(self, path: str) -> str | None:
        # ArchiveIterator reads any path with ".mbox" in it as a mailbox of
        # messages: one file could be several, or none.
        return "mbox name" if ".mbox" in path.lower() else None

    def ledger(self, store: Store) -> tuple[str, str] | None:
        name = f"sa-learn {store.dbpath or '-'} {store.user or '-'}"
        path = self._bayes_path(store)
        if path is not None:
            return path + LEDGER_SUFFIX, name
        home = self.env.get("HOME")
        return (os.path.join(home, ".spamassassin", "quarantine-ledger"), name) if home else None

    def _store_args(self, store: Store) -> list[str]:
        args = []
        if store.dbpath:
            args += ["--dbpath", store.dbpath]
        if store.user:
            args += ["-u", store.user]
        return args

    def _bayes_path(self, store: Store) -> str | None:
        """The DBM Bayes files' prefix of `store` (DBPATH, or the default
        store's in HOME); None when `-u` picks it (SQL, per-user)."""
        if store.dbpath:
            return store.dbpath
        if store.user or not self.env.get("HOME"):
            return None
        return os.path.join(self.env["HOME"], ".spamassassin", "bayes")

    def _journal_waiting(self, store: Store) -> bool:
        path = self._bayes_path(store)
        try:
            return path is not None and os.stat(path + "_journal").st_size > 0
        except OSError:
            return False

    def _tell_journal(self, store: Store) -> None:
        """Hand the ids in `store`'s journal (and a `.old` one a killed sync
        left) to `on_journal`: the messages they stand for were learned, but
        no answer said from which file."""
        path = self._bayes_path(store)
        if path is None or self.on_journal is None:
            return
        keys: set[str] = set()
        for name in (path + "_journal", path + "_journal.old"):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            with os.fdopen(fd, "rb") as journal:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                for line in journal:  # "m s ID" / "m h ID": a message learned
                    if line.startswith((b"m s ", b"m h ")) and line.endswith(b"\n"):
                        keys.add(line[4:-1].decode("latin-1"))
        if keys:
            self.on_journal(store, keys)

    def _call(self, argv: list[str], store: Store) -> tuple[int, bytes, proof.Transcript]:
        """Run `argv`: exit code (negative: killed), stdout, and what it said
        on stderr. That goes to an unnamed temporary file, read line by line
        once it exits (sa-learn -D bayes writes some 5 KB a message, which a
        pipe read by this process makes slower: docs/benchmarks.md); to a
        pipe when no temporary file can be made."""
        path = self._bayes_path(store)
        if path is not None:
            note = break_stale_lock(path + ".lock")
            if note:
                self.notes.append(note)
        self.argvs.append(argv)
        self.calls += 1
        told = proof.Transcript()
        with contextlib.ExitStack() as stack:
            try:
                spool: IO[bytes] | None = stack.enter_context(tempfile.TemporaryFile())
            except OSError:
                spool = None
            try:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE if spool is None else spool,
                    env=self.env,
                    timeout=self.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return -9, b"", told.feed([f"timed out after {self.timeout} s".encode()])
            except OSError as exc:
                raise LearnerError(f"cannot run {show(self.program)}: {exc.strerror}") from None
            if spool is None:
                told.feed(proc.stderr.split(b"\n"))
            else:
                spool.seek(0)
                told.feed(spool)
        return proc.returncode, proc.stdout, told

    def run(self, tasks: Iterable[Task], stop: Callable[[], bool]) -> Iterator[Result]:
        """Learn each task into the journal (`--no-sync`); its Result comes
        only once a `--sync` of its store has put it into the Bayes database:
        after SYNC_EVERY learned batches, and at the end (or on stop). A sync
        killed half-way loses the journal it was applying (SpamAssassin renames
        it to bayes_journal.old and the next sync overwrites that), so a
        message is not counted as learned, and not deleted, before it.
        `-D bayes` makes sa-learn say, per message, whether it learned it."""
        pending: list[Result] = []
        for task in tasks:
            if stop():
                break
            if task.store.key() not in self.seen:
                self.seen.add(task.store.key())
                if self._journal_waiting(task.store):
                    # A journal left by a run killed before its sync: applied
                    # first, the messages of it that are still here (never
                    # deleted) are known as learned and not counted twice.
                    self._tell_journal(task.store)
                    error = self._sync(task.store)
                    if error:
                        self.notes.append(f"the journal left by an earlier run: {error}")
            self.stores.setdefault(task.store.key(), task.store)
            argv = [self.program, f"--{task.kind}", "--no-sync", "-D", "bayes"]
            argv += [f"--max-size={self.max_size}", *self._store_args(task.store), "--"]
            code, out, told = self._call(argv + [glob_quote(p) for p in task.paths], task.store)
            vanished = [p for p in task.paths if not os.path.lexists(p)]
            learned, skipped, problem = proof.read_answer(task.paths, out, told)
            if code == 0 or (code == 1 and len(vanished) == len(task.paths)):
                # sa-learn skips a file that is gone (exit 0), and exits 1 only
                # when it examined nothing at all.
                self.failures = 0
                if problem:
                    self._tell_journal(task.store)
                    problem = f"{show(self.program)}: {problem}: none of them counts as learned"
                known = {}
                for path, key in list(skipped.items()):
                    digest = proof.content_digest(path, key)
                    if digest is not None:  # its own To, Date and body were learned
                        known[path] = (key, digest)
                        del skipped[path]
                pending.append(Result(task, True, problem, vanished, learned, skipped, known))
                if len(pending) >= SYNC_EVERY:
                    yield from self._synced(pending)
                continue
            self.failures += 1
            self._tell_journal(task.store)
            said = _tail(out + b" " + told.said())
            detail = f"{show(self.program)} {_exit_text(code)}: {said}"
            yield Result(task, False, detail, vanished)
            if self.failures >= GIVE_UP_AFTER:
                yield from self._synced(pending)
                raise LearnerError(
                    f"{GIVE_UP_AFTER} sa-learn calls in a row failed; last: {detail}"
                )
        yield from self._synced(pending)

    def _synced(self, pending: list[Result]) -> Iterator[Result]:
        """Sync the stores of `pending`, then hand its results on: as they
        are when the sync worked, as failed (learned again next run) if not."""
        failed: dict[tuple[str, str], str] = {}
        for key in dict.fromkeys(r.task.store.key() for r in pending):
            error = self._sync(self.stores.pop(key))
            if error:
                failed[key] = f"{error}; what it learned since the last sync is kept"
        told = set()
        for result in pending:
            key = result.task.store.key()
            if key not in failed:
                yield result
                continue
            detail = "" if key in told else failed[key]  # the error once per store
            told.add(key)
            yield Result(
                result.task,
                False,
                detail,
                result.vanished,
                result.learned,
                result.skipped,
                result.known,
            )
        pending.clear()

    def _sync(self, store: Store) -> str | None:
        code, out, told = self._call([self.program, "--sync", *self._store_args(store)], store)
        if code == 0:
            return None
        where = show(store.dbpath or store.user or "the default Bayes store")
        said = _tail(out + b" " + told.said())
        return f"{show(self.program)} --sync ({where}) {_exit_text(code)}: {said}"

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def finish(self) -> list[str]:
        """Sync the stores that had calls but nothing learned since their last
        sync (every call failed): what else may be in their journal."""
        errors = [error for store in self.stores.values() if (error := self._sync(store))]
        self.stores.clear()
        return errors


class Spamc(Learner):
    """`spamc -d HOST -p PORT -L spam|ham [-u U]` with one message on stdin,
    `workers` at a time. spamd (with --allow-tell) learns straight into its
    Bayes store, so there is nothing to sync afterwards."""

    name = "spamc"
    batch_size = 1

    def __init__(self, cfg: TrainConfig, env: Mapping[str, str]) -> None:
        self.program = cfg.spamc
        self.host = cfg.spamd_host
        self.port = cfg.spamd_port
        self.user = cfg.spamc_user
        self.workers = max(1, cfg.workers)
        self.max_size = cfg.max_size
        self.timeout = cfg.timeout or None
        self.env = dict(env)
        self.failures = 0
        self.lock = threading.Lock()

    def check(self) -> None:
        _check_program(self.program, "spamc")

    def fits(self, task: Task, path: str) -> bool:
        return not task.paths

    def ledger(self, store: Store) -> tuple[str, str] | None:
        home = self.env.get("HOME")
        if not home:
            return None
        name = f"spamc {self.host}:{self.port} {store.user or self.user or '-'}"
        return os.path.join(home, ".spamassassin", "quarantine-ledger"), name

    def argv(self, task: Task) -> list[str]:
        argv = [self.program, "-d", self.host, "-p", str(self.port), "-L", task.kind]
        if self.timeout:
            argv += ["-t", str(self.timeout)]
        if self.max_size:
            argv += ["-s", str(self.max_size)]
        user = task.store.user or self.user
        if user:
            argv += ["-u", user]
        return argv

    def one(self, task: Task) -> Result:
        path = task.paths[0]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return Result(task, True, vanished=[path])
        except OSError as exc:
            return Result(task, False, f"cannot open {show(path)}: {exc.strerror}")
        with self.lock:
            self.calls += 1
        try:
            proc = subprocess.run(
                self.argv(task),
                stdin=fd,
                capture_output=True,
                env=self.env,
                timeout=self.timeout + 5 if self.timeout else None,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Result(task, False, f"{show(self.program)} timed out")
        except OSError as exc:
            raise LearnerError(f"cannot run {show(self.program)}: {exc.strerror}") from None
        finally:
            os.close(fd)
        where = f"spamd at {self.host}:{self.port}"
        if proc.returncode == 0:
            # spamc -L says which (exit 0 either way): only the first proves it.
            answer = proc.stdout.strip()
            if answer == SPAMC_LEARNED:
                return Result(task, True, learned={path: ""})
            if answer == SPAMC_ALREADY:
                return Result(task, True, skipped={path: ""})
            return Result(
                task,
                True,
                f"{show(self.program)} ({where}) gave no answer: "
                f"{_tail(proc.stdout + proc.stderr)}",
            )
        return Result(
            task,
            False,
            f"{show(self.program)} ({where}) {_exit_text(proc.returncode)}: "
            f"{_tail(proc.stdout + proc.stderr)}",
        )

    def run(self, tasks: Iterable[Task], stop: Callable[[], bool]) -> Iterator[Result]:
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="spamc") as pool:
            pending: deque[Future[Result]] = deque()
            source = iter(tasks)
            exhausted = False
            try:
                while True:
                    while not exhausted and len(pending) < 2 * self.workers and not stop():
                        task = next(source, None)
                        if task is None:
                            exhausted = True
                            break
                        pending.append(pool.submit(self.one, task))
                    if not pending:
                        return
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in list(pending):
                        if future not in done:
                            continue
                        pending.remove(future)
                        result = future.result()
                        if result.ok:
                            self.failures = 0
                        else:
                            self.failures += 1
                        yield result
                        if self.failures >= GIVE_UP_AFTER * self.workers:
                            raise LearnerError(
                                f"{self.failures} spamc calls in a row failed; last: "
                                f"{result.detail}"
                            )
                    if stop() and not pending:
                        return
            finally:
                for future in pending:
                    future.cancel()


def make(cfg: TrainConfig, env: Mapping[str, str]) -> Learner:
    """The backend `train.backend` names."""
    if cfg.backend == "spamc":
        return Spamc(cfg, env)
    return SaLearn(cfg, env)
