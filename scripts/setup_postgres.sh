#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries for the tests, CI and benchmarks. They need
# only the binaries: tests/postgres.py starts a throwaway server per test session with
# initdb + pg_ctl, as an unprivileged user, in a temporary data directory.
#
# The package must leave no server behind: its postinst creates a "main" cluster on port
# 5432 on a first install and asks invoke-rc.d to start every cluster. Here a temporary
# /usr/sbin/policy-rc.d (exit 101) refuses the start, a createcluster.d drop-in turns off
# the main cluster, and any cluster that appears anyway is stopped and dropped.
#
# Idempotent: does nothing when /usr/lib/postgresql/*/bin/pg_ctl exists. Needs root
# (re-runs itself through sudo) and apt access to the Debian mirrors.
set -euo pipefail

find_pg_ctl() {
    # The newest major version wins, as in tests/postgres.py.
    local found
    found=$(ls -1d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1) || true
    echo "$found"
}

pg_ctl=$(find_pg_ctl)
if [ -n "$pg_ctl" ]; then
    echo "setup_postgres: $pg_ctl ($("$pg_ctl" --version)); nothing to do"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        exec sudo -- bash "$0" "$@"
    fi
    echo "setup_postgres: installing the postgresql package needs root" >&2
    exit 1
fi

start=$(date +%s)

clusters() {
    # "version name" per line; empty before postgresql-common is installed.
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters --no-header | awk '{print $1, $2}'
    fi
}
before=$(clusters)

# policy-rc.d: invoke-rc.d asks it before starting a service; 101 means "not allowed".
# Put back whatever was there before (container images often ship one).
policy=/usr/sbin/policy-rc.d
policy_backup=""
if [ -e "$policy" ]; then
    policy_backup=$(mktemp)
    cp -p "$policy" "$policy_backup"
fi
restore_policy() {
    if [ -n "$policy_backup" ]; then
        mv -f "$policy_backup" "$policy"
    else
        rm -f "$policy"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\n# Written by edgeshard scripts/setup_postgres.sh for one install.\nexit 101\n' \
    > "$policy"
chmod 755 "$policy"

# A drop-in, not an edit of createcluster.conf: that file is a ucf-managed conffile the
# postinst writes itself, and the template it installs includes this directory. Kept after
# the install so that later postgresql-NN packages do not create a main cluster either.
mkdir -p /etc/postgresql-common/createcluster.d
cat > /etc/postgresql-common/createcluster.d/00-edgeshard-no-main-cluster.conf <<'EOF'
# edgeshard scripts/setup_postgres.sh: tests start their own servers with initdb + pg_ctl;
# a package install must not create (and start) a "main" cluster on port 5432.
create_main_cluster = false
EOF

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql

restore_policy
trap - EXIT

# Belt and braces: drop any cluster this install created (stopping it first).
while read -r version name; do
    [ -n "$version" ] || continue
    if ! grep -qx "$version $name" <<<"$before"; then
        echo "setup_postgres: the package created cluster $version/$name: dropping it"
        pg_dropcluster --stop "$version" "$name"
    fi
done <<<"$(clusters)"

pg_ctl=$(find_pg_ctl)
if [ -z "$pg_ctl" ]; then
    echo "setup_postgres: postgresql was installed but no /usr/lib/postgresql/*/bin/pg_ctl" >&2
    exit 1
fi
echo "setup_postgres: installed $pg_ctl ($("$pg_ctl" --version)) in $(( $(date +%s) - start )) s"
