"""`quarantine stats`: what sits in every user's Junk (and rescue) folders, read
as each domain's owner through the per-uid worker, beside the Bayes store's
nspam/nham (bayes.py) and the last training run's report."""

from __future__ import annotations

import os
import stat
import time

from quarantine import bayes
from quarantine.corpus import is_trashed
from quarantine.discovery import domains_to_visit, find_folders, find_users, maildir_of
from quarantine.names import show
from quarantine.privsep import in_owner_groups
from quarantine.qmail import LookupFailed
from quarantine.trainreport import load_state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from quarantine import vpopmail
    from quarantine.config import Config
    from quarantine.discovery import Folder, Options


def folder_stats(folder: Folder, cutoff: float) -> dict[str, object]:
    """Messages, bytes, oldest mtime and how many are due (older than cutoff)."""
    count = size = due = 0
    oldest: float | None = None
    for sub in ("new", "cur"):
        directory = os.path.join(folder.path, sub)
        try:
            if not stat.S_ISDIR(os.lstat(directory).st_mode):
                continue
            with os.scandir(directory) as entries:
                listed = list(entries)
        except OSError:
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or is_trashed(entry.name):
                continue
            count += 1
            size += st.st_size
            oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
            due += st.st_mtime <= cutoff
    return {
        "address": show(folder.address),
        "folder": show(folder.name[1:]),
        "kind": folder.kind,
        "messages": count,
        "bytes": size,
        "oldest": oldest,
        "due": due,
    }


def stats(cfg: Config, options: Options) -> dict[str, object]:
    """What sits in the Junk (and rescue) folders per domain and user, and the
    last run's summary. Reads as the domains' uid, like `run`."""
    domains = domains_to_visit(cfg, options)
    age = options.age if options.age is not None else cfg.train.age
    cutoff = time.time() - age
    wanted = set(options.users)

    def work(
        group: list[vpopmail.Domain], halt: Callable[[], bool], uid: int | None, more: bool
    ) -> dict[str, object]:
        rows: list[dict[str, object]] = []
        errors: list[str] = []
        for domain in group:
            try:
                users = list(find_users(cfg, domain))
            except LookupFailed as exc:
                errors.append(f"{domain.name}: {exc}")
                continue
            for user, home in users:
                address = f"{user}@{domain.name}"
                if wanted and address not in wanted:
                    continue
                maildir = maildir_of(cfg, domain, home)
                if maildir is None:
                    continue
                for folder in find_folders(
                    maildir, address, cfg.train.folders, cfg.train.ham_folder
                ):
                    rows.append({"domain": domain.name, **folder_stats(folder, cutoff)})
        return {"rows": rows, "errors": errors}

    rows: list[dict[str, object]] = []
    errors: list[str] = []
    for result in in_owner_groups(domains, work, lambda: False):
        found = result.get("rows", [])
        problems = result.get("errors", [])
        assert isinstance(found, list) and isinstance(problems, list)
        rows.extend(found)
        errors.extend(problems)
    rows.sort(key=lambda r: (str(r["domain"]), str(r["address"]), str(r["folder"])))
    return {
        "age_seconds": age,
        "folders": rows,
        "errors": errors,
        "bayes": bayes.store_counts(cfg, domains),
        "last_run": load_state(cfg.train.state_file),
    }
