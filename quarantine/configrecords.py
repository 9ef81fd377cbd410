"""The configuration's records: one frozen class per section (VpopmailConfig,
DeliverConfig, TrainConfig, ...), the Rule of deliver.rules, and Config, which
holds them all. configschema.py declares the keys and builds these from them.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


class Frozen:
    """A record whose attributes are set once, at construction."""

    __slots__: "tuple[str, ...]" = ()

    def __init__(self, values: "Mapping[str, object]") -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__ if n[0] != "_")
        return f"{type(self).__name__}({inner})"

    def as_dict(self) -> "dict[str, object]":
        out: dict[str, object] = {}
        for name in self.__slots__:
            if name[0] == "_":
                continue  # not a setting (Config's checked data)
            value = getattr(self, name)
            if isinstance(value, Frozen):
                value = value.as_dict()
            elif isinstance(value, tuple):
                value = [v.as_dict() if isinstance(v, Frozen) else v for v in value]
            out[name] = value
        return out


class Rule(Frozen):
    __slots__ = (
        "action",
        "dkim",
        "dkim_trusted",
        "dmarc",
        "dmarc_policy",
        "name",
        "score_at_least",
        "score_below",
        "spam",
        "spf",
    )  # fmt: skip
    if TYPE_CHECKING:
        name: str
        action: str
        spam: bool | None
        score_at_least: float | None
        score_below: float | None
        spf: tuple[str, ...] | None
        dkim: tuple[str, ...] | None
        dmarc: tuple[str, ...] | None
        dmarc_policy: tuple[str, ...] | None
        dkim_trusted: bool | None

    def as_dict(self) -> "dict[str, object]":
        """Only the conditions the rule sets (as it would be written in YAML)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in super().as_dict().items() if v is not None}  # fmt: skip


class VpopmailConfig(Frozen):
    __slots__ = ("home", "vuserinfo")
    if TYPE_CHECKING:
        home: str
        vuserinfo: str | None


class QmailConfig(Frozen):
    __slots__ = ("home",)
    if TYPE_CHECKING:
        home: str


class DeliverConfig(Frozen):
    __slots__ = (
        "authserv_ids",
        "header_limit",
        "junk_folder",
        "log_file",
        "over_quota",
        "rules",
        "subscribe",
        "syslog",
        "trust_received_spf",
        "trusted_domains",
    )  # fmt: skip
    if TYPE_CHECKING:
        junk_folder: str
        authserv_ids: tuple[str, ...]
        trust_received_spf: bool
        trusted_domains: tuple[str, ...]
        rules: tuple[Rule, ...]
        over_quota: str
        subscribe: str  # maildir.SUBSCRIBE_MODES
        header_limit: int
        log_file: str | None
        syslog: bool


class BayesConfig(Frozen):
    __slots__ = ("parallel", "redis", "store")
    if TYPE_CHECKING:
        store: str  # dbfile | redis
        redis: str | None  # bayes_sql_dsn of SpamAssassin's Redis store
        parallel: int  # sa-learn calls at once (redis only)


class TrainConfig(Frozen):
    __slots__ = (
        "age",
        "backend",
        "batch_size",
        "bayes",
        "dbpath",
        "folders",
        "ham_folder",
        "ham_from_moves",
        "lock_file",
        "max_size",
        "misfire_grace",
        "per_user",
        "sa_learn",
        "schedule",
        "spamc",
        "spamc_user",
        "spamd_host",
        "spamd_port",
        "state_file",
        "timeout",
        "trash_folders",
        "workers",
    )  # fmt: skip
    if TYPE_CHECKING:
        age: int  # seconds
        folders: tuple[str, ...]
        ham_folder: str | None
        ham_from_moves: bool  # learn as ham what users move out of Junk (hammoves.py)
        trash_folders: tuple[str, ...]  # where a message moved out of Junk is not ham
        backend: str
        sa_learn: str
        spamc: str
        spamd_host: str
        spamd_port: int
        spamc_user: str | None  # spamc -u when not per_user (default: the running user)
        per_user: bool
        workers: int
        batch_size: int
        bayes: BayesConfig
        dbpath: str | None
        lock_file: str
        schedule: str
        state_file: str  # the last run's summary, for `quarantine stats`
        max_size: int  # bytes; larger messages are left alone (0: no limit)
        timeout: int  # seconds one sa-learn batch or spamc call may take
        misfire_grace: int  # seconds `quarantine schedule` may start a run late


class DigestConfig(Frozen):
    __slots__ = (
        "enabled",
        "max_lines",
        "qmail_inject",
        "release_local",
        "release_rate",
        "schedule",
        "secret_file",
        "sender",
        "token_lifetime",
    )  # fmt: skip
    if TYPE_CHECKING:
        enabled: dict[str, str]  # "default", "@domain", "user@domain" -> all|opted-in|off
        release_local: str
        secret_file: str
        qmail_inject: str
        schedule: str | None
        token_lifetime: int  # seconds
        max_lines: int
        sender: str | None
        release_rate: int  # per mailbox per hour


class CleanupConfig(Frozen):
    __slots__ = ("tmp_age",)
    if TYPE_CHECKING:
        tmp_age: int  # seconds: `quarantine cleanup` removes tmp/ debris untouched this long


class DkimConfig(Frozen):
    __slots__ = (
        "bits",
        "domainkeys",
        "ed25519_template",
        "key_type",
        "keydir",
        "qmail_remote",
        "selector",
        "sign_headers",
        "sign_template",
    )  # fmt: skip
    if TYPE_CHECKING:
        keydir: str
        sign_template: str
        qmail_remote: str
        selector: str
        key_type: str
        bits: int
        ed25519_template: str | None
        domainkeys: bool
        sign_headers: tuple[str, ...]


