"""The nightly trainer: find aged messages in every vpopmail user's Junk folders,
teach them to SpamAssassin's Bayes filter through a backend (learners.py), delete
each one only after the call that contained it succeeded. Which files qualify is
corpus.py's, the report trainreport.py's, `quarantine stats` stats.py's.

Security: started as root it never opens a user file itself. The parent keeps
root for the lock and the state file only; each group of domains that share a
uid/gid (from users/assign) is handled by a forked child that has dropped to that
uid/gid for good (setgroups, setgid, setuid) before it reads a vpasswd file, so
sa-learn, spamc and every file access run as the mailbox owner. Nothing is read
through a symlink: directories are checked with lstat, files opened O_NOFOLLOW.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time

from quarantine import batching, bayes, hammoves, learners, ledger, vpopmail
from quarantine import maildir as md
from quarantine.corpus import Mail, is_trashed, message_key, read_message, scan_folder
from quarantine.discovery import (
    CommandError,
    Options,
    domains_to_visit,
    find_folders,
    find_users,
    maildir_of,
)
from quarantine.names import show
from quarantine.privsep import in_owner_groups, subprocess_env
from quarantine.qmail import LookupFailed
from quarantine.trainreport import (
    FAILED,
    LOCKED,
    OK,
    USAGE,
    Progress,
    Report,
    Summary,
    load_state,
    save_state,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from quarantine.config import Config


__all__ = [
    "FAILED",
    "KEPT_TEXT",
    "LOCKED",
    "NAMED_LIMIT",
    "OK",
    "USAGE",
    "DryRun",
    "Lock",
    "Locked",
    "Progress",
    "Report",
    "Summary",
    "TrainError",
    "Trainer",
    "check_config",
    "is_trashed",
    "load_state",
    "message_key",
    "read_message",
    "run",
    "save_state",
]

KEPT_TEXT = {
    "other content": "sa-learn took it for a message already learned ({key}), and what was "
    "learned under that id is other content: left in place",
    "known": "already learned as far as the learner knows ({key}), but not from these bytes "
    "as far as the ledger knows: left in place",
}
NAMED_LIMIT = 50  # files left in place that the notes name one by one, per run
_LEARNED = b"L"
_FAILED = b"F"


TrainError = CommandError  # configuration or host problem: exit 2


class Locked(Exception):
    """Another run holds the lock (exit 75)."""


# --- one uid group ---------------------------------------------------------


class Trainer:
    """Learns the folders of a list of domains (all with one owner) and deletes
    what was learned. Runs as the domains' uid."""

    def __init__(
        self,
        cfg: Config,
        options: Options,
        seen: set[bytes],
        stop: Callable[[], bool],
        env: dict[str, str],
    ) -> None:
        self.cfg = cfg
        self.tcfg = cfg.train
        self.options = options
        self.stop = stop
        self.summary = Summary()
        self.keys: dict[bytes, object] = dict.fromkeys(seen, _LEARNED)
        self.learner: learners.Learner = (
            DryRun() if options.dry_run else learners.make(cfg.train, env)
        )
        age = options.age if options.age is not None else self.tcfg.age
        self.cutoff = time.time() - age
        self.quota: dict[str, list[int]] = {}
        self.record_keys = False
        self.ledgers = ledger.Ledgers()
        self.batcher = batching.Batcher(self.learner, self.ledgers, self._hold_over)
        self.learner.on_journal = lambda store, keys: self.ledgers.journal(
            self.learner.ledger(store), keys
        )
        self.named = self.unnamed = 0
        self.moves = hammoves.Moves(self.tcfg, self.cutoff, options.dry_run, self.summary)

    def store_for(self, address: str) -> learners.Store:
        dbpath = self.tcfg.dbpath
        if not self.tcfg.per_user:
            return learners.Store(dbpath)
        local, _, domain = address.partition("@")
        if dbpath:
            dbpath = dbpath.replace("%u", address).replace("%l", local).replace("%d", domain)
        return learners.Store(dbpath, address)

    def run(self, domains: list[vpopmail.Domain]) -> Summary:
        try:
            self.learner.check()
        except learners.LearnerError as exc:
            self.summary.errors.append(str(exc))
            return self.summary
        mailboxes = list(self._mailboxes(domains))
        progress = Progress(len(mailboxes))
        try:
            results = self.learner.run(self._tasks(mailboxes, progress), self.stop)
            for result in results:
                self._settle(result)
                self._flush_quota()
                self.moves.flush()
        except learners.LearnerError as exc:
            self.summary.errors.append(str(exc))
        finally:
            progress.close(self.summary.counts["spam_learned"] + self.summary.counts["ham_learned"])
            self._flush_quota()
            self.moves.flush()
            try:
                self.summary.errors.extend(self.learner.finish())
            except learners.LearnerError as exc:
                self.summary.errors.append(str(exc))
            self.summary.counts["calls"] = self.learner.calls
            self.summary.notes.extend(self.learner.take_notes())
            self.summary.notes.extend(self.ledgers.notes)
            if self.unnamed:
                self.summary.notes.append(
                    f"{self.unnamed} more files left in place for the same reasons (not named)"
                )
        self._abandon_pending()
        if self.stop():
            self.summary.stopped = True
        if self.record_keys:
            self.summary.learned_keys = [k.hex() for k, v in self.keys.items() if v is _LEARNED]
        return self.summary

    def _mailboxes(self, domains: list[vpopmail.Domain]) -> Iterator[tuple[str, str]]:
        """(address, maildir) of every mailbox to visit; counts domains and users."""
        wanted = set(self.options.users)
        for domain in domains:
            try:
                users = list(find_users(self.cfg, domain))
            except LookupFailed as exc:
                self.summary.errors.append(f"{domain.name}: {exc}")
                self.summary.fail_folder(domain.name)
                continue
            self.summary.add("domains")
            for user, home in users:
                address = f"{user}@{domain.name}"
                if wanted and address not in wanted:
                    continue
                maildir = maildir_of(self.cfg, domain, home)
                if maildir is None:
                    continue
                self.summary.add("users")
                yield address, maildir

    def _tasks(
        self, mailboxes: list[tuple[str, str]], progress: Progress
    ) -> Iterator[learners.Task]:
        """Tasks for the learner, filled as the folders are scanned: one open
        batch per (class, store); a user's batches are sent when a per-user
        store is done with, shared ones when full or at the end."""
        for address, maildir in mailboxes:
            if self.stop():
                return
            store = self.store_for(address)
            for found in self.moves.scan(address, maildir):  # ham the user moved out of Junk
                task = self._place(Mail(found.folder, found.sub, found.name, found.size), store)
                if task is not None:
                    yield task
            folders = find_folders(
                maildir, address, self.tcfg.folders, self.tcfg.ham_folder, self.summary
            )
            for folder in folders:
                self.summary.add("folders")
                for mail in scan_folder(folder, self.cutoff, self.tcfg.max_size, self.summary):
                    task = self._place(mail, store)
                    if task is not None:
                        yield task
                self._flush_quota()
            if self.tcfg.per_user:
                yield from self.batcher.drain(store.key())
            progress.step(self.summary.counts["spam_learned"] + self.summary.counts["ham_learned"])
        yield from self.batcher.drain()

    def _hold_over(self, item: batching.Item) -> None:
        """A file that waited for a call of its own in vain: the next run's."""
        assert isinstance(item, Mail)
        del self.keys[item.key]
        self.summary.skip("held back", 1 + len(item.copies))

    def _place(self, mail: Mail, store: learners.Store) -> learners.Task | None:
        """Put `mail` in an open batch (or hold it back when another content
        with its Message-ID is in there), or settle it as a copy of a file
        already placed or decided; returns a batch that is full and must be
        sent before this mail can be placed."""
        refused = self.learner.refuse(mail.path)
        if refused:
            self.summary.skip(refused)
            return None
        try:
            digest, ids = read_message(mail.path)
        except FileNotFoundError:
            self.summary.skip("vanished")
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # it became a symlink
                self.summary.skip("symlink")
            else:
                self.summary.errors.append(f"{show(mail.path)}: cannot read: {exc.strerror}")
                self.summary.fail_folder(mail.folder.label)
            return None
        key = digest
        if self.tcfg.per_user:
            key = hashlib.blake2b(mail.folder.address.encode() + b"\0" + key).digest()
        mail.key = mail.folder.kind.encode() + key
        mail.digest = digest
        mail.ids = frozenset(ids)
        state = self.keys.get(mail.key)
        if state is _LEARNED:
            self.summary.add("copies")
            self._dispose(mail, copy=True)
            return None
        if state is _FAILED:
            self.summary.add("failed")
            self.summary.fail_folder(mail.folder.label)
            return None
        if isinstance(state, tuple):  # its twin was left in place: so is it
            self._leave(mail, *state)
            return None
        if isinstance(state, Mail):
            state.copies.append(mail)
            return None
        self.keys[mail.key] = mail
        return self.batcher.place(mail, mail.folder.kind, store)

    def _settle(self, result: learners.Result) -> None:
        """Act on what the learner said of each file of a batch: learned, or
        skipped by the key SpamAssassin made of its own To, Date and body
        (already known), or skipped by another key and its own bytes are in
        the ledger -> delete (or move); skipped otherwise -> leave it, named
        in the notes; neither, or the call failed -> keep it, failed."""
        batch = result.task.payload
        assert isinstance(batch, batching.Batch)
        mails = [mail for mail in batch.items if isinstance(mail, Mail)]
        kind = result.task.kind
        where = self.learner.ledger(result.task.store)
        if result.detail:
            self.summary.errors.append(result.detail)
        keys = {**result.skipped, **{p: key for p, (key, _) in result.known.items()}}
        # Known by content only when the bytes that showed it are the ones scanned.
        known = {m.path for m in mails if result.known.get(m.path, ("", b""))[1] == m.digest}
        skipped = {
            mail.path: self.ledgers.resolve(where, kind, mail.digest, keys[mail.path])
            for mail in mails
            if result.ok and mail.path in keys and mail.path not in known
        }
        same = {p for p, verdict in skipped.items() if verdict == ledger.SAME} | known
        self.ledgers.record(
            where,
            kind,
            [
                (m.digest, result.learned.get(m.path, keys.get(m.path, "")))
                for m in mails
                if m.path in result.learned or m.path in same
            ],
            [m.digest for m in mails if m.path in skipped and m.path not in same],
        )
        vanished = set(result.vanished)
        first = result.first  # known files an earlier call over this batch learned
        for mail in mails:
            if result.ok and mail.path in vanished:
                del self.keys[mail.key]
                self.summary.skip("vanished")
                self.summary.skip("copy of a vanished message", len(mail.copies))
            elif result.ok and (mail.path in result.learned or mail.path in same):
                self.keys[mail.key] = _LEARNED
                if mail.path in known and first <= 0:
                    self.summary.add("already_known")
                else:
                    first -= mail.path in known
                    self.summary.add("spam_learned" if kind == learners.SPAM else "ham_learned")
                self._dispose(mail, copy=False)
                for copy in mail.copies:
                    self.summary.add("copies")
                    self._dispose(copy, copy=True)
            elif mail.path in skipped:
                reason = "other content" if skipped[mail.path] == ledger.OTHER else "known"
                self.keys[mail.key] = (reason, keys[mail.path])
                for each in (mail, *mail.copies):
                    self._leave(each, reason, keys[mail.path])
            else:  # failed, or not proven learned
                self.keys[mail.key] = _FAILED
                self.summary.add("failed", 1 + len(mail.copies))
                for each in (mail, *mail.copies):
                    self.summary.fail_folder(each.folder.label)
            mail.copies = []

    def _leave(self, mail: Mail, reason: str, key: str) -> None:
        """A file the learner took for one already learned, not from its own
        bytes: it stays, counted, and (up to NAMED_LIMIT a run) named. (Ham
        moved out of Junk: Bayes has its Message-ID as ham, nothing to do.)"""
        if isinstance(mail.folder, hammoves.Place):
            self.moves.settled(mail.folder, mail.path, learned=False, copy=True)
            return
        self.summary.skip(reason)
        if self.named < NAMED_LIMIT:
            self.named += 1
            text = KEPT_TEXT[reason].format(key=show(key) if key else "id not given")
            self.summary.notes.append(f"{show(mail.path)}: {text}")
        else:
            self.unnamed += 1

    def _abandon_pending(self) -> None:
        """Messages placed in batches that were never sent (stop, or a broken
        backend) stay where they are."""
        for key, state in list(self.keys.items()):
            if isinstance(state, Mail):
                del self.keys[key]

    def _dispose(self, mail: Mail, copy: bool) -> None:
        """A learned message: spam is deleted (and maildirsize told), ham moved
        into the inbox's cur/ keeping its flags, ham moved out of Junk left."""
        if isinstance(mail.folder, hammoves.Place):
            self.moves.settled(mail.folder, mail.path, learned=True, copy=copy)
            return
        if mail.folder.kind == learners.HAM:
            self._move_to_inbox(mail, copy)
            return
        if self.options.dry_run:
            self.summary.listing.append(
                {"action": "delete" if copy else "learn spam, delete", "path": show(mail.path)}
            )
            self.summary.add("deleted")
            return
        try:
            os.unlink(mail.path)
        except FileNotFoundError:
            self.summary.skip("vanished")
            return
        except OSError as exc:
            self.summary.errors.append(
                f"{show(mail.path)}: learned but cannot delete: {exc.strerror}"
            )
            self.summary.fail_folder(mail.folder.label)
            return
        self.summary.add("deleted")
        used = self.quota.setdefault(mail.folder.maildir, [0, 0])
        used[0] += mail.size
        used[1] += 1

    def _move_to_inbox(self, mail: Mail, copy: bool) -> None:
        info = mail.name.partition(":")[2]
        target_name = mail.name if info else mail.name + ":2,"
        target = os.path.join(mail.folder.maildir, "cur", target_name)
        if self.options.dry_run:
            self.summary.listing.append(
                {
                    "action": "move" if copy else "learn ham, move",
                    "path": show(mail.path),
                    "to": show(target),
                }
            )
            self.summary.add("moved")
            return
        try:
            os.link(mail.path, target)
        except FileNotFoundError:
            self.summary.skip("vanished")
            return
        except FileExistsError:
            # A run killed between this link and the unlink below left the
            # message in both places: finish that move.
            if not _same_file(mail.path, target):
                self.summary.errors.append(
                    f"{show(mail.path)}: learned as ham, cannot move: "
                    f"{show(target)} is another file"
                )
                self.summary.fail_folder(mail.folder.label)
                return
        except OSError as exc:
            self.summary.errors.append(
                f"{show(mail.path)}: learned as ham, cannot move: {exc.strerror}"
            )
            self.summary.fail_folder(mail.folder.label)
            return
        try:
            os.unlink(mail.path)
        except OSError as exc:
            self.summary.errors.append(
                f"{show(mail.path)}: moved to {show(target)}, cannot remove: {exc.strerror}"
            )
        self.summary.add("moved")

    def _flush_quota(self) -> None:
        """One maildirsize line per Maildir for the deletions just made
        (`-bytes -count`, summed: Maildir++ adds lines up)."""
        for maildir, (size, count) in self.quota.items():
            try:
                md.add_quota(maildir, -size, -count, md.Owner.of(maildir))
            except OSError as exc:
                self.summary.errors.append(
                    f"{show(maildir)}/maildirsize: cannot update: {exc.strerror}"
                )
        self.quota.clear()


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samestat(os.lstat(one), os.lstat(other))
    except OSError:
        return False


