# shellcheck shell=bash
# A throwaway PostgreSQL for the tests, from Debian's binaries (no Docker needed).
#
#   source scripts/postgres.sh
#   start_test_postgres      # exports REFUND_GATEWAY_TEST_DATABASE_URL
#   ...run tests...
#   stop_test_postgres       # also runs on exit of the sourcing shell (an EXIT trap,
#                            # replacing any EXIT trap set before start_test_postgres)
#
# The server listens on 127.0.0.1 on a free port, keeps its socket and data in a temporary
# directory, trusts every local connection (test use only), and is stopped and deleted on
# stop or on exit. initdb refuses to run as root, so the server runs as the `postgres` user.

_test_pg_dir=""
_test_pg_bin=""

# Runs a command as the postgres user (directly when we already are that user).
_test_pg_as_postgres() {
  if [ "$(id -un)" = postgres ]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- "$@"
  else
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  fi
}

# The newest installed server's bin directory (Debian keeps it off PATH).
_test_pg_find_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      printf '%s\n' "$dir"
      return 0
    fi
  done
  dir="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
  if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
    printf '%s\n' "$dir"
    return 0
  fi
  return 1
}

# A TCP port nobody listens on right now.
_test_pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_test_postgres() {
  if [ -n "$_test_pg_dir" ]; then
    echo "test PostgreSQL already running" >&2
    return 0
  fi
  if ! _test_pg_bin="$(_test_pg_find_bin)"; then
    echo "installing PostgreSQL (Debian package postgresql)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    _test_pg_bin="$(_test_pg_find_bin)" || { echo "initdb not found after installing postgresql" >&2; return 1; }
  fi
  if ! id postgres >/dev/null 2>&1; then
    echo "there is no postgres user to run the server as" >&2
    return 1
  fi

  _test_pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/refund-gateway-pg.XXXXXX")"
  chown postgres: "$_test_pg_dir"
  chmod 700 "$_test_pg_dir"
  trap stop_test_postgres EXIT

  local port
  port="$(_test_pg_free_port)"
  if ! _test_pg_as_postgres "$_test_pg_bin/initdb" -D "$_test_pg_dir/data" -U postgres \
      --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$_test_pg_dir/initdb.log" 2>&1; then
    cat "$_test_pg_dir/initdb.log" >&2
    stop_test_postgres
    return 1
  fi
  # fsync stays on: the tests are about durability, and the cost is small here.
  if ! _test_pg_as_postgres "$_test_pg_bin/pg_ctl" -D "$_test_pg_dir/data" \
      -l "$_test_pg_dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $_test_pg_dir -c max_connections=300" \
      start >/dev/null; then
    cat "$_test_pg_dir/server.log" >&2
    stop_test_postgres
    return 1
  fi

  local ready="$_test_pg_bin/pg_isready" tries=0
  until "$ready" -q -h 127.0.0.1 -p "$port" -U postgres; do
    tries=$((tries + 1))
    if [ "$tries" -ge 100 ]; then
      echo "test PostgreSQL did not become ready" >&2
      cat "$_test_pg_dir/server.log" >&2
      stop_test_postgres
      return 1
    fi
    sleep 0.1
  done

  export REFUND_GATEWAY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "$("$_test_pg_bin/postgres" --version) at $REFUND_GATEWAY_TEST_DATABASE_URL" >&2
}

stop_test_postgres() {
  if [ -z "$_test_pg_dir" ]; then
    return 0
  fi
  if [ -f "$_test_pg_dir/data/postmaster.pid" ]; then
    _test_pg_as_postgres "$_test_pg_bin/pg_ctl" -D "$_test_pg_dir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$_test_pg_dir"
  _test_pg_dir=""
  unset REFUND_GATEWAY_TEST_DATABASE_URL
}
