"""What names a message across IMAP copies and moves (its first Message-ID and
its body, by digest), and the Junk log `deliver` appends one line to for each
message it files into Junk, so that the trainer's ham ledger knows a message
the user moves out before any trainer run has seen it in Junk.

On the mail path: imports only fastos (the posix calls, not os), _blake2
(hashlib's BLAKE2, without hashlib's OpenSSL), fcntl and, when the log is
locked, flockwait. `note_junk` raises no Exception: the message is delivered
already, and a line the log could not take only narrows what is learned.
"""

from _blake2 import blake2b
from fcntl import LOCK_EX, LOCK_NB, flock

from quarantine import fastos as os

LOG = "quarantine-hamledger.junk"  # in the Maildir, beside the ham ledger
LOG_LIMIT = 1 << 20  # bytes; past it deliver adds no line (the trainer empties it)
LOCK_WAIT = 2.0  # seconds deliver waits for the log's flock, at most
HEADER_LIMIT = 64 * 1024  # bytes of header read for the Message-ID
FIELDS = 6  # folder, name (hex), Message-ID digest, body digest, body length, mtime


def mid_digest(value: bytes) -> str:
    return blake2b(b"mid:" + value, digest_size=16).hexdigest()


def first_message_id(header: bytes) -> "bytes | None":
    """The value of the first Message-ID field (unfolded, without <>)."""
    value: bytes | None = None
    for line in header.split(b"\n"):
        if value is not None:
            if line[:1] in (b" ", b"\t"):
                value += line.strip()
                continue
            break
        if line[:11].lower() == b"message-id:":
            value = line[11:].strip()
    if value is None:
        return None
    value = value.strip(b"<> \t\r")
    return value or None


def _split(head: bytes) -> "int | None":
    """Where the body starts in `head`, or None when the header goes on."""
    ends = [i + n for i, n in ((head.find(b"\n\n"), 2), (head.find(b"\r\n\r\n"), 4)) if i >= 0]
    return min(ends) if ends else None


def read_head(fd: int) -> "tuple[str, int, int]":
    """(Message-ID digest or '', where the body starts, size) of the open file
    `fd`, from at most HEADER_LIMIT bytes of it (the body starts at the limit
    when the header is longer)."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, HEADER_LIMIT, 0)
    at = _split(head)
    found = first_message_id(head if at is None else head[:at])
    return (mid_digest(found) if found else "", len(head) if at is None else at, size)


def identify(fd: int, head: "tuple[str, int, int] | None" = None) -> "tuple[str, str, int]":
    """(Message-ID digest, body digest, body length) of the open file `fd`:
    the body read once, in blocks, its line ends taken as LF (a copy saved
    with CRLF is the same message)."""
    mid, offset, _size = head or read_head(fd)
    digest = blake2b(b"body:", digest_size=16)
    length = 0
    carry = b""
    while True:
        block = os.pread(fd, 1 << 16, offset)
        if not block:
            break
        offset += len(block)
        block = carry + block
        carry = b"\r" if block.endswith(b"\r") else b""
        if carry:
            block = block[:-1]
        block = block.replace(b"\r\n", b"\n")
        digest.update(block)
        length += len(block)
    digest.update(carry)
    length += len(carry)
    return mid, digest.hexdigest(), length


def note_junk(maildir: str, folder: str, name: str) -> None:
    """After `deliver` filed `name` into `maildir`'s `.folder/new/`: one line
    in the Junk log (appended in one write; skipped when the log is over
    LOG_LIMIT or anything fails: no Exception leaves it, since the delivery
    is done and must not turn into a temporary failure and a duplicate). No
    symlink is followed."""
    try:
        fd = os.open(
            os.path.join(maildir, f".{folder}", "new", name),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        )
        try:
            mid, body, blen = identify(fd)
            mtime = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        line = "\t".join(
            [f".{folder}", os.fsencode(name).hex(), mid, body, str(blen), f"{mtime:.0f}"]
        )
        log = os.open(
            os.path.join(maildir, LOG),
            os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            0o600,
        )
        try:
            # The trainer empties it under the same lock; a lock held longer
            # than LOCK_WAIT costs this line, not the delivery.
            try:
                flock(log, LOCK_EX | LOCK_NB)  # free, as nearly always
            except BlockingIOError:
                from quarantine.flockwait import flock_within

                flock_within(log, LOCK_WAIT)
            st = os.fstat(log)
            if st.st_mode & 0o170000 == 0o100000 and st.st_size < LOG_LIMIT:  # a regular file
                if os.geteuid() == 0:  # as qmail-local's uid it is the owner's already
                    owner = os.stat(maildir)
                    os.fchown(log, owner.st_uid, owner.st_gid)
                # A writer killed mid-line left no newline: end that line first.
                cut = st.st_size > 0 and os.pread(log, 1, st.st_size - 1) != b"\n"
                os.write(log, ("\n" if cut else "").encode() + (line + "\n").encode())
        finally:
            os.close(log)
    except Exception:  # noqa: S110 - delivered already: the line only narrows learning
        pass


def parse(data: bytes) -> "list[tuple[str, str, str, str, int, float]]":
    """The whole, well-formed lines of a Junk log: (folder, name, Message-ID
    digest, body digest, body length, mtime); anything else is skipped."""
    out = []
    for raw in data.split(b"\n")[:-1]:  # a last line without its newline: cut short
        fields = raw.decode("ascii", "replace").split("\t")
        if len(fields) != FIELDS:
            continue
        folder, name_hex, mid, body, blen, mtime = fields
        try:
            name = os.fsdecode(bytes.fromhex(name_hex))
            length, when = int(blen), float(mtime)
        except ValueError:
            continue
        if not folder.startswith(".") or "/" in folder or "/" in name or not name:
            continue
        if name.startswith(".") or folder in (".", ".."):
            continue
        out.append((folder, name, mid, body, length, when))
    return out
