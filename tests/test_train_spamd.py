"""The spamc backend against a real spamd (`--allow-tell`) on 127.0.0.1 and a
free high port, started and stopped (by its PID) by the test, with a throwaway
Bayes database that spamd's own user (debian-spamd) can write
(ts.running_spamd)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import sandbox

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spamd() -> Iterator[ts.Spamd]:
    with ts.running_spamd() as running:
        yield running


def test_spamc_backend_learns_through_spamd(spamd: ts.Spamd) -> None:
    tree = ts.new_tree()
    try:
        tree.add_domain("example.test")
        alice = tree.add_user("alice@example.test")
        bob = tree.add_user("bob@example.test")
        learned = [ts.put(alice, "Junk", ts.spam(f"s{i}")) for i in range(4)]
        campaign = ts.spam("campaign")
        learned += [ts.put(alice, "Junk", campaign), ts.put(bob, "Junk", campaign)]
        young = ts.put(bob, "Junk", ts.spam("young"), age=60)
        rescued = ts.put(bob, "NotJunk", ts.ham("h1"), flags="S")
        config = ts.train_config(
            tree,
            backend="spamc",
            spamd_port=spamd.port,
            spamc_user="vpopmail",  # uid 89 has no passwd entry here
            workers=2,
            ham_folder="NotJunk",
        )
        result = ts.invoke(config, "train", "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["spam_learned"] == 5 and data["copies"] == 1 and data["deleted"] == 6
        assert data["ham_learned"] == 1 and data["moved"] == 1
        assert data["calls"] == 6  # one spamc per distinct message, no sync
        counts = ts.magic(spamd.db / "bayes")
        assert counts["nspam"] == 5
        assert counts["nham"] == 1
        assert not any(p.exists() for p in learned)
        assert young.exists()
        assert (bob / "cur" / rescued.name).exists()
    finally:
        sandbox.remove(tree)
