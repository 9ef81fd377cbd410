"""maildrop.py and legacy.py on their own: which maildrop filters and lines are
the old junk filter (and which are not), signconf.xml as the Perl qmail-remote
merges it, the cron loop, key sizes; and filters/maildrop-junk's digest kept
in step with the file."""

from __future__ import annotations

from pathlib import Path

import migrate_support as ms
import pytest

from quarantine import legacy, maildrop

CLASSIC = ms.CLASSIC_FILTER.format(vpopmail="/home/vpopmail")
TOASTER = ms.TOASTER_FILTER.format(vpopmail="/home/vpopmail")
FILTERS = Path(__file__).parent.parent / "filters"


def test_the_classic_filter_and_its_variants() -> None:
    found = maildrop.recognise(CLASSIC)
    assert (found.kind, found.folder, found.ham) == ("classic", "Junk", None)
    assert any("exit 0" in note for note in found.notes)
    toaster = maildrop.recognise(TOASTER)
    assert toaster.ham == "|/home/vpopmail/bin/vdelivermail '' bounce-no-mailbox"
    inbox = maildrop.recognise(CLASSIC + 'to "$HOME_DIR/Maildir/"\n')
    assert inbox.ham == "inbox"
    flag = CLASSIC.replace("/^X-Spam-Status: Yes/", "/^X-Spam-Flag: YES/:h").replace("Junk", "Spam")
    assert maildrop.recognise(flag).folder == "Spam"
    both = CLASSIC.replace("Yes/", "Yes/ && /^X-Spam-Flag: YES/")
    assert maildrop.recognise(both).folder == "Junk"
    lean = (
        'VH=`/usr/bin/vuserinfo -d "$EXT@$HOST"`\nif(/^X-Spam-Status: *Yes/)\n'
        '{\nEXITCODE=99\nto "$VH/Maildir/.Junk/"\n}\n'
    )
    found = maildrop.recognise(lean)
    assert found.folder == "Junk" and not any("exit 0" in n for n in found.notes)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (CLASSIC.replace("Yes/", "Yes/ || /^X-Spam-Level: \\*\\*\\*\\*\\*/"), "X-Spam-Level"),
        (CLASSIC + 'cc "!admin@example.test"\n', "(cc)"),
        (CLASSIC.replace('to "$HOME_DIR/Maildir/.Junk/"', 'to "/tmp/junk/"'), "differ"),
        (CLASSIC + 'include "/etc/mail/more"\n', "include"),
        (CLASSIC.replace("-f Junk", "-f Spam"), "differ"),
        (
            CLASSIC.replace("Junk`", "Spam`")
            .replace("-f Junk", "-f Spam")
            .replace(".Junk >", ".Spam >"),
            "makes folder .Spam but files spam into .Junk",
        ),
        ('if (/^Subject: viagra/)\n{\n to "x"\n}\n', "does not test X-Spam"),
        (CLASSIC.replace("$EXT@$HOST", "$EXT@$HOST; rm -rf /"), "differ"),
        (CLASSIC + "\0", "NUL"),
    ],
)
def test_other_filters_are_not_recognised(text: str, why: str) -> None:
    with pytest.raises(maildrop.NotRecognised, match=None) as caught:
        maildrop.recognise(text)
    assert why in str(caught.value)


def test_the_shipped_maildrop_junk_filter_is_recognised() -> None:
    text = (FILTERS / "maildrop-junk").read_text()
    _, digest = maildrop.junk_body_digest(text)
    assert digest == maildrop.JUNK_DIGEST  # keep JUNK_DIGEST in step with the file
    assert maildrop.recognise(text).kind == "maildrop-junk"
    site = text.replace('JUNK="Junk"', 'JUNK="Spam"').replace("/home/vpopmail", "/var/vpopmail")
    assert maildrop.recognise(site).folder == "Spam"
    with pytest.raises(maildrop.NotRecognised, match="changed copy"):
        maildrop.recognise(text.replace("EXITCODE=99", "EXITCODE=0"))


@pytest.mark.parametrize(
    "blank", [" ", "\t", "\n", " \t\n", "#\n"], ids=["spaces", "tabs", "lines", "mixed", "comments"]
)
def test_long_blank_runs_are_read_in_linear_time(blank: str) -> None:
    """A filter file of 64k blanks (the size limit) around braces: each
    pattern touching white space must be linear (a quadratic one took 71 s)."""
    half = blank * (maildrop.MAX_FILTER // len(blank) // 2)
    for text in (half + half, half + "{" + half, "if (" + half + ")" + half + "}"):
        with ms.within(1.0), pytest.raises(maildrop.NotRecognised):
            maildrop.recognise(text)
    if "#" not in blank:
        assert maildrop.normalise(half + "{" + half + "}x") == "{ } x"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("| /var/qmail/bin/preline /usr/bin/maildrop /etc/mailfilter", "/etc/mailfilter"),
        ("|preline -f maildrop mailfilter", "/dom/mailfilter"),
        ("|/usr/bin/maildrop", "/dom/.mailfilter"),
        ("| /home/vpopmail/bin/vdelivermail '' delete", None),
        ("./Maildir/", None),
        ("# |preline maildrop f", None),
    ],
)
def test_maildrop_lines(line: str, expected: str | None) -> None:
    found = maildrop.parse_line(line, "/dom")
    assert (found.filter if found else None) == expected


@pytest.mark.parametrize(
    "line",
    [
        "|preline maildrop -A x /etc/f",
        "|maildrop /etc/f; touch /tmp/pwned",
        "|maildrop /etc/f `id`",
        "|maildrop $HOME/f",
        "|maildrop a b",
        "|sudo maildrop f",
    ],
)
def test_maildrop_lines_not_understood(line: str) -> None:
    with pytest.raises(maildrop.NotRecognised):
        maildrop.parse_line(line, "/dom")


