#!/usr/bin/env bash
# The Debian packages, as CI checks them: build amd64, arm64 and armhf (cross/package.sh),
# run lintian on each, run each package's own binary (under qemu for ARM: --version and
# the end-to-end smoke test), then install, upgrade and purge the amd64 package with
# dpkg and check what its maintainer scripts did. Runs as root on a Debian machine; no
# service manager is needed (the scripts skip systemctl when systemd is not running).
#
#   scripts/ci-packages.sh            # all of it
#   ARCHES="amd64" scripts/ci-packages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
ARCHES=${ARCHES:-"amd64 arm64 armhf"}
need=()
for p in lintian qemu-user file init-system-helpers; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

triple() {
    case "$1" in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    armhf) echo armv7-unknown-linux-gnueabihf ;;
    esac
}
deb_of() { ls -t "target/$(triple "$1")/debian/"fleethook_*_"$1".deb | head -n 1; }

for arch in $ARCHES; do
    cross/package.sh "$arch"
    deb=$(deb_of "$arch")
    echo "ci-packages: $deb, $(stat -c %s "$deb") bytes; binary $(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/fleethook | wc -c) bytes"
    # Errors fail the build; warnings kept on purpose are in debian/lintian-overrides
    # and docs/oem.md.
    lintian --fail-on error "$deb"
    # The package's own binary, not the build's.
    root="target/pkgcheck/$(triple "$arch")/release"
    rm -rf "target/pkgcheck/$(triple "$arch")" && mkdir -p "$root"
    dpkg-deb -x "$deb" "$root/pkg"
    cp "$root/pkg/usr/bin/fleethook" "$root/fleethook"
    if [ "$arch" = amd64 ]; then
        "$root/fleethook" --version
        ./scripts/interop.sh "$root/fleethook" 20
    else
        cross/smoke.sh "$root/fleethook"
    fi
done

case " $ARCHES " in *" amd64 "*) ;; *) exit 0 ;; esac

# Install, upgrade, purge: the amd64 package twice, with two versions.
first=$(deb_of amd64)
version=$(dpkg-deb -f "$first" Version)
NO_BUILD=1 DEB_VERSION="${version}+upgrade" cross/package.sh amd64
second=$(deb_of amd64)
[ "$first" != "$second" ] || { echo "ci-packages: the second package overwrote the first" >&2; exit 1; }
fail() { echo "ci-packages: $*" >&2; exit 1; }

dpkg --purge fleethook >/dev/null 2>&1 || true
dpkg -i "$first" >/dev/null
fleethook --version
getent passwd fleethook >/dev/null || fail "no fleethook user after install"
getent group fleethook >/dev/null || fail "no fleethook group after install"
[ "$(stat -c '%a %G' /etc/fleethook/fleethook.toml)" = "640 fleethook" ] || fail "the config is not 0640 root:fleethook"
[ -f /lib/systemd/system/fleethook.service ] || fail "no unit"
fleethook check --config /etc/fleethook/fleethook.toml >/dev/null 2>&1 || fail "the shipped config does not pass check"

# A local edit, and an outbox with something in it.
echo "# edited on the robot" >> /etc/fleethook/fleethook.toml
mkdir -p /var/lib/fleethook
echo "queued events" > /var/lib/fleethook/outbox.db

dpkg --force-confold -i "$second" >/dev/null
[ "$(dpkg-query -W -f '${Version}' fleethook)" = "${version}+upgrade" ] || fail "not upgraded"
grep -q "edited on the robot" /etc/fleethook/fleethook.toml || fail "the upgrade lost the conffile's local edit"
[ -f /var/lib/fleethook/outbox.db ] || fail "the upgrade removed the outbox"

# Enabled as an image build does it: no systemd running, so only the link is made.
wants=/etc/systemd/system/multi-user.target.wants/fleethook.service
systemctl enable fleethook.service >/dev/null 2>&1 || ln -sf /lib/systemd/system/fleethook.service "$wants"
[ -L "$wants" ] || fail "systemctl enable made no link"

dpkg --remove fleethook >/dev/null
[ -f /var/lib/fleethook/outbox.db ] || fail "remove (not purge) removed the outbox"
[ -f /etc/fleethook/fleethook.toml ] || fail "remove (not purge) removed the config"
dpkg --purge fleethook >/dev/null
[ ! -e /var/lib/fleethook ] || fail "purge left /var/lib/fleethook"
[ ! -e /etc/fleethook/fleethook.toml ] || fail "purge left the config"
[ ! -L "$wants" ] || fail "purge left the enable link $wants (pointing nowhere)"
[ ! -L /etc/systemd/system/fleethook.service ] || fail "purge left the unit masked"
getent passwd fleethook >/dev/null || fail "purge removed the user (Debian keeps system users)"
echo "ci-packages: install, upgrade (conffile edit and outbox kept), remove and purge behave"
