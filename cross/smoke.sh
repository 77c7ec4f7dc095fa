#!/usr/bin/env bash
# Runs a cross-built aarch64 binary under qemu: --version, then the end-to-end interop
# check (mosquitto → the ARM agent → three signature-checking receivers), 20 messages.
#
#   cross/smoke.sh [target/aarch64-unknown-linux-gnu/release/fleethook]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/aarch64-unknown-linux-gnu/release/fleethook}")
if ! command -v qemu-aarch64 >/dev/null 2>&1; then
    SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-user >/dev/null
fi
WRAP=$(mktemp -d)
trap 'rm -rf "$WRAP"' EXIT
printf '#!/bin/sh\nexec qemu-aarch64 -L /usr/aarch64-linux-gnu %s "$@"\n' "$BIN" > "$WRAP/fleethook"
chmod +x "$WRAP/fleethook"
"$WRAP/fleethook" --version
./scripts/interop.sh "$WRAP/fleethook" 20
