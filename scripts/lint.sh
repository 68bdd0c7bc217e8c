#!/usr/bin/env bash
# The style gates CI enforces (and .pre-commit-config.yaml runs): ruff lint, ruff format, mypy on the package.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m mypy
