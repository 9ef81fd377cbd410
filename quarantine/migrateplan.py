"""What `quarantine migrate` plans: the findings it reports (with the fix for
what it cannot migrate), the file edits it will make, the configuration keys
it will set, and the programs the new lines name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from quarantine.config import DEFAULT_PATH
from quarantine.names import show

CHANGE, NOTE, MANUAL, OK = "change", "note", "manual", "ok"


@dataclass
class Finding:
    """One line of the report: what was found where, and what happens to it
    (`change`: the plan changes it; `manual`: it cannot be migrated, `fix`
    says what to do, and the exit code is 1; `note`, `ok`: nothing to do)."""

    area: str
    subject: str
    status: str
    message: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{self.status:<6} {self.area:<8} {show(self.subject)}  {self.message}{fix}"

    def as_json(self) -> dict[str, str]:
        return {
            "area": self.area,
            "subject": self.subject,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class Edit:
    """One change to the filesystem: `write` (new bytes for a file, mode and
    owner kept), `symlink`, `rename` (path to target), or `rules` (write the
    rules source, then rebuild its cdb with tcprules). `paths` are saved
    before any edit is made."""

    kind: str
    path: str
    why: str
    data: bytes = b""
    target: str = ""
    old: bytes | None = None  # for the diff
    paths: list[str] = field(default_factory=list)


@dataclass
class Plan:
    findings: list[Finding] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    config: dict[str, dict[str, object]] = field(default_factory=dict)
    config_path: str = DEFAULT_PATH
    current: dict[str, dict[str, object]] = field(default_factory=dict)  # the configuration now

    def add(self, area: str, subject: str, status: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(area, subject, status, message, fix))

    def set(self, section: str, key: str, value: object) -> bool:
        """Plan `section.key: value` unless the configuration already says
        so; whether it is a change."""
        now = self.current.get(section, {}).get(key)
        if (tuple(value) if isinstance(value, list) else value) == now:
            return False
        self.config.setdefault(section, {})[key] = value
        return True

    @property
    def code(self) -> int:
        """1 when something could not be migrated, else 0."""
        return 1 if any(f.status == MANUAL for f in self.findings) else 0


class Programs:
    """The installed quarantine programs the migrated files name."""

    def __init__(self, quarantine: str) -> None:
        self.quarantine = quarantine
        here = os.path.dirname(quarantine)
        self.queue = os.path.join(here, "quarantine-queue")
        self.remote = os.path.join(here, "quarantine-remote")
