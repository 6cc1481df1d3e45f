#!/usr/bin/env bash
# Install (Debian packages), start and provision a local PostgreSQL for the store tests. Idempotent.
# Prints the URL the tests read from LORAFORGE_TEST_POSTGRES_URL (which is also their default).
set -euo pipefail

PG_USER="${PG_USER:-loraforge}"
PG_PASSWORD="${PG_PASSWORD:-loraforge}"
PG_DB="${PG_DB:-loraforge_test}"
PG_PORT="${PG_PORT:-5432}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q postgresql
fi

version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
  $SUDO pg_createcluster "$version" main --port "$PG_PORT"
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}' | grep -q online; then
  $SUDO pg_ctlcluster "$version" main start
fi

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then su postgres -c "psql -p $PG_PORT -v ON_ERROR_STOP=1 -tAc \"$1\""
  else sudo -u postgres psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -tAc "$1"; fi
}

# Wait until the server accepts connections (bounded).
for _ in $(seq 1 30); do
  if as_postgres "SELECT 1" >/dev/null 2>&1; then break; fi
  sleep 1
done

if [ "$(as_postgres "SELECT 1 FROM pg_roles WHERE rolname='$PG_USER'")" != "1" ]; then
  as_postgres "CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD' CREATEDB"
fi
if [ "$(as_postgres "SELECT 1 FROM pg_database WHERE datname='$PG_DB'")" != "1" ]; then
  as_postgres "CREATE DATABASE $PG_DB OWNER $PG_USER"
fi

echo "postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
