#!/usr/bin/env bash
# Install the Debian packages callvault needs (PostgreSQL 15 server, pg_partman, pg_cron; faketime
# for the tests that set the server's clock; pgbouncer for the tests through a transaction pooler;
# a Java 17 runtime for the test that reads the archive with Spark),
# only when something is missing. Safe to run again; does nothing when all is present.
set -euo pipefail

# Only Debian packages: nothing here builds, downloads or unpacks outside source. Citus (scale-out,
# docs/scaling.md) has no Debian package for PostgreSQL 15: callvault uses it where it is installed
# and the Citus tests are skipped elsewhere (`make test` says which at its start).

PG_MAJOR="${CALLVAULT_PG_MAJOR:-15}"
packages=("postgresql-${PG_MAJOR}" "postgresql-${PG_MAJOR}-partman" "postgresql-${PG_MAJOR}-cron" "python3-venv" "faketime" "pgbouncer" "openjdk-17-jre-headless" "prometheus" "zstd" "etcd-server")
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "callvault: installing Debian packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "callvault: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Debian's postgresql-common would create and start a 'main' cluster on port 5432; callvault
# runs its own private cluster instead, so tell it not to create one.
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
