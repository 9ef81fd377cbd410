"""Release tokens: the TOKEN in a digest's `quarantine-release-TOKEN@DOMAIN`,
an HMAC over the mailbox and one Junk message's Maildir name with an expiry,
and the key file it is made with (digest.secret_file, created 0600 once).

A token is 20 bytes written as 32 characters of lower-case base32 (a-z, 2-7):
a version byte, the expiry in minutes since the epoch (4 bytes), a 3-byte tag
of the mailbox (keyed, so the release program finds the mailbox without a
list of every user's tokens) and 12 bytes of HMAC-SHA256. Only letters and
digits: safe as an address local part, and read the same in any case, since
mail software may change the case of a local part on the way. Standard
library only: `quarantine release` runs on the mail path.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

VERSION = 1
LENGTH = 32  # characters of the base32 text
_RAW = 20  # bytes: version 1, expiry 4, mailbox tag 3, MAC 12
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case
_VALUES = {ch: i for i, ch in enumerate(_ALPHABET)}
KEY_BYTES = 32


class KeyProblem(Exception):
    """The key file cannot be read, made, or is unsafe (its text says why)."""


class Token:
    """A token's parts, as parse() finds them (nothing checked but the form)."""

    __slots__ = ("expires", "mac", "tag")

    def __init__(self, expires: int, tag: bytes, mac: bytes) -> None:
        self.expires = expires  # seconds since the epoch, a whole minute
        self.tag = tag
        self.mac = mac


def _name_part(name: str) -> str:
    """The part of a Maildir file name that stays when an IMAP server sets a
    flag (`...,S=123:2,S` -> `...,S=123`), and when new/ becomes cur/."""
    return name.split(":", 1)[0]


def _hmac(key: bytes, data: bytes) -> bytes:
    # Imported here: a text that is no token at all is dropped without OpenSSL.
    import hashlib
    import hmac

    return hmac.new(key, data, hashlib.sha256).digest()


def _head(minutes: int) -> bytes:
    return bytes([VERSION]) + minutes.to_bytes(4, "big")


def mailbox_tag(key: bytes, domain: str, user: str) -> bytes:
    data = b"mailbox\0" + domain.lower().encode() + b"\0" + user.lower().encode()
    return _hmac(key, data)[:3]


def _mac_prefix(expires_min: int, domain: str, user: str) -> bytes:
    """What the MAC covers before the Maildir name: the same for every name
    of one mailbox and expiry."""
    return b"\0".join(
        [b"release", _head(expires_min), domain.lower().encode(), user.lower().encode(), b""]
    )


def _name_bytes(name: str) -> bytes:
    return _name_part(name).encode("utf-8", "surrogateescape")


def _mac(key: bytes, expires_min: int, domain: str, user: str, name: str) -> bytes:
    return _hmac(key, _mac_prefix(expires_min, domain, user) + _name_bytes(name))[:12]


def make(key: bytes, domain: str, user: str, name: str, expires: float) -> str:
    """The token releasing Junk file `name` of `user@domain` until `expires`
    (seconds since the epoch, rounded down to the minute)."""
    minutes = int(expires // 60)
    raw = _head(minutes) + mailbox_tag(key, domain, user) + _mac(key, minutes, domain, user, name)
    return _b32(raw)


def _b32(raw: bytes) -> str:
    """RFC 4648 base32 of 20 bytes (no padding needed), in lower case. By
    hand: the base64 module imports `re`, a cost the mail path does not pay."""
    number = int.from_bytes(raw, "big")
    return "".join(_ALPHABET[(number >> (5 * (LENGTH - 1 - i))) & 31] for i in range(LENGTH))


def parse(text: str) -> Token | None:
    """The parts of a token in any case, or None for anything that is not
    one (wrong length, alphabet or version)."""
    if len(text) != LENGTH:
        return None
    number = 0
    for ch in text.lower():
        value = _VALUES.get(ch)
        if value is None:
            return None
        number = number << 5 | value
    raw = number.to_bytes(_RAW, "big")
    if raw[0] != VERSION:
        return None
    minutes = int.from_bytes(raw[1:5], "big")
    return Token(minutes * 60, raw[5:8], raw[8:])


def matches(key: bytes, token: Token, domain: str, user: str, name: str) -> bool:
    """Does `token` release Junk file `name` of `user@domain`? (Expiry is the
    caller's to check: an expired token is told apart from a forged one.)"""
    match = matcher(key, token, domain, user)
    return match is not None and match(name)


def matcher(key: bytes, token: Token, domain: str, user: str) -> Callable[[str], bool] | None:
    """matches() for many names of one mailbox: None when the token's tag is
    not this mailbox's (no name can match), else a test of one Maildir name.
    The tag is checked once and the HMAC's state after the fixed prefix
    (version, expiry, domain, user) is kept: per name, only the name is
    hashed and 12 bytes compared."""
    import hashlib
    import hmac

    if not hmac.compare_digest(mailbox_tag(key, domain, user), token.tag):
        return None
    start = hmac.new(key, _mac_prefix(token.expires // 60, domain, user), hashlib.sha256)
    wanted = token.mac
    same = hmac.compare_digest

    def match(name: str) -> bool:
        state = start.copy()
        state.update(_name_bytes(name))
        return same(state.digest()[:12], wanted)

    return match


def read_key(path: str) -> bytes:
    """The key in `path`: a regular file (not followed through a symlink)
    that no other user can read or write. KeyProblem when it is missing or
    unsafe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyProblem(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyProblem(f"{path} is not a regular file")
        if st.st_mode & 0o007:
            raise KeyProblem(
                f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                "anyone could forge release tokens; chmod o-rwx it"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise KeyProblem(f"{path} does not hold a hex key") from None
    if len(key) < 16:
        raise KeyProblem(f"{path}: the key is shorter than 16 bytes")
    return key


def ensure_key(path: str, owner: tuple[int, int] | None = None) -> bytes:
    """The key in `path`, made first if there is none: 32 random bytes in hex,
    written to a temporary file (0600, O_EXCL, O_NOFOLLOW), fsynced and linked
    into place, so a reader never sees half a key and two first runs agree.
    As root, `owner` (uid, gid) gets the file: the uid `quarantine release`
    runs as (vpopmail's) must read it."""
    if os.path.lexists(path):
        return read_key(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    temp = f"{path}.tmp.{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, 0o600)
    except FileExistsError:
        os.unlink(temp)  # left by a crashed run with our pid
        fd = os.open(temp, flags, 0o600)
    try:
        try:
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, owner[0], owner[1])
            os.fchmod(fd, 0o600)
            os.write(fd, os.urandom(KEY_BYTES).hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path, follow_symlinks=False)
        except FileExistsError:
            pass  # another first run won: use its key
    finally:
        os.unlink(temp)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return read_key(path)
