"""The doctor's parts on their own: the line and JSON forms of a finding, what
a uid may do with a path (kernel answer as that uid, and the mode-bit answer),
the config cache's freshness, the trainer's last run under an injected clock."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quarantine import config as config_module
from quarantine import privsep
from quarantine.health import access, install
from quarantine.health.findings import Finding, fail, ok, warn


def test_line_and_json_forms() -> None:
    finding = fail("bayes.owner", "/var/lib/bayes/bayes", "uid 89 cannot write", "chown 89:89 x")
    assert finding.line() == (
        "FAIL  bayes.owner      /var/lib/bayes/bayes  uid 89 cannot write -> chown 89:89 x"
    )
    assert ok("key.size", "k", "2048-bit RSA").line().startswith("ok    key.size ")
    assert "->" not in ok("key.size", "k", "fine").line()
    assert warn("tmp.debris", "d", "m", "f").as_dict() == {
        "id": "tmp.debris", "status": "warn", "subject": "d", "message": "m", "fix": "f",
    }  # fmt: skip
    assert ok("a", "b", "c").as_dict()["fix"] is None


def test_names_are_escaped_in_both_forms() -> None:
    hostile = "/d/.qmail-x\nFAIL  forged\x1b[2J\udcff"
    finding = fail("filter.runnable", hostile, f"line 1: {hostile}", hostile)
    line = finding.line()
    assert "\n" not in line and "\x1b" not in line
    assert "\\x0aFAIL" in line and "\\x1b" in line and "\\xff" in line
    data = json.loads(json.dumps(finding.as_dict()))
    assert "\n" not in data["subject"] and "\\x0a" in data["subject"]


def test_worker_results_round_trip_and_garbage_is_a_failure() -> None:
    finding = warn("imap.subscribed", "example.test", "not subscribed", "add it")
    assert Finding.from_list(json.loads(json.dumps(finding.as_list()))) == finding
    broken = Finding.from_list(["x", "maybe", "s", "m", None])
    assert broken.status == "fail" and broken.id == "doctor"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temporary directory every uid can enter (pytest's own is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="quarantine-doctor-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_blocked_by_mode_bits_and_by_the_kernel(open_dir: Path) -> None:
    tmp_path = open_dir
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    program = closed / "prog"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    tmp_path.chmod(0o755)
    other = access.Who(4242, 4242, "uid 4242")
    # Not that uid here: worked out from the bits.
    reason = access.blocked(str(program), "rx", other.uid, other.gid)
    assert reason is not None and f"cannot enter {closed}" in reason
    if os.geteuid() == 0:
        # As root: a worker drops to the uid and the kernel answers.
        assert access.probe(other, [(str(program), "rx")]) == [reason]
        closed.chmod(0o711)
        assert access.probe(other, [(str(program), "rx"), (str(closed), "w")])[0] is None
        assert access.blocked(str(program), "rx", other.uid, other.gid) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_run_as_runs_as_that_uid() -> None:
    result = privsep.run_as(4242, 4343, lambda: {"ids": [os.geteuid(), os.getegid()]})
    assert result == {"ids": [4242, 4343]}
    assert os.geteuid() == 0


def test_cache_missing_fresh_stale_untrusted(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("train:\n  age: 3d\n")
    fix = "quarantine config check"
    assert install.cache_finding(str(path), fix).status == "warn"  # no cache yet
    config_module.load_file(str(path))  # writes the cache, as config check does
    assert install.cache_finding(str(path), fix).status == "ok"
    time.sleep(0.01)
    path.write_text("train:\n  age: 4d\n")
    stale = install.cache_finding(str(path), fix)
    assert stale.status == "fail" and "changed after" in stale.message
    config_module.load_file(str(path))
    os.chmod(config_module.cache_path(str(path)), 0o666)
    untrusted = install.cache_finding(str(path), fix)
    assert untrusted.status == "fail" and "writable by others" in untrusted.message


def test_config_that_does_not_load(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("train:\n  agge: 3d\n")
    cfg, found = install.load_config(str(path), {})
    assert cfg is None
    assert [(f.id, f.status) for f in found] == [("config.valid", "fail")]
    assert "train.agge" in found[0].message and ":2:" in found[0].message


def test_last_run_under_a_clock(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    cfg_path = tmp_path / "q.yaml"
    cfg_path.write_text(f"train:\n  state_file: {state}\n")
    cfg = config_module.load_file(str(cfg_path), write_cache=False)
    now = 1_800_000_000.0
    assert install.last_run(cfg, now).status == "warn"  # never ran

    def write(exit_code: int, started: float) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
        state.write_text(json.dumps({"started": stamp, "exit_code": exit_code}))

    write(0, now - 86400)
    assert install.last_run(cfg, now).status == "ok"
    write(0, now - 2 * 86400 - 60)
    assert install.last_run(cfg, now).status == "fail"
    write(1, now - 60)
    assert install.last_run(cfg, now).status == "fail"
    state.write_text("{not json")
    assert install.last_run(cfg, now).status == "fail"
