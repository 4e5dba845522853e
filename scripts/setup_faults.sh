#!/usr/bin/env bash
# Install what the fault-injection tests (pytest -m fault) need beyond Python: nftables
# (Debian's package: the `nft` command) to drop packets in the network namespaces the
# tests create. `ip` (iproute2) is already on Debian systems. The tests skip, saying
# why, where namespaces cannot be made (no root / CAP_NET_ADMIN); under CI they fail.
#
# Idempotent: does nothing when `nft` exists. Needs root (re-runs itself through sudo)
# and apt access to the Debian mirrors.
set -euo pipefail

if command -v nft >/dev/null; then
    echo "setup_faults: $(nft --version); nothing to do"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        exec sudo -- bash "$0" "$@"
    fi
    echo "setup_faults: installing nftables needs root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nftables >/dev/null
echo "setup_faults: installed $(nft --version)"
