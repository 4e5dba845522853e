#!/usr/bin/env bash
# Make .tools/promtool: Prometheus's checker for metrics pages, rules and configs, taken
# from Debian's prometheus package (downloaded with apt, extracted, not installed: no
# service, no user, nothing else on the system changes). The metrics tests run
# `promtool check metrics` on real node and coordinator pages and `promtool check rules`
# / `check config` on deploy/prometheus/; under CI they fail without it.
#
# Idempotent: does nothing when .tools/promtool runs. Needs apt access to the Debian
# mirrors (no root needed to download with apt-get download into a writable directory,
# but `apt-get update` may need root when the package lists are missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.tools/promtool
if [ -x "$DEST" ] && "$DEST" --version >/dev/null 2>&1; then
    echo "setup_promtool: $("$DEST" --version 2>&1 | head -1); nothing to do"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt's _apt user downloads into it
if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1)
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p .tools
install -m 755 "$tmp/x/usr/bin/promtool" "$DEST"
echo "setup_promtool: $("$DEST" --version 2>&1 | head -1) in $DEST"
