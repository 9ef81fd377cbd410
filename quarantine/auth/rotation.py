"""`quarantine keys rotate` and `keys status`: each signing domain's keys moved
along new -> published -> active -> retiring -> retired, one idempotent step at
a time with the state saved after each, so a run killed anywhere is finished
by the next. Signing switches (an atomically replaced `.active` symlink beside
the template's key) only once every nameserver of the zone serves the new key.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from quarantine import backup, names
from quarantine.auth import keys, keystate, publish
from quarantine.auth.keystate import DomainState, Generation, State
from quarantine.auth.sign import ACTIVE
from quarantine.config import Config
from quarantine.fileio import fsync_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Hook = Callable[[str, str], None]  # (step, domain): after each step's effect, for tests

MAX_NAMESERVERS = 20  # of one zone, asked before a switch (an answer may list thousands)
MAX_ADDRESSES = 4  # A and AAAA of one nameserver host asked (a hostile zone may list hundreds)


class RotationError(Exception):
    """The configuration cannot rotate keys (exit 2)."""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0


def templates(cfg: Config) -> dict[str, str]:
    """Key type -> signing template (`dkim.sign_template`, and
    `dkim.ed25519_template` for dual signing); each must hold `%`."""
    out = {cfg.dkim.key_type: cfg.dkim.sign_template}
    if cfg.dkim.ed25519_template:
        if cfg.dkim.key_type == "ed25519":
            raise RotationError("dkim.key_type is ed25519 and dkim.ed25519_template is set")
        out["ed25519"] = cfg.dkim.ed25519_template
    for kind, template in out.items():
        if "%" not in template:
            name = "sign_template" if kind == cfg.dkim.key_type else "ed25519_template"
            raise RotationError(
                f"dkim.{name} {template!r} has no %: keys are rolled per domain, "
                "so the template must name one key per domain (like /etc/domainkeys/%/default)"
            )
    return out


def key_path(template: str, domain: str) -> str:
    return template.replace("%", domain)


def pointer_target(path: str) -> str | None:
    """The selector `PATH.active` names, None when there is none."""
    try:
        return os.readlink(path + ACTIVE)
    except OSError:
        return None


def record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def signing_domains(cfg: Config, state: State) -> list[str]:
    """The domains in the state, and every domain with a key (or a pointer)
    where a signing template puts one."""
    found = set(state.domains)
    for template in templates(cfg).values():
        prefix, _, rest = template.partition("%")
        directory, partial = os.path.split(prefix)
        tail = rest.split("/", 1)[0]
        try:
            names = os.listdir(directory or ".")
        except OSError:
            continue
        for name in names:
            if not name.startswith(partial) or not name.endswith(tail):
                continue
            candidate = name[len(partial) : len(name) - len(tail)]
            try:
                domain = keys.check_name(candidate, "domain")
            except keys.KeyUsage:
                continue
            path = key_path(template, domain)
            if os.path.isfile(path) or os.path.islink(path + ACTIVE):
                found.add(domain)
    return sorted(found)


def adopt(cfg: Config, domain: str) -> Generation | None:
    """The key that signs for `domain` before rotation took it over, as an
    active generation dated by its file's modification time (so a key older
    than keys.max_age is rolled on the first run)."""
    selectors: dict[str, str] = {}
    since: list[float] = []
    for kind, template in templates(cfg).items():
        path = key_path(template, domain)
        target = pointer_target(path)
        if target is not None:
            selector, file = target, os.path.join(os.path.dirname(path), target)
        elif os.path.isfile(path):
            selector, file = os.path.basename(path), path
        else:
            continue
        try:
            selectors[kind] = keys.check_name(selector, "selector")
            since.append(os.stat(file).st_mtime)
        except (keys.KeyUsage, OSError):
            continue
    if not selectors:
        return None
    return Generation(selectors, "active", {"active": min(since)}, adopted=True)


def weak_key(path: str) -> bool:
    """An RSA key under keys.MIN_RSA_BITS (the old dknewkey's 384 bits):
    the signer refuses it, so it is rolled whatever its age."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        data = keys.read_key_file(path).strip()
        key = serialization.load_pem_private_key(data + b"\n", password=None)
    except (keys.KeyFailure, ValueError, TypeError):
        return False
    return isinstance(key, rsa.RSAPrivateKey) and key.key_size < keys.MIN_RSA_BITS


def nameserver_check(cfg: Config) -> Callable[[str, str], str]:
    """`waiting(name, text)`: "" when every nameserver of the zone serves the
    record (keys.nameservers when set, else the zone's NS records, each of
    their addresses asked directly with `dns check`'s DKIM test), else what
    is still missing where."""
    from quarantine.auth import dnscheck
    from quarantine.auth.resolver import BadName, DnsTempError, Resolver, make_resolver

    base = make_resolver(cfg.dns)
    zone_of = publish.zone_finder(base)
    servers: dict[str, list[tuple[str, list[str]]]] = {}

    def addresses_of(host: str) -> list[str]:
        """At most MAX_ADDRESSES of the host's addresses, IPv4 first."""
        found = [str(a) for a in base.resolve(host, "A")[:MAX_ADDRESSES]]
        if len(found) < MAX_ADDRESSES:
            found += [str(a) for a in base.resolve(host, "AAAA")[: MAX_ADDRESSES - len(found)]]
        return found

    def nameservers(name: str) -> list[tuple[str, list[str]]]:
        if cfg.keys.nameservers:
            return [(address, [address]) for address in cfg.keys.nameservers]
        zone = zone_of(name)
        if zone not in servers:
            found = sorted(str(v) for owner, kind, v in base.records(zone, "NS") if owner == zone)
            hosts = found[:MAX_NAMESERVERS]
            servers[zone] = [(host, addresses_of(host)) for host in hosts]
        return servers[zone]

    def waiting(name: str, text: str) -> str:
        try:
            found = nameservers(name)
        except (DnsTempError, BadName, publish.PublishError) as exc:
            return f"cannot find the nameservers of {name}: {names.show(str(exc))}"
        if not found:
            return f"no nameservers found for {name}"
        behind: list[str] = []
        for host, addresses in found:
            answers = []
            for address in addresses:
                resolver = Resolver([address], cfg.dns.port, cfg.dns.timeout)
                answers.append((address, dnscheck.check_dkim_record(resolver, name, text)))
            wrong = [(a, f) for a, f in answers if f.status not in ("published", "temperror")]
            served = [a for a, f in answers if f.ok]
            if wrong or not served:
                said = wrong[0] if wrong else (answers[0] if answers else None)
                why = f"{said[0]}: {said[1].status}" if said else "no address"
                behind.append(f"{names.show(host)} ({why})")  # a name from DNS: escaped
        return "" if not behind else f"{name} not yet served by " + ", ".join(behind)

    return waiting


def _point(path: str, selector: str) -> None:
    """Make `PATH.active` name `selector`, in one rename (backup.symlink:
    through the directory's descriptor, the directory synced)."""
    backup.symlink(path + ACTIVE, selector)


def _fmt(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))


