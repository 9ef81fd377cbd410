"""Property-based tests (hypothesis) of header parsing and the junk verdict:
nothing read is lost or altered, well-formed headers parse to their unfolded
values, and the verdict believes only our own authserv-id."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from quarantine import config, message, verdict

# Hypothesis' caches (local constants, Unicode tables) go to a temp dir, not
# the repo: its pytest plugin fills them at collection, so set it at import.
_HOME = tempfile.mkdtemp(prefix="quarantine-hypothesis-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
set_hypothesis_home_dir(_HOME)

settings.register_profile(
    "quarantine",
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=int(os.environ.get("QUARANTINE_PROPERTY_EXAMPLES", "300")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("quarantine")


OURS = "mx.example.test"
TRUSTED = "trusted.example"

# --- read_head ---------------------------------------------------------------

EOL = st.sampled_from([b"\n", b"\r\n"])
NAME = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
    min_size=1,
    max_size=20,
).map(str.encode)
# Visible Latin-1 characters (str.strip() would eat \x85 and \xa0).
WORD = st.text(
    alphabet=st.characters(
        codec="latin-1", exclude_categories=["Cc", "Zs", "Zl", "Zp"], exclude_characters="\x85"
    ),
    min_size=1,
    max_size=12,
)
PART = st.lists(WORD, min_size=1, max_size=4).map(" ".join)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[bytes, list[tuple[str, str]], bytes]:
    """(message, expected (name, unfolded value) pairs, body)."""
    eol = draw(EOL)
    out = []
    expected = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(NAME)
        first = draw(st.one_of(st.just(""), PART))
        folds = draw(
            st.lists(st.tuples(st.sampled_from([" ", "\t", "  ", " \t"]), PART), max_size=3)
        )
        space = draw(st.sampled_from(["", " ", "\t"]))
        line = name + b":" + (space + first).encode("latin-1") + eol
        for lead, part in folds:
            line += (lead + part).encode("latin-1") + eol
        out.append(line)
        value = " ".join(p for p in [first, *(part for _, part in folds)] if p)
        expected.append((name.decode("ascii").lower(), value))
    body = draw(st.binary(max_size=200))
    return b"".join(out) + eol + body, expected, body


def any_message() -> st.SearchStrategy[bytes]:
    """Random bytes, and header-ish line soups with NULs, CR, long lines."""
    line = st.one_of(
        st.binary(max_size=80),
        st.sampled_from(
            [b"Subject: x", b"\tfold", b" fold", b"", b"\r", b"From x", b"X\x00Y: z", b":", b"A:"]
        ),
        st.integers(message.MAX_LINE - 3, message.MAX_LINE + 3).map(lambda n: b"X: " + b"a" * n),
    )
    soup = st.tuples(st.lists(line, max_size=12), EOL, st.binary(max_size=100)).map(
        lambda t: t[1].join(t[0]) + t[2]
    )
    return st.one_of(st.binary(max_size=500), soup)


@PROFILE
@given(data=any_message(), limit=st.one_of(st.integers(0, 200), st.just(1 << 20)))
def test_read_head_loses_nothing(data: bytes, limit: int) -> None:
    """Any bytes: From_ line + head lines + what is left is the input, unaltered."""
    stream = io.BytesIO(data)
    head = message.read_head(stream, limit)
    rest = stream.read()
    assert head.from_line + b"".join(head.lines) + rest == data
    assert head.size == sum(map(len, head.lines))
    for name, value in head.headers:
        assert name == name.lower() and ":" not in name
        assert "\n" not in value


@PROFILE
@given(case=well_formed())
def test_read_head_parses_well_formed(case: tuple[bytes, list[tuple[str, str]], bytes]) -> None:
    """Well-formed folded headers parse to their unfolded values; the body stays unread."""
    data, expected, body = case
    stream = io.BytesIO(data)
    head = message.read_head(stream, 1 << 20)
    assert head.complete
    assert head.headers == expected
    assert stream.read() == body
    for line in head.lines[:-1]:
        assert message.is_header_line(line) or line[:1] in (b" ", b"\t")


# --- verdict -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> config.DeliverConfig:
    path = Path(tmp_path_factory.mktemp("props")) / "q.yaml"
    path.write_text(f"deliver:\n  authserv_ids: [{OURS}]\n  trusted_domains: [{TRUSTED}]\n")
    return config.load_file(str(path), write_cache=False).deliver


NUMBER = st.one_of(
    st.sampled_from(
        ["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "1e9", "", "x", "5,0", "0x10"]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-1000, 1000).map(str),
)
TAIL = st.text(max_size=40)
YES_WORD = st.sampled_from(["Yes", "yes", "YES", " Yes", "Yes "])
NO_WORD = st.sampled_from(["No", "no", "NO", " No "])
JUNK_WORD = st.one_of(st.sampled_from(["", "Maybe", "Yes;", "Y es", "Yess"]), st.text(max_size=10))


def status(word: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    rest = st.one_of(
        st.just(""),
        st.tuples(NUMBER, TAIL).map(lambda t: f", score={t[0]} required=5.0 {t[1]}"),
        TAIL.map(lambda t: "," + t),
    )
    return st.tuples(word, rest).map(lambda t: ("x-spam-status", t[0] + t[1]))


SPAM_YES = status(YES_WORD)
SPAM_NO = status(NO_WORD)

METHOD_RESULT = st.sampled_from(
    [
        "dkim=pass header.d=trusted.example",
        "dkim=pass header.i=@sub.trusted.example",
        "dkim=pass header.d=other.example",
        "dkim=fail header.d=trusted.example",
        "spf=fail smtp.mailfrom=x@y",
        "spf=pass",
        "dmarc=fail header.from=y.example policy.dmarc=reject",
        "dmarc=fail (p=reject) header.from=y.example",
        "none",
    ]
)
COMMENT = st.text(alphabet="abc ;=\"'.", max_size=15).map(lambda t: f" ({t})")


def foreign_id() -> st.SearchStrategy[str]:
    """An authserv-id that is not ours, lookalikes included."""
    ids = st.one_of(
        st.sampled_from(
            [
                "evil.example",
                "mx.example.test.evil",
                "mx.example.tes",
                "xmx.example.test",
                "mx-example-test",
            ]
        ),
        st.text(alphabet="abcmxet.-_0", min_size=1, max_size=20),
    )
    return ids.filter(lambda s: s.lower().rstrip(".") != OURS)


@st.composite
def foreign_ar(draw: st.DrawFn) -> tuple[str, str]:
    """Authentication-Results from somebody else, any claims, comments, quotes."""
    prefix = draw(st.sampled_from(["", " ", "(mx.example.test) ", f"({OURS}; dkim=pass) "]))
    ident = draw(foreign_id())
    claims = draw(
        st.lists(
            st.one_of(METHOD_RESULT, st.text(max_size=30), COMMENT, st.just('"a;b"')), max_size=4
        )
    )
    value = prefix + ident + "".join("; " + c for c in claims)
    return ("authentication-results", value)


@st.composite
def our_ar(draw: st.DrawFn) -> tuple[tuple[str, str], bool]:
    """A well-formed Authentication-Results of ours; True when it has a trusted dkim pass."""
    results = draw(st.lists(st.tuples(METHOD_RESULT, st.one_of(st.just(""), COMMENT)), max_size=4))
    ident = draw(st.sampled_from([OURS, OURS.upper(), OURS + "."]))
    value = ident + "".join(f"; {r}{c}" for r, c in results) if results else ident + "; none"
    trusted = any(r.startswith("dkim=pass") and TRUSTED in r for r, _ in results)
    return ("authentication-results", value), trusted


SPF = st.one_of(
    st.sampled_from(
        [
            f"fail ({OURS}: domain of x does not designate y)",
            "pass (evil.example: ok)",
            f"softfail receiver={OURS}",
            "garbage ((((",
            "",
        ]
    ),
    st.text(max_size=40),
).map(lambda v: ("received-spf", v))
OTHER = st.tuples(
    st.sampled_from(["subject", "x-spam-flag", "x-spam-status", "from", "x-quarantine"]),
    st.text(max_size=40),
)


@st.composite
def header_set(draw: st.DrawFn) -> tuple[list[tuple[str, str]], set[int], bool]:
    """(headers, indices of the foreign Authentication-Results, trusted dkim pass?)."""
    items: list[tuple[tuple[str, str], str]] = []
    trusted = False
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["yes", "no", "junk", "foreign", "ours", "spf", "other"]))
        if kind == "yes":
            items.append((draw(SPAM_YES), kind))
        elif kind == "no":
            items.append((draw(SPAM_NO), kind))
        elif kind == "junk":
            items.append((draw(status(JUNK_WORD)), kind))
        elif kind == "foreign":
            items.append((draw(foreign_ar()), kind))
        elif kind == "ours":
            ar, is_trusted = draw(our_ar())
            trusted = trusted or is_trusted
            items.append((ar, kind))
        elif kind == "spf":
            items.append((draw(SPF), kind))
        else:
            items.append((draw(OTHER), kind))
    headers = [h for h, _ in items]
    foreign = {i for i, (_, kind) in enumerate(items) if kind == "foreign"}
    return headers, foreign, trusted


HeaderSet = tuple[list[tuple[str, str]], set[int], bool]


@PROFILE
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(
                ["x-spam-status", "x-spam-flag", "authentication-results", "received-spf", "x"]
            ),
            st.text(),
        ),
        max_size=8,
    )
)
def test_decide_never_raises(cfg: config.DeliverConfig, headers: list[tuple[str, str]]) -> None:
    """Arbitrary values in every header the verdict reads: an action, never an exception."""
    decision = verdict.decide(headers, cfg)
    assert decision.action in {"junk", "inbox", "bounce"}
    assert isinstance(decision.reason, str)
    score = decision.facts.score
    assert score is None or abs(score) < 1e9


@PROFILE
@given(case=header_set(), yes=SPAM_YES, where=st.integers(0, 20))
def test_spam_yes_is_junk_unless_trusted_dkim(
    cfg: config.DeliverConfig, case: HeaderSet, yes: tuple[str, str], where: int
) -> None:
    """An X-Spam-Status Yes anywhere gives junk, unless our trusted dkim pass is there."""
    headers, _, trusted = case
    headers = [*headers]
    headers.insert(where % (len(headers) + 1), yes)
    decision = verdict.decide(headers, cfg)
    if trusted:
        assert (decision.action, decision.rule) == ("inbox", "trusted-dkim")
    else:
        assert decision.action == "junk", (headers, decision.reason)


@PROFILE
@given(case=header_set())
def test_foreign_authentication_results_change_nothing(
    cfg: config.DeliverConfig, case: HeaderSet
) -> None:
    """Authentication-Results from an authserv-id not ours never change the decision."""
    headers, foreign, _ = case
    without = [h for i, h in enumerate(headers) if i not in foreign]
    a = verdict.decide(headers, cfg)
    b = verdict.decide(without, cfg)
    assert (a.action, a.rule, a.reason) == (b.action, b.rule, b.reason), headers


@PROFILE
@given(case=header_set(), no=SPAM_NO, where=st.integers(0, 20))
def test_extra_spam_no_never_rescues_junk(
    cfg: config.DeliverConfig, case: HeaderSet, no: tuple[str, str], where: int
) -> None:
    """A sender's extra `X-Spam-Status: No` never turns junk into inbox."""
    headers, _, _ = case
    if verdict.decide(headers, cfg).action != "junk":
        return
    more = [*headers]
    more.insert(where % (len(more) + 1), no)
    assert verdict.decide(more, cfg).action == "junk", more
