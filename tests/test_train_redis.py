"""train.bayes.store redis against a real redis-server on 127.0.0.1 and a free
port (started and stopped by its PID here): two trainers as two hosts (two
trees, one Redis) learning at once, Redis stopped in the middle of a run, and
a spamd reading the same Redis scoring what was learned."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import bayes, sandbox

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow

REDIS_SERVER, REDIS_CLI = "/usr/bin/redis-server", "/usr/bin/redis-cli"
DATABASE = 3
DB_FILES = ("bayes_toks", "bayes_seen", "bayes_journal", "bayes.lock")


class Redis:
    """A redis-server of the test's own; `start` (again) keeps its data dir,
    so a `shutdown save` then `start` is a restart with the data kept."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="quarantine-redis-"))
        self.port = ts.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"server=127.0.0.1:{self.port};database={DATABASE}"

    def start(self) -> None:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"]
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while self.cli("ping", check=False) != "PONG":
            assert self.proc.poll() is None, (self.dir / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)

    def cli(self, *args: str, check: bool = True) -> str:
        argv = [REDIS_CLI, "-p", str(self.port), "-n", str(DATABASE), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)
        return proc.stdout.strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def redis() -> Iterator[Redis]:
    server = Redis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


def redis_config(tree: sandbox.Tree, redis: Redis, parallel: int, **keys: object) -> Path:
    bayes_map = {"store": "redis", "redis": redis.dsn, "parallel": parallel}
    return ts.train_config(tree, bayes=json.dumps(bayes_map), **keys)


def magic(redis: Redis) -> dict[str, int]:
    """nspam, nham ... as sa-learn reads them from that Redis."""
    with bayes.SiteConfig(redis.dsn) as site, tempfile.TemporaryDirectory() as home:
        env = {"HOME": home, "PATH": "/usr/bin:/bin", "LANG": "C"}
        return bayes.read_magic(ts.SA_LEARN, [f"--siteconfigpath={site.path}"], env)


def db_files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.name.startswith(DB_FILES)]


def timed_sa_learn(tree: sandbox.Tree, log: Path) -> Path:
    """The real sa-learn, each call's arguments and start/end times logged."""
    return ts.script(
        tree.root / "sa-learn-timed",
        "#!/bin/sh\n"
        f'echo "start $(date +%s.%N) $*" >> {log}\n'
        f'{ts.SA_LEARN} "$@"\ncode=$?\n'
        f'echo "end $(date +%s.%N)" >> {log}\nexit $code\n',
    )


