#!/usr/bin/env bash
# The whole test suite: lint, types, then every test (unit and integration) with no skips.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v redis-server >/dev/null || missing+=(redis-server)
# libfaketime: a worker whose clock runs behind the rest of the fleet (test_liveness_fleet).
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install these first: ${missing[*]}" >&2
    exit 1
  fi
fi
scripts/setup.sh
.venv/bin/ruff check facefusion_tasks tests scripts workers
.venv/bin/ruff format --check facefusion_tasks tests scripts workers
.venv/bin/mypy
exec .venv/bin/pytest "$@"
