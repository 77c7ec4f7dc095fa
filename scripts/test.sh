#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests use when it is
# missing (mosquitto, a real broker per test; systemd's systemd-analyze, to verify the
# unit; util-linux's setpriv, to test the socket's permission check; fuse3, whose mount
# helper backs the power-cut tests' filesystem; faketime, whose libfaketime lies to the
# agent about the wall clock in the clock tests; prometheus, whose promtool checks the
# metrics text; tinyproxy, a real proxy for the proxy tests), PyPI's msgpack, cbor2,
# rosbags, zstandard and standardwebhooks (encoders, a decoder and a verifier for the
# payload, compression and batch tests), and the other brokers of the broker matrix
# (amqtt from PyPI, aedes from npm), then `cargo test`. Run it as root: a few tests mount a small tmpfs or a FUSE filesystem
# (/dev/fuse) and bind journald's socket.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=()
command -v mosquitto_pub >/dev/null 2>&1 || PKGS+=(mosquitto-clients)
{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } || PKGS+=(mosquitto)
command -v systemd-analyze >/dev/null 2>&1 || PKGS+=(systemd)
command -v setpriv >/dev/null 2>&1 || PKGS+=(util-linux)
command -v fusermount3 >/dev/null 2>&1 || PKGS+=(fuse3)
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || PKGS+=(faketime)
command -v promtool >/dev/null 2>&1 || PKGS+=(prometheus)
command -v tinyproxy >/dev/null 2>&1 || PKGS+=(tinyproxy)
# A C compiler: the bundled SQLite, ring and zstd are built from C.
command -v cc >/dev/null 2>&1 || PKGS+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || PKGS+=(python3)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || PKGS+=(python3-venv)
if [ ${#PKGS[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "scripts/test.sh: installing ${PKGS[*]}" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${PKGS[@]}" >/dev/null
fi

# Third-party encoders and decoders: what the ROS bridges' own libraries write, for
# tests/payloads.rs and tests/ros.rs (rosbags serializes ROS 1 and ROS 2 messages without
# ROS), zstandard, a stock zstd decoder for tests/compression.rs and tests/batch.rs, and
# standardwebhooks, which verifies and parses batches in tests/batch.rs.
# They go in a venv of our own under target/: Debian's Python refuses a system-wide pip
# install (externally-managed-environment), and the tests run `python3` from PATH.
# amqtt, a broker of the broker matrix (tests/brokers.rs), comes from the same venv.
if ! python3 -c "import msgpack, cbor2, rosbags, zstandard, standardwebhooks, amqtt" 2>/dev/null; then
    VENV="$PWD/target/pyenv"
    [ -x "$VENV/bin/python3" ] || python3 -m venv "$VENV"
    "$VENV/bin/python3" -c "import msgpack, cbor2, rosbags, zstandard, standardwebhooks, amqtt" 2>/dev/null \
        || "$VENV/bin/python3" -m pip install -q msgpack cbor2 rosbags zstandard standardwebhooks amqtt
    export PATH="$VENV/bin:$PATH"
fi

# aedes (Node-RED's broker) for the broker matrix, from npm into target/brokers; node and
# npm from Debian when missing.
if [ ! -x target/brokers/node_modules/.bin/aedes ]; then
    if ! command -v npm >/dev/null 2>&1; then
        SUDO=""
        if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
    fi
    mkdir -p target/brokers
    npm install --silent --no-audit --no-fund --prefix target/brokers aedes aedes-cli >/dev/null
fi

exec cargo test "$@"
