#!/usr/bin/env bash
# Set up (a virtual environment from requirements.txt) and run every check of the lab:
# lint, unit tests, the instructor command in the offline profile, and the notebook under nbval.
# This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 \
  | grep -v "^WARNING: Location" || true
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff (lint + format)"
ruff check lab_utils tests
ruff format --check lab_utils tests

echo "== unit tests"
python -m pytest tests -q --deselect tests/test_offline_run.py

echo "== instructor command, offline profile (reuses a finished run in data/offline/)"
LAB_PROFILE=offline python -m lab_utils instructor
REQUIRE_OFFLINE_RUN=1 python -m pytest tests/test_offline_run.py -q -s

echo "== the notebook, offline profile, under nbval"
mkdir -p data/executed
LAB_PROFILE=offline python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=3600 \
  -p no:cacheprovider lab2_fine_tune_peft.ipynb -q
