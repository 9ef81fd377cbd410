"""The two ways `quarantine train` teaches SpamAssassin: `sa-learn` over batches
of files (into DB_File or Redis: bayes.py), or `spamc -L` per message to a
spamd pool with N workers. Both run programs by
argv (never a shell) and say, per file, what the program answered: learned
(with the id SpamAssassin keyed it by), already known by its own content,
skipped as already learned, or not told; the caller decides what to delete.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from quarantine import bayes, kinds, proof
from quarantine.learnbase import Learner as Learner
from quarantine.learnbase import LearnerError as LearnerError
from quarantine.learnbase import Result as Result
from quarantine.learnbase import Store as Store
from quarantine.learnbase import Task as Task
from quarantine.learnbase import (
    check_program,
    exit_text,
    output_tail,
)
from quarantine.names import show
from quarantine.proof import glob_quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from typing import IO

    from quarantine.config import TrainConfig

SPAM, HAM = kinds.SPAM, kinds.HAM  # the kinds discovery gives folders
ARGV_LIMIT = bayes.ARGV_LIMIT
GIVE_UP_AFTER = 3  # consecutive failed calls before the backend is declared broken
SYNC_EVERY = 10  # learned sa-learn batches held back, at most, before a sync
# Files a call takes with `-D bayes` from the start: its lines cost SpamAssassin
# about a third more CPU a message (docs/benchmarks.md), a few ms each, which a
# call this small does not notice beside its start (about a second).
DEBUG_UP_TO = 32
LEDGER_SUFFIX = ".quarantine-ledger"  # beside the Bayes files: bayes.quarantine-ledger
SPAMC_LEARNED = b"Message successfully un/learned"
SPAMC_ALREADY = b"Message was already un/learned"


class SaLearn(Learner):
    """`sa-learn --spam|--ham [-D bayes] [--dbpath D | --siteconfigpath S]
    [-u U] FILE...` in batches of bayes.batch_limit's size (_learn says when
    `-D bayes`, run() when each counts). A batch that fails (non-zero exit,
    killed, timed out), or whose sync fails, is reported whole."""

    name = "sa-learn"

    def __init__(self, cfg: TrainConfig, env: Mapping[str, str]) -> None:
        self.cfg = cfg
        self.program = cfg.sa_learn
        self.redis = bayes.is_redis(cfg)
        self.parallel = max(1, cfg.bayes.parallel) if self.redis else 1
        self.batch_size = bayes.batch_limit(cfg)
        self.max_size = cfg.max_size
        self.timeout = cfg.timeout or None
        self.env = dict(env)
        self.stores: dict[tuple[str, str], Store] = {}
        self.failures = 0
        self.argvs: list[list[str]] = []  # every call's argv
        self.notes: list[str] = []
        self.seen: set[tuple[str, str]] = set()  # stores learned into this run
        self.site: bayes.SiteConfig | None = None
        self.lock = threading.Lock()

    def check(self) -> None:
        check_program(self.program, "sa_learn")

    def fits(self, task: Task, path: str) -> bool:
        # Counted unquoted (glob_quote at most doubles a path), and counted
        # once: a batch of thousands is asked about at every file.
        paths = task.paths
        if len(paths) >= self.batch_size:
            return False
        if task.counted > len(paths):  # paths were taken out: count afresh
            task.counted = task.used = 0
        task.used += sum(len(p) + 1 for p in paths[task.counted :])
        task.counted = len(paths)
        return task.used + len(path) + 1 <= ARGV_LIMIT

    def refuse(self, path: str) -> str | None:
        # ArchiveIterator reads any path with ".mbox" in it as a mailbox of
        # messages: one file could be several, or none.
        return "mbox name" if ".mbox" in path.lower() else None

    def ledger(self, store: Store) -> tuple[str, str] | None:
        if self.redis:
            name = f"sa-learn {bayes.describe(self.cfg.bayes.redis or '')}"
        else:
            name = f"sa-learn {store.dbpath or '-'} {store.user or '-'}"
        path = self._bayes_path(store)
        if path is not None:
            return path + LEDGER_SUFFIX, name
        home = self.env.get("HOME")
        return (os.path.join(home, ".spamassassin", "quarantine-ledger"), name) if home else None

    def _store_args(self, store: Store) -> list[str]:
        if self.redis:
            assert self.site is not None  # made by _run_redis
            return bayes.store_args(self.cfg, self.site.path)
        args = []
        if store.dbpath:
            args += ["--dbpath", store.dbpath]
        if store.user:
            args += ["-u", store.user]
        return args

    def _bayes_path(self, store: Store) -> str | None:
        """The DBM Bayes files' prefix of `store` (DBPATH, or the default
        store's in HOME); None when `-u` picks it (SQL, per-user) or the
        store is Redis (no files, no journal, no lock)."""
        if self.redis:
            return None
        if store.dbpath:
            return store.dbpath
        if store.user or not self.env.get("HOME"):
            return None
        return os.path.join(self.env["HOME"], ".spamassassin", "bayes")

    def _tell_journal(self, store: Store) -> None:
        """Hand the ids in `store`'s journal (and a `.old` one a killed sync
        left) to `on_journal`: the messages they stand for were learned, but
        no answer said from which file."""
        path = self._bayes_path(store)
        if path is None or self.on_journal is None:
            return
        keys = bayes.journal_ids(path)
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
            note = bayes.break_stale_lock(path + ".lock")
            if note:
                self.notes.append(note)
        with self.lock:
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

    def _first_use(self, store: Store) -> None:
        """A journal left by a run killed before its sync: applied first, the
        messages of it that are still here (never deleted) are known as
        learned and not counted twice."""
        if store.key() in self.seen:
            return
        self.seen.add(store.key())
        path = self._bayes_path(store)
        try:
            waiting = path is not None and os.stat(path + "_journal").st_size > 0
        except OSError:
            waiting = False
        if waiting:
            self._tell_journal(store)
            error = self._sync(store)
            if error:
                self.notes.append(f"the journal left by an earlier run: {error}")

    def _argv(self, task: Task, syncs: bool, debug: bool) -> list[str]:
        argv = [self.program, f"--{task.kind}", *([] if syncs else ["--no-sync"])]
        argv += [*(["-D", "bayes"] if debug else []), f"--max-size={self.max_size}"]
        return [*argv, *self._store_args(task.store), "--", *map(glob_quote, task.paths)]

    def _learn(self, task: Task, syncs: bool) -> Result:
        """`task` learned; `syncs`: without --no-sync (the call syncs itself).
        A call over more than DEBUG_UP_TO files runs without `-D bayes` first:
        when its count line says it learned every file given and none is gone,
        that proves each (with the ids its journal lines name, when it wrote
        to the journal). Otherwise (some skipped, some gone, no count line) it
        is asked again with `-D bayes`, once the journal is synced (sa-learn
        looks a message up in the database only): the files the first call
        learned are then skipped by their content key, known (the count says
        how many of them the first call learned)."""
        if len(task.paths) <= DEBUG_UP_TO:
            return self._answered(task, syncs, 0)
        start = None if syncs else self._journal_size(task.store)
        code, out, told = self._call(self._argv(task, syncs, False), task.store)
        vanished = [p for p in task.paths if not os.path.lexists(p)]
        if code != 0 and not (code == 1 and len(vanished) == len(task.paths)):
            return self._failed(task, code, out, told, vanished)
        counts = proof.SUMMARY.findall(out)
        if code == 0 and not vanished and len(counts) == 1:
            learned_n, examined = map(int, counts[0])
            if learned_n == examined == len(task.paths):
                keys = self._journal_keys(task.store, start)
                if len(keys) != len(task.paths):  # not its lines alone: ids not told
                    keys = [""] * len(task.paths)
                return Result(task, True, learned=dict(zip(task.paths, keys, strict=True)))
        if len(vanished) == len(task.paths):
            return Result(task, True, vanished=vanished)
        first = int(counts[0][0]) if len(counts) == 1 else 0
        if start is not None:
            self._tell_journal(task.store)
            error = self._sync(task.store)
            if error:
                return Result(task, False, f"{error}; the batch stays for the next run", vanished)
        return self._answered(task, syncs, first)

    def _answered(self, task: Task, syncs: bool, first: int) -> Result:
        """One `-D bayes` call over `task`: what it says of each file; `first`:
        messages an earlier call over the same files learned."""
        code, out, told = self._call(self._argv(task, syncs, True), task.store)
        vanished = [p for p in task.paths if not os.path.lexists(p)]
        if code != 0 and not (code == 1 and len(vanished) == len(task.paths)):
            # sa-learn skips a file that is gone (exit 0), and exits 1 only
            # when it examined nothing at all.
            return self._failed(task, code, out, told, vanished)
        learned, skipped, problem = proof.read_answer(task.paths, out, told)
        if problem:
            self._tell_journal(task.store)
            problem = f"{show(self.program)}: {problem}: none of them counts as learned"
        known = {}
        for path, key in list(skipped.items()):
            digest = proof.content_digest(path, key)
            if digest is not None:  # its own To, Date and body were learned
                known[path] = (key, digest)
                del skipped[path]
        result = Result(task, True, problem, vanished, learned, skipped, known)
        result.first = first
        return result

    def _failed(
        self, task: Task, code: int, out: bytes, told: proof.Transcript, vanished: list[str]
    ) -> Result:
        self._tell_journal(task.store)
        said = output_tail(out + b" " + told.said())
        return Result(task, False, f"{show(self.program)} {exit_text(code)}: {said}", vanished)

    def _journal_size(self, store: Store) -> int | None:
        """Bytes in the journal of `store` now; None when it has none."""
        path = self._bayes_path(store)
        if path is None:
            return None
        try:
            return os.stat(path + "_journal").st_size
        except FileNotFoundError:
            return 0
        except OSError:
            return None

    def _journal_keys(self, store: Store, start: int | None) -> list[str]:
        """The ids of the lines written to the journal of `store` past its
        first `start` bytes, in order."""
        path = self._bayes_path(store)
        if start is None or path is None:
            return []
        return bayes.journal_keys(path + "_journal", start)

    def _count(self, result: Result) -> None:
        """Consecutive failed calls: GIVE_UP_AFTER of them end the run."""
        self.failures = 0 if result.ok else self.failures + 1
        if self.failures >= GIVE_UP_AFTER:
            raise LearnerError(
                f"{GIVE_UP_AFTER} sa-learn calls in a row failed; last: {result.detail}"
            )

    def run(self, tasks: Iterable[Task], stop: Callable[[], bool]) -> Iterator[Result]:
        """Learn each task (_learn: what proves each file). Redis: a Result
        as its call returns. DB_File: only once a sync put it into the
        database (`--no-sync` calls go to the journal): after SYNC_EVERY
        learned batches, or with the last call, which syncs itself (the next
        task is fetched first, so the last one is known). A sync killed
        half-way loses the journal it was applying (SpamAssassin renames it
        bayes_journal.old, the next sync overwrites that), so nothing is
        counted as learned, or deleted, before it."""
        if self.redis:
            yield from self._run_redis(tasks, stop)
            return
        pending: list[Result] = []
        source = iter(tasks)
        task = None if stop() else next(source, None)
        while task is not None and not stop():
            self._first_use(task.store)
            self.stores.setdefault(task.store.key(), task.store)
            following = None if stop() else next(source, None)
            # The last call syncs itself when the pending ones are all its store's.
            syncs = following is None and all(
                r.task.store.key() == task.store.key() for r in pending
            )
            result = self._learn(task, syncs)
            if not result.ok:
                yield result
                if self.failures + 1 >= GIVE_UP_AFTER:
                    yield from self._synced(pending)
                self._count(result)
            elif syncs:
                self.failures = 0
                del self.stores[task.store.key()]
                yield from pending
                pending.clear()
                yield result
            else:
                self.failures = 0
                pending.append(result)
                if len(pending) >= SYNC_EVERY:
                    yield from self._synced(pending)
            task = following
        yield from self._synced(pending)

    def _run_redis(self, tasks: Iterable[Task], stop: Callable[[], bool]) -> Iterator[Result]:
        """Up to `parallel` calls at once; each Result as its call returns."""
        if self.site is None:  # made here, before the threads that use it
            try:
                self.site = bayes.SiteConfig(self.cfg.bayes.redis or "")
            except OSError as exc:
                raise LearnerError(f"cannot write the Redis site config: {exc}") from None
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="sa-learn") as pool:
            running: set[Future[Result]] = set()
            source = iter(tasks)
            more = True
            try:
                while True:
                    while more and len(running) < self.parallel and not stop():
                        task = next(source, None)
                        if task is None:
                            more = False
                            break
                        running.add(pool.submit(self._learn, task, True))
                    if not running:
                        return
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        result = future.result()
                        yield result
                        if not result.ok and self.failures + 1 >= GIVE_UP_AFTER:
                            more = False  # no new calls; the running ones are still told
                            for other in running:
                                yield other.result()
                            running = set()
                        self._count(result)
            finally:
                for future in running:
                    future.cancel()

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
        said = output_tail(out + b" " + told.said())
        return f"{show(self.program)} --sync ({where}) {exit_text(code)}: {said}"

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def finish(self) -> list[str]:
        """Sync the stores that had calls but nothing learned since their last
        sync (every call failed): what else may be in their journal. Remove
        the Redis site config."""
        try:
            errors = [error for store in self.stores.values() if (error := self._sync(store))]
        finally:
            self.stores.clear()
            if self.site is not None:
                self.site.close()
                self.site = None
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
        check_program(self.program, "spamc")

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
                f"{output_tail(proc.stdout + proc.stderr)}",
            )
        return Result(
            task,
            False,
            f"{show(self.program)} ({where}) {exit_text(proc.returncode)}: "
            f"{output_tail(proc.stdout + proc.stderr)}",
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
