#!/bin/bash
# Entrypoint of the offline PostgreSQL stand-in (written for this project). As the official image does:
# on an empty data directory it creates the cluster with POSTGRES_USER (default postgres) as superuser and
# POSTGRES_PASSWORD as its password, creates POSTGRES_DB (default: the user's name), runs every *.sql
# (psql) and *.sh (bash) of /docker-entrypoint-initdb.d once in name order on a server reachable only by
# its socket, then starts PostgreSQL listening on every address, passwords required over TCP. If the
# initialisation fails, the data directory is emptied again so that the next start retries it.
set -Eeuo pipefail

PGDATA="${PGDATA:-/var/lib/postgresql/data}"
SOCKETS=/var/run/postgresql

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" "$SOCKETS"
  chown -R postgres:postgres "$PGDATA" "$SOCKETS"
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

say() { echo "postgres-entrypoint: $*"; }

initialise() {
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set (the superuser password)}"
  export POSTGRES_USER="${POSTGRES_USER:-postgres}"
  export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
  trap 'say "initialisation failed: emptying $PGDATA so that the next start tries again"; find "$PGDATA" -mindepth 1 -delete' ERR
  say "creating the cluster in $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
  pg_ctl --pgdata="$PGDATA" --wait --silent -o "-c listen_addresses='' -k $SOCKETS" start
  export PGHOST="$SOCKETS" PGUSER="$POSTGRES_USER"
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 --quiet --dbname=postgres --set=db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
  fi
  local script
  for script in /docker-entrypoint-initdb.d/*; do
    case "$script" in
      *.sql) say "running $script"; psql -v ON_ERROR_STOP=1 --quiet --dbname="$POSTGRES_DB" -f "$script" ;;
      *.sh) say "running $script"; bash "$script" ;;
      *"/*") ;;  # the folder is empty
      *) say "ignoring $script (neither .sql nor .sh)" ;;
    esac
  done
  pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
  unset PGHOST PGUSER
  trap - ERR
  say "initialised"
}

if [ "${1:-}" = postgres ]; then
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initialise
  fi
  shift
  exec postgres -D "$PGDATA" "$@"
fi
exec "$@"
