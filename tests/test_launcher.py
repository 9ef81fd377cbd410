"""The installed launchers (bin/quarantine, quarantine-queue, quarantine-remote
as pip wrote them into the test venv, the README's way): the mail path starts
Python without `site` and `quarantine deliver` without `os`, read from
PYTHONPROFILEIMPORTTIME; what pip does with options on a `#!python` line (it
drops them, hence the sh launcher); and the ways round: a symlinked launcher,
a venv sharing the system's packages, no venv, a broken install."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from quarantine import launch

SPAM = (
    b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=12.0 required=5.0\n"
    b"From: a@spam.example\nSubject: win\n\nbody\n"
)
ENVELOPE = b"Fbob@example.test\0Talice@example.test\0\0"


def imported(stderr: str) -> set[str]:
    """Module names from PYTHONPROFILEIMPORTTIME lines."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    names.discard("imported package")
    return names


def deliver(launcher: Path, maildir: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        [str(launcher), "deliver", "--maildir", str(maildir)],
        input=SPAM,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPROFILEIMPORTTIME": "1", **(env or {})},
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout.decode() + proc.stderr.decode()


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    path = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True)
    return path


def junk(maildir: Path) -> list[Path]:
    return sorted((maildir / ".Junk" / "new").iterdir())


def test_installed_deliver_starts_without_site_or_os(quarantine_bin: Path, maildir: Path) -> None:
    assert quarantine_bin.read_text().startswith("#!/bin/sh\n")  # pip left it alone
    code, output = deliver(quarantine_bin, maildir)
    assert code == 99, output
    assert len(junk(maildir)) == 1
    modules = imported(output)
    assert "_blake2" in modules  # the reader sees deliver's imports (the Junk log's digest)
    assert not modules & {"site", "os", "_collections_abc", "sitecustomize", "_distutils_hack"}
    assert not modules & {"click", "yaml", "apscheduler", "dkim", "spf", "dns", "email", "re"}
    lines = [line for line in output.splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith("quarantine: junk ")


def test_deliver_loads_its_modules_from_their_caches(quarantine_bin: Path, maildir: Path) -> None:
    """quarantine/launch.py's bytecode runs and loads the mail path's modules
    itself: none of them goes through the import system (which would show in
    PYTHONPROFILEIMPORTTIME), and the order has each module's imports first."""
    code, output = deliver(quarantine_bin, maildir)
    assert code == 99, output
    modules = imported(output)
    ours = {"quarantine", *(f"quarantine.{name}" for name in launch.MAIL_PATH)}
    assert not ours & modules, sorted(ours & modules)
    # Without a configuration file: the built-in one, without the schema.
    assert {
        "quarantine.launch",
        "quarantine.configschema",
        "quarantine.configdefaults",
    } & modules == {"quarantine.configdefaults"}


def test_launch_run_without_deliver_defers_with_one_line(quarantine_bin: Path) -> None:
    """launch.py's bytecode run by hand, without `SCRIPT deliver`: exit 111
    and one line, not an interactive Python nor a traceback."""
    cached = (
        Path(launch.__file__).parent
        / "__pycache__"
        / (f"launch.{sys.implementation.cache_tag}.pyc")
    )
    for args in ([], [str(quarantine_bin)], [str(quarantine_bin), "train"]):
        proc = subprocess.run(
            [str(quarantine_bin.parent / "python3"), "-S", "-P", str(cached), *args],
            input=b"", capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 111 and proc.stderr == b"", proc
        assert proc.stdout.count(b"\n") == 1 and proc.stdout.endswith(b"(#4.3.5)\n")


def copied_venv(root: Path, quarantine_bin: Path) -> tuple[Path, Path]:
    """A venv like the test venv's, with a copy of the installed package (its
    sources' times kept, so the copied caches stay current): (launcher, the
    package's directory)."""
    launcher = fake_venv(root, quarantine_bin, shared=False)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (root / "bin" / f"python{version}").symlink_to(Path(sys.executable).resolve())
    installed = Path(launch.__file__).parent
    package = root / "lib" / f"python{version}" / "site-packages" / "quarantine"
    shutil.copytree(installed, package)
    return launcher, package


def test_a_module_edited_after_install_is_read_from_its_source(
    quarantine_bin: Path, maildir: Path, tmp_path: Path
) -> None:
    """deliver.py changed after pip cached it (an admin's hot fix): its cache
    no longer matches the source's time and size, so the import system loads
    the source, as it would without launch.py; the other modules still come
    from their caches."""
    launcher, package = copied_venv(tmp_path / "venv", quarantine_bin)
    source = package / "deliver.py"
    text = source.read_text().replace("Run by qmail-local", "Hot-fixed. Run by qmail-local")
    source.write_text(text)
    proc = subprocess.run(
        [str(launcher), "deliver", "--help"], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPROFILEIMPORTTIME": "1"}, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "Hot-fixed. Run by qmail-local" in proc.stdout, proc.stderr
    modules = imported(proc.stderr)
    assert "quarantine.deliver" in modules and "quarantine.fastos" not in modules
    code, output = deliver(launcher, maildir)
    assert code == 99 and len(junk(maildir)) == 1, output


def test_an_edited_launch_hands_over_to_the_script(
    quarantine_bin: Path, maildir: Path, tmp_path: Path
) -> None:
    """launch.py itself changed after install: its stale bytecode must not
    decide anything, so it hands over to the script (the import system)."""
    launcher, package = copied_venv(tmp_path / "venv", quarantine_bin)
    with (package / "launch.py").open("a") as source:
        source.write("# edited\n")
    code, output = deliver(launcher, maildir)
    assert code == 99 and len(junk(maildir)) == 1, output
    assert "quarantine.deliver" in imported(output)


def test_a_damaged_cache_defers_with_one_line(
    quarantine_bin: Path, maildir: Path, tmp_path: Path
) -> None:
    """maildir's cache with a current header but garbage after it (a disk
    error, a crafted file): not a traceback and not a bounce, exit 111 and
    one line, nothing delivered; qmail keeps the message."""
    launcher, package = copied_venv(tmp_path / "venv", quarantine_bin)
    cached = package / "__pycache__" / f"maildir.{sys.implementation.cache_tag}.pyc"
    header = cached.read_bytes()[:16]
    stat = cached.stat()
    cached.write_bytes(header + b"\xff" * 64)
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, output = deliver(launcher, maildir)
    lines = [line for line in output.splitlines() if not line.startswith("import time:")]
    assert code == 111, output
    assert len(lines) == 1 and lines[0].startswith("quarantine: ")
    assert "bad marshal data" in lines[0] and lines[0].endswith("(#4.3.0)")
    assert "Traceback" not in output
    assert not (maildir / ".Junk").exists()


def test_other_commands_start_the_ordinary_way(quarantine_bin: Path) -> None:
    proc = subprocess.run(
        [str(quarantine_bin), "--version"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPROFILEIMPORTTIME": "1"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "version" in proc.stdout, proc.stderr
    assert {"site", "click"} <= imported(proc.stderr)


def test_installed_queue_starts_without_site(quarantine_bin: Path, tmp_path: Path) -> None:
    """quarantine-queue (an authenticated sender: nothing verified) hands the
    message on to the real qmail-queue, here a stand-in, without `site`."""
    queue_bin = quarantine_bin.parent / "quarantine-queue"
    assert queue_bin.read_text().startswith("#!/bin/sh\n")
    real = tmp_path / "qmail-queue"
    real.write_text(f"#!/bin/sh\ncat > {tmp_path}/queued\ncat <&1 > {tmp_path}/envelope\n")
    real.chmod(0o755)
    config = tmp_path / "q.yaml"
    config.write_text(f"verify:\n  qmail_queue: {real}\n")
    (tmp_path / "envelope-in").write_bytes(ENVELOPE)
    with (tmp_path / "envelope-in").open("rb") as fd1:
        proc = subprocess.run(
            [str(queue_bin)],
            input=SPAM,
            stdout=fd1,
            stderr=subprocess.PIPE,
            env={
                "PATH": "/usr/bin:/bin",
                "RELAYCLIENT": "",
                "QUARANTINE_CONFIG": str(config),
                "PYTHONPROFILEIMPORTTIME": "1",
            },
            timeout=60,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "queued").read_bytes() == SPAM
    assert (tmp_path / "envelope").read_bytes() == ENVELOPE
    modules = imported(proc.stderr.decode())
    assert "quarantine.queue" in modules
    # (yaml: this configuration is not compiled by `quarantine config check`)
    assert not modules & {"site", "click", "apscheduler", "dkim", "spf", "dns"}, modules


def test_a_symlinked_launcher_runs_the_real_one(
    quarantine_bin: Path, maildir: Path, tmp_path: Path
) -> None:
    link = tmp_path / "bin" / "quarantine"
    link.parent.mkdir()
    link.symlink_to(quarantine_bin)
    code, output = deliver(link, maildir)
    assert code == 99, output
    assert "site" not in imported(output) and len(junk(maildir)) == 1


def fake_venv(root: Path, quarantine_bin: Path, shared: bool) -> Path:
    """A venv-shaped directory: pyvenv.cfg, bin/python3 (the test venv's
    interpreter) and a copy of the launcher, but no site-packages of its own."""
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(
        f"home = {Path(sys.executable).parent}\n"
        f"include-system-site-packages = {'true' if shared else 'false'}\n"
    )
    (root / "bin" / "python3").symlink_to(Path(sys.executable).resolve())
    launcher = root / "bin" / "quarantine"
    shutil.copy(quarantine_bin, launcher)
    return launcher


def test_a_broken_install_defers_with_one_line(
    quarantine_bin: Path, maildir: Path, tmp_path: Path
) -> None:
    """A venv whose packages are missing: after `site` as a last try, exit
    111 and one line, no traceback (qmail keeps the message)."""
    launcher = fake_venv(tmp_path / "venv", quarantine_bin, shared=False)
    proc = subprocess.run(
        [str(launcher), "deliver", "--maildir", str(maildir)],
        input=SPAM.decode(),
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert proc.returncode == 111
    assert proc.stdout.startswith("quarantine: cannot load: ModuleNotFoundError")
    assert proc.stdout.endswith("(#4.3.0)\n") and proc.stdout.count("\n") == 1
    assert proc.stderr == ""
    assert not (maildir / ".Junk").exists()


@pytest.mark.parametrize("launcher_name", ["quarantine", "quarantine-queue", "quarantine-remote"])
def test_launchers_read_pyvenv_cfg_inside_their_try(
    quarantine_bin: Path, launcher_name: str
) -> None:
    """Each launcher treats an unreadable pyvenv.cfg as a venv of its own
    packages (an OSError there is caught), as the test below shows for deliver."""
    text = (quarantine_bin.parent / launcher_name).read_text()
    assert '    try:\n        with open(_venv + "/pyvenv.cfg", "rb") as _cfg:' in text
    assert "    except OSError:" in text


def test_an_unreadable_pyvenv_cfg_still_delivers(quarantine_bin: Path) -> None:
    """pyvenv.cfg that the delivering uid cannot read (mode 000, an
    unprivileged uid): the launcher takes the venv's own packages and the
    message is filed; no traceback and no exit 1, which qmail would bounce."""
    if os.geteuid() != 0:
        pytest.skip("runs the launcher as another uid: run the tests as root")
    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="quarantine-launcher-"))
    try:
        root.chmod(0o755)  # nobody must traverse it; pytest's tmp_path is 0700
        venv = root / "venv"
        launcher = fake_venv(venv, quarantine_bin, shared=False)
        packages = Path(__import__("quarantine").__file__).parents[1]
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        (venv / "lib" / version).mkdir(parents=True)
        (venv / "lib" / version / "site-packages").symlink_to(packages)
        (venv / "pyvenv.cfg").chmod(0)
        maildir = root / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True)
        for path in [maildir, *maildir.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        proc = subprocess.run(
            ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
             str(launcher), "deliver", "--maildir", str(maildir)],
            input=SPAM, capture_output=True, env={"PATH": "/usr/bin:/bin"}, timeout=60,
            check=False,
        )  # fmt: skip
        assert proc.stderr == b"", proc.stderr
        assert proc.returncode == 99, proc.stdout
        assert proc.stdout.startswith(b"quarantine: junk ") and proc.stdout.count(b"\n") == 1
        assert len(junk(maildir)) == 1
        assert (venv / "pyvenv.cfg").stat().st_mode & 0o777 == 0  # it was unreadable
    finally:
        shutil.rmtree(root)


def test_a_venv_sharing_the_system_packages_starts_with_site(
    quarantine_bin: Path, maildir: Path, tmp_path: Path
) -> None:
    """include-system-site-packages = true: the packages may be anywhere
    `site` looks, so `site` runs (here it finds them through the PYTHONPATH
    standing in for the system's directories)."""
    launcher = fake_venv(tmp_path / "venv", quarantine_bin, shared=True)
    packages = str(Path(__import__("quarantine").__file__).parents[1])
    code, output = deliver(launcher, maildir, {"PYTHONPATH": packages})
    assert code == 99, output
    assert "site" in imported(output) and len(junk(maildir)) == 1


def test_outside_a_venv_python3_on_path_runs_it(
    quarantine_bin: Path, maildir: Path, tmp_path: Path
) -> None:
    """No pyvenv.cfg beside the launcher: the python3 on PATH, the ordinary way."""
    launcher = tmp_path / "quarantine"
    shutil.copy(quarantine_bin, launcher)
    code, output = deliver(launcher, maildir, {"PATH": f"{quarantine_bin.parent}:/usr/bin:/bin"})
    assert code == 99, output
    assert "site" in imported(output) and len(junk(maildir)) == 1


def test_pip_drops_options_from_a_python_line(tmp_path: Path) -> None:
    """Why the launcher is a sh script: pip replaces a `#!python -S -P` line of
    a wheel's script with `#!` and its interpreter alone."""
    wheel = tmp_path / "probe-1.0-py3-none-any.whl"
    script = "#!python -S -P\nprint('probe')\n"
    info = "probe-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("probe-1.0.data/scripts/probe", script)
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: probe\nVersion: 1.0\n")
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{info}/RECORD", "")
    target = tmp_path / "prefix"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--prefix", str(target), str(wheel)],
        check=True, capture_output=True, timeout=120,
        env={**os.environ, "PIP_NO_WARN_SCRIPT_LOCATION": "1"},
    )  # fmt: skip
    first = (target / "bin" / "probe").read_text().splitlines()[0]
    assert first == f"#!{sys.executable}"
