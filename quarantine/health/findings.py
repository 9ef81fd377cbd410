"""One finding of `quarantine doctor`: a check id, ok / warn / fail, the thing
checked, what was found and how to fix it; its printed line and JSON form,
every name escaped (one finding is one line)."""

from __future__ import annotations

from dataclasses import dataclass

from quarantine.names import show

OK = "ok"
WARN = "warn"
FAIL = "fail"
LABELS = {OK: "ok", WARN: "warn", FAIL: "FAIL"}


@dataclass(frozen=True)
class Finding:
    """What one check found about one subject (a file, a domain, a record)."""

    id: str
    status: str  # ok, warn, fail
    subject: str
    message: str
    fix: str | None = None

    def line(self) -> str:
        """`ok|warn|FAIL  CHECK-ID  SUBJECT  message [-> fix]`, escaped."""
        text = (
            f"{LABELS[self.status]:<4}  {self.id:<15}  {show(self.subject)}  {show(self.message)}"
        )
        if self.fix:
            text += f" -> {show(self.fix)}"
        return text

    def as_dict(self) -> dict[str, str | None]:
        """The JSON object: id, status, subject, message, fix (null: none)."""
        return {
            "id": self.id,
            "status": self.status,
            "subject": show(self.subject),
            "message": show(self.message),
            "fix": show(self.fix) if self.fix else None,
        }

    def as_list(self) -> list[str | None]:
        """Plain data for a worker's JSON result (names not yet escaped)."""
        return [self.id, self.status, self.subject, self.message, self.fix]

    @classmethod
    def from_list(cls, item: object) -> Finding:
        """Back from as_list; a malformed item (a worker's bug) is a FAIL."""
        if isinstance(item, list) and len(item) == 5:
            fields = [x if isinstance(x, str) or x is None else str(x) for x in item]
            if fields[0] and fields[1] in LABELS and fields[2] is not None and fields[3]:
                return cls(fields[0], fields[1], fields[2], fields[3], fields[4])
        return cls("doctor", FAIL, "(worker)", f"unreadable result: {item!r}"[:200])


def ok(check: str, subject: str, message: str) -> Finding:
    return Finding(check, OK, subject, message)


def warn(check: str, subject: str, message: str, fix: str | None = None) -> Finding:
    return Finding(check, WARN, subject, message, fix)


def fail(check: str, subject: str, message: str, fix: str | None = None) -> Finding:
    return Finding(check, FAIL, subject, message, fix)
