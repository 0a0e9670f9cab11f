#!/usr/bin/env bash
# Runs the benchmarks behind BENCHMARKS.md on this machine, one figure at a time, each against
# freshly started servers on free loopback ports (redis-server, gateway instances,
# bare_broadcast, Nchan), and appends one JSON line per run to $OUT/<figure>.jsonl.
#
#   loadtest/bench.sh [FIGURE...]        default: all of them, in the order below
#
# Figures: idle idle-nchan conns19k conns90k fanout fanout-bare fanout-nchan latency
#          latency-nchan channels channels-nchan storm publish publish-nchan
#          idle-tls idle-h2 fanout-h2 (the gateway serving TLS itself, with a certificate made
#          here by `loadtest gen-cert`; HTTP/2 over TLS and cleartext h2c)
#          cluster-publish cluster-fanout cluster-channels cluster-storm cluster-failover
#          (issue 11: each against one redis-server AND a 3-primary + 3-replica Redis Cluster
#          started here; not in the default list)
#          compression (issue 15: compression off, SSE gzip and WebSocket permessage-deflate
#          with and without server context, each event compressed once and shared; not in the
#          default list)
#
# Environment: OUT (results directory, default target/bench/<date>), STEP (seconds per saturate
# step, default 10), LOCK (a file each loadtest run holds with flock(1), for a shared box); for
# `compression`: CONNS (subscribers, default 10000), SAT_CONNS (subscribers of its saturate runs,
# default "10000 2000"), SAT_START and SAT_MAX (their first and highest rate, default 10 and
# 2000 events/s), LEVEL (deflate level, default 6), COUNT (events of its fixed-rate runs,
# default 300), HOLD (seconds of its idle runs, default 10). Needs the release binaries (built here) and, for the Nchan figures, what
# loadtest/peers/nchan.sh installs. Load goes to 127.0.0.1 only; every loadtest run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-target/bench/$(date +%Y%m%d-%H%M%S)}"
STEP="${STEP:-10}"
mkdir -p "$OUT"
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
LT="$BIN/loadtest"
PIDS=()

log() { echo "bench: $*" >&2; }

# A free port on 127.0.0.1 below the ephemeral range (racy, like every such check).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ] && { echo "$p"; return; }
  done
}

