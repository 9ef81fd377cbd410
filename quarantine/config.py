"""Configuration loading: find the one YAML file, read it (or its compiled cache)
into the frozen records of quarantine.configschema, and check it on this host.

The mail path imports this module and nothing heavy: with no file there is no
YAML parse at all, and a file that `quarantine config check` has compiled is
read back with marshal, not PyYAML, and without the schema module. The
schema's names are re-exported here (imported when first asked for).
"""

import marshal

from quarantine import fastos as os
from quarantine.configrecords import Config, complete
from quarantine.qmail import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from quarantine.configschema import (
        SECTIONS,
        Checker,
        DeliverConfig,
        DkimConfig,
        DnsConfig,
        TrainConfig,
        build,
        format_duration,
        parse_duration,
    )
else:
    # The schema's names: quarantine.configschema is imported the first time
    # one of them is asked for. The mail path, reading a compiled cache, does
    # without it.
    _SCHEMA_NAMES = frozenset(
        (
            "SECTIONS",
            "Checker",
            "DeliverConfig",
            "DkimConfig",
            "DnsConfig",
            "TrainConfig",
            "build",
            "format_duration",
            "parse_duration",
        )
    )

    def __getattr__(name):
        if name in _SCHEMA_NAMES:
            from quarantine import configschema

            return getattr(configschema, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CACHE_SUFFIX",
    "CACHE_VERSION",
    "DEFAULT_PATH",
    "SECTIONS",
    "Checker",
    "Config",
    "DeliverConfig",
    "DkimConfig",
    "DnsConfig",
    "TrainConfig",
    "authserv_id",
    "build",
    "cache_is_current",
    "cache_path",
    "cache_stamp",
    "defaults",
    "dump_yaml",
    "find_path",
    "format_duration",
    "host_problems",
    "key_lines",
    "load",
    "load_file",
    "parse_duration",
    "parse_text",
    "schema_stamp",
    "trust_warnings",
]

DEFAULT_PATH = "/etc/quarantine/quarantine.yaml"
CACHE_SUFFIX = ".cache"
CACHE_VERSION = 2
# A digest of repr(configschema.SECTIONS), every key and default: a cache
# written by a version with others does not match. tests/test_config.py
# computes it; change it with SECTIONS.
SCHEMA_STAMP = "e8a36aa78c2ce17c7c0d061b587a12d5"


def authserv_id(cfg: "Config") -> str:
    """Our Authentication-Results id: verify.authserv_id, else the host name."""
    return cfg.verify.authserv_id or os.uname().nodename


def defaults() -> "Config":
    """The built-in configuration (no file): each section's record made when first read."""
    from quarantine.configdefaults import DEFAULTS

    return Config(DEFAULTS, None)


def find_path(explicit: "str | None", environ: "Mapping[str, str]") -> "tuple[str | None, bool]":
    """Which file to read: `--config`, then $QUARANTINE_CONFIG, then the default
    path when it exists. Returns (path, required)."""
    if explicit:
        return explicit, True
    env = environ.get("QUARANTINE_CONFIG")
    if env:
        return env, True
    if os.path.exists(DEFAULT_PATH):
        return DEFAULT_PATH, True
    return None, False


def load(explicit: "str | None" = None, environ: "Mapping[str, str] | None" = None) -> "Config":
    """Load the configuration once. Raises ConfigError with file, line and key."""
    path, _ = find_path(explicit, os.environ if environ is None else environ)
    if path is None:
        return defaults()
    return load_file(path)


