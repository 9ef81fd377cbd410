"""`quarantine deliver`: the filter qmail-local runs from a `.qmail` line
(`|preline quarantine deliver`). It reads the message, decides junk or not,
files junk into the user's Maildir++ Junk folder and exits 99, and leaves
everything else to the next `.qmail` line with exit 0.

The contract is qmail's: 0, 99, 100 (only when configured), 111 for every
failure, with one line on stdout that qmail-send puts in its log. This module
is on the mail path: it imports no click, no YAML (unless a config file has no
compiled cache), no email package, no dkimpy, no pyspf.
"""

import sys
import time

from quarantine import fastos as os
from quarantine import qmail
from quarantine.qmail import Bounce, MailPathError, NoMailbox, OverQuota, OverQuotaDefer, TempFail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import BinaryIO

    from quarantine.config import Config
    from quarantine.maildir import Delivery
    from quarantine.message import Head
    from quarantine.verdict import Decision

USAGE = "usage: quarantine deliver [--config FILE] [--maildir DIR] [--inbox] [--folder NAME]"
HELP = f"""{USAGE}

Run by qmail-local from a .qmail file:  |preline /path/to/quarantine deliver

Decides spam from SpamAssassin's X-Spam-Status and trusted authentication
results, files spam into Maildir/.Junk (created and subscribed on first use)
and exits 99; anything else exits 0 for the next .qmail line.

  --config FILE   configuration file (default: $QUARANTINE_CONFIG, then
                  /etc/quarantine/quarantine.yaml, else built-in defaults)
  --maildir DIR   deliver into this Maildir instead of looking up EXT@HOST
  --inbox         deliver non-spam into the inbox too (then exit 0); for
                  .qmail files with no other delivery line
  --folder NAME   the junk folder (default: deliver.junk_folder, Junk)

Exit codes: 0 not spam; 99 filed as spam; 100 refused (only when a rule's
action is bounce); 111 temporary failure, qmail retries.
"""


class Options:
    __slots__ = ("config", "folder", "inbox", "maildir")

    def __init__(self) -> None:
        self.config: str | None = None
        self.maildir: str | None = None
        self.folder: str | None = None
        self.inbox = False


class UsageError(TempFail):
    status = "4.3.5"


def parse_args(argv: "list[str]") -> "Options":
    """A hand-written parser: argparse and click cost milliseconds a start."""
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--config", "--maildir", "--folder"):
            if not eq:
                if not args:
                    raise UsageError(f"{name} needs a value; {USAGE}")
                value = args.pop(0)
            setattr(opts, name[2:], value)
        elif arg == "--inbox":
            opts.inbox = True
        else:
            raise UsageError(f"unknown argument {arg[:40]!r}; {USAGE}")
    return opts


def main(argv: "list[str]", stdin: "BinaryIO | None" = None) -> int:
    """Entry point: returns the exit code, prints exactly one line."""
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        sys.stdout.flush()  # the launchers leave by posix._exit, which flushes nothing
        return qmail.OK
    started = time.monotonic()
    config = None
    try:
        opts = parse_args(argv)
        from quarantine import config as config_module

        config = config_module.load(opts.config)
        code, line = run(opts, config, os.environ, stdin or sys.stdin.buffer)
    except MailPathError as exc:
        code, line = exc.code, f"quarantine: {exc.line()}"
    except MemoryError:
        code, line = qmail.DEFER, "quarantine: out of memory (#4.3.0)"
    except KeyboardInterrupt:
        code, line = qmail.DEFER, "quarantine: interrupted (#4.3.0)"
    except Exception as exc:  # whatever it was, qmail keeps the message and retries
        code = qmail.DEFER
        line = f"quarantine: unexpected {type(exc).__name__}: {exc} (#4.3.0)"
    line = qmail.log_safe(line)
    elapsed = time.monotonic() - started
    _log(line, code, elapsed, config)
    return code


