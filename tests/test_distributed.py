"""The instructor command scales out: data-parallel training with torchrun, 2 processes on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab_utils.config import load_settings
from lab_utils.evaluation import summarize
from lab_utils.instructor import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE, run_dir
from lab_utils.models import count_parameters, load_peft_for_inference, load_tokenizer


@pytest.mark.slow
def test_torchrun_two_processes_train_an_adapter_that_loads_and_works(tmp_path, data_dir):
    overrides = {
        "data_dir": str(data_dir),
        "model_id": str(tmp_path / "stand-in"),
        "work_dir": str(tmp_path / "work"),
        "pretrain_steps": 2,
        "instructor_full_steps": 2,
        "instructor_lora_steps": 3,
        "train_batch_size": 4,
        "max_new_tokens": 8,
    }
    env = {**os.environ, "LAB_PROFILE": "offline", **{f"LAB_{k.upper()}": str(v) for k, v in overrides.items()}}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lab_utils",
        "instructor",
        "--no-upload",
    ]
    proc = subprocess.run(
        cmd, env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    settings = load_settings("offline", **overrides)
    run = run_dir(settings)
    for name in (FULL_CHECKPOINT, PEFT_CHECKPOINT):
        facts = json.loads((run / name / "train_facts.json").read_text())
        assert facts["world_size"] == 2  # both processes trained (gloo all-reduce), rank 0 saved
    assert (run / RESULTS_FILE).is_file()

    peft_model = load_peft_for_inference(settings, run / PEFT_CHECKPOINT)
    assert count_parameters(peft_model)[0] == 0
    tokenizer = load_tokenizer(settings)
    out = summarize(
        peft_model,
        tokenizer,
        ["#Person1#: Where is the station?\n#Person2#: Next to the park."],
        {"max_new_tokens": 8},
        progress=False,
    )
    assert len(out) == 1 and isinstance(out[0], str)
