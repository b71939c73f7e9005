"""Training that survives a crash."""

# the real instructor process, killed with SIGKILL after a checkpoint, resumes from the Trainer's checkpoint and ends
# with bitwise the weights of an uninterrupted run (committed stand-in, one thread, a full fine-tune of 24 steps with a
# checkpoint every 6).

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_dialogsum

from lab_utils.checkpoints import FULL_CHECKPOINT
from lab_utils.config import RELEASE_DIR

ROOT = Path(__file__).resolve().parent.parent
STEPS, EVERY = 24, 6


def environment(data: Path, work: Path) -> dict[str, str]:
    settings = {"PROFILE": "offline", "DATA_DIR": data, "MODEL_ID": RELEASE_DIR / "flan-t5-tiny", "WORK_DIR": work,
                "INSTRUCTOR_FULL_STEPS": STEPS, "INSTRUCTOR_LORA_STEPS": 2, "INSTRUCTOR_TOPIC_STEPS": 2,
                "SAVE_STEPS": EVERY, "EVAL_STEPS": EVERY, "VALIDATION_ROWS": 4, "TRAIN_BATCH_SIZE": 8,
                "EVAL_BATCH_SIZE": 8, "MAX_NEW_TOKENS": 8}  # fmt: skip
    return {**os.environ, "OMP_NUM_THREADS": "1", **{f"LAB_{k}": str(v) for k, v in settings.items()}}


def instructor(env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "lab_utils", "instructor", "--no-upload"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(env: dict[str, str], work: Path) -> tuple[str, bytes]:
    proc = instructor(env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out, (work / "offline" / "instructor-run" / FULL_CHECKPOINT / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_a_killed_stage_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path):
    data = write_dialogsum(tmp_path / "dialogsum", n_train=240, n_val=8, n_test_dialogues=2, seed=5)
    out, weights = finish(environment(data, tmp_path / "once"), tmp_path / "once")
    assert "Resuming" not in out

    work = tmp_path / "killed"
    env = environment(data, work)
    proc = instructor(env)
    target = work / "offline" / "instructor-run" / f"{FULL_CHECKPOINT}.trainer" / f"checkpoint-{2 * EVERY}"
    deadline = time.monotonic() + 300
    while not (target / "trainer_state.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "offline" / "instructor-run" / FULL_CHECKPOINT).exists()  # the stage did not finish
    out, resumed = finish(env, work)
    assert "Resuming the full stage from checkpoint-" in out
    assert resumed == weights  # bitwise: same data order, optimizer, scheduler and random states
