#!/usr/bin/env bash
# The JavaScript side: builds @indaba/client (clients/js) and the demo (clients/demo), then runs
# the vitest suites in clients/test against a real Indaba single-node program, including the
# demo in headless Chromium. Needs the server binary: $INDABA_BIN, default target/debug/indaba
# (scripts/test.sh builds it with cargo test). Installs Debian's chromium if missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export INDABA_BIN="${INDABA_BIN:-$ROOT/target/debug/indaba}"
if [ ! -x "$INDABA_BIN" ]; then
  echo "test-js: no Indaba binary at $INDABA_BIN (cargo build -p indaba, or set INDABA_BIN)" >&2
  exit 1
fi

if ! command -v node >/dev/null; then
  echo "==> installing Node.js (Debian)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Chromium (Debian)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
fi

cd "$ROOT/clients"
echo "==> npm ci (clients/)" >&2
npm ci --no-audit --no-fund --loglevel=error >&2 || npm install --no-audit --no-fund --loglevel=error >&2
echo "==> build @indaba/client and the demo" >&2
npm run --silent build >&2
if ! git -C "$ROOT" diff --quiet -- clients/demo/dist 2>/dev/null; then
  echo "test-js: warning: the demo build differs from the committed clients/demo/dist (the server embeds the committed files): commit it" >&2
fi
echo "==> typecheck" >&2
npm run --silent typecheck >&2
echo "==> vitest (INDABA_BIN=$INDABA_BIN)" >&2
mkdir -p artifacts
status=0
npx vitest run --reporter=verbose --reporter=json --outputFile.json=artifacts/vitest.json "$@" || status=$?
node -e '
  const r = require("./artifacts/vitest.json");
  console.log(`js: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`);
' || true
exit "$status"
