#!/usr/bin/env bash
# Install the system packages pnnkit's optional labs need. Idempotent: does nothing when they are present.
#   ngspice: the "circuit" lab's simulator, run as `ngspice -b` in a subprocess (libngspice0, its shared library, comes
#   along for users who drive ngspice from PySpice; pnnkit itself does not use it).
# Needs root (or sudo) and apt-get when something is missing.
set -euo pipefail

if command -v ngspice >/dev/null 2>&1; then
    echo "install-system-deps: ngspice already present ($(command -v ngspice)); nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: ngspice missing and apt-get not available; install ngspice with your package manager" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-system-deps: need root (or sudo) to apt-get install ngspice" >&2
        exit 1
    fi
fi

echo "install-system-deps: ngspice not found; running apt-get update"
$SUDO apt-get update
echo "install-system-deps: installing ngspice libngspice0"
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends ngspice libngspice0
echo "install-system-deps: installed $(ngspice --version 2>/dev/null | grep -m1 -o 'ngspice-[0-9.]*' || echo ngspice)"
