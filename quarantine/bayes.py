"""Which Bayes store the trainer learns into (DB_File files, or SpamAssassin's
Redis store shared by several hosts), the site config that makes sa-learn use
the Redis one, and nspam/nham read back from the store in use (`--dump magic`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile

from quarantine.configschema import parse_dsn
from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from quarantine import vpopmail
    from quarantine.config import Config
    from quarantine.configschema import TrainConfig

DBFILE, REDIS = "dbfile", "redis"
REDIS_MODULE = "Mail::SpamAssassin::BayesStore::Redis"
SYSTEM_SITE = "/etc/spamassassin"  # the site config sa-learn reads by default (Debian)
OUR_FILE = "zz-quarantine-bayes.cf"  # read last: the site's *.cf come first, in name order
SITE_FILE_LIMIT = 1 << 20  # bytes of one site config file copied
# The lines of `sa-learn --dump magic` that carry the counts (third column).
MAGIC = re.compile(r"^\S+\s+\S+\s+(\d+)\s+\S+\s+non-token data: (.+?)\s*$", re.MULTILINE)
MAGIC_TIMEOUT = 120  # seconds `--dump magic` may take (a large DB_File, a slow Redis)

# How many messages one sa-learn call gets (train.batch_size 0, the default).
# Measured here (docs/benchmarks.md): a start costs about a second (Perl and
# SpamAssassin's config), a message about 10 ms learned and synced (DB_File;
# Redis about half). A call is a checkpoint: a stop request waits for it, and
# only what a finished call (and its sync) learned is deleted. So: as many
# messages as take CHECKPOINT seconds, which makes a start about 1% of a
# call; capped by what argv takes. With Redis and `parallel` above 1 the
# trainer splits what is left at the end of a run among the parallel calls
# (batching.Batcher): a call per worker, not a start per few hundred.
PER_MESSAGE = 0.010  # seconds
CHECKPOINT = 60.0  # seconds of learning per call, at most (a stop request waits for it)
ARGV_LIMIT = 768 * 1024  # bytes of unquoted paths a call (quoted at most twice that: < 2 MiB)


class BayesError(Exception):
    """The store's counts could not be read."""


def describe(dsn: str) -> str:
    """The store as a report names it (never its password): `redis
    127.0.0.1:6379 database 2`."""
    try:
        parts = parse_dsn(dsn)
    except ValueError:
        return "redis (bad train.bayes.redis)"
    where = parts.get("server") or parts.get("sock", "?")
    return f"redis {show(where)} database {show(parts.get('database', '0'))}"


def is_redis(tcfg: TrainConfig) -> bool:
    return bool(tcfg.bayes.store == REDIS)


def problems(tcfg: TrainConfig) -> list[str]:
    """What a run refuses in train.bayes beside the file's own checks."""
    bayes = tcfg.bayes
    out = []
    if bayes.store == REDIS:
        if not bayes.redis:
            out.append(
                'train.bayes.store is redis but train.bayes.redis ("server=HOST:PORT;'
                'database=N" of the Redis server) is not set'
            )
        if tcfg.per_user:
            out.append(
                "train.per_user with train.bayes.store redis: SpamAssassin's Redis "
                "store holds one global database, no per-user ones"
            )
        if tcfg.dbpath:
            out.append(
                "train.dbpath names DB_File files; with train.bayes.store redis "
                "the store is train.bayes.redis (remove train.dbpath)"
            )
    elif bayes.parallel > 1 and tcfg.backend == "sa-learn":
        out.append(
            "train.bayes.parallel above 1 needs train.bayes.store redis: a DB_File "
            "store takes one writer at a time"
        )
    if bayes.parallel < 1:
        out.append("train.bayes.parallel must be at least 1")
    return out


def site_lines(dsn: str) -> str:
    """The config that points SpamAssassin at the Redis store (rig-checked:
    with these, sa-learn and spamd learn into and read from Redis)."""
    parse_dsn(dsn)  # never write a line that was not checked
    return (
        "# Written by quarantine train for this run: Bayes in Redis.\n"
        f"bayes_store_module {REDIS_MODULE}\n"
        f"bayes_sql_dsn {dsn}\n"
        "bayes_token_ttl 21d\n"
        "bayes_seen_ttl 8d\n"
        "bayes_auto_expire 1\n"
    )


class SiteConfig:
    """A site config directory for sa-learn (`--siteconfigpath`): the
    system's own `*.pre` and `*.cf` files (plugins, the site's rules and
    Bayes settings) copied, then ours naming the Redis store, read last. Made
    mode 0700 by the user who runs sa-learn (it may hold a Redis password);
    removed by `close`."""

    def __init__(self, dsn: str, system: str = SYSTEM_SITE) -> None:
        self.path = tempfile.mkdtemp(prefix="quarantine-bayes-")
        try:
            for name in _site_files(system):
                _copy(os.path.join(system, name), os.path.join(self.path, name))
            with open(os.path.join(self.path, OUR_FILE), "x", encoding="utf-8") as handle:
                handle.write(site_lines(dsn))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> SiteConfig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _site_files(system: str) -> list[str]:
    try:
        names = os.listdir(system)
    except OSError:
        return []
    return sorted(n for n in names if n.endswith((".pre", ".cf")) and n != OUR_FILE)


