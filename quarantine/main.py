"""Entry points of the two qmail wrappers, `quarantine-remote` and
`quarantine-queue`. Until DKIM signing and verification land they keep mail
safe: the remote wrapper defers (`Z`), the queue wrapper refuses temporarily.
"""

from __future__ import annotations

import sys


def remote(argv: list[str]) -> int:
    """qmail-remote wrapper: until DKIM signing lands, defer (`Z`) so mail stays queued."""
    sys.stdout.write("Zquarantine-remote: DKIM signing is not implemented yet (#4.3.0)\n\0")
    sys.stdout.flush()
    return 0


def queue(argv: list[str]) -> int:
    """qmail-queue wrapper: until verification lands, refuse temporarily (71)."""
    sys.stderr.write("quarantine-queue: verification is not implemented yet\n")
    return 71
