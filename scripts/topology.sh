#!/usr/bin/env bash
# Several functions run only from a trap or as a wait_for command, which shellcheck 0.9 takes for
# unreachable code.
# shellcheck disable=SC2317
#
# The docker-compose topology as local processes on free loopback ports: Redis (single, sentinel
# or cluster), N gateways and an nginx or HAProxy load balancer. Prints the addresses, one
# key=value per line with "ready" last, then runs until Ctrl-C / SIGTERM, when it stops every
# process it started and removes its temporary directory.
#
#   scripts/topology.sh [--redis single|sentinel|cluster] [--gateways N] [--lb nginx|haproxy|none]
#
# The balancer runs from the shipped deploy/nginx/nginx.conf.template or deploy/haproxy/haproxy.cfg,
# unedited: behind it the gateways listen on 127.0.0.2, .3, ... at one port, and a small DNS
# server (python3) answers one name with all of them, as Compose's "gateway" alias does.
#
# Defaults: --redis single --gateways 2 --lb nginx. Output (stdout; everything else is stderr):
#   redis=redis://127.0.0.1:PORT      every Redis data node (sentinel mode: the primary first)
#   sentinel=redis://127.0.0.1:PORT   every sentinel (sentinel mode)
#   sentinel_master=mymaster          the monitored master's name (sentinel mode)
#   gateway=http://127.0.0.1:PORT     every gateway
#   url=http://127.0.0.1:PORT         where clients go: the load balancer, or the first gateway
#   pid=N                             every process started (each leads its own process group)
#   dir=/tmp/gw-topology.XXXXXX       logs and configuration; removed on exit
#   ready
#
# Environment: GATEWAY_BIN (skip `cargo build -p gateway --release` and run this binary),
# TOPOLOGY_TIMEOUT (seconds each process may take to become ready, default 30), and any other
# GATEWAY__* setting, passed through to every gateway.
set -euo pipefail

# `wait -n` (bash 4.3) is how the script notices a process exiting while it waits for signals.
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 403)); then
  echo "topology: needs bash 4.3 or newer (this is $BASH_VERSION)" >&2
  exit 1
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  sed -n '/^# The docker-compose/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
  echo "topology: $*" >&2
  exit 1
}

redis_mode=single
gateways=2
lb=nginx
while [ $# -gt 0 ]; do
  case $1 in
    --redis | --gateways | --lb)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      opt=${1#--} value=$2
      shift 2
      ;;
    --redis=* | --gateways=* | --lb=*)
      opt=${1%%=*} value=${1#*=}
      opt=${opt#--}
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  case $opt in
    redis) redis_mode=$value ;;
    gateways) gateways=$value ;;
    lb) lb=$value ;;
  esac
done
case $redis_mode in single | sentinel | cluster) ;; *) die "--redis must be single, sentinel or cluster" ;; esac
case $lb in nginx | haproxy | none) ;; *) die "--lb must be nginx, haproxy or none" ;; esac
if ! [[ $gateways =~ ^[0-9]+$ ]] || [ "$gateways" -gt 64 ]; then
  die "--gateways must be a number from 0 to 64"
fi
timeout=${TOPOLOGY_TIMEOUT:-30}
[[ $timeout =~ ^[0-9]+$ ]] || die "TOPOLOGY_TIMEOUT must be a number of seconds"
# The gateways' drain on SIGTERM. Short by default: Ctrl-C should not wait 10 s (production's
# value) when streams are open.
drain=${GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS:-3}
[[ $drain =~ ^[0-9]+$ ]] || die "GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS must be a number"

# Debian puts nginx and haproxy in /usr/sbin, which is often not on a non-root user's PATH.
find_bin() {
  local dir
  if command -v "$1" 2>/dev/null; then return 0; fi
  for dir in /usr/sbin /usr/local/sbin /usr/local/bin /usr/bin; do
    if [ -x "$dir/$1" ]; then
      echo "$dir/$1"
      return 0
    fi
  done
  return 1
}
need() {
  find_bin "$1" || die "$1 is not installed (scripts/test.sh installs what the tests need)"
}
redis_server=$(need redis-server)
redis_cli=$(need redis-cli)
curl=$(need curl)
case $lb in
  nginx) lb_bin=$(need nginx) envsubst=$(need envsubst) ;;
  haproxy) lb_bin=$(need haproxy) ;;
