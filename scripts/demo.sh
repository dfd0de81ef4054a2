#!/usr/bin/env bash
# Install, then run one face-swap job end to end on a generated clip (real models when
# installed in $FACEFUSION_MODELS_DIR, clearly-labelled stand-ins otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/facefusion-tasks demo --dir "${1:-demo-output}"
