#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs mosquitto when it is missing
# (the integration tests start a real broker per test), then runs `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "scripts/test.sh: installing mosquitto (the tests run a real broker)" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi

exec cargo test "$@"