def most_at_once(log: Path) -> int:
    """The most calls that ran at the same time, from timed_sa_learn's log."""
    events = sorted(
        (float(line.split()[1]), 1 if line.startswith("start") else -1)
        for line in log.read_text().splitlines()
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def host(domain: str, users: int, per_user: int, tag: str) -> tuple[sandbox.Tree, list[Path]]:
    tree = ts.new_tree()
    tree.add_domain(domain)
    paths = []
    for n in range(users):
        maildir = tree.add_user(f"u{n}@{domain}")
        paths += [ts.put(maildir, "Junk", ts.spam(f"{tag}{n}x{i}")) for i in range(per_user)]
    return tree, paths


def test_two_hosts_learn_into_one_redis_at_the_same_time(
    redis: Redis, quarantine_bin: Path
) -> None:
    """Two trainers (two trees, as two hosts would have) on different domains,
    both with parallel: 2, started together: every message counted exactly
    once in Redis, every file gone, no DB_File store made anywhere, and
    `quarantine stats` reads the counts from Redis."""
    one, spam_one = host("one.test", 2, 4, "a")
    two, spam_two = host("two.test", 2, 4, "b")
    try:
        ham = [ts.put(one.maildir("u0@one.test"), "NotJunk", ts.ham(f"h{i}")) for i in range(2)]
        logs = [ts.call_log(one), ts.call_log(two)]
        configs = [
            redis_config(
                tree,
                redis,
                2,
                batch_size=3,
                sa_learn=timed_sa_learn(tree, log),
                ham_folder="NotJunk",
            )
            for tree, log in zip((one, two), logs, strict=True)
        ]
        runs = [
            subprocess.Popen(
                [
                    str(quarantine_bin),
                    "--config",
                    str(config),
                    "train",
                    "--json",
                    "--domain",
                    domain,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for config, domain in zip(configs, ("one.test", "two.test"), strict=True)
        ]
        outputs = [run.communicate(timeout=300) for run in runs]
        for run, (out, err) in zip(runs, outputs, strict=True):
            assert run.returncode == 0, out + err
        first, second = (json.loads(out) for out, _ in outputs)
        assert first["spam_learned"] == 8 and first["ham_learned"] == 2
        assert second["spam_learned"] == 8 and second["ham_learned"] == 0
        assert first["deleted"] == 8 and first["moved"] == 2 and second["deleted"] == 8

        counts = magic(redis)
        assert counts["nspam"] == 16 and counts["nham"] == 2
        assert not any(p.exists() for p in spam_one + spam_two + ham)
        assert len([k for k in redis.cli("--scan", "--pattern", "s:*").split() if k]) == 18
        assert int(redis.cli("dbsize")) > 18  # the tokens too
        assert db_files(one.root, two.root) == []

        for log in logs:
            lines = log.read_text().splitlines()
            starts = [line for line in lines if line.startswith("start")]
            assert all("--siteconfigpath=" in line for line in starts)
            assert not any("--sync" in line or "--no-sync" in line for line in starts)
            assert most_at_once(log) == 2  # parallel: 2, and batches of 3 (4 spam calls)
        sites = re.findall(r"--siteconfigpath=(\S+)", logs[0].read_text())
        assert sites and not any(os.path.exists(s) for s in sites)  # removed after the run

        stats = ts.invoke(configs[0], "stats", "--json")
        assert stats.exit_code == 0, stats.output
        store = json.loads(stats.stdout)["bayes"]
        assert store["nspam"] == 16 and store["nham"] == 2
        assert store["store"] == f"redis 127.0.0.1:{redis.port} database {DATABASE}"
        text = ts.invoke(configs[1], "stats").stdout
        assert f"bayes: redis 127.0.0.1:{redis.port} database {DATABASE}: nspam 16, nham 2" in text

    finally:
        sandbox.remove(one)
        sandbox.remove(two)


def test_redis_stopped_mid_run_deletes_only_what_was_learned(redis: Redis) -> None:
    """The second sa-learn call of the run shuts Redis down (saving its data)
    first: that call and the last fail, the run exits 1; what was deleted is
    what Redis holds, the rest is still in Junk; Redis back, the next run
    learns the rest, each message counted once."""
    tree, paths = host("example.test", 1, 6, "r")
    try:
        counter = tree.root / "calls"
        counter.write_text("")
        counter.chmod(0o666)
        dying = ts.script(
            tree.root / "sa-learn-stops-redis",
            f"#!/bin/sh\necho x >> {counter}\n"
            f'if [ "$(wc -l < {counter})" -eq 2 ]; then '
            f"{REDIS_CLI} -p {redis.port} shutdown save >/dev/null 2>&1; fi\n"
            f'exec {ts.SA_LEARN} "$@"\n',
        )
        config = redis_config(tree, redis, 1, batch_size=2, sa_learn=dying)
        data, result = ts.train_json(config)
        assert result.exit_code == 1, result.output
        assert "Connection refused" in result.stderr or "Redis" in result.stderr
        assert data["deleted"] == 2 and data["failed"] == 4
        kept = [p for p in paths if p.exists()]
        assert len(kept) == 4

        assert redis.proc is not None
        redis.proc.wait(timeout=30)
        redis.start()
        assert magic(redis)["nspam"] == 2  # what was deleted, and only that

        data, result = ts.train_json(redis_config(tree, redis, 2, batch_size=2))
        assert result.exit_code == 0, result.output
        assert data["spam_learned"] == 4 and data["deleted"] == 4
        assert not any(p.exists() for p in paths)
        assert magic(redis)["nspam"] == 6
    finally:
        sandbox.remove(tree)


def spam_words(tag: str) -> bytes:
    words = " ".join(f"{w}{tag}" for w in ("cheap", "pills", "casino", "winner", "prize"))
    return (
        f"From: offers@spam.example\nTo: u0@example.test\nSubject: {words}\n"
        f"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <{tag}@spam.example>\n\n"
        + " ".join(["viagra lottery unclaimed bitcoin wire transfer urgent"] * 8)
        + f"\n{words}\n"
    ).encode()


def ham_words(tag: str) -> bytes:
    return (
        f"From: colleague@work.example\nTo: u0@example.test\nSubject: minutes {tag}\n"
        f"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <{tag}@work.example>\n\n"
        + " ".join(["agenda meeting quarterly review budget project schedule"] * 8)
        + f"\nminutes{tag}\n"
    ).encode()


def test_spamd_reading_the_same_redis_scores_learned_spam_as_bayes_spam(
    redis: Redis,
) -> None:
    """What the trainer learned into Redis is what a spamd configured with the
    same store scores by: a learned spam hits BAYES_9x there."""
    tree = ts.new_tree()
    top = Path(tempfile.mkdtemp(prefix="quarantine-spamd-redis-"))
    pid = None
    try:
        tree.add_domain("example.test")
        maildir = tree.add_user("u0@example.test")
        spams = [spam_words(f"s{i}") for i in range(6)]
        for data in spams:
            ts.put(maildir, "Junk", data)
        for i in range(6):
            ts.put(maildir, "NotJunk", ham_words(f"h{i}"))
        data, result = ts.train_json(redis_config(tree, redis, 2, ham_folder="NotJunk"))
        assert result.exit_code == 0, result.output
        assert data["spam_learned"] == 6 and data["ham_learned"] == 6

        top.chmod(0o755)
        site = top / "site"
        site.mkdir()
        for pre in Path(bayes.SYSTEM_SITE).glob("*.pre"):
            shutil.copy(pre, site / pre.name)
        (site / "local.cf").write_text(
            bayes.site_lines(redis.dsn) + "bayes_min_spam_num 1\nbayes_min_ham_num 1\n"
        )
        for path in [site, *site.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        home = top / "home"
        home.mkdir()
        home.chmod(0o777)
        port, pidfile = ts.free_port(), top / "spamd.pid"
        argv = [ts.SPAMD, "-L", "-i", "127.0.0.1", "-p", str(port), "-x", "-H", str(home)]
        argv += [f"--siteconfigpath={site}", "-m", "1", "--min-children=1", "--min-spare=1"]
        argv += ["-s", "stderr", "-r", str(pidfile), "-d"]
        if os.geteuid() == 0:
            argv += ["-u", "debian-spamd"]
        with (top / "spamd.log").open("wb") as log:
            subprocess.run(argv, stdout=log, stderr=log, check=True, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            if pidfile.exists() and pidfile.read_text().strip().isdigit():
                pid = int(pidfile.read_text())
                ping = subprocess.run(
                    [ts.SPAMC, "-d", "127.0.0.1", "-p", str(port), "-K"], capture_output=True
                )
                if ping.returncode == 0:
                    break
            assert time.monotonic() < deadline, (top / "spamd.log").read_text()
            time.sleep(0.2)
        scored = ts.Spamd(port, top).spamc(message=spams[0])
        status = scored.split(b"\n\n", 1)[0].decode()
        assert re.search(r"BAYES_9\d", status), status
        ham_scored = ts.Spamd(port, top).spamc(message=ham_words("h0")).split(b"\n\n", 1)[0]
        assert re.search(rb"BAYES_0\d", ham_scored), ham_scored
    finally:
        if pid is not None:
            os.kill(pid, 15)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        shutil.rmtree(top, ignore_errors=True)
        sandbox.remove(tree)


def test_the_site_config_names_the_redis_store_and_keeps_the_sites_own(
    tmp_path: Path,
) -> None:
    system = tmp_path / "etc"
    system.mkdir()
    (system / "v310.pre").write_text("loadplugin Mail::SpamAssassin::Plugin::Bayes\n")
    (system / "local.cf").write_text("bayes_ignore_header X-Foo\n")
    (system / "README").write_text("not config\n")
    with bayes.SiteConfig("server=127.0.0.1:6379;database=2", str(system)) as site:
        made = Path(site.path)
        assert sorted(p.name for p in made.iterdir()) == [
            "local.cf",
            "v310.pre",
            bayes.OUR_FILE,
        ]
        assert made.stat().st_mode & 0o777 == 0o700
        ours = (made / bayes.OUR_FILE).read_text()
        assert f"bayes_store_module {bayes.REDIS_MODULE}\n" in ours
        assert "bayes_sql_dsn server=127.0.0.1:6379;database=2\n" in ours
        assert sorted(os.listdir(made))[-1] == bayes.OUR_FILE  # read last
    assert not made.exists()


@pytest.mark.parametrize(
    "dsn",
    [
        "server=127.0.0.1:6379;database=2\nbayes_path /tmp/x",
        "server=127.0.0.1:6379; database=2",
        "database=2",
        "server=127.0.0.1:6379;database=two",
        "",
    ],
)
def test_a_dsn_that_is_not_name_value_pairs_is_refused(dsn: str) -> None:
    with pytest.raises(ValueError):
        bayes.parse_dsn(dsn)
    with pytest.raises(ValueError):
        bayes.site_lines(dsn)


def test_a_password_never_shows_in_the_stores_name() -> None:
    name = bayes.describe("server=10.0.0.5:6379;password=s3cret;database=4")
    assert name == "redis 10.0.0.5:6379 database 4"


@pytest.mark.parametrize(
    ("keys", "refused"),
    [
        ({"per_user": True}, "one global database"),
        ({"dbpath": "/var/lib/bayes/bayes"}, "remove train.dbpath"),
    ],
)
def test_what_a_redis_store_cannot_do_is_refused(keys: dict[str, object], refused: str) -> None:
    tree = ts.new_tree()
    try:
        tree.add_domain("example.test")
        bayes_map = {"store": "redis", "redis": "server=127.0.0.1:9;database=1"}
        config = ts.train_config(tree, bayes=json.dumps(bayes_map), **keys)
        result = ts.invoke(config, "train")
        assert result.exit_code == 2 and refused in result.output
    finally:
        sandbox.remove(tree)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("{store: redis}", "train.bayes.redis: store is redis"),
        ('{store: redis, redis: "server=h:1; database=2"}', "train.bayes.redis:"),
        ("{store: dbfile, parallel: 2}", "needs train.bayes.store redis"),
        ("{store: mysql}", "train.bayes.store: expected one of dbfile, redis"),
        ("{parallel: 0}", "train.bayes.parallel"),
        ("{nodes: 2}", "train.bayes.nodes: unknown key"),
    ],
)
def test_a_bad_bayes_section_is_a_usage_error_naming_the_key(text: str, said: str) -> None:
    tree = ts.new_tree()
    try:
        tree.add_domain("example.test")
        config = ts.train_config(tree, bayes=text)
        result = ts.invoke(config, "train")
        assert result.exit_code == 2 and said in result.output, result.output
    finally:
        sandbox.remove(tree)
