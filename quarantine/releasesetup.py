"""`quarantine digest setup @DOMAIN [--remove]`: writes (or deletes) the
domain's `.qmail-quarantine-release-default`, whose one program line runs
`quarantine release` for every `quarantine-release-TOKEN@DOMAIN`. Edits go
through qmailfile's DomainDir (a descriptor of the domain directory, O_NOFOLLOW,
atomic rename, owned by the domain's uid), as optin's do.
"""

from __future__ import annotations

from quarantine import dotqmail
from quarantine.filterchain import check_chain, command_path, config_file, program_line
from quarantine.names import show
from quarantine.qmailfile import DomainDir, OptinError, check_domain_dir, qmail_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from quarantine.config import Config

MARKER = (
    "# quarantine: release addresses of the digest, written by 'quarantine digest setup'; "
    "'quarantine digest setup --remove' deletes this file"
)


class Setup:
    """What setup did (or, for a dry run, would do) to the domain's file."""

    __slots__ = ("action", "after", "before", "domain", "path")

    def __init__(
        self, domain: str, path: str, action: str, before: str | None, after: str | None
    ) -> None:
        self.domain = domain
        self.path = path
        self.action = action  # created updated deleted unchanged
        self.before = before
        self.after = after

    def message(self, dry_run: bool = False) -> str:
        texts = {
            "created": "release addresses on: created",
            "updated": "release addresses on: updated",
            "deleted": "release addresses off: deleted",
            "unchanged": "no change to",
        }
        tail = " (dry run: nothing written)" if dry_run and self.action != "unchanged" else ""
        return f"@{show(self.domain)}: {texts[self.action]} {show(self.path)}{tail}"


def file_name(cfg: Config) -> str:
    """`.qmail-quarantine-release-default` for digest.release_local."""
    return qmail_name(cfg.digest.release_local + "-default")


def release_line(cfg: Config, program: str) -> str:
    """`|PROGRAM release [--config FILE]`: no preline, the message is not read."""
    words = [program, "release"]
    config = config_file(cfg)
    if config is not None:
        words += ["--config", config]
    return program_line(words)


def setup(
    cfg: Config,
    target: str,
    command: str | None = None,
    *,
    remove: bool = False,
    dry_run: bool = False,
    force: bool = False,
) -> Setup:
    """Write the release file of `@domain` (or delete it with `remove`).
    A file of the same name that setup did not write is left alone."""
    where = dotqmail.resolve(cfg, target)
    if where.user is not None:
        raise dotqmail.BadTarget(f"{show(target)}: give @DOMAIN (release addresses are per domain)")
    name = file_name(cfg)
    with DomainDir(where.domain) as directory:
        check_domain_dir(directory)
        path = directory.path(name)
        before, stamp = directory.read(name)
        if before is not None and not before.startswith(MARKER):
            raise OptinError(
                f"{show(path)} was not written by 'quarantine digest setup'; edit it by hand"
            )
        if remove:
            if before is None:
                return Setup(where.domain.name, path, "unchanged", None, None)
            if not dry_run:
                directory.delete(name, stamp)
            return Setup(where.domain.name, path, "deleted", before, None)
        program = command_path(command)
        after = f"{MARKER}\n{release_line(cfg, program)}\n"
        if after == before:
            return Setup(where.domain.name, path, "unchanged", before, after)
        if not force:
            problems = [
                p for p in check_chain(cfg, where.domain, program)
                if not p.startswith("preline")
            ]  # fmt: skip
            if problems:
                raise OptinError(
                    "refusing to write the release line, its mail would wait in the queue:\n  "
                    + "\n  ".join(problems)
                    + "\n(fix the permissions, or give --force if you know better)"
                )
        if not dry_run:
            directory.write(name, after, stamp)
        action = "created" if before is None else "updated"
        return Setup(where.domain.name, path, action, before, after)