def _age(seconds: float) -> str:
    days = int(seconds // 86400)
    return f"{days}d" if days else f"{int(seconds // 3600)}h"


class Roller:
    """One run over the domains: the state, the clock, the publisher."""

    def __init__(
        self,
        cfg: Config,
        state: State,
        clock: Callable[[], float],
        force: bool,
        hook: Hook | None,
        waiting: Callable[[str, str], str] | None,
        publisher: Callable[[str], publish.Publisher] | None,
        report: Report,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.clock = clock
        self.force = force
        self.hook = hook
        self.templates = templates(cfg)
        self._waiting = waiting
        self._publisher = publisher
        self._publishers: dict[str, publish.Publisher] = {}
        self.report = report
        self.domain = ""

    # -- plumbing

    def say(self, text: str) -> None:
        self.report.lines.append(f"{self.domain}: {text}")

    def step(self, name: str) -> None:
        """Save the state, then tell the hook (a test may kill us here)."""
        keystate.save(self.cfg.keys.state_file, self.state)
        self.effect(name)

    def effect(self, name: str) -> None:
        if self.hook is not None:
            self.hook(name, self.domain)

    def waiting(self, name: str, text: str) -> str:
        if self._waiting is None:
            self._waiting = nameserver_check(self.cfg)
        return self._waiting(name, text)

    def publisher(self) -> publish.Publisher:
        method = self.cfg.keys.publish
        if self.domain in self.cfg.keys.print_domains:
            method = "print"
        if self._publisher is not None:
            return self._publisher(method)
        if method not in self._publishers:
            from quarantine.auth.resolver import make_resolver

            zone_of = publish.zone_finder(make_resolver(self.cfg.dns))
            self._publishers[method] = publish.publisher(self.cfg, method, self.say, zone_of)
        return self._publishers[method]

    def directory(self, kind: str) -> str:
        template = self.templates.get(kind, self.cfg.dkim.sign_template)
        return os.path.dirname(key_path(template, self.domain))

    def record(self, kind: str, selector: str) -> str:
        return keys.public_record(os.path.join(self.directory(kind), selector))

    # -- the steps

    def run(self, domain: str) -> None:
        self.domain = domain
        now = self.clock()
        current = self.state.domains.get(domain)
        if current is None:
            current = self.state.domain(domain)
            adopted = adopt(self.cfg, domain)
            if adopted is not None:
                current.generations.append(adopted)
                self.say(f"took over {adopted.name}, signing since {_fmt(adopted.times['active'])}")
                self.step("adopted")
        fresh = current.pending()
        if fresh is None and self.due(current, now):
            fresh = Generation(self.new_selectors(current, now), "new", {"new": now})
            current.generations.append(fresh)
            self.say(f"new key {fresh.name} ({', '.join(fresh.selectors)})")
            self.step("new")
        if fresh is not None and fresh.state == "new":
            self.make_keys(fresh)
            for kind, selector in fresh.selectors.items():
                self.publisher().put(record_name(selector, domain), self.record(kind, selector))
                self.effect("put")
            fresh.enter("published", self.clock())
            self.step("published")
        if fresh is not None and fresh.state == "published":
            self.switch(current, fresh)
        for old in current.in_state("retiring"):
            if self.clock() >= old.times.get("retiring", 0) + self.cfg.keys.overlap:
                self.retire(current, old)

    def due(self, current: DomainState, now: float) -> bool:
        active = current.active()
        if active is None or self.force:
            return True
        if now - active.times.get("active", 0) >= self.cfg.keys.max_age:
            return True
        rsa = active.selectors.get("rsa")
        return rsa is not None and weak_key(os.path.join(self.directory("rsa"), rsa))

    def new_selectors(self, current: DomainState, now: float) -> dict[str, str]:
        base = time.strftime(self.cfg.keys.selector_format, time.gmtime(now))
        try:
            keys.check_name(base, "selector")
        except keys.KeyUsage as exc:
            fmt = self.cfg.keys.selector_format
            raise RotationError(f"keys.selector_format {fmt!r}: {exc}") from None
        used = current.used_selectors()
        number = 1
        while True:
            name = base.lower() if number == 1 else f"{base.lower()}-{number}"
            chosen = {
                kind: name if kind == self.cfg.dkim.key_type else name + "e"
                for kind in self.templates
            }
            taken = any(
                selector in used
                or os.path.lexists(os.path.join(self.directory(kind), selector))
                or os.path.lexists(os.path.join(self.directory(kind), selector + ".pub"))
                for kind, selector in chosen.items()
            )
            if not taken:
                return chosen
            number += 1

    def make_keys(self, fresh: Generation) -> None:
        """The generation's key files: kept when a killed run already wrote
        them (the writes are atomic), made otherwise."""
        for kind, selector in fresh.selectors.items():
            path = os.path.join(self.directory(kind), selector)
            try:
                keys.public_record(path)
                continue
            except keys.KeyFailure:
                pass
            bits = self.cfg.dkim.bits if kind == "rsa" else None
            keys.write_new_key(self.directory(kind), self.domain, selector, kind, bits, True)
            self.effect("key")

    def switch(self, current: DomainState, fresh: Generation) -> None:
        """Sign with `fresh` once DNS serves it everywhere (or straight away
        when a killed run had already switched the pointers)."""
        done = all(
            pointer_target(key_path(self.templates[kind], self.domain)) == selector
            for kind, selector in fresh.selectors.items()
        )
        if not done:
            for kind, selector in fresh.selectors.items():
                note = self.waiting(record_name(selector, self.domain), self.record(kind, selector))
                if note:
                    if note != fresh.note:
                        fresh.note = note
                        keystate.save(self.cfg.keys.state_file, self.state)
                    self.say(f"holding {fresh.name}: {note}")
                    return
            for kind, selector in fresh.selectors.items():
                _point(key_path(self.templates[kind], self.domain), selector)
            self.effect("switched")
        now = self.clock()
        for old in current.in_state("active"):
            old.enter("retiring", now)
        fresh.enter("active", now)
        self.say(f"signing with {fresh.name}")
        self.step("active")

    def retire(self, current: DomainState, old: Generation) -> None:
        """Withdraw the old records (empty p=), then remove the private keys."""
        for kind, selector in old.selectors.items():
            path = key_path(self.templates[kind], self.domain) if kind in self.templates else ""
            if path and pointer_target(path) in (None, selector):
                raise publish.PublishError(
                    f"{selector}: not retired, {path}{ACTIVE} does not name another key"
                )
        for kind, selector in old.selectors.items():
            previous = None
            pub = os.path.join(self.directory(kind), selector + ".pub")
            try:
                with open(pub, encoding="ascii") as handle:
                    previous = handle.read(keys.MAX_KEY_FILE).strip() or None
            except (OSError, UnicodeDecodeError):
                pass
            self.publisher().put(record_name(selector, self.domain), publish.WITHDRAWN, previous)
            self.effect("withdrawn")
        for kind, selector in old.selectors.items():
            directory = self.directory(kind)
            for name in (selector, selector + ".pub"):
                try:
                    os.unlink(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
            fsync_dir(directory)
            self.effect("removed")
        old.enter("retired", self.clock())
        current.prune()
        self.say(f"retired {old.name}: record withdrawn, private key removed")
        self.step("retired")


def rotate(
    cfg: Config,
    domains: tuple[str, ...] = (),
    force: bool = False,
    clock: Callable[[], float] = time.time,
    hook: Hook | None = None,
    waiting: Callable[[str, str], str] | None = None,
    publisher: Callable[[str], publish.Publisher] | None = None,
) -> Report:
    """One rotation run over `domains` (default: every signing domain);
    `force` (--now) starts a new key whatever the active one's age.
    keystate.Locked when another run holds the lock; RotationError for a
    configuration that cannot rotate."""
    templates(cfg)
    try:
        wanted = [keys.check_name(d, "domain") for d in domains]
    except keys.KeyUsage as exc:
        raise RotationError(str(exc)) from None
    report = Report()
    with keystate.Lock(cfg.keys.state_file):
        state = keystate.load(cfg.keys.state_file)
        roller = Roller(cfg, state, clock, force, hook, waiting, publisher, report)
        for domain in wanted or signing_domains(cfg, state):
            try:
                roller.run(domain)
            except (
                publish.PublishError,
                keys.KeyFailure,
                keystate.StateError,
                backup.FileError,
                OSError,
            ) as exc:
                report.problems.append(f"{domain}: {exc}")
    return report


def status(cfg: Config, clock: Callable[[], float] = time.time) -> list[dict[str, object]]:
    """Per domain: the active generation and its age, what signs now, what is
    pending (and what it waits for) and what is retiring."""
    kinds = templates(cfg)
    state = keystate.load(cfg.keys.state_file)
    now = clock()
    out: list[dict[str, object]] = []
    for domain in signing_domains(cfg, state):
        current = state.domains.get(domain)
        if current is None:
            adopted = adopt(cfg, domain)
            current = DomainState([adopted] if adopted else [])
        signing = {}
        for kind, template in kinds.items():
            path = key_path(template, domain)
            target = pointer_target(path)
            signing[kind] = target or (os.path.basename(path) if os.path.isfile(path) else None)
        entry: dict[str, object] = {"domain": domain, "signing": signing}
        active = current.active()
        if active is not None:
            since = active.times.get("active", 0)
            entry["active"] = {
                "selectors": active.selectors,
                "since": since,
                "age_seconds": int(now - since),
                "adopted": active.adopted,
                "next_rotation": since + cfg.keys.max_age,
            }
        pending = current.pending()
        if pending is not None:
            entry["pending"] = {
                "selectors": pending.selectors,
                "state": pending.state,
                "since": pending.times.get(pending.state, 0),
                "waiting": pending.note,
            }
        entry["retiring"] = [
            {
                "selectors": g.selectors,
                "since": g.times.get("retiring", 0),
                "withdraw_after": g.times.get("retiring", 0) + cfg.keys.overlap,
            }
            for g in current.in_state("retiring")
        ]
        entry["retired"] = [
            {"selectors": g.selectors, "since": g.times.get("retired", 0)}
            for g in current.in_state("retired")
        ]
        out.append(entry)
    return out


def status_lines(entries: list[dict[str, object]]) -> list[str]:
    """`keys status` as text, one paragraph per domain."""
    lines: list[str] = []
    for entry in entries:
        domain = entry["domain"]
        active = entry.get("active")
        signing = entry["signing"]
        assert isinstance(signing, dict)
        now_signing = ", ".join(f"{k} {v}" for k, v in signing.items() if v) or "nothing"
        if isinstance(active, dict):
            age = _age(float(active["age_seconds"]))
            head = f"{domain}: active {_sel(active['selectors'])}, {age} old"
            head += f", next roll {_fmt(float(active['next_rotation']))}"
        else:
            head = f"{domain}: no active key"
        lines.append(f"{head}; signing with {now_signing}")
        pending = entry.get("pending")
        if isinstance(pending, dict):
            text = f"  pending {_sel(pending['selectors'])}: {pending['state']} since "
            text += _fmt(float(pending["since"]))
            if pending["waiting"]:
                text += f"; {pending['waiting']}"
            lines.append(text)
        retiring = entry["retiring"]
        assert isinstance(retiring, list)
        for old in retiring:
            lines.append(
                f"  retiring {_sel(old['selectors'])}: still published, withdrawn after "
                f"{_fmt(float(old['withdraw_after']))}"
            )
    return lines


def _sel(selectors: object) -> str:
    assert isinstance(selectors, dict)
    return " + ".join(f"{v} ({k})" for k, v in selectors.items())
