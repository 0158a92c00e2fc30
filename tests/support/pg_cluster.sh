#!/usr/bin/env bash
# PostgreSQL for the store contract suite (tests/support/postgres.py), used by `make test`.
#
#   pg_cluster.sh ensure   the server on 127.0.0.1:5432 when it lets user postgres in without
#                          a password (nothing to do);
#                          else a private cluster for this run: PostgreSQL from the OS
#                          packages when missing, initdb with trust auth on loopback only,
#                          a free port; its URL goes to .pg-test-url for the tests
#   pg_cluster.sh stop     stops that private cluster, if one was started
#
# FLEETCAST_TEST_POSTGRES (a libpq URL without a database) names a server to use instead;
# FLEETCAST_TEST_PG_PRIVATE=1 starts the private cluster even when 5432 answers.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${TMPDIR:-/tmp}/fleetcast-test-pg
URL_FILE=.pg-test-url

as_owner() {   # initdb and postgres refuse to run as root: run them as the postgres user then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

answers() {   # a server there that lets user postgres in without a password (what the tests need)
  .venv/bin/python -c "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" \
    "postgresql://postgres@127.0.0.1:$1/postgres" 2>/dev/null
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

case "${1:-}" in
ensure)
  if [ -n "${FLEETCAST_TEST_POSTGRES:-}" ]; then exit 0; fi
  if [ "${FLEETCAST_TEST_PG_PRIVATE:-}" != 1 ] && answers 5432; then rm -f "$URL_FILE"; exit 0; fi
  if [ -z "$(pg_bin)" ]; then
    echo "installing postgresql from the OS packages (the store tests need a PostgreSQL server)"
    SUDO=$(test "$(id -u)" = 0 || echo sudo)
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  BIN=$(pg_bin)
  "$0" stop >/dev/null 2>&1 || true
  rm -rf "$DIR" && mkdir -p "$DIR" && chmod 0700 "$DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
  as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  echo "postgresql://postgres@127.0.0.1:$PORT" > "$URL_FILE"
  echo "started a private PostgreSQL for the tests on 127.0.0.1:$PORT ($DIR)"
  ;;
stop)
  if [ -f "$DIR/data/postmaster.pid" ]; then as_owner "$(pg_bin)/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null; fi
  rm -f "$URL_FILE"
  ;;
*)
  echo "usage: $0 ensure|stop" >&2
  exit 2
  ;;
esac
