#!/usr/bin/env bash
# A release build of fleethook for a robot, on a Debian machine: installs the rustup
# target and Debian's cross compiler when they are missing, then builds.
#
#   cross/build.sh x86_64-unknown-linux-gnu        # x86_64, glibc >= 2.34 (the amd64 package)
#   cross/build.sh aarch64-unknown-linux-gnu       # 64-bit ARM, glibc >= 2.34 on the robot
#   cross/build.sh armv7-unknown-linux-gnueabihf   # 32-bit ARM (hard float)
#   cross/build.sh aarch64-unknown-linux-musl      # 64-bit ARM, static: runs on any Linux
#   cross/build.sh x86_64-unknown-linux-musl       # x86_64, static
#
# The binary lands in target/TARGET/release/fleethook. Robot builds leave out the demo's
# embedded broker (FEATURES="" by default; FEATURES=embedded-broker keeps it).
set -euo pipefail
TARGET=${1:?usage: cross/build.sh TARGET}
FEATURES=${FEATURES-}
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
MISSING=()
need() { dpkg -s "$1" >/dev/null 2>&1 || MISSING+=("$1"); }
WRAPDIR=$(mktemp -d)
trap 'rm -rf "$WRAPDIR"' EXIT

case "$TARGET" in
x86_64-unknown-linux-gnu)
    # The build machine's own architecture, built like the cross targets (no demo
    # broker, its own target directory) for the amd64 package. No linker or CC set: for
    # the host's own triple they would also apply to build scripts and proc macros, which
    # every build shares, and `cargo run --release` and this build would rebuild every
    # crate in turn ("the config settings changed").
    need gcc
    CC=""; LINKER="" ;;
aarch64-unknown-linux-gnu)
    need gcc-aarch64-linux-gnu; need libc6-dev-arm64-cross
    CC=aarch64-linux-gnu-gcc; LINKER=aarch64-linux-gnu-gcc ;;
armv7-unknown-linux-gnueabihf)
    need gcc-arm-linux-gnueabihf; need libc6-dev-armhf-cross
    CC=arm-linux-gnueabihf-gcc; LINKER=arm-linux-gnueabihf-gcc ;;
aarch64-unknown-linux-musl)
    # Debian's arm64 musl headers and libc, compiled with the gnu cross gcc through
    # musl's specs file (bundled SQLite needs musl's headers, not glibc's).
    need gcc-aarch64-linux-gnu
    if ! dpkg -s musl-dev:arm64 >/dev/null 2>&1; then
        $SUDO dpkg --add-architecture arm64
        $SUDO apt-get update -qq
        MISSING+=("musl-dev:arm64")
    fi
    SPECS=/usr/lib/aarch64-linux-musl/musl-gcc.specs
    printf '#!/bin/sh\nexec aarch64-linux-gnu-gcc -specs %s "$@"\n' "$SPECS" > "$WRAPDIR/aarch64-linux-musl-gcc"
    chmod +x "$WRAPDIR/aarch64-linux-musl-gcc"
    export PATH="$WRAPDIR:$PATH"
    CC=aarch64-linux-musl-gcc; LINKER=aarch64-linux-gnu-gcc ;;
x86_64-unknown-linux-musl)
    need musl-tools
    CC=musl-gcc; LINKER=cc ;;
*)
    echo "cross/build.sh: unknown target $TARGET" >&2
    exit 2 ;;
esac

if [ ${#MISSING[@]} -gt 0 ]; then
    echo "cross/build.sh: installing ${MISSING[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}" >/dev/null
fi
rustup target add "$TARGET" >/dev/null

UPPER=$(echo "$TARGET" | tr 'a-z-' 'A-Z_')
LOWER=$(echo "$TARGET" | tr '-' '_')
if [ -n "$LINKER" ]; then
    export "CARGO_TARGET_${UPPER}_LINKER=$LINKER"
    export "CC_${LOWER}=$CC"
fi

START=$(date +%s)
cargo build --release --locked --target "$TARGET" --no-default-features ${FEATURES:+--features "$FEATURES"}
BIN="target/$TARGET/release/fleethook"
echo "cross/build.sh: $BIN $(stat -c %s "$BIN") bytes in $(( $(date +%s) - START )) s" >&2
file "$BIN" 2>/dev/null || true
