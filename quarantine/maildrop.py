"""The old junk filters `quarantine migrate` replaces: a `.qmail` line that runs
maildrop with a filter file, and the filter files that file `X-Spam-Status: Yes`
into a Junk folder (the classic one and its known variants, and filters/maildrop-junk).
Anything else is NotRecognised, with the reason: reported, never touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex

MAX_FILTER = 64 * 1024  # a filter file larger than this is not the classic one

# The settings block of filters/maildrop-junk (values may differ per site);
# the rest of that file, normalised, has this digest.
JUNK_SETTINGS = ("SHELL", "VUSERINFO", "MAILDIRMAKE", "JUNK")
JUNK_DIGEST = "edb80d7f3bdf73327e1357147254319f3f2e596e5bb719f2b229fad015ccd47b"

_VAR = r"[A-Za-z_][A-Za-z0-9_]*"
_FOLDER = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,60}"
_SPAM_TEST = (
    r"/\^X-Spam-Status:[ ]?\*?(?:Yes|YES)[^/{}]*/(?::h|:H)?"
    r"|/\^X-Spam-Flag:[ ]?\*?(?:YES|Yes)[^/{}]*/(?::h|:H)?"
)
_CLASSIC = re.compile(
    rf"""
    (?P<prelude>(?:(?:SHELL=(?:"[^"`$]*"|[^\s"`$]+)|import[ ](?:EXT|HOST))[ ])*)
    (?P<var>{_VAR})=`(?P<vuserinfo>/?[\w./-]*vuserinfo)[ ]-d[ ]"?\$\{{?EXT\}}?@\$\{{?HOST\}}?"?`[ ]
    if[ ]\((?P<test>(?:{_SPAM_TEST})(?:[ ]?(?:&&|\|\|)[ ]?(?:{_SPAM_TEST}))?)\)[ ]\{{[ ]
    (?:`test[ ]-d[ ]"?\$(?P=var)/Maildir/\.(?P<folder>{_FOLDER})/?"?`[ ]
       if[ ]\(\$RETURNCODE[ ]?(?:==[ ]?1|!=[ ]?0)\)[ ]\{{[ ]
       `(?:/?[\w./-]*/)?maildirmake[ ]-f[ ](?P=folder)[ ]"?\$(?P=var)/Maildir/?"?`[ ]
       (?:`echo[ ]"?INBOX\.(?P=folder)"?[ ]>>[ ]?"?\$(?P=var)/Maildir/courierimapsubscribed"?`[ ])?
    \}}[ ])?
    (?:EXITCODE[ ]?=[ ]?99[ ])?
    to[ ]"\$(?P=var)/Maildir/\.(?P<junk>{_FOLDER})/?"[ ]\}}
    (?:[ ]to[ ]"(?:(?P<inbox>\$(?P=var)/Maildir/?)|\|[ ]?(?P<program>[^"`$\\]+))")?
    $""",
    re.VERBOSE,
)


class NotRecognised(Exception):
    """A maildrop line or filter this module does not know; the text says why."""


class Filter:
    """What a recognised filter does: files spam into `folder`, and ham
    goes to `ham`: None (falls through to the next `.qmail` line, or
    maildrop's default mailbox), `inbox` (the user's Maildir), or a
    program line (`|/home/vpopmail/bin/vdelivermail '' delete`)."""

    __slots__ = ("folder", "ham", "kind", "notes")

    def __init__(self, kind: str, folder: str, ham: str | None, notes: tuple[str, ...]) -> None:
        self.kind = kind
        self.folder = folder
        self.ham = ham
        self.notes = notes

    def __repr__(self) -> str:
        return f"Filter({self.kind!r}, {self.folder!r}, ham={self.ham!r})"


def normalise(text: str) -> str:
    """The filter's statements on one line: full-line comments gone, runs
    of white space one space, none inside parentheses, braces spaced."""
    lines = [x for x in text.split("\n") if not x.strip().startswith("#")]
    flat = " ".join(lines)
    # Braces spaced first, white space collapsed after: `\s*` on both sides
    # of the brace would rescan a long blank run at every position of it.
    flat = re.sub(r"([{}])", r" \1 ", flat)
    flat = re.sub(r"\s+", " ", flat).strip()
    flat = re.sub(r"\bif ?\(\s*", "if (", flat)
    flat = re.sub(r"\(\s+", "(", flat)
    return re.sub(r"\s+\)", ")", flat)


def recognise(text: str) -> Filter:
    """The filter in `text` (a maildrop filter file), or NotRecognised."""
    if "\0" in text:
        raise NotRecognised("holds a NUL byte: not a maildrop filter")
    junk = _maildrop_junk(text)
    if junk is not None:
        return junk
    flat = normalise(text)
    found = _CLASSIC.match(flat)
    if found is None:
        raise NotRecognised(_why(flat))
    if found["folder"] is not None and found["folder"] != found["junk"]:
        raise NotRecognised(f"makes folder .{found['folder']} but files spam into .{found['junk']}")
    notes = []
    if found["folder"] is None:
        notes.append("did not create the Junk folder on first use (quarantine does)")
    ham: str | None = None
    if found["inbox"] is not None:
        ham = "inbox"
    elif found["program"] is not None:
        ham = "|" + found["program"].strip()
    if "EXITCODE" not in flat:
        notes.append(
            "spam left maildrop with exit 0, so later .qmail lines delivered it again; "
            "quarantine deliver stops them (exit 99)"
        )
    return Filter("classic", found["junk"], ham, tuple(notes))


def _why(flat: str) -> str:
    """A short reason why a filter is not the classic one."""
    if "X-Spam" not in flat:
        return "does not test X-Spam-Status or X-Spam-Flag"
    for word, reason in (
        ("cc ", "copies mail elsewhere (cc)"),
        ("xfilter", "pipes mail through a program (xfilter)"),
        ("include", "includes another filter file"),
        ("exception", "uses exception blocks"),
        ("X-Spam-Level", "tests the score (X-Spam-Level), not the verdict"),
        ("score=", "tests the score, not the verdict"),
        ("else", "has an else branch"),
    ):
        if word in flat:
            return f"not the classic X-Spam-Status filter: {reason}"
    return "not the classic X-Spam-Status: Yes -> Junk filter (statements differ)"


def _maildrop_junk(text: str) -> Filter | None:
    """filters/maildrop-junk as shipped, its settings block aside."""
    if not text.startswith("# maildrop-junk:"):
        return None
    settings, digest = junk_body_digest(text)
    folder = settings.get("JUNK", "Junk")
    if digest != JUNK_DIGEST:
        raise NotRecognised("a changed copy of filters/maildrop-junk")
    if not re.fullmatch(_FOLDER, folder):
        raise NotRecognised(f"JUNK={folder!r} is not a folder name")
    return Filter("maildrop-junk", folder, None, ())


def junk_body_digest(text: str) -> tuple[dict[str, str], str]:
    """filters/maildrop-junk's settings and the digest of the rest, normalised."""
    settings: dict[str, str] = {}
    kept = []
    for line in text.split("\n"):
        match = re.fullmatch(r"([A-Z]+)=\"([^\"`$\\]*)\"", line.strip())
        if match and match[1] in JUNK_SETTINGS:
            settings[match[1]] = match[2]
            continue
        kept.append(line)
    return settings, hashlib.sha256(normalise("\n".join(kept)).encode()).hexdigest()


