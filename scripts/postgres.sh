# Sourced by scripts/test.sh and scripts/bench.sh (which define `as_root`).
#
# start_private_postgres PORT DATADIR [-c name=value ...]
# Starts a PostgreSQL server of the newest installed major version on
# 127.0.0.1:PORT from DATADIR (initialised on first use, user and password
# `postgres`), with any extra server options, and waits until it answers.
start_private_postgres() {
  local port=$1 pgdata=$2
  shift 2
  local pgbin pwfile
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  mkdir -p "$(dirname "$pgdata")"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    rm -rf "$pgdata"; mkdir -p "$pgdata"; as_root chown postgres "$pgdata"
    pwfile=$(mktemp); echo postgres > "$pwfile"; chmod 644 "$pwfile"
    as_root runuser -u postgres -- "$pgbin/initdb" -D "$pgdata" -U postgres --pwfile="$pwfile" -A scram-sha-256 >/dev/null
    rm -f "$pwfile"
  fi
  as_root runuser -u postgres -- "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k /tmp -c max_connections=300 $*" start >/dev/null
  for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p "$port" && return 0
    sleep 1
  done
  echo "PostgreSQL did not come up on 127.0.0.1:$port" >&2
  return 1
}
