"""`quarantine-queue`, run by qmail-smtpd through QMAILQUEUE in place of
qmail-queue: verify DKIM/SPF/DMARC, add our headers, apply the DKVERIFY /
spfbehavior / DMARC policy, then hand the message and the untouched envelope
to the real qmail-queue and exit with its code.
"""

from __future__ import annotations

import os

from quarantine.fileio import read_fd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence, Set

    from quarantine.config import Config

# qmail-queue(8) codes used here; everything unexpected is 81 (temporary).
REJECT = 31
READ_ERROR = 54
DEFER = 71
INTERNAL = 81


def _log(text: str) -> None:
    """One line for qmail-smtpd's log (stderr); never stdout, that is fd 1."""
    line = " ".join(text.split())[:900]
    try:
        os.write(2, f"quarantine-queue: {line}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def envelope_sender(envelope: bytes) -> str:
    """The sender of the `F` record (empty for a bounce or a bad envelope)."""
    if not envelope.startswith(b"F"):
        return ""
    return envelope[1 : envelope.find(b"\0") if b"\0" in envelope else 1].decode("utf-8", "replace")


def trusted_ids(cfg: Config) -> set[str]:
    """Every authserv-id `quarantine deliver` believes here: ours and those
    in deliver.authserv_ids. Incoming fields claiming any of them are
    forgeries unless this connection may carry them (`kept_ids`)."""
    from quarantine.config import authserv_id

    ids = {authserv_id(cfg)} | set(cfg.deliver.authserv_ids)
    return {i.lower().rstrip(".") for i in ids if i.strip()}


def kept_ids(environ: Mapping[str, str]) -> set[str]:
    """$QUARANTINE_KEEP_RESULTS: the ids whose results this connection may
    bring in (the other MX relaying what it verified), set per client
    address in the tcpserver rules; commas or spaces between them."""
    text = environ.get("QUARANTINE_KEEP_RESULTS", "")
    return {word.lower().rstrip(".") for word in text.replace(",", " ").split()}


def rewrite_headers(message: bytes, ids: Set[str], keep: Set[str] = frozenset()) -> list[bytes]:
    """RFC 8601 §5: incoming Authentication-Results claiming one of `ids`
    (all ids deliver trusts), and Received-SPF naming one as receiver, are
    renamed X-Original-...; `keep` are ids this connection may carry. A field
    is claimed if either reading of its bytes says so, ours or deliver's. The
    message comes back as pieces (views of it and the new names), so a large
    one is not copied; only the fields with those two names are looked at."""
    from quarantine import verdict
    from quarantine.message import body_offset, deliver_value, field_name, field_spans, field_value

    renamed = ids - keep
    view = memoryview(message)
    pieces: list[bytes] = []
    done = 0
    names = (b"authentication-results", b"received-spf")
    for start, stop in field_spans(message, names, body_offset(message)) if renamed else ():
        raw = message[start:stop]
        claimed = set()
        for value in (field_value(raw), deliver_value(raw)):
            if field_name(raw) == "received-spf":
                claimed.add(verdict.received_spf(value)[1])
            else:
                parsed = verdict.auth_results(value)
                claimed.add(parsed[0] if parsed is not None else "")
        if claimed & renamed:
            pieces += [view[done:start], b"X-Original-"]  # type: ignore[list-item]
            done = start
    if not pieces:
        return [message]
    pieces.append(view[done:])  # type: ignore[arg-type]
    return pieces


def run_qmail_queue(path: str, message: Sequence[bytes], envelope: bytes) -> int:
    """The real qmail-queue with the message (its pieces, in order) on fd 0
    and the envelope on fd 1, written in that order (it reads them in that
    order); its exit code. As
    qmail-smtpd's qmail_close() has it, a 0 after it stopped reading (a write
    failed) is no success: 54, the sender retries. posix_spawn, not
    subprocess (whose import costs a few ms a message); SIGPIPE, which this
    process ignores, is set back to its default for it, as subprocess did."""
    _signal = __import__("_signal")  # `signal` without its enums (ms a start)

    msg_r, msg_w = os.pipe()
    env_r, env_w = os.pipe()
    try:
        pid = os.posix_spawn(
            path,
            [path],
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, msg_r, 0), (os.POSIX_SPAWN_DUP2, env_r, 1)],
            setsigdef=(_signal.SIGPIPE,),
        )
    except OSError as exc:
        for fd in (msg_w, env_w):
            os.close(fd)
        _log(f"cannot run {path}: {exc} (#4.3.0)")
        return INTERNAL
    finally:
        os.close(msg_r)
        os.close(env_r)
    unread = ""
    try:
        for fd, pieces, what in (
            (msg_w, message, "the message"),
            (env_w, [envelope], "the envelope"),
        ):
            try:
                for data in pieces:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
            except BrokenPipeError:
                unread = unread or what  # it stopped reading
            finally:
                os.close(fd)
    finally:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code < 0:
        _log(f"{path} crashed (signal {-code}) (#4.3.0)")
        return INTERNAL
    if code == 0 and unread:
        _log(f"{path} exited 0 but did not read {unread} (#4.3.0)")
        return READ_ERROR
    return code


def queue(argv: list[str]) -> int:
    """Entry point: never 0 without the real qmail-queue having said 0."""
    try:
        return _queue()
    except BaseException as exc:  # mail path: defer, never crash
        _log(f"internal error: {type(exc).__name__}: {exc} (#4.3.0)")
        return INTERNAL


def _queue() -> int:
    from quarantine import config

    try:
        cfg = config.load()
    except Exception as exc:
        _log(f"configuration: {exc} (#4.3.5)")
        return DEFER
    real = cfg.verify.qmail_queue
    _signal = __import__("_signal")  # `signal` without its enums (ms a start)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_IGN)  # BrokenPipeError instead of death
    try:
        message = read_fd(0)
        envelope = read_fd(1)
    except OSError as exc:
        _log(f"cannot read message or envelope: {exc} (#4.3.0)")
        return READ_ERROR
    ids, keep = trusted_ids(cfg), kept_ids(os.environ)
    if "RELAYCLIENT" in os.environ:
        # Authenticated or local senders: nothing is verified or added, but
        # fields forged in the name of any id deliver trusts are still renamed
        # (RFC 8601 section 5): `quarantine deliver` must never take a
        # sender's word for our results.
        return run_qmail_queue(real, rewrite_headers(message, ids, keep), envelope)
    from quarantine.auth import verify

    report = verify.verify_message(
        cfg, message, envelope_sender(envelope), os.environ.get("TCPREMOTEIP") or None
    )
    if report.code != verify.ACCEPT:
        _log(report.reason)
        return report.code
    pieces = [report.header_lines(), *rewrite_headers(message, ids, keep)]
    return run_qmail_queue(real, pieces, envelope)
