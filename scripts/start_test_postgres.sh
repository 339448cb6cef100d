#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on a loopback port for opengem's tests.
#
#   scripts/start_test_postgres.sh [DIR]      # start; prints the URL alone on the last line
#   scripts/start_test_postgres.sh --stop DIR # stop it and delete DIR
#
#   export OPENGEM_TEST_DATABASE_URL=$(scripts/start_test_postgres.sh /tmp/og-pg | tail -n1)
#
# Needs PostgreSQL's server binaries (Debian/Ubuntu: apt-get install postgresql).
# PostgreSQL refuses to run as root: under root the cluster runs as the user in
# $PG_TEST_USER (default "postgres"). The cluster listens on 127.0.0.1 only, with
# trust authentication for its one user, "opengem" — for tests, never for data.
# Set PG_TEST_PORT to choose the port (default: a free one).
set -euo pipefail

find_bindir() {
  if [[ -n "${PG_BINDIR:-}" ]]; then echo "$PG_BINDIR"; return; fi
  if command -v pg_config >/dev/null 2>&1 && [[ -x "$(pg_config --bindir)/initdb" ]]; then
    pg_config --bindir; return
  fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/initdb" ]]; then echo "$d"; return; fi
  done
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  echo "no PostgreSQL server binaries found (install the postgresql package)" >&2
  exit 3
}

as_owner() {
  if [[ "$(id -u)" == "0" ]]; then
    runuser -u "${PG_TEST_USER:-postgres}" -- "$@"
  else
    "$@"
  fi
}

BINDIR="$(find_bindir)"

if [[ "${1:-}" == "--stop" ]]; then
  dir="${2:?usage: $0 --stop DIR}"
  if [[ -f "$dir/data/PG_VERSION" ]]; then
    as_owner "$BINDIR/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  exit 0
fi

dir="${1:-$(mktemp -d -t opengem-pg.XXXXXX)}"
mkdir -p "$dir"
port="${PG_TEST_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
if [[ "$(id -u)" == "0" ]]; then
  chown "${PG_TEST_USER:-postgres}" "$dir"
fi

as_owner "$BINDIR/initdb" -D "$dir/data" -U opengem --auth=trust -E UTF8 --no-locale \
  >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 4; }
as_owner "$BINDIR/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
  -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off" start \
  >/dev/null || { cat "$dir/postgres.log" >&2; exit 5; }

echo "PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') in $dir (stop: $0 --stop $dir)" >&2
echo "postgresql://opengem@127.0.0.1:$port/postgres"
