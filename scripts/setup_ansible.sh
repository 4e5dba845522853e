#!/usr/bin/env bash
# What tests/deploy (the Ansible roles against a local fleet) needs besides the dev extra:
#
# * Debian's python3.11 with venv and setuptools. The local fleet's release virtualenvs
#   are made from /usr/bin/python3.11 because the daemons run as `nobody`, who cannot run
#   a Python under /root (pyenv); Ansible's pip module needs setuptools there.
# * systemd-analyze, which checks the rendered systemd units (`verify`, `security`).
#   systemd need not run: nothing is started.
#
# Idempotent: installs only what is missing. Needs root (re-runs itself through sudo)
# and apt access to the Debian mirrors when something is missing.
set -euo pipefail

missing=()
if ! /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3.11 python3.11-venv)
fi
if ! /usr/bin/python3.11 -c 'import pkg_resources' 2>/dev/null; then
    missing+=(python3-setuptools)
fi
if ! command -v systemd-analyze >/dev/null; then
    missing+=(systemd)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "setup_ansible: /usr/bin/python3.11 (venv, setuptools) and systemd-analyze present; nothing to do"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        exec sudo -- bash "$0" "$@"
    fi
    echo "setup_ansible: installing ${missing[*]} needs root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup_ansible: installed ${missing[*]}"
