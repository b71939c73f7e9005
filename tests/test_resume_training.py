"""Training that survives a crash: the real instructor process, killed with SIGKILL after a checkpoint, resumes from
it (it does not redo finished steps) and ends with the weights of an uninterrupted run; a damaged newest checkpoint
is set aside and the one before it used.

On the committed stand-in (2.8M parameters, one thread), a full fine-tune of 24 steps with a checkpoint every 6.
"""

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
    return {
        **os.environ,
        "LAB_PROFILE": "offline",
        "LAB_DATA_DIR": str(data),
        "LAB_MODEL_ID": str(RELEASE_DIR / "flan-t5-tiny"),
        "LAB_WORK_DIR": str(work),
        "LAB_INSTRUCTOR_FULL_STEPS": str(STEPS),
        "LAB_INSTRUCTOR_LORA_STEPS": "2",
        "LAB_INSTRUCTOR_TOPIC_STEPS": "2",
        "LAB_SAVE_STEPS": str(EVERY),
        "LAB_EVAL_STEPS": str(EVERY),
        "LAB_VALIDATION_ROWS": "4",
        "LAB_TRAIN_BATCH_SIZE": "8",
        "LAB_EVAL_BATCH_SIZE": "8",
        "LAB_MAX_NEW_TOKENS": "8",
        "OMP_NUM_THREADS": "1",
    }


def instructor(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lab_utils", "instructor", "--no-upload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def trainer_dir(work: Path) -> Path:
    return work / "offline" / "instructor-run" / (FULL_CHECKPOINT + ".partial") / "trainer"


def kill_after_checkpoint(env: dict[str, str], work: Path, step: int) -> None:
    """Run the instructor until checkpoint-`step` is complete (the Trainer writes its state last), then SIGKILL it."""
    proc = instructor(env)
    target = trainer_dir(work) / f"checkpoint-{step}" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not target.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()[-2000:]
    assert not (work / "offline" / "instructor-run" / FULL_CHECKPOINT).exists()  # the stage did not finish


def finish(env: dict[str, str], work: Path) -> tuple[str, bytes]:
    proc = instructor(env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out, (work / "offline" / "instructor-run" / FULL_CHECKPOINT / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The data, and the full checkpoint an uninterrupted run trains on it."""
    root = tmp_path_factory.mktemp("uninterrupted")
    data = write_dialogsum(root / "dialogsum", n_train=240, n_val=8, n_test_dialogues=2, seed=5)
    out, weights = finish(environment(data, root / "work"), root / "work")
    assert "Resuming" not in out
    return data, weights


@pytest.mark.slow
def test_a_killed_stage_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(uninterrupted, tmp_path):
    data, weights = uninterrupted
    env = environment(data, tmp_path / "work")
    kill_after_checkpoint(env, tmp_path / "work", 2 * EVERY)
    out, resumed = finish(env, tmp_path / "work")
    assert f"from checkpoint-{2 * EVERY} (step {2 * EVERY} of {STEPS})" in out
    assert resumed == weights  # bitwise: same data order, optimizer, scheduler and random states
    assert not trainer_dir(tmp_path / "work").parent.exists()  # the checkpoints are gone with the finished stage


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_one_before_used(uninterrupted, tmp_path):
    data, weights = uninterrupted
    env = environment(data, tmp_path / "work")
    kill_after_checkpoint(env, tmp_path / "work", 2 * EVERY)
    newest = sorted(trainer_dir(tmp_path / "work").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # a torn write
    previous = int(newest.name.split("-")[1]) - EVERY
    out, resumed = finish(env, tmp_path / "work")
    assert f"{newest.name} cannot be resumed from" in out and f"from checkpoint-{previous} " in out
    assert resumed == weights
