#!/usr/bin/env bash
# Runs a cross-built ARM binary under qemu-user: --version, then the end-to-end interop
# check (mosquitto → the ARM agent → three signature-checking receivers), 20 messages.
# The target is read from the path (target/TARGET/release/fleethook).
#
#   cross/smoke.sh [target/aarch64-unknown-linux-gnu/release/fleethook]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/aarch64-unknown-linux-gnu/release/fleethook}")
case "$BIN" in
*/aarch64-unknown-linux-gnu/*) QEMU="qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
*/armv7-unknown-linux-gnueabihf/*) QEMU="qemu-arm -L /usr/arm-linux-gnueabihf" ;;
*/aarch64-unknown-linux-musl/*) QEMU="qemu-aarch64" ;;
*)
    echo "cross/smoke.sh: cannot tell the target of $BIN (expected target/TARGET/release/fleethook)" >&2
    exit 2 ;;
esac
if ! command -v "${QEMU%% *}" >/dev/null 2>&1; then
    SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-user >/dev/null
fi
WRAP=$(mktemp -d)
trap 'rm -rf "$WRAP"' EXIT
printf '#!/bin/sh\nexec %s %s "$@"\n' "$QEMU" "$BIN" > "$WRAP/fleethook"
chmod +x "$WRAP/fleethook"
"$WRAP/fleethook" --version
./scripts/interop.sh "$WRAP/fleethook" 20
