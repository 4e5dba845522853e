#!/usr/bin/env bash
# Install the curl binary the HTTP/REST tests (tests/edge_node/test_http.py,
# tests/coordinator/api/test_http.py) drive the daemons with, as a person would.
#
# Idempotent: does nothing when `curl` exists. Needs root (re-runs itself through sudo)
# and apt access to the Debian mirrors.
set -euo pipefail

if command -v curl >/dev/null; then
    echo "setup_curl: $(curl --version | head -n 1); nothing to do"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        exec sudo -- bash "$0" "$@"
    fi
    echo "setup_curl: installing curl needs root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends curl ca-certificates >/dev/null
echo "setup_curl: installed $(curl --version | head -n 1)"