esac
# The balancers find the gateways through a small DNS server (python3), as in production.
if [ "$lb" != none ]; then python3=$(need python3); fi

# --- process bookkeeping and cleanup (installed before anything is started)

pids=() names=() logs=() tiers=()
dir=""
# setsid puts each process in its own session and process group: a terminal's Ctrl-C then
# reaches only this script, which stops everything in order (load balancer, gateways, Redis)
# instead of every process at once, and stopping a group also stops its children (nginx workers).
# Without job control a background job is never a group leader, so setsid does not fork and $!
# is the real process.
if command -v setsid >/dev/null 2>&1; then groups=1; else groups=0; fi

signal() { # SIGNAL PID: the process's whole group when it has one
  if [ "$groups" = 1 ]; then
    kill "-$1" -- "-$2" 2>/dev/null || true
  else
    kill "-$1" "$2" 2>/dev/null || true
  fi
}
alive() {
  if [ "$groups" = 1 ]; then kill -0 -- "-$1" 2>/dev/null; else kill -0 "$1" 2>/dev/null; fi
}

# Stops tiers from the top (3 load balancer, 2 gateways, 1 sentinels, 0 Redis) so nothing sees
# its backend vanish while it still serves: SIGTERM, then SIGKILL for whatever is left after the
# gateways' drain time plus 10 s.
cleanup() {
  local status=$? tier i pid deadline left
  set +e
  trap '' INT TERM HUP PIPE
  for tier in 3 2 1 0; do
    left=()
    for i in "${!pids[@]}"; do
      if [ "${tiers[$i]}" = "$tier" ]; then
        signal TERM "${pids[$i]}"
        left+=("${pids[$i]}")
      fi
    done
    [ ${#left[@]} -gt 0 ] || continue
    deadline=$((SECONDS + drain + 10))
    for pid in "${left[@]}"; do
      while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
      if alive "$pid"; then
        echo "topology: pid $pid did not stop; killing it" >&2
        signal KILL "$pid"
      fi
      wait "$pid" 2>/dev/null
    done
  done
  if [ -n "$dir" ]; then rm -rf "$dir"; fi
  exit "$status"
}
trap cleanup EXIT
# Conventional 128+signal exit codes; the EXIT trap does the work. PIPE: whoever read stdout
# went away. HUP: the terminal closed.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

dir=$(mktemp -d "${TMPDIR:-/tmp}/gw-topology.XXXXXX")

# start NAME TIER LOG COMMAND...: runs COMMAND in the background, output to LOG.
start() {
  local name=$1 tier=$2 log=$3
  shift 3
  if [ "$groups" = 1 ]; then
    setsid "$@" >"$log" 2>&1 </dev/null &
  else
    "$@" >"$log" 2>&1 </dev/null &
  fi
  pids+=("$!") names+=("$name") logs+=("$log") tiers+=("$tier")
}

# Fails with the end of the process's log, which usually says why.
fail_with_log() { # INDEX MESSAGE
  echo "topology: ${names[$1]}: $2; last lines of ${logs[$1]}:" >&2
  tail -n 20 "${logs[$1]}" >&2 || true
  exit 1
}

# wait_for INDEX WHAT COMMAND...: polls COMMAND until it succeeds; fails if the process exits or
# TOPOLOGY_TIMEOUT passes first (+1: SECONDS counts whole seconds, so the wait is never shorter).
wait_for() {
  local index=$1 what=$2 deadline=$((SECONDS + timeout + 1))
  shift 2
  until "$@"; do
    kill -0 "${pids[$index]}" 2>/dev/null || fail_with_log "$index" "exited before $what"
    [ "$SECONDS" -lt "$deadline" ] || fail_with_log "$index" "not $what after ${timeout}s"
    sleep 0.1
  done
}

# free_ports N: N distinct ports nothing listens on, from the OS (all held at once, so they are
# distinct). Taken right before each batch starts, so the window for another process to take
# one is short.
free_ports() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
    return
  fi
  # No python: random ports below the usual ephemeral range that refuse a connection.
  local found=() port
  while [ ${#found[@]} -lt "$1" ]; do
    port=$((20000 + RANDOM % 10000))
    case " ${found[*]} " in *" $port "*) continue ;; esac
    if ! (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then found+=("$port"); fi
  done
  echo "${found[*]}"
}

# --- the gateway binary, and whether it takes this topology's settings (before anything starts)

join() { # SEPARATOR ITEMS...
  local IFS=$1
  shift
  echo "$*"
}

# The gateway's Redis settings for this topology (in redis_env), from redis_urls/sentinel_urls.
redis_settings() {
  case $redis_mode in
    single) redis_env=("GATEWAY__REDIS__URL=${redis_urls[0]}/0") ;;
    sentinel) redis_env=("GATEWAY__REDIS__SENTINELS=$(join , "${sentinel_urls[@]}")"
      GATEWAY__REDIS__SENTINEL_MASTER=mymaster) ;;
    cluster) redis_env=("GATEWAY__REDIS__CLUSTER_NODES=$(join , "${redis_urls[@]}")") ;;
  esac
}

