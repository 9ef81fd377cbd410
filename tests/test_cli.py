"""The installed `quarantine` command passes its subcommands' exit codes on."""

from __future__ import annotations

import fcntl
import subprocess
from pathlib import Path


def test_train_exit_code_reaches_the_shell(tmp_path: Path, quarantine_bin: Path) -> None:
    """A second trainer run exits 75 from the real command, not 0 (ctx.exit codes)."""
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "assign").write_text(".\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"vpopmail:\n  home: {tmp_path}\nqmail:\n  home: {tmp_path}\n"
        f"train:\n  lock_file: {tmp_path}/lock\n  state_file: {tmp_path}/state.json\n"
    )
    with open(tmp_path / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.run(
            [str(quarantine_bin), "--config", str(config), "train"],
            capture_output=True,
            text=True,
            check=False,
        )
    assert proc.returncode == 75, proc.stdout + proc.stderr
    assert "holds" in proc.stdout + proc.stderr


def test_keygen_dns_sign_verify_round_trip(
    tmp_path: Path, quarantine_bin: Path, local_dns: object
) -> None:
    """keygen, then the record `dns` prints served by dnsmasq, then `sign` and
    `verify` on a file: the admin's way of testing a setup end to end."""
    import os

    keydir = tmp_path / "keys"
    config = tmp_path / "c.yaml"
    base = (
        f"dkim:\n  keydir: {keydir}\n  sign_template: {keydir}/%/s1\n"
        "verify:\n  authserv_id: mx.example.test\n"
    )
    config.write_text(base)

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(quarantine_bin), "--config", str(config), *args],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip

    assert run("keygen", "example.test", "--selector", "s1").returncode == 0
    record = (keydir / "example.test" / "s1.pub").read_text().strip()
    assert record.startswith("v=DKIM1; k=rsa; p=")
    server = local_dns({"s1._domainkey.example.test": record})  # type: ignore[operator]
    config.write_text(base + server.config_yaml())
    message = tmp_path / "m.eml"
    message.write_text(
        "Return-Path: <a@example.test>\nFrom: A <a@example.test>\nTo: b@other.example\n"
        "Subject: round trip\nMessage-ID: <1@example.test>\n\nhello\n"
    )
    signed = run("sign", str(message))
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith("DKIM-Signature: v=1; a=rsa-sha256")
    (tmp_path / "signed.eml").write_text(signed.stdout)
    checked = run("verify", str(tmp_path / "signed.eml"), env=dict(os.environ, TCPREMOTEIP=""))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Authentication-Results: mx.example.test;" in checked.stdout
    assert "dkim=pass" in checked.stdout
