# Shared by scripts/demo.sh and scripts/test.sh: install what quarantine's demo
# and tests need on a fresh Debian machine (Debian packages when root, a venv
# with the project and its test tools), then leave $VENV set.

DEB_PACKAGES="spamassassin spamc maildrop courier-imap dnsmasq-base libmail-dkim-perl opendkim-tools libmail-spf-perl ucspi-tcp libunwind8 chromium redis-server"
# Key roll-over tests: BIND (named, nsupdate, dig) and tinydns (built by make).
DEB_PACKAGES="$DEB_PACKAGES bind9 bind9-dnsutils tinydns make"

missing_tools() {
    local tool
    for tool in spamassassin sa-learn spamd spamc maildrop maildirmake dnsmasq tcprules chromium redis-server redis-cli \
        named nsupdate dig tsig-keygen tinydns tinydns-data make opendkim-testmsg; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || echo "$tool"
    done
    [ -x /usr/sbin/imapd ] || [ -x /usr/lib/courier/courier/imapd ] || echo imapd
    perl -MMail::DKIM::Verifier -e 1 >/dev/null 2>&1 || echo Mail::DKIM
    # Dovecot's imap (unpacked by ensure_dovecot) links against libunwind.
    ldconfig -p 2>/dev/null | grep 'libunwind\.so\.8 ' >/dev/null || echo libunwind8  # no -q: under pipefail an early exit makes ldconfig's SIGPIPE a failure
}

# Dovecot's imap for the tests that move mail with it. Its packages conflict
# with courier-imap (both provide imap-server), so they are not installed:
# their files are unpacked into a private directory, and the tests run its
# imap binary pre-authenticated on a pipe ($QUARANTINE_DOVECOT points there).
ensure_dovecot() {
    local dir=${QUARANTINE_DOVECOT:-/var/tmp/quarantine-dovecot} tmp deb
    if [ ! -x "$dir/usr/lib/dovecot/imap" ]; then
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" dovecot-core dovecot-imapd) >&2 ||
            { echo "cannot download dovecot-core, dovecot-imapd" >&2; rm -rf "$tmp"; exit 1; }
        rm -rf "$dir.new"
        for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dir.new"; done
        rm -rf "$tmp" "$dir"
        mv "$dir.new" "$dir"
        chmod 755 "$dir"
    fi
    export QUARANTINE_DOVECOT=$dir
}

ensure_debian_packages() {
    local missing
    missing=$(missing_tools | tr '\n' ' ')
    [ -z "${missing// /}" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing: $missing-- run as root, or: apt-get install $DEB_PACKAGES" >&2
        exit 1
    fi
    echo "installing Debian packages for: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages try to start services through systemd; in a container that
    # fails harmlessly and the binaries are still installed.
    apt-get install -y -qq $DEB_PACKAGES >/dev/null || true
    missing=$(missing_tools | tr '\n' ' ')
    if [ -n "${missing// /}" ]; then
        echo "still missing after apt-get: $missing" >&2
        exit 1
    fi
}

# The interpreter, too, must be one the vpopmail uid can run: Debian's own
# first (a pyenv or other build under /root is not reachable by uid 89).
find_python() {
    local py
    if [ "$(id -u)" = 0 ] && ! /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null 2>&1 ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null; }
    fi
    for py in /usr/bin/python3.11 /usr/bin/python3 python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    echo "need Python >= 3.11 with venv" >&2
    exit 1
}

# The venv must be runnable by vpopmail's uid (89): qmail-local runs the filter
# as that uid, and a chain it cannot execute makes preline bounce mail. A
# checkout under a private directory (/root) gets its venv in /var/tmp instead.
choose_venv() {
    local top=$1
    if [ -n "${QUARANTINE_VENV:-}" ]; then
        VENV=$QUARANTINE_VENV
    elif "$PYTHON" - "$top" <<'PY'
import os, sys
path = os.path.realpath(sys.argv[1])
while path != "/":
    if not os.stat(path).st_mode & 0o001:
        sys.exit(1)
    path = os.path.dirname(path)
PY
    then
        VENV=$top/.venv
    else
        VENV=/var/tmp/quarantine-venv-$(printf '%s' "$top" | md5sum | cut -c1-8)
    fi
    export VENV
}

ensure_venv() {
    local top=$1
    PYTHON=$(find_python)
    choose_venv "$top"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    chmod 755 "$VENV"
    # A build/ left by an earlier install would carry removed modules along.
    rm -rf "$top/build"
    # Not editable: the tests run what an admin installs, and the domain uid
    # must be able to read the installed package.
    "$VENV/bin/pip" install -q --disable-pip-version-check "$top[test]" 2>&1 |
        grep -v -e DEPRECATION -e "is ignored: it is neither" >&2 || true
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$top" 2>&1 |
        grep -v -e DEPRECATION -e "is ignored: it is neither" >&2 || true
    [ -x "$VENV/bin/quarantine" ] || { echo "install failed: $VENV/bin/quarantine missing" >&2; exit 1; }
}
