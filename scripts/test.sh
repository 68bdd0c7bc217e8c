#!/usr/bin/env bash
# Sets up .venv (see scripts/setup.sh) and runs the whole test suite, slow end-to-end checks included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
