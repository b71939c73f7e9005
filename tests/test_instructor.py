"""The instructor command end to end on tiny data: build, train, evaluate, publish to the local S3, pull back."""

from __future__ import annotations

import pytest

from lab_utils.checkpoints import pull_checkpoint
from lab_utils.config import load_settings
from lab_utils.evaluation import RESULTS_COLUMNS, read_results_file
from lab_utils.instructor import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE, publish_run


@pytest.fixture
def tiny_settings(tmp_path, data_dir):
    return load_settings(
        "offline",
        data_dir=str(data_dir),
        model_id=str(tmp_path / "stand-in"),
        work_dir=str(tmp_path / "work"),
        s3_uri="s3://lab-test/models/",
        pretrain_steps=3,
        instructor_full_steps=3,
        instructor_lora_steps=3,
        train_batch_size=4,
        eval_batch_size=8,
        max_new_tokens=8,
    )


def test_instructor_publishes_checkpoints_and_results(tiny_settings, local_s3, tmp_path, capsys):
    run = publish_run(tiny_settings, progress=False)
    assert (tiny_settings.path(tiny_settings.model_id) / "spiece.model").is_file()

    full = pull_checkpoint(tiny_settings.s3(FULL_CHECKPOINT + "/"), tmp_path / "pulled" / FULL_CHECKPOINT)
    peft = pull_checkpoint(tiny_settings.s3(PEFT_CHECKPOINT + "/"), tmp_path / "pulled" / PEFT_CHECKPOINT)
    results = pull_checkpoint(tiny_settings.s3(RESULTS_FILE), tmp_path / "pulled" / RESULTS_FILE)
    assert (full / "model.safetensors").read_bytes() == (run / FULL_CHECKPOINT / "model.safetensors").read_bytes()
    assert (peft / "adapter_model.safetensors").is_file() and not (peft / "model.safetensors").exists()

    frame = read_results_file(results)
    assert list(frame.columns) == ["id", *RESULTS_COLUMNS] and len(frame) == 18
    # each dialogue's summary is generated once and fanned out to its three reference rows
    assert frame["instruct_model_summaries"].iloc[0] == frame["instruct_model_summaries"].iloc[2]
    assert frame["human_baseline_summaries"].iloc[0] != frame["human_baseline_summaries"].iloc[1]

    # a second run reuses every finished stage and uploads nothing new
    capsys.readouterr()
    publish_run(tiny_settings, progress=False)
    out = capsys.readouterr().out
    assert "Training" not in out and "Wrote" not in out and "skipped (already uploaded)" in out


def test_cli_reports_bad_configuration_in_one_line(monkeypatch, capsys):
    from lab_utils.__main__ import main

    monkeypatch.setenv("LAB_PROFILE", "offline")
    monkeypatch.setenv("LAB_DATA_DIR", "/nonexistent/dialogsum")
    monkeypatch.setenv("LAB_MODEL_ID", "/nonexistent/model")
    assert main(["instructor", "--no-upload"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `LAB_DATA_DIR`='/nonexistent/dialogsum' is not a folder")
    assert "Traceback" not in err


def test_changed_training_settings_start_the_run_afresh(tiny_settings, capsys):
    publish_run(tiny_settings, upload=False, progress=False)
    capsys.readouterr()
    publish_run(tiny_settings.replace(instructor_lora_steps=4), upload=False, progress=False)
    out = capsys.readouterr().out
    assert "training settings changed" in out and "Training the LoRA adapter: 4 steps" in out
