#!/usr/bin/env bash
# Sets up .venv (see scripts/setup.sh), runs the style gates (scripts/lint.sh: ruff check, ruff format --check, mypy)
# and the whole test suite, slow end-to-end checks included. Local fast lane: .venv/bin/python -m pytest -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report's browser test (tests/test_report_browser.py) drives Debian's chromium through playwright-core (npm);
# without them it is skipped, saying why. Installed here when missing and running as root (CI containers).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    >/dev/null || echo "scripts/test.sh: could not install chromium; the browser test will be skipped" >&2
fi
if command -v npm >/dev/null 2>&1 && [ ! -d node_modules/playwright-core ]; then
  npm ci --silent --no-audit --no-fund  # an older checkout's node_modules predates playwright-core
fi
bash scripts/lint.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two workers (pytest-xdist; TEST_WORKERS=0 runs in this process), each taking whole test files, so a module's
# fixtures (a trained run, a sweep) are built once. Passive OpenMP waits: the workers' torch threads share 2 cores.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
