#!/usr/bin/env bash
# The main job end to end on an embedded default: a throwaway vpopmail tree
# with one domain and two users, one opted in; SpamAssassin's sample spam and
# ham delivered through the .qmail files as qmail-local would; where each landed.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/scripts/lib.sh"
ensure_debian_packages
ensure_venv "$top"
exec "$VENV/bin/quarantine" demo "$@"
