#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver for the dashboard's browser tests.
#
# Idempotent: does nothing when /usr/bin/chromium and /usr/bin/chromedriver are both
# present. Otherwise runs `apt-get update` and installs `chromium` + `chromium-driver`
# quietly (as root, or through sudo when it is available). CI machines may start
# without them; `make test` calls this first.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$DRIVER" ]]; then
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    echo "install-chromium: $CHROMIUM or $DRIVER is missing and this user cannot run apt-get;" >&2
    echo "install them with: apt-get install chromium chromium-driver" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: apt-get not found; install Chromium and chromedriver at $CHROMIUM and $DRIVER" >&2
    exit 1
fi

echo "install-chromium: installing chromium and chromium-driver with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# apt's chatter goes to a log that is shown only when something fails.
if ! { "${SUDO[@]}" apt-get update -qq \
        && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
        >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-chromium: apt-get failed" >&2
    exit 1
fi

if [[ ! -x "$CHROMIUM" || ! -x "$DRIVER" ]]; then
    echo "install-chromium: apt-get finished but $CHROMIUM or $DRIVER is still missing" >&2
    exit 1
fi
