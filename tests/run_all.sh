#!/usr/bin/env bash
# Set up (Debian's Chromium, a virtual environment from requirements-dev.txt) and run every check of the lab: lint, the
# unit tests on both cores (among them the instructor on tiny data, the whole notebook in a simulated course world, and
# the offline release's quality), the notebook as a learner runs it (JupyterLab in headless Chromium, Run All, in the
# offline profile; the saved notebook and screenshots kept as artifacts) and its tests, then that notebook again under
# nbval, which compares every deterministic cell with the first run.
# This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# the browser test's Chromium: Debian's packages, installed beside the Python steps (as root, or through sudo)
apt_log=$(mktemp)
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  apt_pid=
else
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  ( $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver ) \
    >"$apt_log" 2>&1 &
  apt_pid=$!
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt 2>&1 \
  | grep -v "^WARNING: Location" || true
export PATH="$PWD/.venv/bin:$PATH"
export LAB_PROFILE=offline
start=$SECONDS
step() { echo; echo "== $1  (at $((SECONDS - start)) s)"; }

step "ruff (lint + format): the package, the tests and the notebook"
ruff check lab_utils tests lab2_fine_tune_peft.ipynb
ruff format --check lab_utils tests lab2_fine_tune_peft.ipynb

step "unit tests, one process per core"
OMP_NUM_THREADS=1 python -m pytest tests -q -n 2 --durations=5 --deselect tests/test_executed_notebook.py

step "the notebook in JupyterLab in headless Chromium: data/executed/ (the notebook and its screenshots, artifacts)"
if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
  cat "$apt_log"; echo "installing chromium and chromium-driver with apt-get failed (above)"; exit 1
fi
export LAB_EVAL_DIALOGUES=8  # a setting from the environment reaches the kernel (and nbval's below)
python tests/in_jupyterlab.py
REQUIRE_EXECUTED_NOTEBOOK=1 python -m pytest tests/test_executed_notebook.py -q

step "the notebook again under nbval: deterministic cells must repeat the first run's outputs"
# nbval compares against the outputs stored in the file it runs, so it runs a copy of the executed notebook,
# placed beside the original so that the notebook's relative paths (requirements.txt) hold
copy=.nbval-lab2_fine_tune_peft.ipynb
cp data/executed/lab2_fine_tune_peft.ipynb "$copy"
trap 'rm -f "$copy"' EXIT
python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=3600 -p no:cacheprovider "$copy" -q
step "all checks passed"
