"""Configuration: defaults, validation errors naming file/line/key, the compiled cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quarantine import config
from quarantine.qmail import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "quarantine.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_without_file() -> None:
    cfg = config.load(None, environ={})
    assert cfg.source is None or cfg.source == config.DEFAULT_PATH
    assert cfg.deliver.junk_folder == "Junk"
    assert cfg.train.age == 5 * 86400
    assert [r.name for r in cfg.deliver.rules] == [
        "trusted-dkim",
        "spamassassin",
        "dmarc-reject",
        "spf-fail",
    ]


def test_records_are_frozen() -> None:
    cfg = config.defaults()
    with pytest.raises(AttributeError):
        cfg.deliver.junk_folder = "Spam"  # type: ignore[misc]


def test_values_from_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "deliver:\n  junk_folder: Spam\n  authserv_ids: [mx.example.test]\ntrain:\n  age: 36h\n",
    )
    cfg = config.load(path)
    assert cfg.deliver.junk_folder == "Spam"
    assert cfg.deliver.authserv_ids == ("mx.example.test",)
    assert cfg.train.age == 36 * 3600
    assert cfg.source == path


def test_environment_variable_is_used(tmp_path: Path) -> None:
    path = write(tmp_path, "deliver:\n  junk_folder: Env\n")
    assert config.load(None, environ={"QUARANTINE_CONFIG": path}).deliver.junk_folder == "Env"


@pytest.mark.parametrize(
    ("text", "mode"),
    [("", "auto"), ("deliver:\n  subscribe: true\n", "auto"),
     ("deliver:\n  subscribe: false\n", "off"), ("deliver:\n  subscribe: dovecot\n", "dovecot")],
)  # fmt: skip
def test_subscribe_modes_and_the_older_true_false(tmp_path: Path, text: str, mode: str) -> None:
    assert config.load(write(tmp_path, text or "{}\n")).deliver.subscribe == mode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deliver:\n  junk_folder: 3\n", ":2: deliver.junk_folder: expected a non-empty string"),
        ("deliver:\n  nonsense: 1\n", ":2: deliver.nonsense: unknown key"),
        ("bogus: {}\n", ":1: bogus: unknown section"),
        ("vpopmail:\n  home: relative/dir\n", ":2: vpopmail.home: expected an absolute path"),
        ("train:\n  age: soon\n", ":2: train.age: 'soon' is not a duration"),
        ("deliver:\n  junk_folder: ../etc\n", "deliver.junk_folder: '../etc' is not a Maildir++"),
        ("deliver:\n  over_quota: maybe\n", "deliver.over_quota: expected one of deliver"),
        ("deliver:\n  subscribe: imap\n", ":2: deliver.subscribe: expected one of auto, courier"),
        (
            "deliver:\n  rules:\n    - {name: x, action: junk}\n    - {spam: yes, action: drop}\n",
            ":4: deliver.rules[1].action: expected one of junk, inbox, bounce",
        ),
        (
            "deliver:\n  rules:\n    - {colour: red, action: junk}\n",
            "deliver.rules[0].colour: unknown condition",
        ),
        ("deliver:\n  rules:\n    - {spf: maybe, action: junk}\n", "unknown result 'maybe'"),
        ("deliver: [\n", ": not valid YAML"),
    ],
)
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value).startswith(path)
    assert expected in str(info.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path / "absent.yaml"))


def test_cache_is_written_and_used_while_file_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path, "deliver:\n  junk_folder: Cached\n")
    config.load_file(path)
    cache = Path(config.cache_path(path))
    assert cache.exists()
    # A cache that does not match the file's stamp is ignored: edit the file.
    Path(path).write_text("deliver:\n  junk_folder: Edited\n")
    assert config.load(path).deliver.junk_folder == "Edited"
    # The refreshed cache is used: prove it by breaking the YAML parser's input
    # while keeping size and mtime (the stamp) identical.
    st = os.stat(path)
    Path(path).write_text("deliver:\n  junk_folder: Edite!\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert config.load(path).deliver.junk_folder == "Edited"


def test_cache_writable_by_others_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "deliver:\n  junk_folder: Real\n")
    config.load_file(path)
    cache = config.cache_path(path)
    os.chmod(cache, 0o666)
    st = os.stat(path)
    Path(path).write_text("deliver:\n  junk_folder: Fake\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert config.load_file(path, write_cache=False).deliver.junk_folder == "Fake"


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = config.defaults()
    text = config.dump_yaml(cfg)
    assert "  age: 5d\n" in text
    assert text.index("vpopmail:") < text.index("deliver:") < text.index("train:")
    path = write(tmp_path, text)
    assert config.load(path).as_dict() | {"source": None} == cfg.as_dict()


@pytest.mark.parametrize(
    ("text", "seconds"), [("5d", 432000), ("36h", 129600), ("90m", 5400), ("45", 45), (7, 7)]
)
def test_durations(text: object, seconds: int) -> None:
    assert config.parse_duration(text) == seconds


def test_mail_path_modules_import_nothing_heavy() -> None:
    """deliver must not pay for click, yaml, email, re, typing or dataclasses
    (modules the interpreter had loaded before, e.g. by an editable install's
    import hook, are not counted against it)."""
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules);"
        "from quarantine import deliver, config, verdict, message, maildir, vpopmail;"
        "heavy = {'click', 'yaml', 'email', 're', 'typing', 'dataclasses', 'dkim', 'spf',"
        " 'dns', 'authres', 'subprocess', 'logging'} & (set(sys.modules) - before);"
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_config_check_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from quarantine.cli import cli

    (tmp_path / "vpop").mkdir()
    good = write(tmp_path, f"vpopmail:\n  home: {tmp_path}/vpop\nqmail:\n  home: {tmp_path}\n"
                 "train:\n  sa_learn: /bin/sh\n")  # fmt: skip
    result = CliRunner().invoke(cli, ["config", "check", good])
    assert result.exit_code == 0, result.output
    assert result.output == f"{good}: ok\n"
    assert Path(config.cache_path(good)).exists()

    bad = write(tmp_path, f"vpopmail:\n  home: {tmp_path}/absent\nqmail:\n  home: {tmp_path}\n")
    result = CliRunner().invoke(cli, ["config", "check", bad])
    assert result.exit_code == 2
    assert f"{bad}:2: vpopmail.home: {tmp_path}/absent is not a directory" in result.output

    broken = write(tmp_path, "deliver:\n  junk_folder: 7\n")
    result = CliRunner().invoke(cli, ["config", "check", broken])
    assert result.exit_code == 2
    assert f"{broken}:2: deliver.junk_folder" in result.output


def test_config_show_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from quarantine.cli import cli

    path = write(tmp_path, "deliver:\n  junk_folder: Spam\n")
    result = CliRunner().invoke(cli, ["--config", path, "config", "show"])
    assert result.exit_code == 0
    assert f"# from {path}" in result.output
    assert "junk_folder: Spam" in result.output


def test_cache_from_another_schema_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache written by a version with other keys or defaults is not used."""
    path = write(tmp_path, "deliver:\n  junk_folder: Old\n")
    monkeypatch.setattr(config, "schema_stamp", lambda: "an older schema")
    config.load_file(path)
    monkeypatch.undo()
    st = os.stat(path)
    Path(path).write_text("deliver:\n  junk_folder: New\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert config.load_file(path, write_cache=False).deliver.junk_folder == "New"


def test_damaged_cache_is_ignored(tmp_path: Path) -> None:
    import marshal

    path = write(tmp_path, "deliver:\n  junk_folder: Real\n")
    config.load_file(path)
    cache = config.cache_path(path)
    with open(cache, "rb") as handle:
        stamp, schema, data = marshal.load(handle)
    del data["deliver"]["junk_folder"]
    with open(cache, "wb") as handle:
        marshal.dump((stamp, schema, data), handle)
    assert config.load_file(path, write_cache=False).deliver.junk_folder == "Real"


def test_schema_stamp_is_the_digest_of_the_schema() -> None:
    """The cache's stamp is a constant (the mail path does not import the
    schema to compute it): it must be the digest of every key and default."""
    import hashlib

    from quarantine import configschema

    digest = hashlib.sha256(repr(configschema.SECTIONS).encode()).hexdigest()[:32]
    assert digest == config.SCHEMA_STAMP, f"set config.SCHEMA_STAMP to {digest!r}"


def test_the_built_in_defaults_are_the_schemas() -> None:
    """configdefaults.DEFAULTS (read by deliver without the schema) is what
    the checker makes of an empty document, key for key."""
    import pprint

    from quarantine import configdefaults, configschema

    eager = configschema.Checker("(defaults)", {}).document({})
    assert eager == configdefaults.DEFAULTS, "set configdefaults.DEFAULTS to " + pprint.pformat(
        eager, sort_dicts=False
    )


def test_sections_are_made_when_first_read_and_equal_the_eager_check(tmp_path: Path) -> None:
    """Defaults and a compiled cache make a section's record on first use;
    each is what checking the whole document at once gives."""
    from quarantine import configschema

    eager = configschema.Checker("(defaults)", {}).document({})
    lazy = config.defaults()
    assert lazy.as_dict() == config.Config(eager, None).as_dict()
    assert lazy.deliver is lazy.deliver  # made once, then kept
    path = write(tmp_path, "deliver:\n  junk_folder: Spam\ntrain:\n  age: 2d\n")
    config.load_file(path)
    cached = config.load_file(path, write_cache=False)
    assert cached.as_dict() == config.load_file(path, read_cache=False).as_dict()
    assert cached.train.age == 2 * 86400 and cached.deliver.junk_folder == "Spam"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        cached.nothing  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError, match="read-only"):
        cached.deliver = cached.deliver  # type: ignore[misc]
