"""qmail's contracts: the exit codes qmail-local reads from a `.qmail` program,
and the error classes that carry them, so temporary versus permanent is decided
once, in the class, and never at a call site.
"""

# qmail-command(8): what qmail-local does with a program's exit code.
OK = 0  # success: go on with the next .qmail line
STOP = 99  # success: skip the remaining .qmail lines (condredirect)
BOUNCE = 100  # permanent failure: qmail-local bounces the message
DEFER = 111  # temporary failure: qmail keeps the message and retries

# sysexits-style codes for admin commands (design.md).
USAGE = 2
LOCKED = 75


class MailPathError(Exception):
    """A failure on the mail path; `code` is the exit code qmail-local sees and
    `status` the enhanced status code qmail puts in its log (`#4.3.0`)."""

    code = DEFER
    status = "4.3.0"

    def line(self) -> str:
        return f"{self} (#{self.status})"


class TempFail(MailPathError):
    """qmail keeps the message and retries later (exit 111)."""


class ConfigError(TempFail):
    """The configuration could not be read or is invalid. On the mail path this
    defers delivery; admin commands report it and exit 2."""

    status = "4.3.5"


class LookupFailed(TempFail):
    """vpopmail could not be asked (vpasswd unreadable, vuserinfo failing)."""

    status = "4.3.0"


class DiskError(TempFail):
    """Writing the Maildir failed (I/O error, disk full, permissions)."""

    status = "4.3.0"


class Bounce(MailPathError):
    """The admin configured a permanent refusal (exit 100)."""

    code = BOUNCE
    status = "5.7.1"


class NoMailbox(Bounce):
    """`deliver --inbox` for an address vpopmail does not know."""

    status = "5.1.1"


class OverQuota(Bounce):
    """The mailbox is full and deliver.over_quota is `bounce`."""

    status = "5.2.2"


class OverQuotaDefer(TempFail):
    """The mailbox is full and deliver.over_quota is `defer`."""

    status = "4.2.2"


def log_safe(text: str) -> str:
    """One line as qmail-send will log it: no newlines, bounded length (qmail
    keeps 3000 bytes of a local delivery's report)."""
    line = text.replace("\r", " ").replace("\n", " ")
    return line if len(line) <= 900 else line[:897] + "..."
