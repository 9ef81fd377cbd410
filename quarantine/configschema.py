"""The configuration's schema: every section, key, kind and default (SECTIONS)
and the checker that turns parsed YAML into checked plain data, naming file,
line and dotted key in every error; `build` makes configrecords' records of it.
"""

from quarantine.configrecords import (
    SECTION_CLASSES,
    BayesConfig,
    CleanupConfig,
    Config,
    DeliverConfig,
    DigestConfig,
    DkimConfig,
    DnsConfig,
    DoctorConfig,
    Frozen,
    KeysConfig,
    MigrateConfig,
    QmailConfig,
    Rule,
    TrainConfig,
    VerifyConfig,
    VpopmailConfig,
    tupled,
)
from quarantine.qmail import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "BAYES_KEYS",
    "DEFAULT_RULES",
    "DIGEST_ENABLED",
    "DSN_PART",
    "RESULT_WORDS",
    "RULE_ACTIONS",
    "RULE_CONDITIONS",
    "SECTIONS",
    "SECTION_CLASSES",
    "SUBSCRIBE_MODES",
    "BayesConfig",
    "Checker",
    "CleanupConfig",
    "Config",
    "DeliverConfig",
    "DigestConfig",
    "DkimConfig",
    "DnsConfig",
    "DoctorConfig",
    "Frozen",
    "KeysConfig",
    "MigrateConfig",
    "QmailConfig",
    "Rule",
    "TrainConfig",
    "VerifyConfig",
    "VpopmailConfig",
    "build",
    "format_duration",
    "parse_dsn",
    "parse_duration",
    "tupled",
    "valid_folder",
    "valid_local_prefix",
]

# A rule's conditions (all must hold) and what it does. Order decides.
RULE_CONDITIONS = {
    "spam": "bool",  # SpamAssassin said Yes (X-Spam-Status / X-Spam-Flag)
    "score_at_least": "float",  # SpamAssassin score >= this
    "score_below": "float",  # SpamAssassin score < this
    "spf": "results",  # trusted SPF result is one of these
    "dkim": "results",  # some trusted DKIM result is one of these
    "dmarc": "results",  # trusted DMARC result is one of these
    "dmarc_policy": "results",  # the DMARC policy (p=) of the From: domain
    "dkim_trusted": "bool",  # dkim=pass with header.d in deliver.trusted_domains
}
RULE_ACTIONS = ("junk", "inbox", "bounce")
DIGEST_ENABLED = ("all", "opted-in", "off")
SUBSCRIBE_MODES = ("auto", "courier", "dovecot", "both", "off")  # as maildir.SUBSCRIBE_MODES
RESULT_WORDS = frozenset(
    [
        "pass",
        "fail",
        "softfail",
        "neutral",
        "none",
        "temperror",
        "permerror",
        "policy",
        "reject",
        "quarantine",
    ]
)

DEFAULT_RULES: "list[dict[str, object]]" = [
    {"name": "trusted-dkim", "dkim_trusted": True, "action": "inbox"},
    {"name": "spamassassin", "spam": True, "action": "junk"},
    {"name": "dmarc-reject", "dmarc": ["fail"], "dmarc_policy": ["reject"], "action": "junk"},
    {"name": "spf-fail", "spf": ["fail"], "score_at_least": 2.0, "action": "junk"},
]