def test_signconf_merged_as_the_perl_wrapper_does(tmp_path: Path) -> None:
    with ms.old_server("toaster", tmp_path / "t") as srv:
        control = srv.control
        found = legacy.read_signconf(str(control / "dkim" / "signconf.xml"), str(control / "me"))
        assert found is not None
        by_entry = {i.entry: i for i in found}
        glob = by_entry["global"]
        assert (glob.domain, glob.selector) == ("mail.example.test", "dkim1")
        assert glob.types == {"dkim"}
        own = by_entry["example.test"]
        assert own.types == {"dkim", "domainkey"}
        assert own.keyfile == str(srv.signing_key)
        assert by_entry["lists.example.test"].types == frozenset()
        template, left = legacy.template_of([i for i in found if i.entry != "global"])
        assert template == f"{control}/domainkeys/%/dkim1" and left == []
        weak = legacy.key_info(str(srv.weak_key))
        assert (weak.state, weak.kind, weak.bits) == ("weak", "rsa", 384)
        assert (weak.uid, weak.mode) == (ms.QMAILQ_UID, 0o600)
        assert legacy.key_info(str(srv.signing_key)).bits == 2048
        assert legacy.key_info(str(control / "nothing")).state == "missing"


def test_signconf_refuses_entities(tmp_path: Path) -> None:
    path = tmp_path / "signconf.xml"
    path.write_text('<!DOCTYPE x [<!ENTITY a "aaaa">]><dkimsign><global/></dkimsign>')
    with pytest.raises(legacy.LegacyError, match="DOCTYPE"):
        legacy.read_signconf(str(path), str(tmp_path / "me"))
    path.write_text("<dkim><global/></dkim>")
    with pytest.raises(legacy.LegacyError, match="not <dkimsign>"):
        legacy.read_signconf(str(path), str(tmp_path / "me"))
    assert legacy.read_signconf(str(tmp_path / "none.xml"), str(tmp_path / "me")) is None


def test_signconf_refuses_a_doctype_in_any_encoding(tmp_path: Path) -> None:
    """In UTF-16 no byte string `<!DOCTYPE` is there to find; expat still
    sees the declaration, and nothing declared in it is expanded."""
    path = tmp_path / "signconf.xml"
    doc = (
        '<?xml version="1.0" encoding="UTF-16"?>\n'
        '<!DOCTYPE dkimsign [<!ENTITY d "evil.test">]>\n'
        '<dkimsign><global domain="&d;" selector="s" keyfile="/k/&d;/s">'
        '<types id="dkim"/></global></dkimsign>\n'
    )
    for name, codec in (("UTF-16", "utf-16"), ("UTF-16BE", "utf-16-be"), ("UTF-16LE", "utf-16-le")):
        data = doc.replace('"UTF-16"', f'"{name}"').encode(codec)
        path.write_bytes(data)
        assert b"<!DOCTYPE" not in data
        with pytest.raises(legacy.LegacyError, match="DOCTYPE"):
            legacy.read_signconf(str(path), str(tmp_path / "me"))
    plain = doc.replace('<!DOCTYPE dkimsign [<!ENTITY d "evil.test">]>\n', "")
    path.write_bytes(plain.replace("&d;", "ok.test").encode("utf-16"))
    found = legacy.read_signconf(str(path), str(tmp_path / "me"))
    assert found is not None and [(i.domain, i.keyfile) for i in found] == [
        ("ok.test", "/k/ok.test/s")
    ]
    for bad in (b"<dkimsign><global", plain.replace('"UTF-16"', '"UTF-16-BE"').encode("utf-16")):
        path.write_bytes(bad)  # the second: an encoding name expat cannot use
        with pytest.raises(legacy.LegacyError, match="not XML"):
            legacy.read_signconf(str(path), str(tmp_path / "me"))


def test_cron_lines() -> None:
    text = (
        "MAILTO=root\n"
        "0 2 * * * for f in /home/vpopmail/domains/*/*/Maildir/.Junk/cur/*; do "
        "sa-learn --spam $f; done\n"
        "@daily find /home/vpopmail -path '*/.Spam/*' -exec sa-learn --spam {} \\;\n"
        "15 4 * * * sa-learn --sync\n"
        "# 0 1 * * * for f in x; do sa-learn --spam $f; done\n"
    )
    found = legacy.cron_lines(text, system=False)
    assert [(c.number, c.loop) for c in found] == [(2, True), (3, True), (4, False)]
    assert found[0].schedule == "0 2 * * *" and found[1].schedule == "@daily"
    system = legacy.cron_lines(
        "0 2 * * * root for f in .Junk/*; do sa-learn --spam $f; done\n", True
    )
    assert system[0].user == "root" and system[0].loop


def test_a_key_qmailr_cannot_read_is_named() -> None:
    """migrate.key_readable, asked for a user that exists here (nobody)."""
    import shutil
    import tempfile

    from quarantine import migrate

    here = Path(tempfile.mkdtemp(prefix="quarantine-key-"))  # not under pytest's 0700 dir
    try:
        here.chmod(0o755)
        key = here / "default"
        key.write_bytes(ms.WEAK_KEY)
        key.chmod(0o600)
        assert "cannot read" in (migrate.key_readable(str(key), "nobody") or "")
        key.chmod(0o644)
        assert migrate.key_readable(str(key), "nobody") is None
        assert migrate.key_readable(str(key), "no-such-user-here") is None
    finally:
        shutil.rmtree(here, ignore_errors=True)
