#!/usr/bin/env bash
# Create .venv and install mapo-service with its ML stack and dev tools. Idempotent; safe to re-run.
# torch is pinned (pyproject) to 2.13.0: on our CPU machines that resolves to the CPU build on disk,
# elsewhere to the CUDA build. Set MAPO_SETUP_EXTRAS=train to skip the dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${MAPO_SETUP_EXTRAS:-train,dev}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first and on its own, so no other requirement can pull a different build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# setuptools warns on every editable install that a folder named like a package may shadow it (a banner
# of asterisks on each `make run` and `make test`); ours are the packages, so the warning is filtered.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
echo "mapo-service installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
