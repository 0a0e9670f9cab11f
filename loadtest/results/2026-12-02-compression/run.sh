#!/usr/bin/env bash
# usage: run.sh LABEL loadtest-args...   (fresh gateway with compression.sse on; wchar + CPU deltas)
set -u
label=$1; shift
port=$((19000 + RANDOM % 2000))
GATEWAY__COMPRESSION__SSE=true GATEWAY__COMPRESSION__LEVEL=${LEVEL:-6} GATEWAY__SERVER__LISTEN=127.0.0.1:$port GATEWAY__LOG__FILTER=warn \
  /tmp/tgt-c/release/gateway >/tmp/bench-c/$label.gw.log 2>&1 &
gw=$!
sleep 1
w0=$(awk '/^wchar/{print $2}' /proc/$gw/io)
c0=$(awk '{print $14+$15}' /proc/$gw/stat)
/tmp/tgt-c/release/loadtest "$@" --url http://127.0.0.1:$port --server-pid $gw --quiet >/tmp/bench-c/$label.json 2>/tmp/bench-c/$label.err
w1=$(awk '/^wchar/{print $2}' /proc/$gw/io)
c1=$(awk '{print $14+$15}' /proc/$gw/stat)
echo "{\"label\":\"$label\",\"wchar\":$((w1-w0)),\"cpu_ticks\":$((c1-c0))}" > /tmp/bench-c/$label.proc.json
kill $gw; wait $gw 2>/dev/null
cat /tmp/bench-c/$label.proc.json