class DryRun(learners.Learner):
    """Stands in for the backend under --dry-run: every batch "succeeds", nothing runs."""

    name = "dry-run"
    batch_size = 1 << 30

    def check(self) -> None:
        return None

    def fits(self, task: learners.Task, path: str) -> bool:
        return True

    def run(
        self, tasks: Iterable[learners.Task], stop: Callable[[], bool]
    ) -> Iterator[learners.Result]:
        for task in tasks:
            yield learners.Result(task, True, learned=dict.fromkeys(task.paths, ""))


class Lock:
    """flock on train.lock_file, held for the whole run (forked children share it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise TrainError(
                f"cannot open the lock file {show(path)} (train.lock_file): {exc.strerror}"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip()
            os.close(self.fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise Locked(f"another quarantine train run holds {show(path)}{who}; exiting") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)


def check_config(cfg: Config) -> None:
    """What the configuration must satisfy before a run (exit 2 otherwise)."""
    from quarantine.configschema import valid_folder

    tcfg = cfg.train
    for name in (*tcfg.folders, *([tcfg.ham_folder] if tcfg.ham_folder else [])):
        if not valid_folder(name):
            raise TrainError(f"train.folders/ham_folder: {name!r} is not a Maildir++ folder name")
    for name in tcfg.trash_folders:
        if not valid_folder(name):
            raise TrainError(f"train.trash_folders: {name!r} is not a Maildir++ folder name")
    if tcfg.ham_folder and tcfg.ham_folder.lower() in {f.lower() for f in tcfg.folders}:
        raise TrainError("train.ham_folder is also one of train.folders")
    placeholders = any(p in (tcfg.dbpath or "") for p in ("%u", "%l", "%d"))
    if placeholders and not tcfg.per_user:
        raise TrainError("train.dbpath has %u/%l/%d but train.per_user is false")
    if tcfg.per_user and tcfg.dbpath and not placeholders and tcfg.backend == "sa-learn":
        raise TrainError(
            "train.per_user with a train.dbpath that has no %u, %l or %d would put "
            "every user in one Bayes store; add them (e.g. /var/lib/bayes/%d/%l/bayes)"
        )
    for problem in bayes.problems(tcfg):
        raise TrainError(problem)
    try:
        learners.make(tcfg, {}).check()
    except learners.LearnerError as exc:
        raise TrainError(str(exc)) from None


def run(cfg: Config, options: Options, stop: Callable[[], bool] | None = None) -> Report:
    """One training run over the vpopmail tree. Raises TrainError (exit 2) or
    Locked (exit 75); everything else is in the Report."""
    stop = stop or (lambda: False)
    started = time.time()
    clock = time.monotonic()
    check_config(cfg)
    domains = domains_to_visit(cfg, options)
    lock = None if options.dry_run else Lock(cfg.train.lock_file)
    summary = Summary()
    seen: set[bytes] = set()

    def work(
        group: list[vpopmail.Domain], halt: Callable[[], bool], uid: int | None, more: bool
    ) -> dict[str, object]:
        trainer = Trainer(cfg, options, seen, halt, subprocess_env(cfg, uid))
        trainer.record_keys = more and not cfg.train.per_user
        return trainer.run(group).as_dict()

    try:
        for result in in_owner_groups(domains, work, stop):
            summary.merge(result)
            seen.update(bytes.fromhex(k) for k in summary.learned_keys)
            summary.learned_keys = []
    finally:
        if lock is not None:
            lock.release()
    report = Report(
        summary,
        started,
        time.monotonic() - clock,
        options,
        cfg.train.backend,
        options.age if options.age is not None else cfg.train.age,
    )
    if not options.dry_run:
        error = save_state(cfg.train.state_file, report)
        if error:  # the run itself is done: say so, but it does not fail the run
            report.warnings.append(error)
    return report