if [ "$gateways" -gt 0 ]; then
  if [ -n "${GATEWAY_BIN:-}" ]; then
    gateway_bin=$GATEWAY_BIN
  else
    (cd "$root" && cargo build -p gateway --release >&2)
    # Wherever cargo puts it (CARGO_TARGET_DIR, .cargo/config.toml, or target/).
    target=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    gateway_bin=${target:-$root/target}/release/gateway
  fi
  [ -x "$gateway_bin" ] || die "no gateway binary at $gateway_bin"

  # The settings that make up the topology replace any the caller has; every other GATEWAY__*
  # variable passes through. TLS is unset because the balancers here speak plain HTTP to the
  # gateways.
  gateway_env=(env -u GATEWAY__REDIS__URL -u GATEWAY__REDIS__SENTINELS
    -u GATEWAY__REDIS__SENTINEL_MASTER -u GATEWAY__REDIS__CLUSTER_NODES
    -u GATEWAY__SERVER__LISTEN -u GATEWAY__SERVER__TLS_CERT -u GATEWAY__SERVER__TLS_KEY
    "GATEWAY__SERVER__SHUTDOWN_TIMEOUT_SECONDS=$drain"
    # The balancer on loopback names the client (X-Forwarded-For, or HAProxy's PROXY header).
    GATEWAY__SERVER__TRUSTED_PROXIES=127.0.0.0/8 GATEWAY__SERVER__PROXY_PROTOCOL=true)

  # Sentinel and cluster support are newer than some gateway builds: ask the binary whether it
  # accepts this topology's settings (check-config parses, it does not connect, so stand-in
  # addresses do). If only those are refused, run Redis alone (useful on its own) and say why
  # no gateway was started; any other refusal is the caller's settings.
  redis_urls=(redis://127.0.0.1:6379) sentinel_urls=(redis://127.0.0.1:26379)
  redis_settings
  if ! check=$("${gateway_env[@]}" "${redis_env[@]}" "$gateway_bin" check-config 2>&1 >/dev/null); then
    if [ "$redis_mode" != single ] &&
      "${gateway_env[@]}" "$gateway_bin" check-config >/dev/null 2>&1; then
      echo "topology: NOT starting gateways: $gateway_bin does not accept the --redis $redis_mode settings (${redis_env[*]%%=*}):" >&2
      echo "  $check" >&2
      echo "topology: starting Redis only" >&2
      gateways=0
    else
      die "the gateway refuses its settings: $check"
    fi
  fi
fi

# --- Redis

cli() { # PORT ARGS...
  "$redis_cli" -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null
}
pong() { [ "$(cli "$1" PING)" = PONG ]; }

# start_redis NAME PORT ARGS...: a redis-server in its own directory, logging to stdout (the log
# file). Append-only with fsync every second, as in production (docker-compose.yml).
start_redis() {
  local name=$1 port=$2 data="$dir/$1"
  shift 2
  mkdir -p "$data"
  start "$name" 0 "$dir/$name.log" "$redis_server" --port "$port" --bind 127.0.0.1 \
    --dir "$data" --daemonize no --save '' --appendonly yes --appendfsync everysec "$@"
}

redis_urls=() sentinel_urls=() redis_ports=()
case $redis_mode in
  single)
    read -r port < <(free_ports 1)
    start_redis redis "$port"
    wait_for $((${#pids[@]} - 1)) "answering PING" pong "$port"
    redis_ports=("$port")
    ;;
  sentinel)
    read -r primary replica1 replica2 < <(free_ports 3)
    # No 5 s wait for more replicas before the first (diskless) full sync.
    start_redis redis-primary "$primary" --repl-diskless-sync-delay 0
    wait_for $((${#pids[@]} - 1)) "answering PING" pong "$primary"
    start_redis redis-replica-1 "$replica1" --replicaof 127.0.0.1 "$primary"
    start_redis redis-replica-2 "$replica2" --replicaof 127.0.0.1 "$primary"
    in_sync() { cli "$1" INFO replication | grep -q '^master_link_status:up'; }
    wait_for $((${#pids[@]} - 2)) "in sync with the primary" in_sync "$replica1"
    wait_for $((${#pids[@]} - 1)) "in sync with the primary" in_sync "$replica2"
    redis_ports=("$primary" "$replica1" "$replica2")
    # Sentinels rewrite their configuration file (discovered peers, epochs), so each gets its
    # own writable copy. Started after the replicas are in sync: a sentinel learns the replicas
    # from the primary's INFO when it connects, instead of at its next INFO (10 s later).
    # Short down-after so a failover can be tried by hand (kill the primary's pid).
    read -r -a sentinel_ports < <(free_ports 3)
    for i in 0 1 2; do
      port=${sentinel_ports[$i]}
      mkdir -p "$dir/sentinel-$((i + 1))"
      cat >"$dir/sentinel-$((i + 1))/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
daemonize no
dir $dir/sentinel-$((i + 1))
sentinel monitor mymaster 127.0.0.1 $primary 2
sentinel down-after-milliseconds mymaster 3000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 1
EOF
      start "sentinel-$((i + 1))" 1 "$dir/sentinel-$((i + 1)).log" \
        "$redis_server" "$dir/sentinel-$((i + 1))/sentinel.conf" --sentinel
      sentinel_urls+=("redis://127.0.0.1:$port")
    done
    # Ready when each sentinel has found the others (hello messages every 2 s) and could both
    # agree on a failure and authorise a failover.
    quorum() { cli "$1" SENTINEL CKQUORUM mymaster | grep -q '^OK 3 usable'; }
    for i in 0 1 2; do
      wait_for $((${#pids[@]} - 3 + i)) "seeing a quorum of 3 sentinels" quorum "${sentinel_ports[$i]}"
    done
    ;;
  cluster)
    # Explicit bus ports (default: port + 10000, which may be taken or above 65535), from the
    # same batch so they cannot collide with the client ports.
    read -r -a ports < <(free_ports 12)
    redis_ports=("${ports[@]:0:6}") bus_ports=("${ports[@]:6:6}")
    for i in 0 1 2 3 4 5; do
      start_redis "redis-node-$((i + 1))" "${redis_ports[$i]}" --cluster-enabled yes \
        --cluster-config-file nodes.conf --cluster-port "${bus_ports[$i]}" \
        --cluster-node-timeout 2000
    done
    for i in 0 1 2 3 4 5; do
      wait_for $((${#pids[@]} - 6 + i)) "answering PING" pong "${redis_ports[$i]}"
    done
    nodes=()
    for port in "${redis_ports[@]}"; do nodes+=("127.0.0.1:$port"); done
    if ! "$redis_cli" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
      >"$dir/cluster-create.log" 2>&1; then
      echo "topology: redis-cli --cluster create failed:" >&2
      tail -n 20 "$dir/cluster-create.log" >&2
      exit 1
    fi
    cluster_ok() { cli "$1" CLUSTER INFO | grep -q '^cluster_state:ok'; }
    for i in 0 1 2 3 4 5; do
      wait_for $((${#pids[@]} - 6 + i)) "in a healthy cluster" cluster_ok "${redis_ports[$i]}"
    done
    ;;
esac
for port in "${redis_ports[@]}"; do redis_urls+=("redis://127.0.0.1:$port"); done

# --- gateways

gateway_urls=()
# Behind a balancer, gateway N listens on 127.0.0.(N+1), all on one port, so that one name
# (resolved by the DNS server below to every address) and one port reach them all, as a
# Compose network alias or a Kubernetes headless Service does.
shared_port() { # N: a port free on 127.0.0.2 .. 127.0.0.(N+1)
  "$python3" -c '
import socket, sys
n = int(sys.argv[1])
for _ in range(200):
    held = [socket.socket()]
    held[0].bind(("127.0.0.2", 0))
    port = held[0].getsockname()[1]
    try:
        for i in range(3, n + 2):
            held.append(socket.socket())
            held[-1].bind((f"127.0.0.{i}", port))
    except OSError:
        continue
    print(port)
    break
else:
    sys.exit("no port free on every address")' "$1"
}
if [ "$gateways" -gt 0 ]; then
  redis_settings
  gateway_port=0
  if [ "$lb" != none ]; then gateway_port=$(shared_port "$gateways"); fi
  for ((n = 1; n <= gateways; n++)); do
    # Port 0 (no balancer): the gateway binds a free port itself and writes it to its address
    # file, so there is no race for it.
    listen=127.0.0.1:0
    if [ "$lb" != none ]; then listen=127.0.0.$((n + 1)):$gateway_port; fi
    start "gateway-$n" 2 "$dir/gateway-$n.log" "${gateway_env[@]}" "${redis_env[@]}" \
      "GATEWAY__SERVER__LISTEN=$listen" GATEWAY__SERVER__ADDRESS_FILE="$dir/gateway-$n.address" \
      "$gateway_bin"
  done
  listening() { # INDEX: the address file's line, "listening on http://ADDR (engine: ...)"
    local line
    line=$(grep -m1 '^listening on http://' "${logs[$1]%.log}.address" 2>/dev/null) || return 1
    line=${line#listening on }
    gateway_urls+=("${line%% *}")
  }
  first=$((${#pids[@]} - gateways))
  for ((i = first; i < ${#pids[@]}; i++)); do
    wait_for "$i" "listening" listening "$i"
    # /readyz: Redis reachable, functions loaded, pub/sub up.
    wait_for "$i" "ready (/readyz 200)" \
      "$curl" -fs -o /dev/null --max-time 2 "${gateway_urls[$((i - first))]}/readyz"
  done
fi

# --- load balancer: deploy/nginx/nginx.conf.template or deploy/haproxy/haproxy.cfg as shipped,
# with the addresses given through their variables

url=""
if [ "$gateways" -gt 0 ] && [ "$lb" != none ]; then
  # A DNS server answering the gateways' name with every gateway's address (A records, TTL 1 s),
  # NXDOMAIN for any other name. It prints its port first.
  gateway_name=gateways.topology.test
  cat >"$dir/dns.py" <<'PY'
import socket, sys
name = sys.argv[1].lower().encode()
addresses = [socket.inet_aton(a) for a in sys.argv[2:]]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print("port", sock.getsockname()[1], flush=True)
while True:
    query, peer = sock.recvfrom(1500)
    if len(query) < 12 or query[2] & 0x80 or query[4:6] != b"\0\1":
        continue
    at, labels = 12, []
    try:
        while query[at]:
            labels.append(query[at + 1 : at + 1 + query[at]])
            at += 1 + query[at]
        qtype = int.from_bytes(query[at + 1 : at + 3], "big")
    except IndexError:
        continue
    known = b".".join(labels).lower() == name
    answers = addresses if known and qtype == 1 else []
    header = query[:2] + bytes([0x80 | (query[2] & 1), 0x80 if known else 0x83])
    header += b"\0\1" + len(answers).to_bytes(2, "big") + b"\0\0\0\0"
    records = b"".join(b"\xc0\x0c\0\1\0\1\0\0\0\1\0\4" + a for a in answers)
    sock.sendto(header + query[12 : at + 5] + records, peer)
PY
  addresses=()
  for ((n = 1; n <= gateways; n++)); do addresses+=("127.0.0.$((n + 1))"); done
  start dns 2 "$dir/dns.log" "$python3" "$dir/dns.py" "$gateway_name" "${addresses[@]}"
  dns_port=""
  dns_listening() {
    dns_port=$(sed -n 's/^port //p' "$dir/dns.log" 2>/dev/null)
    [ -n "$dns_port" ]
  }
  wait_for $((${#pids[@]} - 1)) "serving DNS" dns_listening

  read -r lb_port < <(free_ports 1)
  mkdir -p "$dir/$lb"
  if [ "$lb" = nginx ]; then
    # Connections per worker below the descriptor limit the workers inherit (see the template).
    nofile=$(ulimit -n)
    connections=8192
    if [ "$nofile" != unlimited ] && [ "$nofile" -lt 8292 ]; then connections=$((nofile - 100)); fi
    # What the official nginx image does with /etc/nginx/templates/*.template.
    # shellcheck disable=SC2016 # envsubst's list of variables, literally
    NGINX_LISTEN=127.0.0.1:$lb_port NGINX_GATEWAY=$gateway_name:$gateway_port \
      NGINX_RESOLVER=127.0.0.1:$dns_port NGINX_RESOLVER_VALID=10s \
      NGINX_WORKER_CONNECTIONS=$connections "$envsubst" \
      '${NGINX_LISTEN} ${NGINX_GATEWAY} ${NGINX_RESOLVER} ${NGINX_RESOLVER_VALID} ${NGINX_WORKER_CONNECTIONS}' \
      <"$root/deploy/nginx/nginx.conf.template" >"$dir/nginx/nginx.conf"
    # As root, nginx's workers run as an unprivileged user, who must be able to enter the
    # prefix to reach the temp directories.
    chmod 755 "$dir" "$dir/nginx"
    # -e: the compiled-in error log (/var/log/nginx) is not writable for a non-root user.
    start nginx 3 "$dir/nginx.log" "$lb_bin" -p "$dir/nginx/" -e "$dir/nginx/error.log" \
      -g "pid $dir/nginx/nginx.pid; daemon off;" -c "$dir/nginx/nginx.conf"
  else
    start haproxy 3 "$dir/haproxy.log" env "HAPROXY_BIND=127.0.0.1:$lb_port" \
      "HAPROXY_GATEWAY=$gateway_name:$gateway_port" "HAPROXY_DNS=127.0.0.1:$dns_port" \
      "$lb_bin" -f "$root/deploy/haproxy/haproxy.cfg" -db
  fi
  url="http://127.0.0.1:$lb_port"
  wait_for $((${#pids[@]} - 1)) "proxying /healthz" \
    "$curl" -fs -o /dev/null --max-time 2 "$url/healthz"
elif [ ${#gateway_urls[@]} -gt 0 ]; then
  url=${gateway_urls[0]}
fi

# --- report

for u in "${redis_urls[@]}"; do echo "redis=$u"; done
if [ "$redis_mode" = sentinel ]; then
  for u in "${sentinel_urls[@]}"; do echo "sentinel=$u"; done
  echo "sentinel_master=mymaster"
fi
for u in "${gateway_urls[@]}"; do echo "gateway=$u"; done
if [ -n "$url" ]; then echo "url=$url"; fi
for pid in "${pids[@]}"; do echo "pid=$pid"; done
echo "dir=$dir"
echo ready
if [ -n "$url" ]; then
  echo "topology: try  curl -N '$url/sse?channel=demo'  and" \
    "curl -X POST $url/publish -d '{\"channel\":\"demo\",\"data\":\"hi\"}'; Ctrl-C stops everything" >&2
else
  echo "topology: Redis is up; Ctrl-C stops it" >&2
fi

# Runs until signalled. A process that exits meanwhile is reported, not fatal: stopping a Redis
# primary or a gateway by hand is how failover gets tried. `wait -n` returns as soon as a
# trapped signal arrives, and when any process exits.
running=("${!pids[@]}")
while [ ${#running[@]} -gt 0 ]; do
  wait -n || true
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      still+=("$i")
    else
      echo "topology: ${names[$i]} (pid ${pids[$i]}) exited; its log: ${logs[$i]}" >&2
    fi
  done
  running=("${still[@]}")
done
die "every process has exited"