def _log(line: str, code: int, elapsed: float, config: "Config | None") -> None:
    """The line qmail logs (stdout), plus the optional log file and syslog."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except Exception:  # noqa: S110 - stdout closed: the exit code still counts
        pass
    if config is None:
        return
    if config.deliver.log_file:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        entry = f"{stamp} [{os.getpid()}] exit={code} {elapsed * 1000:.1f}ms {line}\n"
        try:
            fd = os.open(config.deliver.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, entry.encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except OSError:
            pass  # the log must never decide the delivery
    if config.deliver.syslog:
        import syslog

        syslog.openlog("quarantine", syslog.LOG_PID, syslog.LOG_MAIL)
        syslog.syslog(syslog.LOG_INFO, line)


def run(
    opts: "Options", config: "Config", env: "Mapping[str, str]", stdin: "BinaryIO"
) -> "tuple[int, str]":
    """The filter itself; raises MailPathError for every failure."""
    from quarantine.message import drain, read_head
    from quarantine.verdict import decide

    folder = opts.folder or config.deliver.junk_folder  # the configuration's is checked
    if opts.folder is not None:
        from quarantine.configschema import valid_folder

        if not valid_folder(folder):
            raise UsageError(f"bad folder name {folder[:40]!r}")
    if opts.maildir is None and ("EXT" not in env or "HOST" not in env):
        raise TempFail("EXT and HOST are not set: not run by qmail-local? (use --maildir)")
    head = read_head(stdin, config.deliver.header_limit)
    decision = decide(head.headers, config.deliver)
    what = decision.reason
    if decision.action == "bounce":
        drain(stdin)
        raise Bounce(f"message refused as spam ({what})")
    if decision.action == "inbox" and not opts.inbox:
        drain(stdin)
        return qmail.OK, f"quarantine: inbox, left for the next line ({what})"

    maildir, who = _find_maildir(opts, config, env)
    if maildir is None:
        drain(stdin)
        if opts.inbox:
            raise NoMailbox(f"no mailbox here by that name: {who}")
        return qmail.OK, f"quarantine: {who} is not a vpopmail user here, left for the next line"
    target = folder if decision.action == "junk" else None
    name = file_message(config, maildir, target, head, stdin, env, decision)
    where = f".{target}/new/{name}" if target else f"new/{name}"
    if target:
        return qmail.STOP, f"quarantine: junk {who} -> {where} ({what})"
    return qmail.OK, f"quarantine: inbox {who} -> {where} ({what})"


def _find_maildir(
    opts: "Options", config: "Config", env: "Mapping[str, str]"
) -> "tuple[str | None, str]":
    """(Maildir path or None for an unknown user, a name for the log)."""
    if opts.maildir is not None:
        return opts.maildir, opts.maildir
    from quarantine import vpopmail

    ext = env.get("EXT", "")
    host = env.get("HOST", "")
    shown = (
        f"{ext[:64]!r}@{host[:64]!r}"
        if not (vpopmail.valid_user(ext) and vpopmail.valid_domain(host))
        else f"{ext}@{host}"
    )
    domain = vpopmail.find_domain(config, host)
    if domain is None:
        return None, shown
    mailbox = vpopmail.find_mailbox(config, domain, ext)
    if mailbox is None:
        return None, shown
    return mailbox.maildir, mailbox.address


def file_message(
    config: "Config",
    maildir: str,
    folder: "str | None",
    head: "Head",
    stdin: "BinaryIO",
    env: "Mapping[str, str]",
    decision: "Decision",
) -> str:
    """Deliver the message into `maildir` (its Maildir++ `folder`, if given)
    with an X-Quarantine header. Returns the file name in new/."""
    from quarantine import maildir as md

    if not md.is_maildir(maildir):
        raise TempFail(f"{maildir} is not a Maildir")
    owner = md.Owner.of(maildir)
    target = maildir
    if folder is not None:
        target = md.folder_path(maildir, folder)
        md.ensure_folder(maildir, folder, owner, subscribe_to=config.deliver.subscribe)
    delivery = md.Delivery(target, owner)
    try:
        _write_message(delivery, head, stdin, env, decision)
        policy = config.deliver.over_quota
        quota = md.read_quota(maildir) if policy != "deliver" else None
        if quota is not None and quota.over(delivery.size):
            if policy == "bounce":
                raise OverQuota(f"mailbox {maildir} is over quota")
            raise OverQuotaDefer(f"mailbox {maildir} is over quota")
    except BaseException:
        delivery.abort()  # nothing half-written stays behind, in tmp/ or new/
        raise
    name = delivery.commit()
    try:
        md.add_quota(maildir, delivery.size, 1, owner)
    except (OSError, MailPathError):
        pass  # delivered: a quota line is not worth a duplicate on retry
    if folder is not None and config.train.ham_from_moves:
        from quarantine.junklog import note_junk

        note_junk(maildir, folder, name)  # for the trainer's ham ledger; never raises
    return name


def _write_message(
    delivery: "Delivery",
    head: "Head",
    stdin: "BinaryIO",
    env: "Mapping[str, str]",
    decision: "Decision",
) -> None:
    """Trace lines, our X-Quarantine header, the sender's header (with any
    X-Quarantine of theirs renamed), then the body streamed from stdin."""
    from quarantine.message import copy_rest, is_header_line

    if not head.from_line and not head.starts_with_trace():
        # Not behind preline: add what qmail-local adds to a Maildir delivery.
        delivery.write(_env_line(env, "RPLINE") + _env_line(env, "DTLINE"))
    lines = head.lines
    index = 0
    while index < len(lines) and lines[index][:13].lower() in TRACE_PREFIXES:
        delivery.write(lines[index])
        index += 1
    delivery.write(quarantine_header(decision))
    if index < len(lines) and lines[index].strip(b"\r\n") and not is_header_line(lines[index]):
        delivery.write(b"\n")  # a message with no header: keep its first line in the body
    for line in lines[index:]:
        if line[:13].lower() == b"x-quarantine:":
            line = b"X-Quarantine-Untrusted:" + line[13:]
        delivery.write(line)
    copy_rest(stdin, delivery.write)


TRACE_PREFIXES = (b"return-path: ", b"return-path:<", b"delivered-to:")


def _env_line(env: "Mapping[str, str]", name: str) -> bytes:
    """RPLINE or DTLINE as one line (qmail already replaced newlines in them)."""
    value = env.get(name, "").split("\n", 1)[0]
    return value.encode("latin-1", "replace") + b"\n" if value else b""


def quarantine_header(decision: "Decision") -> bytes:
    """`X-Quarantine: junk; rule=...; ... (host; date)` on one line, ASCII only."""
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S %z")
    text = f"{decision.action}; rule={decision.rule or 'none'}; {decision.facts.summary()}"
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)[:800]
    return f"X-Quarantine: {text} ({os.uname().nodename}; {stamp})\n".encode("ascii", "replace")
