#!/usr/bin/env bash
# The whole test suite, runnable on a fresh machine: installs what the tests need (redis-server,
# nginx, haproxy, prometheus, chromium, openssl, curl, and node/npm if missing; the tests start their own instances on free loopback
# ports), then checks formatting and lints, runs the real-browser tests (browser-tests/), fuzzes
# the parsers for a bounded time (scripts/fuzz.sh), and runs every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif have sudo; then sudo "$@"
  else echo "scripts/test.sh: root (or sudo) is needed to run: $*" >&2; exit 1
  fi
}

missing=()
have redis-server || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
have nginx || [ -x /usr/sbin/nginx ] || missing+=(nginx)
have haproxy || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# prometheus and promtool: the dashboard's queries, the alert rules and the metrics lint
# (gateway/tests/it/operator.rs).
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Test certificates are made at run time; curl checks HTTP/2 (h2 over TLS and h2c) by hand.
have openssl || missing+=(openssl)
have curl || missing+=(curl)
if ! have node || ! have npm; then missing+=(nodejs npm); fi
# Deployment checks (scripts/check-deploy.sh) and the shipped-config tests (envsubst, prlimit).
have docker-compose || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
have envsubst || missing+=(gettext-base)
have prlimit || missing+=(util-linux)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  # Keep apt from starting services while installing (the nginx package would start one on port
  # 80, and fail the install if that port is taken); the tests start their own on free ports.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
  fi
  install_status=0
  as_root apt-get update -qq || install_status=$?
  if [ "$install_status" = 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || install_status=$?
  fi
  if [ -n "$policy" ]; then as_root rm -f "$policy"; fi
  [ "$install_status" = 0 ] || exit "$install_status"
fi

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== browser tests"
# Chromium (Debian's, no browser download) -> nginx (round robin) -> two gateways -> Redis; see
# browser-tests/README.md. A failure here is reported at the end, after the Rust tests.
cargo build -p gateway --locked --quiet
npm ci --prefix browser-tests --no-audit --no-fund --loglevel=error
browser_status=0
GATEWAY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/gateway" \
  node --test --test-reporter=spec browser-tests/ || browser_status=$?
echo "== deploy files"
# docker-compose.yml, nginx/HAProxy configs, hadolint, Kubernetes schemas; see the script.
# Reported at the end, like the browser tests.
deploy_status=0
./scripts/check-deploy.sh || deploy_status=$?
echo "== fuzz"
# Each target for FUZZ_SECONDS (default 30) from the committed corpus; see scripts/fuzz.sh.
fuzz_status=0
./scripts/fuzz.sh || fuzz_status=$?
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  # Doc tests first: nextest does not run them, and its summary should be the last line.
  cargo test --workspace --locked --doc --quiet
  cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
  cargo test --workspace --locked --no-fail-fast
fi
if [ "$browser_status" != 0 ]; then
  echo "scripts/test.sh: browser tests failed (exit $browser_status); see '== browser tests' above" >&2
  exit "$browser_status"
fi
if [ "$fuzz_status" != 0 ]; then
  echo "scripts/test.sh: fuzzing failed (exit $fuzz_status); see '== fuzz' above" >&2
  exit "$fuzz_status"
fi
if [ "$deploy_status" != 0 ]; then
  echo "scripts/test.sh: deployment checks failed (exit $deploy_status); see '== deploy files' above" >&2
  exit "$deploy_status"
fi
