"""The instructor command scales out: data-parallel training with torchrun, 2 processes on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab_utils.backstage.instructor import run_dir
from lab_utils.checkpoints import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE
from lab_utils.config import load_settings
from lab_utils.generation import summarize
from lab_utils.models import count_parameters


@pytest.mark.slow
def test_torchrun_two_processes_train_an_adapter_that_loads_and_works(tmp_path, data_dir, standin_dir):
    overrides = {
        "data_dir": str(data_dir),
        "model_id": str(standin_dir),
        "work_dir": str(tmp_path / "work"),
        "instructor_full_steps": 2,
        "instructor_lora_steps": 3,
        "instructor_topic_steps": 2,
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

    settings = load_settings("offline", environ={}, **overrides)
    run = run_dir(settings)
    for name in (FULL_CHECKPOINT, PEFT_CHECKPOINT):
        facts = json.loads((run / name / "train_facts.json").read_text())
        assert facts["world_size"] == 2  # both processes trained (gloo all-reduce), rank 0 saved
    assert (run / RESULTS_FILE).is_file()

    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    base = AutoModelForSeq2SeqLM.from_pretrained(standin_dir)
    peft_model = PeftModel.from_pretrained(base, run / PEFT_CHECKPOINT, is_trainable=False)
    assert count_parameters(peft_model)[0] == 0
    tokenizer = AutoTokenizer.from_pretrained(standin_dir)
    dialogue = "#Person1#: Where is the station?\n#Person2#: Next to the park."
    out = summarize(peft_model, tokenizer, [dialogue], settings, progress=False)
    assert len(out) == 1 and isinstance(out[0], str)