# section -> key -> (kind, default). Kinds: str, str?, path, path?, int, float,
# bool, strs (list of strings), duration, choice:a|b|c, rules.
SECTIONS: "dict[str, dict[str, tuple[str, object]]]" = {
    "vpopmail": {
        "home": ("path", "/home/vpopmail"),
        "vuserinfo": ("path?", None),
    },
    "qmail": {
        "home": ("path", "/var/qmail"),
    },
    "deliver": {
        "junk_folder": ("folder", "Junk"),
        "authserv_ids": ("strs", []),
        "trust_received_spf": ("bool", True),
        "trusted_domains": ("strs", []),
        "rules": ("rules", DEFAULT_RULES),
        "over_quota": ("choice:deliver|defer|bounce", "deliver"),
        "subscribe": ("subscribe", "auto"),  # courier|dovecot|both|off|auto
        "header_limit": ("int", 1024 * 1024),
        "log_file": ("path?", None),
        "syslog": ("bool", False),
    },
    "train": {
        "age": ("duration", "5d"),
        "folders": ("strs", ["Junk"]),
        "ham_folder": ("str?", None),
        "ham_from_moves": ("bool", True),  # learn as ham what users move out of Junk
        "trash_folders": ("strs", ["Trash", "Deleted Messages", "Deleted Items"]),
        "backend": ("choice:sa-learn|spamc", "sa-learn"),
        "sa_learn": ("path", "/usr/bin/sa-learn"),
        "spamc": ("path", "/usr/bin/spamc"),
        "spamd_host": ("str", "127.0.0.1"),
        "spamd_port": ("int", 783),
        "spamc_user": ("str?", None),
        "per_user": ("bool", False),
        "workers": ("int", 1),
        "batch_size": ("int", 0),  # messages per sa-learn call; 0: from its costs (bayes.py)
        "bayes": ("bayes", {"store": "dbfile", "redis": None, "parallel": 1}),
        "dbpath": ("path?", None),
        "lock_file": ("path", "/var/run/quarantine-train.lock"),
        "schedule": ("str", "30 3 * * *"),
        "state_file": ("path", "/var/lib/quarantine/train-state.json"),
        "max_size": ("int", 500 * 1024),
        "timeout": ("duration", "10m"),
        "misfire_grace": ("duration", "1h"),
    },
    "digest": {
        # all | opted-in | off, or a mapping of default / @domain / user@domain to one
        "enabled": ("enabled", "opted-in"),
        "release_local": ("localpart", "quarantine-release"),
        "secret_file": ("path", "/var/lib/quarantine/digest.key"),
        "qmail_inject": ("path", "/var/qmail/bin/qmail-inject"),
        "schedule": ("str?", None),  # cron syntax for `quarantine schedule`; unset: off
        "token_lifetime": ("duration", "14d"),  # how long a release address works
        "max_lines": ("int", 50),  # messages listed in one digest; the rest counted
        "sender": ("str?", None),  # From: and envelope sender; default postmaster@DOMAIN
        "release_rate": ("int", 20),  # releases per mailbox per hour
    },
    "cleanup": {
        "tmp_age": ("duration", "36h"),  # Maildir tmp/ debris older than this goes
    },
    "dkim": {
        "keydir": ("path", "/etc/domainkeys"),
        "sign_template": ("str", "/etc/domainkeys/%/default"),
        "qmail_remote": ("path", "/var/qmail/bin/qmail-remote.orig"),
        "selector": ("str", "default"),  # keygen's default selector
        "key_type": ("choice:rsa|ed25519", "rsa"),  # keygen's default type
        "bits": ("int", 2048),  # keygen's default RSA size
        "ed25519_template": ("str?", None),  # a second, ed25519 key: dual signing
        "domainkeys": ("bool", False),  # also a legacy DomainKey-Signature
        "sign_headers": ("strs", []),  # empty: the built-in set, From oversigned
    },
    "verify": {
        "authserv_id": ("str?", None),
        "qmail_queue": ("path", "/var/qmail/bin/qmail-queue"),
        "dkverify": ("str?", None),  # DKVERIFY letters; the environment wins
        "spfbehavior": ("int", 1),  # qmail-spf levels 0-6; $SPFBEHAVIOR wins
        "dmarc_reject": ("bool", False),  # refuse (31) a DMARC fail under p=reject
    },
    "dns": {
        "nameservers": ("strs", []),
        "port": ("int", 53),
        "timeout": ("float", 5.0),
        "spf_ips": ("strs", []),  # our outbound addresses, for the SPF record
        "spf_includes": ("strs", []),
        "spf_all": ("choice:-all|~all|?all", "~all"),
        "dmarc_policy": ("choice:none|quarantine|reject", "none"),
        "dmarc_rua": ("strs", []),
        "dmarc_ruf": ("strs", []),
        "ttl": ("int", 3600),
    },
    "migrate": {
        "backup_dir": ("path", "/var/lib/quarantine/migrate"),  # what --apply saved, for --undo
        "tcprules": ("path", "/etc/tcprules.d/tcp.smtp"),  # qmail-smtpd's rules (cdb: + .cdb)
        "tcprules_program": ("path", "/usr/bin/tcprules"),
        "crontabs": (
            "strs",
            ["/var/spool/cron/crontabs/root", "/var/spool/cron/root", "/etc/crontab"],
        ),
    },
    "keys": {
        "state_file": ("path", "/var/lib/quarantine/keys-state.json"),
        "selector_format": ("str", "q%Y%m"),  # strftime, UTC
        "publish": ("choice:print|tinydns|nsupdate", "print"),
        "tinydns_data": ("path", "/etc/tinydns/root/data"),
        "nsupdate_server": ("str", "127.0.0.1"),
        "nsupdate_port": ("int", 53),
        "nsupdate_key": ("path?", None),  # a BIND key file (tsig-keygen's output)
        "print_domains": ("strs", []),  # domains whose DNS is elsewhere: always `print`
        "nameservers": ("strs", []),  # empty: every NS of the zone is asked
        "max_age": ("duration", "180d"),  # a key older than this is rolled
        "overlap": ("duration", "7d"),  # the old key stays published this long
        "schedule": ("str?", None),  # cron syntax for `quarantine schedule`; null: off
    },
    "doctor": {
        "spamd_user": ("str?", None),  # NAME or UID:GID spamd reads Bayes as; unset: found
        "remote_user": ("str", "qmailr"),  # NAME or UID:GID qmail-remote runs as
    },
}


