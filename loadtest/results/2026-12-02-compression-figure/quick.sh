#!/usr/bin/env bash
# Example: quick.sh GATEWAY__COMPRESSION__WS=true GATEWAY__COMPRESSION__SSE=true -- saturate --conns 2000 \
#   --start-rate 10 --step-seconds 5 --max-rate 120 --size 1024 --realistic --threads 2 --transport ws --compressed
# quick.sh ENV... -- loadtest args   (fresh gateway, in-memory engine unless env says otherwise)
set -u
B=${CARGO_TARGET_DIR:-target}/release
envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
port=$((21000 + RANDOM % 2000))
env GATEWAY__SERVER__LISTEN=127.0.0.1:$port GATEWAY__LOG__FILTER=warn "${envs[@]}" $B/gateway > /tmp/quick-gw.log 2>&1 &
gw=$!
for i in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:$port/readyz && break; sleep 0.1; done
timeout 90 $B/loadtest "$@" --url http://127.0.0.1:$port --server-pid $gw --quiet
kill $gw; wait $gw 2>/dev/null
