#!/usr/bin/env bash
# A Debian package of fleethook for a robot architecture, on a Debian machine: the
# release build (cross/build.sh, without the demo's embedded broker), then cargo-deb
# over it. Installs cargo-deb when it is missing.
#
#   cross/package.sh amd64        # target/x86_64-unknown-linux-gnu/debian/fleethook_<version>-1_amd64.deb
#   cross/package.sh arm64        # target/aarch64-unknown-linux-gnu/debian/fleethook_<version>-1_arm64.deb
#   cross/package.sh armhf        # target/armv7-unknown-linux-gnueabihf/debian/fleethook_<version>-1_armhf.deb
#
# DEB_VERSION overrides the package version (the upgrade test builds two). NO_BUILD=1
# packages what the last build left.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:?usage: cross/package.sh amd64|arm64|armhf}" in
amd64) TARGET=x86_64-unknown-linux-gnu ;;
arm64) TARGET=aarch64-unknown-linux-gnu ;;
armhf) TARGET=armv7-unknown-linux-gnueabihf ;;
*) echo "cross/package.sh: unknown architecture $1 (amd64, arm64 or armhf)" >&2; exit 2 ;;
esac
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install --locked cargo-deb >&2
fi
if [ -z "${NO_BUILD:-}" ]; then
    cross/build.sh "$TARGET"
fi
cargo deb --no-build --no-strip --target "$TARGET" ${DEB_VERSION:+--deb-version "$DEB_VERSION"} --output "target/$TARGET/debian/"
# The newest package there (no pipe into head: with pipefail, ls's SIGPIPE would fail us).
DEBS=$(ls -t "target/$TARGET/debian/"fleethook_*.deb)
echo "cross/package.sh: built ${DEBS%%$'\n'*}"