def parse_duration(text: object) -> int:
    """`5d`, `36h`, `90m`, `45s`, `2w` or a bare number of seconds, as seconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration like 5d, 36h or 90m")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return text
    if not isinstance(text, str):
        raise ValueError("expected a duration like 5d, 36h or 90m")
    word = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    scale = units.get(word[-1:], 0)
    digits = word[:-1] if scale else word
    if not digits.isdigit():
        raise ValueError(f"{text!r} is not a duration like 5d, 36h or 90m")
    return int(digits) * (scale or 1)


def valid_local_prefix(name: str) -> bool:
    """A prefix of address local parts qmail-local maps to `.qmail-NAME-default`:
    lower-case letters, digits and dashes, no dash first or last."""
    return (
        0 < len(name) <= 40
        and name[0] != "-"
        and name[-1] != "-"
        and all(ch in "abcdefghijklmnopqrstuvwxyz0123456789-" for ch in name)
    )


BAYES_KEYS: "dict[str, tuple[str, object]]" = {
    "store": ("choice:dbfile|redis", "dbfile"),
    "redis": ("str?", None),
    "parallel": ("int", 1),
}
# bayes_sql_dsn as SpamAssassin's Redis store reads it (BayesStore/Redis.pm,
# new): `database` and `password` itself, every other `name=value` goes to
# Redis->new (`server=HOST:PORT`, `sock=PATH`, ...), parts split on `;`. It is
# written into a config file: printable, no space, no `;` inside a part.
DSN_PART = r"([a-z_]+)=([!-:<-~]+)\Z"


def parse_dsn(text: str) -> "dict[str, str]":
    """`server=HOST:PORT;database=N[;password=P]` checked the way the Redis
    store will read it; ValueError says what is wrong."""
    import re  # here: the mail path imports this module

    parts: dict[str, str] = {}
    for part in text.split(";"):
        match = re.match(DSN_PART, part)
        if match is None:
            raise ValueError(
                f"{part!r} is not name=value (printable, no spaces); "
                "expected server=HOST:PORT;database=N"
            )
        parts[match[1]] = match[2]
    if "server" not in parts and "sock" not in parts:
        raise ValueError("names no server=HOST:PORT (or sock=PATH)")
    if not parts.get("database", "0").isdigit():
        raise ValueError(f"database={parts['database']} is not a number")
    return parts


def valid_folder(name: str) -> bool:
    """A Maildir++ folder name as `maildirmake -f` accepts it (`Junk`, `Spam.Old`)."""
    if not name or len(name) > 200 or name.startswith(".") or name.endswith("."):
        return False
    if ".." in name or "/" in name:
        return False
    return all(ch >= " " and ch != "\x7f" for ch in name)


class Checker:
    """Turns raw YAML data into checked plain data, reporting file:line: key."""

    def __init__(self, source: str, lines: "Mapping[str, int]") -> None:
        self.source = source
        self.lines = lines

    def fail(self, key: str, message: str) -> "ConfigError":
        line = self.lines.get(key)
        where = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{where}: {key}: {message}")

    def value(self, key: str, kind: str, raw: object) -> object:
        if raw is None and (kind.endswith("?") or kind == "rules"):
            return None if kind != "rules" else self.value(key, kind, DEFAULT_RULES)
        base = kind.rstrip("?")
        if base in ("str", "path", "folder"):
            if not isinstance(raw, str) or not raw:
                raise self.fail(key, "expected a non-empty string")
            if "\0" in raw:
                raise self.fail(key, "contains a NUL byte")
            if base == "path" and not raw.startswith("/"):
                raise self.fail(key, f"expected an absolute path, got {raw!r}")
            if base == "folder" and not valid_folder(raw):
                raise self.fail(key, f"{raw!r} is not a Maildir++ folder name (like Junk)")
            return raw
        if base == "subscribe":
            # true and false, the older form of the key: auto and off.
            if isinstance(raw, bool):
                return "auto" if raw else "off"
            if raw not in SUBSCRIBE_MODES:
                modes = ", ".join(SUBSCRIBE_MODES)
                raise self.fail(key, f"expected one of {modes}, got {raw!r}")
            return raw
        if base == "enabled":
            return self.enabled(key, raw)
        if base == "localpart":
            if not isinstance(raw, str) or not valid_local_prefix(raw):
                raise self.fail(key, "expected lower-case letters, digits and inner dashes")
            return raw
        if base == "bool":
            if not isinstance(raw, bool):
                raise self.fail(key, "expected true or false")
            return raw
        if base == "int":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise self.fail(key, "expected a whole number >= 0")
            return raw
        if base == "float":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise self.fail(key, "expected a number")
            return float(raw)
        if base == "strs":
            if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
                raise self.fail(key, "expected a list of strings")
            return list(raw)
        if base == "duration":
            try:
                return parse_duration(raw)
            except ValueError as exc:
                raise self.fail(key, str(exc)) from None
        if base.startswith("choice:"):
            choices = base[7:].split("|")
            if raw not in choices:
                raise self.fail(key, f"expected one of {', '.join(choices)}, got {raw!r}")
            return raw
        if base == "rules":
            return self.rules(key, raw)
        if base == "bayes":
            return self.bayes(key, raw)
        raise AssertionError(kind)

    def enabled(self, key: str, raw: object) -> "dict[str, str]":
        """digest.enabled: one word, or a mapping of `default`, `@domain` and
        `user@domain` to one word each."""
        if isinstance(raw, str | bool):
            raw = {"default": raw}
        if not isinstance(raw, dict):
            raise self.fail(key, f"expected one of {', '.join(DIGEST_ENABLED)} or a mapping")
        out: dict[str, str] = {"default": "opted-in"}
        for name, value in raw.items():
            where = f"{key}.{name}"
            word = value
            if isinstance(value, bool):  # YAML 1.1 reads a bare off/on as false/true
                word = "all" if value else "off"
            if not isinstance(name, str) or not (name == "default" or "@" in name):
                raise self.fail(where, "expected default, @domain or user@domain")
            if not isinstance(word, str) or word not in DIGEST_ENABLED:
                choices = ", ".join(DIGEST_ENABLED)
                raise self.fail(where, f"expected one of {choices}, got {word!r}")
            out[name.lower()] = word
        return out

    def bayes(self, key: str, raw: object) -> "dict[str, object]":
        """train.bayes: {store: dbfile|redis, redis: DSN, parallel: N}."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise self.fail(key, "expected a mapping (store, redis, parallel)")
        for name in raw:
            if name not in BAYES_KEYS:
                raise self.fail(f"{key}.{name}", f"unknown key (known: {', '.join(BAYES_KEYS)})")
        out = {
            name: self.value(f"{key}.{name}", kind, raw.get(name, default))
            for name, (kind, default) in BAYES_KEYS.items()
        }
        if out["redis"] is not None:
            try:
                parse_dsn(str(out["redis"]))
            except ValueError as exc:
                raise self.fail(f"{key}.redis", str(exc)) from None
        elif out["store"] == "redis":
            raise self.fail(f"{key}.redis", 'store is redis: give "server=HOST:PORT;database=N"')
        if out["parallel"] == 0:
            raise self.fail(f"{key}.parallel", "expected a whole number >= 1")
        return out

    def rules(self, key: str, raw: object) -> "list[dict[str, object]]":
        if not isinstance(raw, list):
            raise self.fail(key, "expected a list of rules")
        out = []
        for index, item in enumerate(raw):
            where = f"{key}[{index}]"
            if not isinstance(item, dict):
                raise self.fail(where, "expected a mapping (name, conditions, action)")
            rule: dict[str, object] = dict.fromkeys(RULE_CONDITIONS)
            rule["name"] = item.get("name", f"rule{index + 1}")
            if not isinstance(rule["name"], str):
                raise self.fail(f"{where}.name", "expected a string")
            if item.get("action") not in RULE_ACTIONS:
                raise self.fail(f"{where}.action", f"expected one of {', '.join(RULE_ACTIONS)}")
            rule["action"] = item["action"]
            for name, value in item.items():
                if name in ("name", "action"):
                    continue
                kind = RULE_CONDITIONS.get(name)
                if kind is None:
                    known = ", ".join(sorted(RULE_CONDITIONS))
                    raise self.fail(f"{where}.{name}", f"unknown condition (known: {known})")
                rule[name] = self.condition(f"{where}.{name}", kind, value)
            out.append(rule)
        return out

    def condition(self, key: str, kind: str, value: object) -> object:
        if kind != "results":
            return self.value(key, kind, value)
        words = [value] if isinstance(value, str) else value
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise self.fail(key, "expected a result word or a list of them")
        lowered = [w.lower() for w in words]
        unknown = [w for w in lowered if w not in RESULT_WORDS]
        if unknown:
            raise self.fail(key, f"unknown result {unknown[0]!r}")
        return lowered

    def document(self, data: object) -> "dict[str, dict[str, object]]":
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.fail("(top)", "expected a mapping of sections")
        for section in data:
            if section not in SECTIONS:
                known = ", ".join(SECTIONS)
                raise self.fail(str(section), f"unknown section (known: {known})")
        return {section: self.section(section, data.get(section)) for section in SECTIONS}

    def section(self, section: str, given: object) -> "dict[str, object]":
        """One section's keys, each checked (the default where not given)."""
        keys = SECTIONS[section]
        given = given or {}
        if not isinstance(given, dict):
            raise self.fail(section, "expected a mapping")
        for key in given:
            if key not in keys:
                raise self.fail(f"{section}.{key}", f"unknown key (known: {', '.join(keys)})")
        return {
            key: self.value(f"{section}.{key}", kind, given.get(key, default))
            for key, (kind, default) in keys.items()
        }


def build(checked: "Mapping[str, Mapping[str, object]]", source: "str | None") -> "Config":
    """Plain checked data (as the checker or the cache gives it) into the
    configuration; each section's record is made when it is first read."""
    return Config(checked, source)


def format_duration(seconds: object) -> object:
    """432000 -> '5d' (the largest unit that divides it)."""
    if not isinstance(seconds, int) or seconds == 0:
        return seconds
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
