"""`quarantine release`: run by qmail-local from a domain's
`.qmail-quarantine-release-default` when a user writes to a digest's release
address. A valid token moves that one message from Junk to the inbox's new/
(one rename: maildirsize stays right), records it as ham for the trainer and
mails the user one confirmation.

Anything else (not a token, expired, forged, for another domain or mailbox,
used before, over the mailbox's hourly limit) exits 0 with one log line and
does nothing more: no bounce, no reply, since the sender may be forged. Only
a failure of our own (configuration, key file, disk) exits 111 so qmail
retries. On the mail path: standard library only, no click, YAML or email.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from quarantine import qmail
from quarantine.names import show
from quarantine.qmail import LookupFailed, MailPathError, TempFail

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from quarantine.config import Config
    from quarantine.releasetoken import Token
    from quarantine.vpopmail import Domain

USAGE = "usage: quarantine release [--config FILE]"
HELP = f"""{USAGE}

Run by qmail-local from the domain's .qmail-quarantine-release-default
(written by `quarantine digest setup @DOMAIN`). The token in the address
(DEFAULT, else EXT) names one message in one mailbox's Junk folder; a valid
token moves it to the inbox and the user gets one confirmation. Anything
else is dropped with a log line. Exit codes: 0 done or dropped; 111 a
temporary failure of our own (configuration, key file, disk), qmail retries.
"""

USED_FILE = "quarantine-released"  # in the Maildir: tokens used, for replays and the rate
MAX_SCAN = 200_000  # Junk file names looked at per candidate mailbox
HEADER_LIMIT = 64 * 1024
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Dropped(Exception):
    """Not a release we carry out: exit 0 with the reason in the log."""


class OverRate(Dropped):
    """The mailbox has had its digest.release_rate releases this hour."""


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """Entry point: one log line on stdout, exit 0 or 111."""
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return qmail.OK
    environ = os.environ if env is None else env
    try:
        config_path = _parse_args(argv)
        from quarantine import config as config_module

        config = config_module.load(config_path)
        code, line = qmail.OK, run(config, environ, time.time())
    except Dropped as exc:
        code, line = qmail.OK, f"quarantine release: dropped: {exc}"
    except MailPathError as exc:
        code, line = qmail.DEFER, f"quarantine release: {exc} (#4.3.0)"
    except Exception as exc:  # a failure of ours: qmail keeps the mail and retries
        code = qmail.DEFER
        line = f"quarantine release: unexpected {type(exc).__name__}: {exc} (#4.3.0)"
    try:
        sys.stdout.write(qmail.log_safe(line) + "\n")
        sys.stdout.flush()
    except Exception:  # noqa: S110 - stdout closed: the exit code still counts
        pass
    return code


def _parse_args(argv: list[str]) -> str | None:
    args = list(argv)
    config: str | None = None
    while args:
        arg = args.pop(0)
        if arg == "--config" and args:
            config = args.pop(0)
        elif arg.startswith("--config="):
            config = arg[len("--config=") :]
        else:
            raise TempFail(f"unknown argument {show(arg[:40])}; {USAGE}")
    return config


def token_text(config: Config, env: Mapping[str, str]) -> str:
    """The token part of the address: qmail-local's DEFAULT (the part the
    `-default` file matched), else EXT without the release prefix."""
    if "DEFAULT" in env:
        return env["DEFAULT"]
    prefix = config.digest.release_local + "-"
    ext = env.get("EXT", "")
    if ext.lower().startswith(prefix):
        return ext[len(prefix) :]
    raise Dropped(f"{show(ext[:80])} is not a {config.digest.release_local}- address")


def run(config: Config, env: Mapping[str, str], now: float) -> str:
    """Check the token and release its message; returns the log line.
    Raises Dropped for everything that is not a release, TempFail for our
    own failures."""
    from quarantine import releasetoken, vpopmail

    text = token_text(config, env)
    token = releasetoken.parse(text)
    if token is None:
        raise Dropped(f"{show(text[:80])} is not a release token")
    if token.expires <= now:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(token.expires))
        raise Dropped(f"token expired at {stamp} UTC")
    host = env.get("HOST", "").lower()
    domain = vpopmail.find_domain(config, host)
    if domain is None:
        raise Dropped(f"{show(host[:80])} is not a vpopmail domain here")
    try:
        key = releasetoken.read_key(config.digest.secret_file)
    except releasetoken.KeyProblem as exc:
        raise TempFail(f"digest.secret_file: {exc}") from None
    over: OverRate | None = None
    for user, maildir in _candidates(config, domain, key, token):
        # Refused before Junk is read: a replay or a flood costs no scan.
        try:
            _refuse(config, f"{user}@{domain.name}", _read_used(maildir), token, now)
        except OverRate as exc:  # said if no other mailbox with this tag has the message
            over = over or exc
            continue
        match = releasetoken.matcher(key, token, domain.name, user)
        found = None if match is None else _find(maildir, config.deliver.junk_folder, match)
        if found is not None:
            return _release(config, domain, user, maildir, found, token, now)
    if over is not None:
        raise over
    raise Dropped(f"no message in {show(domain.name)} for this token (forged, or gone)")


def _refuse(config: Config, address: str, used: list[list[str]], token: Token, now: float) -> None:
    """Dropped when the mailbox's USED_FILE lines `used` show the token used
    before; OverRate when the mailbox has had its releases for the hour."""
    mac = token.mac.hex()
    if any(fields[2] == mac for fields in used):
        raise Dropped(f"{show(address)}: token used before")
    recent = sum(1 for fields in used if float(fields[0]) > now - 3600)
    if recent >= config.digest.release_rate:
        raise OverRate(
            f"{show(address)}: {recent} releases in the last hour "
            f"(digest.release_rate {config.digest.release_rate})"
        )


def _candidates(config: Config, domain: Domain, key: bytes, token: Token) -> list[tuple[str, str]]:
    """(user, Maildir) of each mailbox of `domain` whose tag the token carries."""
    from quarantine import releasetoken, vpopmail

    found = []
    try:
        users = [(u.lower(), home) for u, home, _q in vpopmail.read_vpasswd(domain)]
    except LookupFailed:
        if os.path.lexists(vpopmail.vpasswd_path(domain)):
            raise
        from quarantine import discovery

        users = list(discovery.find_users(config, domain))
    for user, home in users:
        if not vpopmail.valid_user(user):
            continue
        if releasetoken.mailbox_tag(key, domain.name, user) != token.tag:
            continue
        try:
            vpopmail.check_inside(config, domain, home)
        except LookupFailed:
            continue
        found.append((user, os.path.join(home, "Maildir")))
    return found


class Found:
    """The Junk file a token names: its sub-directory (new or cur) and name."""

    __slots__ = ("name", "sub")

    def __init__(self, sub: str, name: str) -> None:
        self.sub = sub
        self.name = name


def _open_maildir(maildir: str) -> int:
    from quarantine import vpopmail

    try:
        return vpopmail.open_dir_safely(maildir)
    except (OSError, vpopmail.UnsafeDirectory) as exc:
        raise TempFail(f"cannot open {show(maildir)}: {exc}") from None


def _find(maildir: str, folder: str, match: Callable[[str], bool]) -> Found | None:
    """The file in Maildir++ `folder` (new/ or cur/) whose name passes
    `match` (releasetoken.matcher), if any."""
    top = _open_maildir(maildir)
    try:
        try:
            junk = os.open("." + folder, _DIR, dir_fd=top)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            import errno

            if exc.errno == errno.ELOOP:  # a symlink where the folder should be
                return None
            raise TempFail(f"cannot open {show(maildir)}/.{show(folder)}: {exc.strerror}") from None
        try:
            return _scan(junk, match)
        finally:
            os.close(junk)
    finally:
        os.close(top)


def _scan(junk: int, match: Callable[[str], bool]) -> Found | None:
    """The first name in `junk`'s new/ then cur/ that passes `match`. At most
    MAX_SCAN names are looked at, read a buffer at a time (scandir): a Junk
    folder of millions of files costs neither their list in memory nor a
    read of every name."""
    left = MAX_SCAN
    for sub in ("new", "cur"):
        try:
            sub_fd = os.open(sub, _DIR, dir_fd=junk)
        except OSError:
            continue
        try:
            with os.scandir(sub_fd) as entries:
                for entry in entries:
                    if left <= 0:
                        return None
                    left -= 1
                    name = entry.name
                    if name[:1] != "." and match(name):
                        return Found(sub, name)
        except OSError:  # unreadable: as if empty
            pass
        finally:
            os.close(sub_fd)
    return None


def _release(
    config: Config, domain: Domain, user: str, maildir: str, found: Found, token: Token, now: float
) -> str:
    """Move the file, record it (used token, ham ledger), confirm to the user."""
    from quarantine import maildir as md

    address = f"{user}@{domain.name}"
    folder = "." + config.deliver.junk_folder
    base = found.name.split(":", 1)[0]
    mac = token.mac.hex()
    owner = md.Owner.of(maildir)
    with md.MaildirLock(maildir):
        used = _read_used(maildir)
        _refuse(config, address, used, token, now)  # again: a release may have run meanwhile
        header = _move(maildir, folder, found, base)
        kept = [f for f in used if float(f[0]) > now - 3600 or int(f[1]) * 60 > now]
        lines = [" ".join(f) for f in kept] + [f"{now:.0f} {token.expires // 60} {mac} {base}"]
        try:
            md.rewrite(maildir, USED_FILE, "\n".join(lines).encode() + b"\n", owner, 0o600)
        except OSError as exc:  # released: a lost record only allows a harmless replay
            note = f"; not recorded as used: {exc.strerror}"
        else:
            note = ""
    note += _record_ham(maildir, base)
    note += _confirm(config, domain, address, header)
    moved = f"{folder}/{found.sub}/{show(found.name)} -> new/{show(base)}"
    return f"quarantine release: {show(address)}: {moved}{note}"


def _read_used(maildir: str) -> list[list[str]]:
    """The lines of USED_FILE: `released-at expiry-minute mac name`."""
    try:
        fd = os.open(os.path.join(maildir, USED_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TempFail(f"cannot read {show(maildir)}/{USED_FILE}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TempFail(f"{show(maildir)}/{USED_FILE} is not a regular file")
        data = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    out = []
    for line in data.decode("ascii", "replace").split("\n"):
        fields = line.split(" ")
        if len(fields) == 4 and fields[1].isdigit():
            try:
                float(fields[0])
            except ValueError:
                continue
            out.append(fields)
    return out


def _move(maildir: str, folder: str, found: Found, base: str) -> bytes:
    """Rename the Junk file into the inbox's new/ (no overwrite), fsync both
    directories; returns the start of its header."""
    top = _open_maildir(maildir)
    fds: list[int] = [top]
    try:
        try:
            junk = os.open(folder, _DIR, dir_fd=top)
            fds.append(junk)
            src = os.open(found.sub, _DIR, dir_fd=junk)
            fds.append(src)
            dst = os.open("new", _DIR, dir_fd=top)
            fds.append(dst)
            st = os.stat(found.name, dir_fd=src, follow_symlinks=False)
        except FileNotFoundError:  # released or expunged since it was found
            raise Dropped(f"{show(found.name)} left Junk meanwhile") from None
        except OSError as exc:
            raise TempFail(f"cannot open {show(maildir)}/{show(folder)}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise Dropped(f"{show(found.name)} is not a regular file")
        header = _read_header(src, found.name)
        try:
            os.stat(base, dir_fd=dst, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise Dropped(f"new/{show(base)} exists already")
        try:
            os.rename(found.name, base, src_dir_fd=src, dst_dir_fd=dst)
            os.fsync(dst)
            os.fsync(src)
        except OSError as exc:
            raise TempFail(f"cannot move {show(found.name)} to the inbox: {exc.strerror}") from None
        return header
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _read_header(dir_fd: int, name: str) -> bytes:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return b""
    try:
        data = os.read(fd, HEADER_LIMIT)
    finally:
        os.close(fd)
    return data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]


def header_value(header: bytes, name: bytes, limit: int = 160) -> str:
    """The first `name:` field of a header as one line of printable ASCII
    (unfolded; encoded words stay encoded; control bytes and 8-bit dropped)."""
    wanted = name.lower() + b":"
    lines = header.split(b"\n")
    for index, line in enumerate(lines):
        if line[: len(wanted)].lower() != wanted:
            continue
        value = line[len(wanted) :]
        for more in lines[index + 1 :]:
            if more[:1] not in (b" ", b"\t"):
                break
            value += b" " + more
        text = "".join(chr(b) if 32 <= b < 127 else " " for b in value)
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 3] + "..."
    return ""


def _record_ham(maildir: str, base: str) -> str:
    """Tell the trainer's ham ledger the user released this message (its next
    run learns it as ham, once). Loaded only here: a release is rare, and the
    ledger's JSON is not worth loading for every forged token."""
    from quarantine import hamledger

    try:
        hamledger.note_released(maildir, base)
    except (OSError, ValueError) as exc:  # released: the ledger must not undo that
        return f"; not noted for the ham ledger: {show(str(exc))}"
    return ""


