#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs SpamAssassin,
# Courier IMAP, maildrop, dnsmasq and Mail::DKIM (apt-get, as root), a venv
# with the project, then runs ruff, mypy --strict and pytest (real components).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/lib.sh"
ensure_debian_packages
ensure_dovecot
ensure_venv "$top"
cd "$top"
export QUARANTINE_BIN="$VENV/bin/quarantine"
echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check quarantine tests
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" -q -p no:cacheprovider "$@"