class VerifyConfig(Frozen):
    __slots__ = ("authserv_id", "dkverify", "dmarc_reject", "qmail_queue", "spfbehavior")
    if TYPE_CHECKING:
        authserv_id: str | None
        qmail_queue: str
        dkverify: str | None
        spfbehavior: int
        dmarc_reject: bool


class DnsConfig(Frozen):
    __slots__ = (
        "dmarc_policy",
        "dmarc_rua",
        "dmarc_ruf",
        "nameservers",
        "port",
        "spf_all",
        "spf_includes",
        "spf_ips",
        "timeout",
        "ttl",
    )  # fmt: skip
    if TYPE_CHECKING:
        nameservers: tuple[str, ...]
        port: int
        timeout: float
        spf_ips: tuple[str, ...]
        spf_includes: tuple[str, ...]
        spf_all: str
        dmarc_policy: str
        dmarc_rua: tuple[str, ...]
        dmarc_ruf: tuple[str, ...]
        ttl: int


class MigrateConfig(Frozen):
    __slots__ = ("backup_dir", "crontabs", "tcprules", "tcprules_program")
    if TYPE_CHECKING:
        backup_dir: str
        tcprules: str
        tcprules_program: str
        crontabs: tuple[str, ...]


class KeysConfig(Frozen):
    __slots__ = (
        "max_age",
        "nameservers",
        "nsupdate_key",
        "nsupdate_port",
        "nsupdate_server",
        "overlap",
        "print_domains",
        "publish",
        "schedule",
        "selector_format",
        "state_file",
        "tinydns_data",
    )  # fmt: skip
    if TYPE_CHECKING:
        state_file: str
        selector_format: str
        publish: str
        tinydns_data: str
        nsupdate_server: str
        nsupdate_port: int
        nsupdate_key: str | None
        print_domains: tuple[str, ...]
        nameservers: tuple[str, ...]
        max_age: int  # seconds
        overlap: int  # seconds
        schedule: str | None


class DoctorConfig(Frozen):
    __slots__ = ("remote_user", "spamd_user")
    if TYPE_CHECKING:
        spamd_user: str | None
        remote_user: str


class Config(Frozen):
    """Every section, each as its record. A record is made the first time its
    section is read, from the checked data the configuration was loaded as:
    `quarantine deliver` reads four of the twelve and makes only those."""

    __slots__ = (
        "_checked",
        "cleanup",
        "deliver",
        "digest",
        "dkim",
        "dns",
        "doctor",
        "keys",
        "migrate",
        "qmail",
        "source",
        "train",
        "verify",
        "vpopmail",
    )  # fmt: skip
    if TYPE_CHECKING:
        vpopmail: VpopmailConfig
        qmail: QmailConfig
        deliver: DeliverConfig
        train: TrainConfig
        digest: DigestConfig
        cleanup: CleanupConfig
        dkim: DkimConfig
        verify: VerifyConfig
        dns: DnsConfig
        migrate: MigrateConfig
        keys: KeysConfig
        doctor: DoctorConfig
        source: str | None  # the file it came from; None: built-in defaults

    def __init__(self, checked: "Mapping[str, Mapping[str, object]]", source: "str | None") -> None:
        object.__setattr__(self, "_checked", checked)
        object.__setattr__(self, "source", source)

    if not TYPE_CHECKING:  # the type checker sees the sections declared above

        def __getattr__(self, name):
            """A section not read before: its record, made now and kept."""
            cls = SECTION_CLASSES.get(name)
            if cls is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            record = section_record(cls, self._checked[name])
            object.__setattr__(self, name, record)
            return record


def section_record(cls: "type[Frozen]", checked: "Mapping[str, object]") -> Frozen:
    """One section's checked plain data (lists, dicts) as its record (tuples,
    the records of train.bayes and deliver.rules)."""
    values = dict(checked)
    for key, value in values.items():
        if isinstance(value, dict) and key == "bayes":
            values[key] = BayesConfig(value)
        elif isinstance(value, list):
            if key == "rules":
                values[key] = tuple(Rule(tupled(r)) for r in value)
            else:
                values[key] = tuple(value)
    return cls(values)


def tupled(rule: "Mapping[str, object]") -> "dict[str, object]":
    return {k: tuple(v) if isinstance(v, list) else v for k, v in rule.items()}


def complete(checked: "Mapping[str, Mapping[str, object]]") -> bool:
    """Does plain data (a compiled cache's) hold every key of every record?
    What is missing would fail only when the section is first read."""
    try:
        for section, cls in SECTION_CLASSES.items():
            values = checked[section]
            if not set(cls.__slots__).issubset(values):
                return False
        bayes = checked["train"]["bayes"]
        rules = checked["deliver"]["rules"]
        if not isinstance(bayes, dict) or not set(BayesConfig.__slots__).issubset(bayes):
            return False
        return isinstance(rules, list) and all(
            isinstance(rule, dict) and set(Rule.__slots__).issubset(rule) for rule in rules
        )
    except (KeyError, TypeError):
        return False


SECTION_CLASSES: "dict[str, type[Frozen]]" = {
    "vpopmail": VpopmailConfig,
    "qmail": QmailConfig,
    "deliver": DeliverConfig,
    "train": TrainConfig,
    "digest": DigestConfig,
    "cleanup": CleanupConfig,
    "dkim": DkimConfig,
    "verify": VerifyConfig,
    "dns": DnsConfig,
    "migrate": MigrateConfig,
    "keys": KeysConfig,
    "doctor": DoctorConfig,
}
