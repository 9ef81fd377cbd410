"""What a mailbox owner (uid 89) can do to the trainer and the cleanup, and
what they do about it (issue 9): a Junk file name with a newline and an escape
sequence (one escaped line in every report), names sa-learn's glob() would
expand (each learned as itself, real sa-learn), and a domain directory
swapped for a symlink or owned by another uid (that domain failed, the others
trained, cleaned and counted)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import train_support as ts

from quarantine import config as config_module
from quarantine import discovery, sandbox, tmpclean
from quarantine.names import show

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def tree() -> Iterator[sandbox.Tree]:
    yield from ts.example_tree()


HOSTILE = "1700000101.M1P1.a\nquarantine train: note: all clear\x1b[2J,S=10:2,S"


def one_line_each(text: str, *names: str) -> None:
    """Every name appears escaped, on a line of its own making, and nothing
    raw gets through (no forged line, no escape sequence)."""
    assert "\x1b" not in text
    assert not any(line.startswith("quarantine train: note: all") for line in text.splitlines())
    for name in names:
        assert any(show(name) in line for line in text.splitlines()), (name, text)


def test_a_newline_and_an_escape_in_a_junk_file_name_stay_on_one_line(
    tree: sandbox.Tree,
) -> None:
    alice = tree.add_user("alice@example.test")
    hostile = ts.put(alice, "Junk", ts.spam("hostile"), name=HOSTILE)
    unreadable = ts.put(alice, "Junk", ts.spam("locked"), name=HOSTILE.replace("a\n", "b\n"))
    config = ts.train_config(
        tree,
        sa_learn=ts.script(
            tree.root / "sa-learn-skips",
            '#!/bin/sh\necho "Learned tokens from 0 message(s) (1 message(s) examined)"\n',
        ),
    )
    dry = ts.invoke(config, "train", "--dry-run")
    assert dry.exit_code == 0, dry.output
    one_line_each(dry.stdout, str(hostile))
    assert f"would learn spam, delete: {show(hostile)}\n" in dry.stdout
    listing = json.loads(ts.invoke(config, "train", "--dry-run", "--json").stdout)["listing"]
    assert {item["path"] for item in listing} == {show(hostile), show(unreadable)}

    os.chown(unreadable, 0, 0)
    unreadable.chmod(0o600)
    ran = ts.invoke(config, "train", "--json")
    data = json.loads(ran.stdout)
    assert ran.exit_code == 1  # the unreadable one failed its folder
    assert data["skipped"] == {"known": 1} and hostile.exists()
    one_line_each(ran.stderr, str(hostile), str(unreadable))
    assert f"quarantine train: {show(unreadable)}: cannot read: Permission denied\n" in ran.stderr
    for line in [*data["notes"], *data["errors"]]:
        assert "\n" not in line and "\x1b" not in line
    assert data["notes"][0].startswith(show(hostile) + ": already learned")


@pytest.mark.slow
def test_names_sa_learn_would_glob_are_learned_as_themselves(tree: sandbox.Tree) -> None:
    """sa-learn hands every path to Perl's glob(): `star*` would also match a
    symlink to bob's inbox beside it, `brace{x,y}` and `back\\slash` name no
    file at all, a `.mbox` name is read as a mailbox. Each is learned as the
    file it is (the .mbox one is left, counted), nothing else is read."""
    alice = tree.add_user("alice@example.test")
    bob = tree.add_user("bob@example.test")
    names = ["star*", "brace{x,y}", "back\\slash", "brack[e]t", "p 'q r' s"]
    planted = [
        ts.put(alice, "Junk", ts.spam(f"glob{n}"), sub="new", name=name)
        for n, name in enumerate(names)
    ]
    mbox = ts.put(alice, "Junk", ts.spam("mbox"), sub="new", name="1700000102.x.mbox")
    inbox = ts.put(bob, None, ts.spam("bobs-inbox"))
    link = alice / ".Junk" / "new" / "starZ"
    link.symlink_to(inbox)
    os.lchown(link, ts.UID, ts.GID)
    db = ts.bayes_dir(tree)
    result = ts.invoke(ts.train_config(tree, dbpath=db / "bayes"), "train", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["spam_learned"] == len(names) and data["deleted"] == len(names)
    assert data["skipped"] == {"symlink": 1, "mbox name": 1}
    assert ts.magic(db / "bayes")["nspam"] == len(names)  # bob's message is not one
    assert not any(p.exists() for p in planted)
    assert mbox.exists() and link.is_symlink() and inbox.exists()


@pytest.fixture
def three_domains(tree: sandbox.Tree) -> dict[str, Path]:
    """good.test as it should be; link.test moved elsewhere and replaced by a
    symlink in the domains directory (vpopmail's, as in an installation);
    other.test owned by uid 1234 while users/assign says 89. A Junk message
    and a piece of tmp/ debris in each."""
    assert os.geteuid() == 0, "run as root: the domain directories' owners are the point"
    domains = tree.vpopmail_home / "domains"
    made = {}
    for name in ("good.test", "link.test", "other.test"):
        tree.add_domain(name)
        maildir = tree.add_user(f"alice@{name}")
        made[name] = ts.put(maildir, "Junk", ts.spam(name))
        debris = maildir / "tmp" / "1700000000.M1P2.host"
        debris.write_bytes(b"half a message")
        ts.chown(debris)
    os.chown(domains, ts.UID, ts.GID)
    moved = tree.root / "elsewhere"
    moved.mkdir()
    shutil.move(domains / "link.test", moved / "link.test")
    (domains / "link.test").symlink_to(moved / "link.test")
    os.lchown(domains / "link.test", ts.UID, ts.GID)
    os.chown(domains / "other.test", 1234, 1234)
    (domains / "other.test").chmod(0o755)
    return made


def test_an_unsafe_domain_directory_fails_that_domain_only(
    tree: sandbox.Tree, three_domains: dict[str, Path]
) -> None:
    stub = ts.script(tree.root / "sa-learn-ok", f"#!/bin/sh\n{ts.SAYS_LEARNED}exit 0\n")
    config = ts.train_config(tree, sa_learn=stub)
    result = ts.invoke(config, "train", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert sorted(data["failed_folders"]) == ["link.test", "other.test"]
    assert data["domains"] == 2 and data["deleted"] == 1  # example.test, good.test
    assert not three_domains["good.test"].exists()
    assert three_domains["link.test"].exists() and three_domains["other.test"].exists()
    errors = "\n".join(data["errors"])
    assert "link.test: " in errors and "link.test is a symlink in a directory uid 89" in errors
    assert "other.test is owned by uid 1234, but users/assign gives other.test uid 89" in errors

    stats = ts.invoke(config, "stats", "--json")
    assert stats.exit_code == 1
    found = json.loads(stats.stdout)
    assert {row["domain"] for row in found["folders"]} == {"good.test"}
    assert len(found["errors"]) == 2

    report = tmpclean.run(config_module.load(str(config)), discovery.Options(age=0))
    assert report.exit_code == 1 and report.sweep.counts["files"] == 1
    assert sorted(e.split(":")[0] for e in report.sweep.errors) == ["link.test", "other.test"]
    leftover = [
        tree.maildir(f"alice@{name}") / "tmp" / "1700000000.M1P2.host"
        for name in ("good.test", "link.test", "other.test")
    ]
    assert [p.exists() for p in leftover] == [False, True, True]


def test_a_maildir_that_is_a_symlink_to_another_users_is_skipped(tree: sandbox.Tree) -> None:
    """One vpopmail uid holds alice and bob; alice's Maildir is replaced by a
    symlink to bob's. The walk skips hers (bob's mail is not learned, listed
    or deleted as alice's); bob's is walked once, as his."""
    alice = tree.add_user("alice@example.test")
    bob = tree.add_user("bob@example.test")
    junk = ts.put(bob, "Junk", ts.spam("bobs"))
    shutil.rmtree(alice)
    alice.symlink_to(bob)
    os.lchown(alice, ts.UID, ts.GID)
    config = ts.train_config(tree)
    cfg = config_module.load(str(config))
    (domain,) = discovery.find_domains(cfg, discovery.Options())
    assert discovery.maildir_of(cfg, domain, str(alice.parent)) is None
    assert discovery.maildir_of(cfg, domain, str(bob.parent)) == str(bob)
    dry = ts.invoke(config, "train", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    data = json.loads(dry.stdout)
    assert data["users"] == 1
    assert [item["path"] for item in data["listing"]] == [str(junk)]