wait_http() {
  local url=$1 i tls=()
  [[ $url == https://* ]] && tls=(--cacert "$CERT")
  for i in $(seq 1 100); do
    curl -fsS "${tls[@]}" -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  log "no answer from $url"; return 1
}

stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; stop_nchan; [ -z "${CERT_DIR:-}" ] || rm -rf "$CERT_DIR"' EXIT

# Starts a redis-server without persistence; sets REDIS_PORT and REDIS_PID.
start_redis() {
  REDIS_PORT=$(free_port)
  local dir; dir=$(mktemp -d)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --maxclients 60000 --loglevel warning >"$dir/log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  log "redis did not start"; return 1
}

# launch_gateway SCHEME ENV...: a gateway on a free port with the given settings (its Redis
# first, then any extra); sets GW_URL and GW_PID once it is ready.
launch_gateway() {
  local scheme=$1; shift
  local port; port=$(free_port)
  env GATEWAY__SERVER__LISTEN="127.0.0.1:$port" GATEWAY__LOG__FILTER=warn "$@" \
    "$BIN/gateway" >>"$OUT/gateway.log" 2>&1 &
  GW_PID=$!; PIDS+=("$GW_PID")
  GW_URL="$scheme://127.0.0.1:$port"
  wait_http "$GW_URL/readyz"
}

# Starts a gateway on Redis; sets GW_URL and GW_PID. Extra env may be given as arguments.
start_gateway() {
  launch_gateway http GATEWAY__REDIS__URL="redis://127.0.0.1:$REDIS_PORT/" "$@"
}

# A self-signed certificate for 127.0.0.1 and localhost, made once per run in a temporary
# directory (removed at exit, so no key lands in the results); sets CERT, KEY.
make_cert() {
  [ -n "${CERT:-}" ] && return 0
  CERT_DIR=$(mktemp -d)
  "$LT" gen-cert --out "$CERT_DIR" >/dev/null
  CERT="$CERT_DIR/cert.pem"; KEY="$CERT_DIR/key.pem"
}

# Starts a gateway on Redis serving TLS (ALPN h2 and http/1.1); sets GW_URL (https://) and GW_PID.
start_gateway_tls() {
  make_cert
  launch_gateway https GATEWAY__REDIS__URL="redis://127.0.0.1:$REDIS_PORT/" \
    GATEWAY__SERVER__TLS_CERT="$CERT" GATEWAY__SERVER__TLS_KEY="$KEY" "$@"
}

start_bare() {
  local port; port=$(free_port)
  "$BIN/bare_broadcast" --listen "127.0.0.1:$port" >>"$OUT/bare.log" 2>&1 &
  BARE_PID=$!; PIDS+=("$BARE_PID")
  BARE_URL="http://127.0.0.1:$port"
  wait_http "$BARE_URL/healthz"
}

# Nchan with Redis storage (loadtest/peers/nchan.sh); sets SUB, PUB, NGINX_*_PID(S), REDIS_PID.
start_nchan() {
  eval "$(loadtest/peers/nchan.sh start)"
  NCHAN_WORKERS=()
  for p in $NGINX_WORKER_PIDS; do NCHAN_WORKERS+=(--server-pid "$p"); done
  NCHAN_SERVER_PIDS=("${NCHAN_WORKERS[@]}" --server-pid "$REDIS_PID")
}
stop_nchan() {
  [ -n "${PREFIX:-}" ] || return 0
  loadtest/peers/nchan.sh stop "$PREFIX" >/dev/null 2>&1 || true
  PREFIX=""
}

# Runs loadtest with a label; its JSON line goes to $OUT/$figure.jsonl with the label added.
# The machine's load before each run goes to $OUT/load.txt (other work shares this box; *.log is git-ignored).
run() {
  local figure=$1 label=$2; shift 2
  log "$figure / $label: loadtest $*"
  echo "$(date -u +%FT%TZ) $figure/$label: $(uptime)" >>"$OUT/load.txt"
  local line lock=()
  [ -z "${LOCK:-}" ] || lock=(flock "$LOCK")
  line=$("${lock[@]}" "$LT" "$@" --quiet 2> >(tee -a "$OUT/$figure.md" >&2)) || true
  echo "${line%\}},\"label\":\"$label\",\"command\":\"loadtest $*\"}" >>"$OUT/$figure.jsonl"
}

# Runs loadtest once per transport (sse, ws), each time against a fresh Redis and gateway:
# `per_transport FIGURE LABEL ARGS...`; in ARGS, @REDIS_URL@ and @REDIS_PID@ stand for that Redis.
per_transport() {
  local figure=$1 label=$2 t a args; shift 2
  for t in sse ws; do
    start_redis; start_gateway
    args=()
    for a in "$@"; do
      a=${a//@REDIS_URL@/redis://127.0.0.1:$REDIS_PORT/}
      args+=("${a//@REDIS_PID@/$REDIS_PID}")
    done
    run "$figure" "$label-$t" "${args[@]}" --transport "$t" --url "$GW_URL" --server-pid "$GW_PID"
    stop_all
  done
}

fig_idle() {
  per_transport idle gateway idle --conns 10000 --hold 10
  # A fresh process per transport: a second run in the same one reuses memory the first freed.
  for t in sse ws; do
    start_bare
    run idle "bare-$t" idle --conns 10000 --hold 10 --transport "$t" --url "$BARE_URL" --server-pid "$BARE_PID"
    stop_all
  done
}

fig_idle_nchan() {
  start_nchan
  run idle "nchan-sse" idle --conns 10000 --hold 10 --sub-url "$SUB" --publish-url "$PUB" "${NCHAN_WORKERS[@]}"
  stop_nchan
}

fig_conns19k() {
  per_transport conns gateway-19k idle --conns 19000 --hold 30
}

# 5 instances on one Redis, 5 generator processes of 18,000 connections each (fd limit 20,000).
fig_conns90k() {
  start_redis
  local urls=() gwpids=() i
  for i in 1 2 3 4 5; do start_gateway; urls+=("$GW_URL"); gwpids+=(--server-pid "$GW_PID"); done
  local tmp lts=(); tmp=$(mktemp -d)
  for i in 0 1 2 3 4; do
    local first=$((1 + i * 10)) last=$((10 + i * 10))
    "$LT" idle --conns 18000 --hold 60 --url "${urls[$i]}" --source-ips "127.0.0.$first-127.0.0.$last" \
      --ramp 1000 --quiet $([ "$i" = 0 ] && echo "${gwpids[@]}") >"$tmp/$i.json" 2>"$tmp/$i.err" &
    lts+=($!)
  done
  for i in "${lts[@]}"; do wait "$i" || true; done
  local line; line=$(cat "$tmp"/*.json | "$LT" combine)
  echo "${line%\}},\"label\":\"gateway-90k-5-instances\",\"command\":\"5 x loadtest idle --conns 18000 --hold 60 (one per instance)\"}" >>"$OUT/conns.jsonl"
  cat "$tmp"/*.err >>"$OUT/conns.md"
  stop_all
}

# Publishing through POST /publish, as bare_broadcast and Nchan are published to: a step also
# fails when the publisher falls behind (publish rate < 90 %, or a publish waits > 1 s).
fig_fanout() {
  per_transport fanout gateway saturate --conns 10000 --start-rate 50 --step-seconds "$STEP" --max-rate 600
}

fig_fanout_bare() {
  local t
  for t in sse ws; do
    start_bare
    run fanout "bare-$t" saturate --conns 10000 --start-rate 50 --step-seconds "$STEP" --max-rate 600 \
      --transport "$t" --url "$BARE_URL" --server-pid "$BARE_PID"
    stop_all
  done
}

fig_fanout_nchan() {
  start_nchan
  run fanout "nchan-sse" saturate --conns 10000 --start-rate 2 --step-seconds "$STEP" --max-rate 200 \
    --sub-url "$SUB" --publish-url "$PUB" "${NCHAN_SERVER_PIDS[@]}"
  stop_nchan
}

fig_latency() {
  per_transport latency gateway fanout --conns 10000 --rate 5 --duration 30 --server-pid @REDIS_PID@
}

fig_latency_nchan() {
  start_nchan
  run latency "nchan-sse" fanout --conns 10000 --rate 5 --duration 30 --sub-url "$SUB" --publish-url "$PUB" "${NCHAN_SERVER_PIDS[@]}"
  stop_nchan
}

fig_channels() {
  per_transport channels gateway channels --conns 10000 --channels 1000 --rate 2000 --duration 30
  # The same events as batches of 20 per POST /publish (one Redis call per batch), from one
  # publisher connection: 100 batches/s, one every 10 ms. With the default 32 connections each
  # fills its batch from its own 31 channels, and all 32 fill at the same moment of every
  # round: 640 events land at once every 320 ms, which no backend batching a steady stream does.
  start_redis; start_gateway
  run channels "gateway-sse-batch20" channels --conns 10000 --channels 1000 --rate 2000 --duration 30 \
    --url "$GW_URL" --server-pid "$GW_PID" --publish-batch 20 --publish-conns 1
  stop_all
  # The gateway's delivery cost alone: events written straight into Redis, as backends do.
  start_redis; start_gateway
  run channels "gateway-sse-redis-publish" channels --conns 10000 --channels 1000 --rate 2000 --duration 30 \
    --url "$GW_URL" --server-pid "$GW_PID" --publish redis --redis-url "redis://127.0.0.1:$REDIS_PORT/"
  stop_all
  start_bare
  run channels "bare-sse" channels --conns 10000 --channels 1000 --rate 2000 --duration 30 \
    --url "$BARE_URL" --server-pid "$BARE_PID"
  stop_all
}

fig_channels_nchan() {
  start_nchan
  run channels "nchan-sse" channels --conns 10000 --channels 1000 --rate 2000 --duration 30 \
    --sub-url "$SUB" --publish-url "$PUB" "${NCHAN_SERVER_PIDS[@]}"
  stop_nchan
}

fig_storm() {
  local t
  for t in sse ws; do
    start_redis; start_gateway; local a=$GW_URL; start_gateway
    run storm "gateway-$t" storm --conns 10000 --count 10 --behind 10 --transport "$t" --url "$a" \
      --storm-url "$GW_URL" --server-pid "$GW_PID" --redis-url "redis://127.0.0.1:$REDIS_PORT/"
    stop_all
  done
}

fig_publish() {
  start_redis; start_gateway
  run publish "gateway-http" publish --duration 10 --concurrency 64 --channels 1000 --url "$GW_URL" --server-pid "$GW_PID"
  run publish "redis-direct" publish --duration 10 --concurrency 64 --channels 1000 --publish redis \
    --redis-url "redis://127.0.0.1:$REDIS_PORT/" --server-pid "$REDIS_PID"
  stop_all
}

fig_publish_nchan() {
  start_nchan
  run publish "nchan-http" publish --duration 10 --concurrency 64 --channels 1000 --publish-url "$PUB" "${NCHAN_SERVER_PIDS[@]}"
  stop_nchan
}

# Idle memory over TLS (HTTP/1.1): SSE and WebSocket (wss), 10,000 connections each, against
# the plain `idle` figure.
fig_idle_tls() {
  local t
  for t in sse ws; do
    start_redis; start_gateway_tls
    run idle-tls "gateway-tls-$t" idle --conns 10000 --hold 10 --transport "$t" --url "$GW_URL" \
      --ca "$CERT" --server-pid "$GW_PID"
    stop_all
  done
}

# Idle memory of SSE over HTTP/2 (TLS, ALPN h2): 10,000 connections with one stream each, and
# 10,000 streams over 100 connections (the idle cost per stream).
fig_idle_h2() {
  local n
  for n in 1 100; do
    start_redis; start_gateway_tls
    run idle-h2 "gateway-h2-sse-$n-per-conn" idle --conns 10000 --hold 10 --http2 --streams-per-conn "$n" \
      --url "$GW_URL" --ca "$CERT" --server-pid "$GW_PID"
    stop_all
  done
}

# Fan-out to 10,000 SSE subscribers of one channel (the `fanout` method, events straight into
# Redis): HTTP/2 with 100 streams on each of 100 connections, over TLS and cleartext (h2c), beside
# HTTP/1.1 over TLS with 10,000 connections (plain HTTP/1.1 is the `fanout` figure).
fig_fanout_h2() {
  local label args
  for label in tls-h2-sse-100x100 tls-h1-sse h2c-sse-100x100; do
    start_redis
    if [[ $label == tls-* ]]; then start_gateway_tls; args=(--ca "$CERT"); else start_gateway; args=(); fi
    [[ $label == *100x100 ]] && args+=(--http2 --streams-per-conn 100)
    run fanout-h2 "gateway-$label" saturate --conns 10000 --start-rate 50 --step-seconds "$STEP" --max-rate 1300 \
      --publish redis --redis-url "redis://127.0.0.1:$REDIS_PORT/" --url "$GW_URL" --server-pid "$GW_PID" "${args[@]}"
    stop_all
  done
}

# --- Redis Cluster (issue 11)

# Starts a Redis Cluster of 3 primaries and 3 replicas on loopback, without persistence:
# `start_cluster [NODE_TIMEOUT_MS]` (default 15000, Redis' own default). Sets CLUSTER_URLS (all
# six, comma-separated), CLUSTER_NODES_ARGS (--redis-cluster ...), CLUSTER_PRIMARIES (redis://
# URLs of the primaries) and CLUSTER_PID_ARGS (--server-pid for each node).
start_cluster() {
  local timeout=${1:-15000} ports=() i p bus dir nodes=() urls=()
  CLUSTER_PID_ARGS=()
  while [ ${#ports[@]} -lt 6 ]; do
    p=$(free_port)
    case " ${ports[*]} " in *" $p "*) continue ;; esac
    ports+=("$p")
  done
  for i in 0 1 2 3 4 5; do
    p=${ports[$i]}
    while :; do bus=$(free_port); case " ${ports[*]} " in *" $bus "*) ;; *) break ;; esac; done
    dir=$(mktemp -d)
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "$bus" \
      --cluster-node-timeout "$timeout" --maxclients 60000 --loglevel warning >"$dir/log" 2>&1 &
    PIDS+=("$!"); CLUSTER_PID_ARGS+=(--server-pid "$!")
    nodes+=("127.0.0.1:$p"); urls+=("redis://127.0.0.1:$p")
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$OUT/cluster-create.log" 2>&1 ||
    { log "cluster create failed"; return 1; }
  for p in "${ports[@]}"; do
    for _ in $(seq 1 100); do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
      sleep 0.1
    done
  done
  CLUSTER_PRIMARIES=()
  for p in "${ports[@]}"; do
    if redis-cli -p "$p" info replication | grep -q '^role:master'; then
      CLUSTER_PRIMARIES+=("redis://127.0.0.1:$p")
    else # wait for the replica's first sync
      for _ in $(seq 1 100); do
        redis-cli -p "$p" info replication | grep -q '^master_link_status:up' && break
        sleep 0.1
      done
    fi
  done
  CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")
  CLUSTER_NODES_ARGS=(--redis-cluster "$CLUSTER_URLS")
  log "cluster up (node timeout $timeout ms): primaries ${CLUSTER_PRIMARIES[*]}"
}

# A gateway on the cluster; like start_gateway (extra env as arguments).
start_gateway_cluster() {
  launch_gateway http GATEWAY__REDIS__CLUSTER_NODES="$CLUSTER_URLS" "$@"
}

# Publish throughput, HTTP (through a gateway) and FCALL straight into Redis, one node vs the
# cluster; Redis CPU per node from INFO (loadtest samples every node given).
fig_cluster_publish() {
  start_redis; start_gateway
  local single=(--redis-url "redis://127.0.0.1:$REDIS_PORT/")
  run cluster-publish "single-http" publish --duration 10 --concurrency 64 --channels 1000 --url "$GW_URL" \
    --server-pid "$GW_PID" "${single[@]}"
  run cluster-publish "single-function" publish --duration 10 --concurrency 64 --channels 1000 --publish redis \
    "${single[@]}" --server-pid "$REDIS_PID"
  stop_all
  start_cluster; start_gateway_cluster
  run cluster-publish "cluster-http" publish --duration 10 --concurrency 64 --channels 1000 --url "$GW_URL" \
    --server-pid "$GW_PID" "${CLUSTER_NODES_ARGS[@]}"
  run cluster-publish "cluster-function" publish --duration 10 --concurrency 64 --channels 1000 --publish redis \
    "${CLUSTER_NODES_ARGS[@]}" "${CLUSTER_PID_ARGS[@]}"
  stop_all
}

# Fan-out to 5,000 SSE subscribers of one channel at rising rates (events by FCALL), one node vs
# the cluster (one channel lives on one shard: this is the per-shard cost, not scaling).
fig_cluster_fanout() {
  start_redis; start_gateway
  run cluster-fanout "single-sse" saturate --conns 5000 --start-rate 100 --step-seconds "$STEP" --max-rate 900 \
    --publish redis --redis-url "redis://127.0.0.1:$REDIS_PORT/" --url "$GW_URL" --server-pid "$GW_PID"
  stop_all
  start_cluster; start_gateway_cluster
  run cluster-fanout "cluster-sse" saturate --conns 5000 --start-rate 100 --step-seconds "$STEP" --max-rate 900 \
    --publish redis "${CLUSTER_NODES_ARGS[@]}" --url "$GW_URL" --server-pid "$GW_PID"
  stop_all
}

# 5,000 subscribers over 1,000 channels (spread over every shard), 2,000 events/s by FCALL.
fig_cluster_channels() {
  start_redis; start_gateway
  run cluster-channels "single-sse" channels --conns 5000 --channels 1000 --rate 2000 --duration "$STEP" \
    --publish redis --redis-url "redis://127.0.0.1:$REDIS_PORT/" --url "$GW_URL" --server-pid "$GW_PID"
  stop_all
  start_cluster; start_gateway_cluster
  run cluster-channels "cluster-sse" channels --conns 5000 --channels 1000 --rate 2000 --duration "$STEP" \
    --publish redis "${CLUSTER_NODES_ARGS[@]}" --url "$GW_URL" --server-pid "$GW_PID"
  stop_all
}

# The 10,000-client reconnect storm between two gateways; Redis commands summed over the primaries.
fig_cluster_storm() {
  start_redis; start_gateway; local a=$GW_URL; start_gateway
  run cluster-storm "single-sse" storm --conns 10000 --count 10 --behind 10 --url "$a" \
    --storm-url "$GW_URL" --server-pid "$GW_PID" --redis-url "redis://127.0.0.1:$REDIS_PORT/"
  stop_all
  start_cluster; start_gateway_cluster; a=$GW_URL; start_gateway_cluster
  run cluster-storm "cluster-sse" storm --conns 10000 --count 10 --behind 10 --url "$a" \
    --storm-url "$GW_URL" --server-pid "$GW_PID" "${CLUSTER_NODES_ARGS[@]}"
  stop_all
}

# SIGKILL of one primary under load: 1,000 SSE subscribers over 64 channels, 320 events/s through
# the gateway's /publish (one publisher connection per channel, so a stuck shard holds up only
# its own channels). Redis' default node timeout (15 s) and a short one (2 s), and with the short
# one the gateway's probe period at its default (5 s) and at 1 s.
fig_cluster_failover() {
  local t probe dur
  for t in 15000:5 2000:5 2000:1; do
    probe=${t#*:}; t=${t%:*}
    dur=$(( t / 1000 + 20 ))
    start_cluster "$t"; start_gateway_cluster GATEWAY__REDIS__PROBE_SECONDS="$probe"
    run cluster-failover "node-timeout-${t}ms-probe-${probe}s" failover --conns 1000 --channels 64 --rate 320 \
      --duration "$dur" --kill-after 5 --kill-node "${CLUSTER_PRIMARIES[0]}" --publish-conns 64 \
      --url "$GW_URL" --server-pid "$GW_PID" "${CLUSTER_NODES_ARGS[@]}"
    stop_all
  done
}

# --- Compression (issue 15)

# Every row of the compression table, for SSE and WebSocket, compression off (the default
# config) against shared per-event compression (compression.sse / compression.ws at LEVEL; the
# generator asks for it with --compressed and inflates every message before checking it).
# WebSocket runs make Chromium's offer, which lets the gateway keep its context (a message
# may refer back into the previous event's: mode `on`), and once more with
# --ws-no-server-context (every message stands alone: mode `alone`):
#   idle:     memory per idle connection (CONNS held HOLD s);
#   fanout:   CONNS subscribers of one channel, 10 events/s of ~1 KiB realistic JSON
#             (--realistic) for COUNT events: bytes the gateway wrote per delivered event
#             (server_written_bytes_per_delivery, wchar of /proc/PID/io over the window) and its
#             CPU per delivered event (server_cpu_us_per_delivery), loadtest's own beside it;
#             every delivery inflated by the connection's own inflater (exact for any server);
#   saturate: the highest sustained rate (max_ok_rate), with each step's server and generator
#             CPU per delivery, at each of SAT_CONNS subscribers. Inflating costs the generator
#             ~10 us more per delivery than plain parsing (more than the gateway's cost), so
#             compressed saturate runs use --inflate-once: each distinct piece (a WebSocket
#             message, a segment of the gzip stream) is inflated once per thread after the
#             same window, and every delivery's bytes are compared with it.
# A fresh gateway (and Redis) per run; events go straight into Redis (--publish redis).
fig_compression() {
  local conns=${CONNS:-10000} level=${LEVEL:-6} count=${COUNT:-300} hold=${HOLD:-10}
  local sat_start=${SAT_START:-10} sat_max=${SAT_MAX:-2000}
  local sat_conns=(${SAT_CONNS:-10000 2000}) t mode modes label env args n
  for t in sse ws; do
    modes=(off on)
    [ "$t" = ws ] && modes=(off on alone)
    for mode in "${modes[@]}"; do
      env=(); args=()
      if [ "$mode" != off ]; then
        env=(GATEWAY__COMPRESSION__SSE=true GATEWAY__COMPRESSION__WS=true
             GATEWAY__COMPRESSION__LEVEL="$level")
        args=(--compressed)
        label="$t-$([ "$t" = sse ] && echo gzip || echo permessage-deflate)-l$level"
        if [ "$mode" = alone ]; then
          args+=(--ws-no-server-context)
          label="$label-alone"
        fi
      else
        label="$t-off"
      fi
      start_redis; start_gateway "${env[@]}"
      run compression "$label-idle" idle --conns "$conns" --hold "$hold" --transport "$t" \
        --url "$GW_URL" --server-pid "$GW_PID" "${args[@]}"
      stop_all
      start_redis; start_gateway "${env[@]}"
      run compression "$label-fanout" fanout --conns "$conns" --rate 10 --count "$count" --size 1024 \
        --realistic --threads 2 --transport "$t" --url "$GW_URL" --server-pid "$GW_PID" "${args[@]}" \
        --publish redis --redis-url "redis://127.0.0.1:$REDIS_PORT/"
      stop_all
      local once=()
      [ "$mode" != off ] && once=(--inflate-once)
      for n in "${sat_conns[@]}"; do
        start_redis; start_gateway "${env[@]}"
        run compression "$label-saturate-$n" saturate --conns "$n" --start-rate "$sat_start" \
          --step-seconds "$STEP" --max-rate "$sat_max" --size 1024 --realistic --threads 2 \
          --transport "$t" --url "$GW_URL" --server-pid "$GW_PID" "${args[@]}" "${once[@]}" \
          --publish redis --redis-url "redis://127.0.0.1:$REDIS_PORT/"
        stop_all
      done
    done
  done
}

all=(idle idle-nchan conns19k conns90k fanout fanout-bare fanout-nchan latency latency-nchan
     channels channels-nchan storm publish publish-nchan idle-tls idle-h2 fanout-h2)
[ $# -gt 0 ] || set -- "${all[@]}"
log "building release binaries"
cargo build --release --locked -q -p gateway -p loadtest
log "results in $OUT"
for f in "$@"; do
  sleep 5 # let sockets and processes of the previous figure settle
  "fig_${f//-/_}"
done
