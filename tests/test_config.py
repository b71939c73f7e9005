"""Settings: each written once, profiles, environment overrides, and every value checked before any work starts."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from conftest import refused
from IPython.core.interactiveshell import InteractiveShell

from lab_utils.__main__ import main
from lab_utils.config import OFFLINE, PROJECT_ROOT, load_settings, profile_defaults
from lab_utils.errors import LabError, install_notebook_handler


def test_profile_defaults():
    course = load_settings(environ={"LAB_PROFILE": "course"})
    assert course.model_id == "google/flan-t5-base" and course.s3_uri == "s3://dlai-generative-ai/models/"
    assert (course.full_lr, course.lora_lr, course.max_source_length) == (1e-5, 1e-3, 512)
    offline = load_settings(environ={"LAB_PROFILE": "offline"})
    assert offline.offline and offline.path(offline.data_dir).name == "dialogsum"
    # each setting is written once: the course's values are the dataclass defaults, the offline profile lists only
    # what differs
    course = profile_defaults("course")
    assert all(OFFLINE[name] != course[name] for name in OFFLINE)
    assert set(OFFLINE) <= set(course)


def test_environment_overrides_are_typed():
    env = {"LAB_PROFILE": "offline", "LAB_SEED": "7", "LAB_LORA_LR": "0.5", "LAB_S3_ANONYMOUS": "yes"}
    s = load_settings(environ={**env, "LAB_S3_URI": "s3://my-bucket/p/"})
    assert (s.seed, s.lora_lr, s.s3_anonymous, s.s3("x.csv")) == (7, 0.5, True, "s3://my-bucket/p/x.csv")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"LAB_PROFILE": "cloud"}, "unknown profile `LAB_PROFILE`='cloud'"),
        ({"LAB_STEPS": "3"}, "unknown setting `LAB_STEPS`"),
    ],
)
def test_an_unknown_profile_or_setting_is_named(variables, message):
    with pytest.raises(LabError, match=message):
        load_settings(environ={"LAB_PROFILE": "offline", **variables})


def test_auto_profile_falls_back_to_offline_without_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = load_settings(environ={"LAB_PROFILE": ""})
    assert s.profile == "offline" and "cannot be reached" in s.profile_reason


# Every setting's range or form, through the command line: exit 2, the variable named, one message, no traceback.
def bad(message: str, assignments: str) -> list[tuple[str, str, str]]:
    """(variable, value, message) for each `NAME=value` of `assignments`."""
    return [(f"LAB_{name}", value, message) for name, _, value in (a.partition("=") for a in assignments.split())]


BAD = [
    *bad(
        "at least 1",
        "TRAIN_BATCH_SIZE=0 EVAL_BATCH_SIZE=-1 NOTEBOOK_FULL_STEPS=0 NOTEBOOK_LORA_STEPS=-2 EVAL_STEPS=0 "
        "INSTRUCTOR_FULL_STEPS=0 INSTRUCTOR_LORA_STEPS=0 INSTRUCTOR_TOPIC_STEPS=0 PRETRAIN_STEPS=-1 PRETRAIN_STEPS=0 "
        "EVAL_DIALOGUES=0",
    ),
    *bad("from 1 to 4096", "MAX_NEW_TOKENS=0 MAX_SOURCE_LENGTH=0 MAX_TARGET_LENGTH=-5 MAX_SOURCE_LENGTH=100000"),
    *bad("at least 0", "NO_REPEAT_NGRAM_SIZE=-1"),
    *bad("from 0 to 4,294,967,295", f"SEED=-3 SEED={2**32}"),
    *bad("is not a whole number", "SEED=abc TRAIN_BATCH_SIZE=2.5"),
    *bad("finite number above 0", "FULL_LR=inf FULL_LR=nan LORA_LR=0 LORA_LR=-1e-3"),
    *bad("below 1", "WARMUP_RATIO=1"),
    *bad("is not a true/false", "S3_ANONYMOUS=maybe GRADIENT_CHECKPOINTING=2"),
    ("LAB_S3_URI", "s3://Bad_Bucket/models/", "valid bucket name"),
    ("LAB_S3_URI", "https://example.com/models/", "not an S3 URI"),
    ("LAB_MODEL_ID", "google/flan-t5-base", "offline profile cannot reach the Hub"),
    ("LAB_MODEL_ID", " ", "must not be empty"),
    ("LAB_WORK_DIR", "", "must not be empty"),
    ("LAB_WORK_DIR", "README.md", "is a file"),
    ("LAB_MODEL_ID", "/no/such/model", "neither a model folder"),
    ("LAB_DATA_DIR", "/no/data", "is not a folder (one with DialogSum's train.csv, validation.csv, test.csv)"),
    ("LAB_DATA_DIR", "README.md", "is not a folder"),
    ("LAB_DATA_DIR", "lab_utils", "has no train.csv, validation.csv, test.csv"),
]


@pytest.mark.parametrize(("variable", "value", "message"), BAD)
def test_bad_setting_stops_every_command_with_one_message(variable, value, message, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("LAB_PROFILE", "offline")
    monkeypatch.setenv("LAB_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv(variable, value)
    for command in (["settings"], ["instructor", "--no-upload"], ["build-model", "--out", str(tmp_path / "m")]):
        refused(main(command), capsys, f"`{variable}`", message)
    assert not (tmp_path / "work").exists() and not (tmp_path / "m").exists()  # nothing was written


def test_notebook_parameters_are_checked_too():
    with pytest.raises(LabError, match="`LAB_NOTEBOOK_FULL_STEPS`=0"):
        load_settings("offline", environ={}, notebook_full_steps=0)
    with pytest.raises(LabError, match="notebook_lora_steps=2.5 is not a whole number"):
        load_settings("offline", environ={}, notebook_lora_steps=2.5)


@pytest.mark.parametrize("option", ["--full-steps", "--lora-steps", "--topic-steps"])
@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_step_options_refuse_values_below_1(option, value, capsys):
    """0 is not taken as 'not given' (it used to train the default 250 steps), -1 is not 'until the data ends'."""
    with pytest.raises(SystemExit) as exit_:
        main(["--profile", "offline", "instructor", "--no-upload", option, value])
    assert exit_.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "variable", "value", "what"),
    [
        ("instructor", "LAB_TRAIN_BATCH_SIZE", "0", "=0 must be a whole number of at least 1"),
        ("settings", "LAB_DATA_DIR", "/no/data", "='/no/data' is not a folder (one with DialogSum's train.csv, v"),
    ],
)
def test_a_bad_setting_in_a_real_process_prints_no_traceback(command, variable, value, what, tmp_path):
    env = {**os.environ, "LAB_PROFILE": "offline", variable: value, "LAB_WORK_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "lab_utils", command], env=env, capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    error, fix = proc.stderr.strip().splitlines()  # one message: what is wrong, and the fix
    assert proc.returncode == 2 and error.startswith(f"error: `{variable}`{what}") and not proc.stdout
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
    example = str(ast.literal_eval(fix.split("e.g. ")[1]))  # the fix is itself a valid value
    assert load_settings(environ={"LAB_PROFILE": "offline", variable: example}).offline


def test_hub_id_never_becomes_a_local_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    refused(
        main(["--profile", "offline", "build-model", "--out", "google/flan-t5-base"]),
        capsys,
        "looks like a Hugging Face Hub id",
    )
    assert not (PROJECT_ROOT / "google").exists() and not (tmp_path / "google").exists()


def test_lab_error_in_ipython_is_one_message(capsys):
    shell = InteractiveShell.instance()
    try:
        install_notebook_handler()
        result = shell.run_cell("from lab_utils.config import load_settings\nload_settings('cloud')")
    finally:
        InteractiveShell.clear_instance()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "LabError: unknown profile `LAB_PROFILE`='cloud'" in text
    assert "-> set `LAB_PROFILE` to one of course, offline" in text
    assert "Traceback" not in text and "site-packages" not in text
    assert not result.success  # the cell still fails, so Run All stops there
