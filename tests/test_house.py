"""The shape of the package, as tests: no import circle among quarantine's
modules, no module over 650 lines, and the mail-path programs, installed and run
as qmail runs them, importing nothing they must not (read from
PYTHONPROFILEIMPORTTIME, which is `python -X importtime` for a program started
by its own #! line). Each check is also run on a case made to fail it."""

from __future__ import annotations

import ast
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from quarantine import sandbox

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from dns_server import DnsServer, Records

PACKAGE = Path(__file__).resolve().parent.parent / "quarantine"
LINE_LIMIT = 650
# Anywhere on the mail path: the command-line layer, the YAML parser (a
# configuration compiled by `quarantine config check` is read with marshal),
# the scheduler.
MAIL_PATH_BANNED = frozenset({"click", "yaml", "apscheduler"})
# deliver only sorts mail: no DKIM, SPF or DNS library either.
DELIVER_BANNED = MAIL_PATH_BANNED | {"dkim", "spf", "dns"}


# -- the import graph --------------------------------------------------------


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package`."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Which of the package's modules each module imports. Every import
    counts, at the top, inside a function or under TYPE_CHECKING: the direction
    is the design, whatever the order of loading. A module's own enclosing
    packages are left out (Python runs them first for every module alike)."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join([*here, base] if base else here)
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in targets if t in modules and t != name and t not in parents}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one module (Tarjan), each
    sorted: every module in one imports every other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def long_modules(package: Path, limit: int) -> dict[str, int]:
    """Modules of more than `limit` lines, with their length."""
    lengths = {
        name: len(path.read_text().splitlines()) for name, path in module_files(package).items()
    }
    return {name: n for name, n in lengths.items() if n > limit}


def test_no_import_circle_among_quarantine_modules() -> None:
    graph = import_graph(PACKAGE)
    assert {"quarantine.deliver", "quarantine.cli.group", "quarantine.auth.sign"} <= set(graph)
    assert "quarantine.config" in graph["quarantine.deliver"]  # the graph sees lazy imports
    assert circles(graph) == []


def test_no_module_is_over_650_lines() -> None:
    assert long_modules(PACKAGE, LINE_LIMIT) == {}


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_the_circle_finder_finds_circles(tmp_path: Path) -> None:
    """Circles made of every form of import: absolute, relative, `from
    package import module`, inside a function, under TYPE_CHECKING; a
    subpackage importing its own package's module is no circle by itself."""
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "def f():\n    from pkg.c import thing\n",
            "c.py": "from . import a\nthing = 1\n",
            "d.py": "import pkg.a\n",
            "sub/__init__.py": "from pkg.sub import group, one\n",
            "sub/group.py": "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from ..d import x\n",
            "sub/one.py": "from .group import y\n",
            "e.py": "from pkg.f import z\n",
            "f.py": "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from pkg.e import w\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.sub.group"] == {"pkg.d"}
    assert graph["pkg.sub.one"] == {"pkg.sub.group"}  # not pkg.sub, its own package
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.e", "pkg.f"]]
    (package / "c.py").write_text("thing = 1\n")
    (package / "f.py").write_text("w = 1\n")
    assert circles(import_graph(package)) == []


def test_the_size_check_finds_long_modules(tmp_path: Path) -> None:
    package = write_package(
        tmp_path, {"__init__.py": "", "ok.py": "x = 1\n" * 650, "long.py": "x = 1\n" * 651}
    )
    assert long_modules(package, LINE_LIMIT) == {"pkg.long": 651}


# -- what the installed mail-path programs import -----------------------------


def imported(output: str) -> set[str]:
    """The modules an interpreter reported importing (-X importtime lines)."""
    names = set()
    for line in output.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def banned(names: Iterable[str], ban: frozenset[str]) -> list[str]:
    """The banned top-level packages among `names`."""
    return sorted({name.split(".")[0] for name in names} & ban)


def test_the_import_reader_sees_a_heavy_import(quarantine_bin: Path) -> None:
    """The reader and the ban list on programs that do import the banned
    modules: the installed command line (click) and a YAML parse."""
    env = {"PATH": os.environ["PATH"], "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(
        [str(quarantine_bin), "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "click" in banned(imported(proc.stderr), MAIL_PATH_BANNED)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import yaml, os"],
        capture_output=True,
        text=True,
        check=True,
    )
    found = imported(proc.stderr)
    assert "os" in found
    assert banned(found, DELIVER_BANNED) == ["yaml"]


def rsa_key() -> tuple[bytes, str]:
    """A PKCS#1 private key (as keygen writes it) and its DKIM TXT record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


MESSAGE = (
    b"From: Bob <bob@example.test>\n"
    b"To: Alice <alice@example.test>\n"
    b"Subject: the house\n"
    b"Date: Tue, 24 Nov 2026 08:00:00 +0000\n"
    b"Message-ID: <house.1@example.test>\n"
    b"\n"
    b"Hello Alice,\n\nno circles here.\n"
)
STANDIN = "#!/bin/sh\n# {what}: keeps what it was given\ncat > {out}\n{tail}\n"


def test_mail_path_programs_import_only_what_they_may(
    tree: sandbox.Tree,
    quarantine_bin: Path,
    local_dns: Callable[[Records], DnsServer],
    sa_messages: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One message down the whole mail path, every program the installed one
    with a configuration compiled by `quarantine config check`: signed by
    quarantine-remote, verified by quarantine-queue (DKIM, SPF and DMARC pass
    against a real dnsmasq), filed by `quarantine deliver` through the
    domain's .qmail file as qmail-local runs it; SpamAssassin's spam as well.
    A release address with a bad token for `quarantine release`. None imports
    click, yaml or apscheduler; deliver no dkim, spf or dns either."""
    bindir = quarantine_bin.parent
    work = tree.root / "house"
    work.mkdir()
    pem, record = rsa_key()
    (work / "keys" / "example.test").mkdir(parents=True)
    (work / "keys" / "example.test" / "default").write_bytes(pem)
    remote_real = work / "qmail-remote.orig"
    remote_real.write_text(
        STANDIN.format(what="qmail-remote", out=work / "sent", tail="printf 'r\\000Kok\\n\\000'")
    )
    queue_real = work / "qmail-queue"
    queue_real.write_text(
        STANDIN.format(what="qmail-queue", out=work / "queued", tail=f"cat <&1 > {work}/envelope")
    )
    for program in (remote_real, queue_real):
        program.chmod(0o755)
    dns = local_dns(
        {
            "default._domainkey.example.test": record,
            "example.test": "v=spf1 ip4:127.0.0.1 -all",
            "_dmarc.example.test": "v=DMARC1; p=reject",
        }
    )
    tree.write_config(
        "deliver:\n  authserv_ids: [mx.example.test]\n"
        f"dkim:\n  keydir: {work}/keys\n  sign_template: {work}/keys/%/default\n"
        f"  qmail_remote: {remote_real}\n"
        f"verify:\n  authserv_id: mx.example.test\n  qmail_queue: {queue_real}\n"
        + dns.config_yaml()
    )
    check = subprocess.run(
        [str(quarantine_bin), "config", "check", str(tree.config_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert Path(str(tree.config_path) + ".cache").is_file()
    env = {
        "PATH": os.environ["PATH"],
        "QUARANTINE_CONFIG": str(tree.config_path),
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    found: dict[str, list[str]] = {}

    remote = subprocess.run(
        [str(bindir / "quarantine-remote"), "mx.example.org", "bob@example.test", "alice@x.test"],
        input=MESSAGE,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert remote.stdout == b"r\0Kok\n\0", remote.stdout + remote.stderr
    signed = (work / "sent").read_bytes()
    assert signed.startswith(b"DKIM-Signature:") and signed.endswith(MESSAGE)
    found["quarantine-remote"] = banned(imported(remote.stderr.decode()), MAIL_PATH_BANNED)

    (work / "incoming").write_bytes(b"Received: from mail.example.test (127.0.0.1)\n" + signed)
    (work / "envelope-in").write_bytes(b"Fbob@example.test\0Talice@example.test\0\0")
    with (work / "incoming").open("rb") as fd0, (work / "envelope-in").open("rb") as fd1:
        queue = subprocess.run(
            [str(bindir / "quarantine-queue")],
            stdin=fd0,
            stdout=fd1,
            stderr=subprocess.PIPE,
            env={**env, "TCPREMOTEIP": "127.0.0.1"},
            timeout=60,
            check=False,
        )
    assert queue.returncode == 0, queue.stderr
    queued = (work / "queued").read_bytes()
    head = queued.split(b"\n\n", 1)[0]
    assert b"mx.example.test;" in head and b"dkim=pass" in head, head
    assert b"spf=pass" in head and b"dmarc=pass" in head, head
    assert (work / "envelope").read_bytes() == b"Fbob@example.test\0Talice@example.test\0\0"
    found["quarantine-queue"] = banned(imported(queue.stderr.decode()), MAIL_PATH_BANNED)

    original_env = sandbox.qmail_env
    monkeypatch.setattr(
        sandbox,
        "qmail_env",
        lambda *args: {**original_env(*args), "PYTHONPROFILEIMPORTTIME": "1"},
    )
    ham = sandbox.qmail_local(tree, "alice@example.test", queued)
    assert (ham.status, ham.codes[0]) == ("success", 0), ham  # on to the next line
    assert len(tree.messages("alice@example.test")) == 1
    spam = sandbox.qmail_local(tree, "alice@example.test", sa_messages["spam"])
    assert (spam.status, spam.codes) == ("success", [99]), spam
    assert len(tree.messages("alice@example.test", "Junk")) == 1
    deliver = imported(ham.output) | imported(spam.output)
    # deliver's own modules come from their caches (quarantine/launch.py), so
    # the reader sees only what they import: the Junk log's digest among it.
    ours = {"quarantine.deliver", "quarantine.verdict", "quarantine.vpopmail"}  # EXT@HOST looked up
    assert "_blake2" in deliver and not ours & deliver, sorted(ours & deliver)
    found["quarantine deliver"] = banned(deliver, DELIVER_BANNED)

    # qmail-local runs `quarantine release` for a digest's release address.
    address = "quarantine-release-notatoken@example.test"
    release = subprocess.run(
        [str(quarantine_bin), "release", "--config", str(tree.config_path)],
        input=MESSAGE,
        capture_output=True,
        env={
            **original_env(tree, address, "bob@example.test", "-default"),
            "DEFAULT": "notatoken",
            "PYTHONPROFILEIMPORTTIME": "1",
        },
        timeout=60,
        check=False,
    )
    assert release.returncode == 0 and b"dropped" in release.stdout, release
    assert "quarantine.release" in imported(release.stderr.decode())
    found["quarantine release"] = banned(imported(release.stderr.decode()), MAIL_PATH_BANNED)

    assert found == {
        "quarantine-remote": [],
        "quarantine-queue": [],
        "quarantine deliver": [],
        "quarantine release": [],
    }
