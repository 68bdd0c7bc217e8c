#!/usr/bin/env bash
# Creates .venv and installs dreamnfsd. torch is installed first and explicitly, so pip never pulls CUDA wheels
# on a CPU machine. CUDA users: set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url <your cu index>").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
fi
# setuptools warns on every editable install of a package with a package-dir mapping (configs/ ships as
# dreamnfsd.configs); that notice is about folders named like the package in the working directory, so it is muted.
PYTHONWARNINGS="ignore::UserWarning" .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
if command -v npm >/dev/null 2>&1 && [ ! -d node_modules/gltf-validator ]; then
  npm ci --silent --no-audit --no-fund  # the Khronos glTF validator, for the export tests
fi
