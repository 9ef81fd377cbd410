"""The commands' entry points. `quarantine deliver` goes straight to the lean
filter; every other subcommand loads the click interface. Nothing heavy is
imported before that choice is made.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv and argv[0] == "deliver":
        from quarantine import deliver

        return deliver.main(argv[1:])
    from quarantine import cli

    return cli.run(argv)


def remote(argv: list[str]) -> int:
    """qmail-remote wrapper: until DKIM signing lands, defer (`Z`) so mail stays queued."""
    sys.stdout.write("Zquarantine-remote: DKIM signing is not implemented yet (#4.3.0)\n\0")
    sys.stdout.flush()
    return 0


def queue(argv: list[str]) -> int:
    """qmail-queue wrapper: until verification lands, refuse temporarily (71)."""
    sys.stderr.write("quarantine-queue: verification is not implemented yet\n")
    return 71
