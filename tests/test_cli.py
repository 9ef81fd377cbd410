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
