"""What an existing qmail installation already has, read for `quarantine
migrate`: QmailToaster's signconf.xml, the patch's control/dksign and
spfbehavior, DKIM keys (type, size, owner), and root crontab lines that run a
per-file sa-learn loop over Junk folders. Reading only; nothing is changed here.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from quarantine import backup
from quarantine.names import show

MAX_XML = 1 << 20
MAX_CONTROL = 64 * 1024
MAX_KEY = 64 * 1024
MIN_BITS = 1024  # RFC 8301


class LegacyError(Exception):
    """An old configuration file that cannot be read or understood."""


def control_line(path: str) -> str | None:
    """The first line of a qmail control file (None: no such file), as
    qmail's control_readline reads it: trailing blanks dropped."""
    state, data = backup.read(path, MAX_CONTROL)
    if state.kind == "absent":
        return None
    if data is None:
        raise LegacyError(f"{show(path)}: a symlink, not read")
    return data.decode("latin-1").split("\n", 1)[0].rstrip(" \t\r")


def spfbehavior(path: str) -> int | None:
    """control/spfbehavior as qmail-spf reads it (0-6), None when absent."""
    line = control_line(path)
    if line is None:
        return None
    if not line.strip().isdigit() or not 0 <= int(line.strip()) <= 6:
        raise LegacyError(f"{show(path)}: {show(line)!r} is not an SPF level 0-6")
    return int(line.strip())


# ---------------------------------------------------------------- signconf.xml


@dataclass
class Identity:
    """Whom the old setup signed for: an entry of signconf.xml (the global
    one or a domain's, merged with the global one as the Perl qmail-remote
    merges them), or a domain found through a `%` template. `types` holds
    `dkim` and/or `domainkey`; empty means the entry turns signing off."""

    entry: str  # `global`, a domain, or `template`
    domain: str  # d= (the entry's `domain`, read from a file when it names one)
    selector: str
    keyfile: str
    types: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)


def read_signconf(path: str, control_me: str) -> list[Identity] | None:
    """signconf.xml's signing identities, the global one first; None when
    there is no such file. The global entry's `domain` may name a file
    (control/me): its first word is the domain."""
    state, data = backup.read(path, MAX_XML)
    if state.kind == "absent":
        return None
    if data is None:
        raise LegacyError(f"{show(path)}: a symlink, not read")
    import xml.etree.ElementTree as ET

    _refuse_doctype(path, data)
    try:
        root = ET.fromstring(data)  # noqa: S314 - root's own file, no DOCTYPE (checked above)
    except ET.ParseError as exc:
        raise LegacyError(f"{show(path)}: not XML: {exc}") from None
    if root.tag != "dkimsign":
        raise LegacyError(f"{show(path)}: the root element is <{show(root.tag)}>, not <dkimsign>")
    entries = {child.tag.lower(): child for child in root}
    if "global" not in entries:
        raise LegacyError(f"{show(path)}: no <global> entry")
    glob = entries["global"]
    out = [_identity("global", dict(glob.attrib), _types(glob), control_me)]
    for name, element in entries.items():
        if name == "global":
            continue
        merged = {**glob.attrib, **element.attrib}  # missing settings come from global
        out.append(_identity(name, merged, _types(element), control_me))
    return out


class _Doctype(Exception):
    """Raised by the expat handlers of _refuse_doctype."""


def _refuse(*_args: object) -> None:
    raise _Doctype


def _refuse_doctype(path: str, data: bytes) -> None:
    """LegacyError for a document with a DOCTYPE or an entity declaration:
    expat reports them in whatever encoding the document is written (UTF-16
    too), before anything could be expanded."""
    from xml.parsers import expat

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    try:
        parser.Parse(data, True)
    except _Doctype:
        raise LegacyError(
            f"{show(path)}: has a DOCTYPE or entities; not the QmailToaster file"
        ) from None
    except (expat.ExpatError, ValueError) as exc:  # ValueError: an encoding expat cannot use
        raise LegacyError(f"{show(path)}: not XML: {exc}") from None


def _types(element: object) -> dict[str, dict[str, str]]:
    import xml.etree.ElementTree as ET

    assert isinstance(element, ET.Element)
    return {
        (child.attrib.get("id") or "").lower(): dict(child.attrib)
        for child in element
        if child.tag == "types"
    }


def _identity(
    entry: str, attrs: dict[str, str], types: dict[str, dict[str, str]], control_me: str
) -> Identity:
    notes: list[str] = []
    domain = attrs.get("domain", "")
    if domain.startswith("/"):
        line = control_line(domain)
        domain = (line or "").split(" ")[0].strip().lower()
        if not domain:
            notes.append(f"its domain file {show(attrs['domain'])} is missing or empty")
    domain = domain.lower() or (entry if entry != "global" else "")
    if not domain and entry == "global":
        line = control_line(control_me)
        domain = (line or "").strip().lower()
    keyfile = attrs.get("keyfile", "").replace("%", domain)
    kinds = (
        frozenset(t for t in types if t in ("dkim", "domainkey"))
        if "none" not in types
        else frozenset()
    )
    unknown = sorted(t for t in types if t not in ("dkim", "domainkey", "none"))
    if unknown:
        notes.append(f"signature types {', '.join(map(show, unknown))} not known")
    if entry != "global" and domain != entry:
        notes.append(f"signs as d={show(domain)}, not as its own domain")
    return Identity(entry, domain, attrs.get("selector", ""), keyfile, kinds, notes)