def _copy(source: str, target: str) -> None:
    """A regular file's first SITE_FILE_LIMIT bytes (the system's site
    config is root's: a symlink there is the admin's own)."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # unreadable for this uid: sa-learn could not read it either
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        data = handle.read(SITE_FILE_LIMIT)
    with open(target, "xb") as out:
        out.write(data)


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


def journal_ids(path: str) -> set[str]:
    """The message ids in the DB_File journal of the store at `path` (and a
    `.old` one a killed sync left)."""
    return {
        key for name in (path + "_journal", path + "_journal.old") for key in journal_keys(name)
    }


def journal_keys(journal: str, start: int = 0) -> list[str]:
    """The ids of the "m s ID" / "m h ID" lines of the journal file `journal`
    past its first `start` bytes, in order; none when it is missing, not a
    regular file (opened without following a symlink or waiting on a FIFO)
    or shorter than `start`."""
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as lines:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < start:
            return []
        lines.seek(start)
        return [
            line[4:-1].decode("latin-1")
            for line in lines
            if line.startswith((b"m s ", b"m h ")) and line.endswith(b"\n")
        ]


def batch_limit(tcfg: TrainConfig) -> int:
    """Messages per sa-learn call: train.batch_size when set, else from the
    costs above."""
    if tcfg.batch_size:
        return tcfg.batch_size
    limit = int(CHECKPOINT / PER_MESSAGE)
    if tcfg.timeout:  # a call must end well inside train.timeout
        limit = min(limit, max(1, int(tcfg.timeout / 2 / PER_MESSAGE)))
    return limit


def store_args(tcfg: TrainConfig, site: str | None) -> list[str]:
    """sa-learn's arguments that pick the store (besides `-u`)."""
    if is_redis(tcfg):
        assert site is not None
        return [f"--siteconfigpath={site}"]
    return ["--dbpath", tcfg.dbpath] if tcfg.dbpath else []


def read_magic(program: str, args: list[str], env: Mapping[str, str]) -> dict[str, int]:
    """`sa-learn ARGS --dump magic`: its non-token counts by name (`nspam`,
    `nham`, `ntokens`, ...). Raises BayesError with what it said."""
    try:
        proc = subprocess.run(
            [program, *args, "--dump", "magic"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(env),
            timeout=MAGIC_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BayesError(f"{show(program)} --dump magic timed out") from None
    except OSError as exc:
        raise BayesError(f"cannot run {show(program)}: {exc.strerror}") from None
    text = proc.stdout.decode("utf-8", "replace")
    counts = {name: int(n) for n, name in MAGIC.findall(text)}
    if proc.returncode != 0 or "nspam" not in counts:
        said = " ".join((proc.stdout + proc.stderr).decode("utf-8", "replace").split())
        raise BayesError(
            f"{show(program)} --dump magic exit {proc.returncode}: {show(said[-500:])}"
        )
    return counts


def counts(tcfg: TrainConfig, env: Mapping[str, str]) -> dict[str, object]:
    """nspam and nham of the store the trainer learns into, for `quarantine
    stats`: {"store": its name, "nspam": N, "nham": N} or {"store", "error"}.
    Per-user stores are many: not read."""
    if is_redis(tcfg):
        name = describe(tcfg.bayes.redis or "")
    else:
        name = f"dbfile {tcfg.dbpath or '~/.spamassassin/bayes'}"
    out: dict[str, object] = {"store": show(name)}
    if tcfg.per_user:
        out["error"] = "per-user stores (train.per_user): not read"
        return out
    if tcfg.backend == "spamc" and not is_redis(tcfg) and not tcfg.dbpath:
        out["error"] = "spamd's own store (train.backend spamc): not read"
        return out
    problems_found = problems(tcfg)
    if problems_found:
        out["error"] = problems_found[0]
        return out
    site = None
    try:
        site = SiteConfig(tcfg.bayes.redis or "") if is_redis(tcfg) else None
        found = read_magic(tcfg.sa_learn, store_args(tcfg, site.path if site else None), env)
    except OSError as exc:
        out["error"] = f"cannot write the Redis site config: {exc.strerror or exc}"
        return out
    except BayesError as exc:
        out["error"] = str(exc)
        return out
    finally:
        if site is not None:
            site.close()
    out["nspam"] = found.get("nspam", 0)
    out["nham"] = found.get("nham", 0)
    return out


def store_counts(cfg: Config, domains: list[vpopmail.Domain]) -> dict[str, object]:
    """`counts` read as the trainer reads the store: as root, as the owner of
    the first domains (privsep.run_as: a worker that drops to its uid/gid);
    otherwise as this user."""
    from quarantine.privsep import by_owner, run_as, subprocess_env

    if os.geteuid() != 0:
        return counts(cfg.train, subprocess_env(cfg, None))
    if not domains:
        return {"store": "", "error": "no domain whose owner could read it"}
    (uid, gid), _ = by_owner(domains)[0]
    if uid == 0 or gid == 0:
        return {"store": "", "error": f"owned by uid {uid} gid {gid}; refusing to work as root"}
    result = run_as(uid, gid, lambda: counts(cfg.train, subprocess_env(cfg, uid)))
    if "store" in result:
        return result
    errors = result.get("errors") or ["not read"]
    said = errors if isinstance(errors, list) else [errors]
    return {"store": "", "error": "; ".join(map(str, said))}