def _confirm(config: Config, domain: Domain, address: str, header: bytes) -> str:
    """One confirmation mail to the mailbox (never to the sender), through
    qmail-inject; a failure is noted in the log line, the release stands."""
    sender = config.digest.sender or f"postmaster@{domain.name}"
    subject = header_value(header, b"subject") or "(no subject)"
    origin = header_value(header, b"from") or "(no sender)"
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S %z")
    unique = f"{time.time():.6f}.{os.getpid()}"
    message = (
        f"From: Mail quarantine <{sender}>\n"
        f"To: {address}\n"
        f"Subject: Released from quarantine: {subject[:120]}\n"
        f"Date: {stamp}\n"
        f"Message-ID: <release.{unique}@{domain.name}>\n"
        "Auto-Submitted: auto-replied\n"
        "X-Quarantine-Digest: release\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "As you asked, this message was moved from your Junk folder to your inbox:\n"
        "\n"
        f"  From:    {origin}\n"
        f"  Subject: {subject}\n"
        "\n"
        "It is also learned as wanted mail, so mail like it stays out of Junk.\n"
    ).encode("ascii", "replace")
    try:
        inject(config.digest.qmail_inject, sender, address, message)
    except OSError as exc:
        return f"; no confirmation: {show(str(exc))}"
    return ""


def inject(program: str, sender: str, recipient: str, message: bytes) -> None:
    """`qmail-inject -f SENDER -a RECIPIENT` with `message` on stdin (posix_spawn,
    no shell, no subprocess module). SIGPIPE, which this process ignores, is
    set back to its default for it: it runs as it would from a shell.
    OSError when it cannot run or fails."""
    _signal = __import__("_signal")  # `signal` without its enums (ms a start)

    read_fd, write_fd = os.pipe()
    try:
        pid = os.posix_spawn(
            program,
            [program, "-f" + sender, "-a", recipient],
            {"PATH": "/usr/bin:/bin"},
            # Its own output must not add lines to the one qmail logs for us.
            file_actions=[
                (os.POSIX_SPAWN_DUP2, read_fd, 0),
                (os.POSIX_SPAWN_CLOSE, write_fd),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsigdef=(_signal.SIGPIPE,),
        )
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    os.close(read_fd)
    try:
        view = memoryview(message)
        while view:
            view = view[os.write(write_fd, view) :]
    except BrokenPipeError:
        pass
    finally:
        os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise OSError(f"{program} exited {code}")