# ---------------------------------------------------------------- keys


@dataclass
class KeyInfo:
    """A private key file as found: `kind` rsa or ed25519 (empty when it
    could not be read as a key), its size in bits, its state and owner."""

    path: str
    state: str  # ok, weak, missing, symlink, unreadable
    kind: str = ""
    bits: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    problem: str = ""


def key_info(path: str) -> KeyInfo:
    """What is at `path`, judged as a DKIM signing key."""
    try:
        state, data = backup.read(path, MAX_KEY)
    except backup.FileError as exc:
        return KeyInfo(path, "unreadable", problem=str(exc))
    if state.kind == "absent":
        return KeyInfo(path, "missing")
    if data is None:
        return KeyInfo(path, "symlink", problem="a symlink; not followed")
    info = KeyInfo(path, "ok", mode=state.mode, uid=state.uid, gid=state.gid)
    kind, bits, problem = judge_key(data)
    info.kind, info.bits = kind, bits
    if problem:
        info.state, info.problem = "unreadable", problem
    elif kind == "rsa" and bits < MIN_BITS:
        info.state = "weak"
    return info


def judge_key(data: bytes) -> tuple[str, int, str]:
    """(kind, bits, problem) of a key file's bytes: an RSA PEM (PKCS#1 or
    #8), an ed25519 PEM, or dkimpy's base64 ed25519 seed."""
    text = data.strip()
    if re.fullmatch(rb"[A-Za-z0-9+/]{43}=", text):
        return "ed25519", 256, ""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    try:
        key = serialization.load_pem_private_key(text + b"\n", password=None)
    except (ValueError, TypeError) as exc:
        return "", 0, f"not a PEM private key ({exc})"
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa", key.key_size, ""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519", 256, ""
    return "", 0, "neither RSA nor ed25519"


def template_keys(template: str, suffix: str = "") -> list[tuple[str, str]]:
    """(domain, key path) for each directory the `%` of `template` can stand
    for that holds a key file (or a symlink) at the template's place (with
    `suffix` added: the weak keys an earlier migrate set aside)."""
    if template.count("%") != 1:
        return []
    head, tail = template.split("%")
    top = head.rstrip("/") if head.endswith("/") else os.path.dirname(head)
    if not head.endswith("/") or "/" not in tail:
        return []
    try:
        names = sorted(os.listdir(top))
    except OSError:
        return []
    out = []
    for name in names:
        if name.startswith(".") or not re.fullmatch(r"[A-Za-z0-9._-]{1,253}", name):
            continue
        try:
            st = os.stat(os.path.join(top, name), follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        path = template.replace("%", name)
        if os.path.lexists(path + suffix):
            out.append((name.lower(), path))
    return out


def template_of(identities: list[Identity]) -> tuple[str | None, list[Identity]]:
    """One `dkim.sign_template` that finds each identity's key file
    (`DIR/%/SELECTOR` with DIR/DOMAIN/SELECTOR the key), for the selector most
    of them use; and the identities it cannot express (another selector, or
    a key file elsewhere)."""
    usable = [i for i in identities if i.types and i.keyfile]
    counts: dict[str, int] = {}
    for ident in usable:
        counts[ident.selector] = counts.get(ident.selector, 0) + 1
    if not counts:
        return None, []
    selector = max(sorted(counts), key=lambda s: counts[s])
    bases: dict[str, int] = {}
    for ident in usable:
        base = _base(ident)
        if base is not None and ident.selector == selector:
            bases[base] = bases.get(base, 0) + 1
    if not bases:
        return None, usable
    base = max(sorted(bases), key=lambda b: bases[b])
    template = f"{base}/%/{selector}"
    left = [i for i in usable if i.selector != selector or _base(i) != base]
    return template, left


def _base(ident: Identity) -> str | None:
    """DIR when the key file is DIR/<domain>/<selector>."""
    directory, selector = os.path.split(ident.keyfile)
    base, domain = os.path.split(directory)
    if selector == ident.selector and domain.lower() == ident.domain and base.startswith("/"):
        return base
    return None


# ---------------------------------------------------------------- crontab

_SCHEDULE = re.compile(r"^\s*((?:@\w+)|(?:\S+\s+){4}\S+)\s+(.*)$")


@dataclass
class CronLine:
    """A crontab line running sa-learn: its schedule, the user field (system
    crontabs), and whether it is the per-file loop over Junk folders."""

    number: int
    text: str
    schedule: str
    user: str | None
    loop: bool


def cron_lines(text: str, system: bool) -> list[CronLine]:
    """Lines of a crontab that run sa-learn (comments and variables aside)."""
    out = []
    for number, line in enumerate(text.split("\n"), 1):
        bare = line.strip()
        if not bare or bare.startswith("#") or "sa-learn" not in bare:
            continue
        match = _SCHEDULE.match(line)
        if match is None:
            continue
        schedule, command = match[1], match[2]
        user = None
        if system:
            user, _, command = command.partition(" ")
            command = command.lstrip()
        loop = (
            re.search(r"\bsa-learn\b[^|;&]*--spam", command) is not None
            and re.search(r"\.?(Junk|Spam)\b", command) is not None
            and re.search(r"\b(for|while|find|xargs)\b", command) is not None
        )
        out.append(CronLine(number, line, schedule, user, loop))
    return out