class MaildropLine:
    """A `.qmail` program line that runs maildrop on a filter file."""

    __slots__ = ("filter", "maildrop", "preline")

    def __init__(self, preline: str | None, maildrop: str, filter_path: str) -> None:
        self.preline = preline
        self.maildrop = maildrop
        self.filter = filter_path


_SHELL = set(";&|<>`$(){}*?[]~\\\n")


def parse_line(line: str, home: str) -> MaildropLine | None:
    """A `|[preline [-f...]] maildrop [FILTER]` line: the filter's path
    (relative ones and the default `.mailfilter` from `home`, where
    qmail-local runs the line). None when the line does not run maildrop;
    NotRecognised for a maildrop line with options or shell syntax."""
    text = line.rstrip(" \t\n")
    if not text.startswith("|"):
        return None
    try:
        words = shlex.split(text[1:], comments=False, posix=True)
    except ValueError:
        words = text[1:].split()
    names = [os.path.basename(w) for w in words]
    if "maildrop" not in names:
        return None
    at = names.index("maildrop")
    preline: str | None = None
    if at > 0:
        if names[0] != "preline" or any(not w.startswith("-") for w in words[1:at]):
            raise NotRecognised("maildrop is not run directly or through preline")
        if any(set(w) - set("-fdrFDR") for w in words[1:at]):
            raise NotRecognised("preline options other than -f, -d, -r")
        preline = words[0]
    rest = words[at + 1 :]
    if any(ch in _SHELL for ch in text.replace("|", "", 1)) or any(w.startswith("-") for w in rest):
        raise NotRecognised("maildrop options or shell syntax on the line")
    if len(rest) > 1:
        raise NotRecognised("more than one argument to maildrop")
    path = rest[0] if rest else ".mailfilter"
    return MaildropLine(preline, words[at], os.path.join(home, path))