def load_file(path: str, *, read_cache: bool = True, write_cache: bool = True) -> "Config":
    """Read `path`, from its compiled cache when that is current. Whoever may
    write beside the file (the admin, `quarantine config check`) refreshes
    the cache; the mail path's uid cannot and just parses."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            stamp = cache_stamp(st)
            if read_cache:
                cached = _read_cache(path, stamp, st.st_uid)
                if cached is not None and complete(cached):
                    return Config(cached, path)  # (else a damaged cache: parse the file)
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    checked = parse_text(text, path)
    if write_cache:
        _write_cache(path, stamp, checked)
    return Config(checked, path)


def parse_text(text: "bytes | str", source: str) -> "dict[str, dict[str, object]]":
    """YAML text into checked plain data (the slow path: imports PyYAML)."""
    import yaml

    from quarantine.configschema import Checker

    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    lines: dict[str, int] = {}
    if node is not None:
        _collect_lines(node, "", lines)
    return Checker(source, lines).document(data)


def key_lines(text: "bytes | str") -> "dict[str, int]":
    """Dotted key -> line number, for messages about a file already checked."""
    import yaml

    node = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[str, int] = {}
    if node is not None:
        _collect_lines(node, "", lines)
    return lines


def host_problems(config: "Config", lines: "Mapping[str, int]") -> "list[str]":
    """What `config check` verifies on this host beyond the file itself: the
    directories and programs the configuration names exist. Each problem names
    the file, line and key, like a validation error."""
    wanted: list[tuple[str, str | None, str]] = [
        ("vpopmail.home", config.vpopmail.home, "dir"),
        ("qmail.home", config.qmail.home, "dir"),
        ("vpopmail.vuserinfo", config.vpopmail.vuserinfo, "program"),
        (
            "deliver.log_file",
            config.deliver.log_file and os.path.dirname(config.deliver.log_file),
            "dir",
        ),
    ]
    if config.train.backend == "sa-learn":
        wanted.append(("train.sa_learn", config.train.sa_learn, "program"))
    else:
        wanted.append(("train.spamc", config.train.spamc, "program"))
    problems = []
    source = config.source or "(defaults)"
    for key, path, kind in wanted:
        if not path:
            continue
        if kind == "dir" and not os.path.isdir(path):
            problem = f"{path} is not a directory"
        elif kind == "program" and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            problem = f"{path} is not an executable program"
        else:
            continue
        line = lines.get(key)
        problems.append(
            f"{source}:{line}: {key}: {problem}" if line else f"{source}: {key}: {problem}"
        )
    return problems


def trust_warnings(config: "Config") -> "list[str]":
    """What `config check` warns about in who `deliver` believes: every id in
    deliver.authserv_ids must be one quarantine-queue here renames in
    incoming mail (RFC 8601 §5), or a sender can write results in its name."""
    ids = config.deliver.authserv_ids
    if not ids:
        return []
    source = config.source or "(defaults)"
    out: list[str] = []
    for name in ids:
        text = name.strip()
        if not text or any(ch.isspace() or ch in ';()"\\' for ch in text):
            out.append(
                f"{source}: deliver.authserv_ids: {name!r} is no authserv-id: no "
                "Authentication-Results can carry it and no verifier renames it"
            )
    ours = authserv_id(config).lower().rstrip(".")
    if ours not in {i.lower().rstrip(".") for i in ids}:
        out.append(
            f"{source}: deliver.authserv_ids does not name this host's own id {ours!r} "
            "(verify.authserv_id): deliver ignores what quarantine-queue here writes"
        )
    if not os.path.exists(config.verify.qmail_queue):
        out.append(
            f"{source}: deliver.authserv_ids is set but {config.verify.qmail_queue} "
            "(verify.qmail_queue) is not here, so no quarantine-queue on this host "
            "renames forged results of those ids: run quarantine-queue (QMAILQUEUE) "
            "in front of every qmail-smtpd that receives mail for these mailboxes"
        )
    return out


def _collect_lines(node: object, prefix: str, out: "dict[str, int]") -> None:
    """Map dotted keys (`deliver.rules[1].action`) to the line they start on."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[key] = key_node.start_mark.line + 1
            _collect_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = f"{prefix}[{index}]"
            out[key] = item.start_mark.line + 1
            _collect_lines(item, key, out)


def cache_path(path: str) -> str:
    return path + CACHE_SUFFIX


def cache_stamp(st: "os.stat_result") -> "tuple[int, ...]":
    """What a compiled cache records of the file it was compiled from (`st`)."""
    return (CACHE_VERSION, st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def cache_is_current(path: str, st: "os.stat_result") -> bool:
    """Whether load_file would read `path` (`st`: its stat) from its cache."""
    return _read_cache(path, cache_stamp(st), st.st_uid) is not None


def _read_cache(
    path: str, stamp: "tuple[int, ...]", owner: int
) -> "dict[str, dict[str, object]] | None":
    """The compiled form of `path`, if it was written for this very file by its
    owner and nobody else can write it."""
    try:
        with open(cache_path(path), "rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_uid != owner or st.st_mode & 0o022:
                return None
            saved = marshal.loads(handle.read())  # noqa: S302 - our own file, owner-checked above
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not isinstance(saved, tuple) or len(saved) != 3:
        return None
    if saved[0] != stamp or saved[1] != schema_stamp():
        return None  # another file, or written by a version with other keys or defaults
    data = saved[2]
    return data if isinstance(data, dict) else None


def schema_stamp() -> str:
    """The schema and its defaults, as a digest: a cache written by a version
    of quarantine with other keys or other defaults does not match it."""
    return SCHEMA_STAMP


def _write_cache(path: str, stamp: "tuple[int, ...]", checked: "Mapping[str, object]") -> None:
    """Best effort: only a user who may write beside the file (the admin) does."""
    target = cache_path(path)
    temp = f"{target}.{os.getpid()}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            marshal.dump((stamp, schema_stamp(), dict(checked)), handle)
        os.rename(temp, target)
    except (OSError, ValueError):
        try:
            os.unlink(temp)
        except OSError:
            pass


def dump_yaml(config: "Config") -> str:
    """The effective configuration as YAML (for `quarantine config show`), in
    the order of the schema, durations written as they are in the file."""
    import yaml

    from quarantine.configschema import SECTIONS, format_duration

    data: dict[str, dict[str, object]] = {}
    for section, keys in SECTIONS.items():
        record = config.as_dict()[section]
        assert isinstance(record, dict)
        data[section] = {
            key: format_duration(record[key]) if kind == "duration" else record[key]
            for key, (kind, _default) in keys.items()
        }
    dumped: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return dumped
