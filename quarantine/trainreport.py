"""What a training run did: the counts (Summary, mergeable across the per-uid
workers), the Report with its JSON form and the one paragraph cron mails, the
state file that keeps the last run's report for `quarantine stats`, and the
progress bar a run shows on a terminal.
"""

from __future__ import annotations

import json
import os
import sys
import time

from quarantine.discovery import age_text
from quarantine.names import show

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO

    from quarantine.discovery import Options

OK, FAILED, USAGE, LOCKED = 0, 1, 2, 75
SKIP_REASONS = {
    "young": "younger than {age}",
    "trashed": "trashed (T flag)",
    "dot file": "dot files",
    "symlink": "symlinks",
    "symlinked folder": "folders (or their new/, cur/) that are symlinks, not followed",
    "not a regular file": "not regular files",
    "vanished": "gone before they could be learned",
    "too big": "larger than train.max_size",
    "copy of a vanished message": "copies of a message that vanished (retried next run)",
    "other content": "left in place: Bayes learned other content under their id",
    "known": "left in place: Bayes knew them, but not from these bytes",
    "held back": "held back: other messages with their Message-ID went first (next run)",
    "mbox name": "named .mbox (sa-learn would read them as mailboxes)",
}


class Summary:
    """Counts of one run (or one uid group of it), mergeable and JSON-able."""

    COUNTS = (
        "domains",
        "users",
        "folders",
        "spam_learned",
        "ham_learned",
        "ham_from_moves",
        "already_known",
        "copies",
        "deleted",
        "moved",
        "failed",
        "calls",
    )

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.skipped: dict[str, int] = {}
        self.failed_folders: list[str] = []
        self.errors: list[str] = []
        self.notes: list[str] = []  # reported, but not failures
        self.listing: list[dict[str, str]] = []
        self.stopped = False
        self.learned_keys: list[str] = []  # for the next uid group's dedupe

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def fail_folder(self, folder: str) -> None:
        if folder not in self.failed_folders:
            self.failed_folders.append(folder)

    def merge(self, other: dict[str, object]) -> None:
        counts = other.get("counts", {})
        assert isinstance(counts, dict)
        for name in self.COUNTS:
            self.counts[name] += int(counts.get(name, 0))
        skipped = other.get("skipped", {})
        assert isinstance(skipped, dict)
        for reason, n in skipped.items():
            self.skip(str(reason), int(n))
        for key in ("failed_folders", "errors", "notes", "listing", "learned_keys"):
            items = other.get(key, [])
            assert isinstance(items, list)
            getattr(self, key).extend(items)
        self.stopped = self.stopped or bool(other.get("stopped"))

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": dict(self.counts),
            "skipped": dict(self.skipped),
            "failed_folders": list(self.failed_folders),
            "errors": list(self.errors),
            "notes": list(self.notes),
            "listing": list(self.listing),
            "stopped": self.stopped,
            "learned_keys": list(self.learned_keys),
        }


class Report:
    """The outcome of `run`: the merged Summary plus when, how long, how."""

    def __init__(
        self,
        summary: Summary,
        started: float,
        seconds: float,
        options: Options,
        backend: str,
        age: int,
    ) -> None:
        self.summary = summary
        self.started = started
        self.seconds = seconds
        self.options = options
        self.backend = backend
        self.age = age
        self.warnings: list[str] = []

    @property
    def exit_code(self) -> int:
        s = self.summary
        if s.failed_folders or s.errors or s.counts["failed"] or s.stopped:
            return FAILED
        return OK

    def as_dict(self) -> dict[str, object]:
        s = self.summary
        data: dict[str, object] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(self.seconds, 3),
            "dry_run": self.options.dry_run,
            "backend": self.backend,
            "age_seconds": self.age,
            "exit_code": self.exit_code,
            **s.counts,
            "skipped": dict(sorted(s.skipped.items())),
            "failed_folders": s.failed_folders,
            "errors": s.errors,
            "notes": s.notes,
            "stopped": s.stopped,
        }
        if self.options.dry_run:
            data["listing"] = s.listing
        return data

    def paragraph(self) -> str:
        """The one-paragraph summary an admin reads in cron's mail."""
        c = self.summary.counts
        s = self.summary
        would = "would learn" if self.options.dry_run else "learned"
        text = (
            f"quarantine train{' (dry run)' if self.options.dry_run else ''}: "
            f"{c['folders']} folder{_s(c['folders'])} of {c['users']} user{_s(c['users'])} "
            f"in {c['domains']} domain{_s(c['domains'])}; {would} {c['spam_learned']} "
            f"message{_s(c['spam_learned'])} as spam and {c['ham_learned']} as ham"
        )
        if c["ham_from_moves"]:
            text += f" ({c['ham_from_moves']} moved out of Junk by their users)"
        if c["already_known"]:
            text += f", {c['already_known']} already known to SpamAssassin (the same To, Date "
            text += "and body learned before)"
        if c["copies"]:
            text += f" ({c['copies']} more cop{'y' if c['copies'] == 1 else 'ies'} of the same "
            text += "messages not learned twice)"
        if self.options.dry_run:
            text += f"; would delete {c['deleted']} and move {c['moved']} to the inbox"
        else:
            text += f"; deleted {c['deleted']}, moved {c['moved']} to the inbox"
        total = sum(s.skipped.values())
        if total:
            parts = [
                f"{n} {SKIP_REASONS.get(r, r).format(age=age_text(self.age))}"
                for r, n in sorted(s.skipped.items(), key=lambda kv: -kv[1])
            ]
            text += f"; skipped {total} ({', '.join(parts)})"
        if c["failed"] or s.failed_folders:
            text += (
                f"; FAILED: {c['failed']} message{_s(c['failed'])} not learned and kept, "
                f"in {len(s.failed_folders)} folder{_s(len(s.failed_folders))}"
            )
        else:
            text += "; none failed"
        if s.errors:
            text += f"; {len(s.errors)} error{_s(len(s.errors))} (listed above)"
        if s.stopped:
            text += "; STOPPED early by a signal (the rest is left for the next run)"
        return text + f". {self.seconds:.1f} s, backend {self.backend}."


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def save_state(path: str, report: Report) -> str | None:
    """Record the run's summary (atomically); returns an error text or None."""
    data = report.as_dict()
    data["summary"] = report.paragraph()
    temp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.rename(temp, path)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        return f"cannot record the run in {show(path)} (train.state_file): {exc.strerror}"
    return None


def load_state(path: str) -> dict[str, object] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total = total
        self.done = 0
        self.shown = 0.0

    def step(self, learned: int, *, advance: bool = True) -> None:
        self.done += advance
        now = time.monotonic()
        if not self.enabled or (now - self.shown < 0.2 and self.done < self.total and advance):
            return
        self.shown = now
        width = 30
        filled = width * self.done // max(self.total, 1)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} mailboxes, "
            f"{learned} learned"
        )
        self.stream.flush()

    def close(self, learned: int) -> None:
        if self.enabled and self.shown:
            self.step(learned, advance=False)  # the batches learned after the last mailbox
            self.stream.write("\n")
            self.stream.flush()
