#!/usr/bin/env bash
# Set up (a virtual environment from requirements.txt) and run every check of the lab:
# lint, unit tests (among them the whole notebook in a simulated course world, and the offline release's quality),
# a short run of the instructor's commands on DialogSum, the notebook headless in the offline profile (kept as an
# artifact), then that notebook again under nbval, which compares every deterministic cell with the first run.
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
export LAB_PROFILE=offline
start=$SECONDS
step() { echo; echo "== $1  (at $((SECONDS - start)) s)"; }

step "ruff (lint + format): the package, the tests and the notebook"
ruff check lab_utils tests lab2_fine_tune_peft.ipynb
ruff format --check lab_utils tests lab2_fine_tune_peft.ipynb

step "unit tests"
python -m pytest tests -q --deselect tests/test_executed_notebook.py

step "the instructor's commands, a short run on DialogSum (the release was trained with the defaults)"
trial=$(mktemp -d)
trap 'rm -rf "$trial"' EXIT
LAB_PRETRAIN_STEPS=3 python -m lab_utils build-model --out "$trial/stand-in"
# on the release's stand-in (3 pretraining steps would write empty summaries, which the instructor refuses); the
# results file generated on CTranslate2 (the unit tests cover the default, PyTorch fp32)
LAB_WORK_DIR="$trial/work" LAB_MAX_NEW_TOKENS=16 \
  python -m lab_utils instructor --no-upload --full-steps 3 --lora-steps 3 --topic-steps 3 --fast-inference ctranslate2
# a 3-step run cannot pass the story checks: release must refuse it (exit 2) and write nothing
code=0
LAB_WORK_DIR="$trial/work" LAB_MAX_NEW_TOKENS=16 python -m lab_utils release --to "$trial/release" --made-by "CI" \
  || code=$?
if [ "$code" != 2 ] || [ -e "$trial/release" ]; then
  echo "release of a 3-step run: exit $code (2 expected), $trial/release $([ -e "$trial/release" ] || echo not) written"
  exit 1
fi

step "the notebook, headless: data/executed/lab2_fine_tune_peft.ipynb (artifact)"
python -m lab_utils run -p EVAL_DIALOGUES 8  # a parameter, as an instructor would pass one
REQUIRE_EXECUTED_NOTEBOOK=1 python -m pytest tests/test_executed_notebook.py -q

step "the notebook again under nbval: deterministic cells must repeat the first run's outputs"
# nbval compares against the outputs stored in the file it runs, so it runs a copy of the executed notebook,
# placed beside the original so that the notebook's relative paths (requirements.txt) hold
copy=.nbval-lab2_fine_tune_peft.ipynb
cp data/executed/lab2_fine_tune_peft.ipynb "$copy"
trap 'rm -f "$copy"; rm -rf "$trial"' EXIT
python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=3600 -p no:cacheprovider "$copy" -q
step "all checks passed"
