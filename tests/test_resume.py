"""Resumable evaluation: generation interrupted (an exception, or SIGKILL of the real instructor process) picks up
where it stopped, and the final results file equals an uninterrupted run's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SETTINGS, write_dialogsum

from lab_utils.backstage.generation_cache import GenerationCache
from lab_utils.generation import summarize

GEN = {"max_new_tokens": 6, "num_beams": 1, "do_sample": False}


class Boom(RuntimeError):
    pass


def _dialogues(data_dir):
    from lab_utils.data import load_dialogsum_csv

    return list(load_dialogsum_csv(data_dir)["test"]["dialogue"])


def test_generation_cache_resumes_after_a_crash(tiny_model, tokenizer, data_dir, tmp_path):
    dialogues = _dialogues(data_dir)
    expected = summarize(tiny_model, tokenizer, dialogues, SETTINGS, GEN, batch_size=2, progress=False)
    cache = tmp_path / "gen.jsonl"

    calls = {"n": 0}
    real_generate = tiny_model.generate

    def failing_generate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("killed mid-run")
        return real_generate(*args, **kwargs)

    tiny_model.generate = failing_generate
    with pytest.raises(Boom):
        summarize(
            tiny_model, tokenizer, dialogues, SETTINGS, GEN, batch_size=2, progress=False, store=GenerationCache(cache)
        )
    assert len(cache.read_text().splitlines()) == 2  # two finished batches are on disk

    calls["n"] = -100  # no more failures; count the batches generated on resume
    resumed = summarize(
        tiny_model, tokenizer, dialogues, SETTINGS, GEN, batch_size=2, progress=False, store=GenerationCache(cache)
    )
    assert resumed == expected
    assert calls["n"] == -100 + 1  # 6 dialogues / 2 per batch = 3 batches, 2 were cached


def test_torn_last_line_and_foreign_cache_are_not_trusted(tiny_model, tokenizer, data_dir, tmp_path):
    dialogues = _dialogues(data_dir)
    cache = tmp_path / "gen.jsonl"
    expected = summarize(
        tiny_model, tokenizer, dialogues, SETTINGS, GEN, batch_size=2, progress=False, store=GenerationCache(cache)
    )
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:2]) + lines[2][:10])  # killed while writing the third batch
    assert (
        summarize(
            tiny_model, tokenizer, dialogues, SETTINGS, GEN, batch_size=2, progress=False, store=GenerationCache(cache)
        )
        == expected
    )
    assert len(cache.read_text().splitlines()) == 3

    # other generation settings: the cache is discarded, not mixed in
    other = summarize(
        tiny_model,
        tokenizer,
        dialogues,
        SETTINGS,
        {**GEN, "max_new_tokens": 3},
        batch_size=2,
        progress=False,
        store=GenerationCache(cache),
    )
    assert other == summarize(
        tiny_model, tokenizer, dialogues, SETTINGS, {**GEN, "max_new_tokens": 3}, batch_size=2, progress=False
    )


def _instructor(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lab_utils", "instructor", "--no-upload"],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
def test_instructor_killed_three_times_then_completed_equals_uninterrupted(tmp_path, standin_dir):
    data = write_dialogsum(tmp_path / "dialogsum", n_train=40, n_test_dialogues=60, seed=3)
    work = tmp_path / "work"
    env = {
        **os.environ,
        "LAB_PROFILE": "offline",
        "LAB_DATA_DIR": str(data),
        "LAB_MODEL_ID": str(standin_dir),
        "LAB_WORK_DIR": str(work),
        "LAB_INSTRUCTOR_FULL_STEPS": "2",
        "LAB_INSTRUCTOR_LORA_STEPS": "2",
        "LAB_INSTRUCTOR_TOPIC_STEPS": "2",
        "LAB_TRAIN_BATCH_SIZE": "4",
        "LAB_EVAL_BATCH_SIZE": "2",
        "LAB_MAX_NEW_TOKENS": "24",
        "LAB_NO_REPEAT_NGRAM_SIZE": "0",
        "OMP_NUM_THREADS": "1",
    }
    results = work / "offline" / "instructor-run" / "dialogue-summary-training-results.csv"
    cache = work / "offline" / "instructor-run" / "generation"
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        proc = _instructor(env)
        for line in proc.stdout:  # wait until generation runs, then kill at a random moment
            if line.startswith("Generating"):
                break
        time.sleep(rng.uniform(0.2, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        assert not results.exists()  # killed before the end: no results file under the final name
    assert kills == 3 and any(cache.glob("*.jsonl"))
    proc = _instructor(env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "resuming" in out
    interrupted = results.read_bytes()

    # the same stage, uninterrupted, on the same checkpoints
    results.unlink()  # (the run notices its results stage is incomplete and generates it again)
    proc = _instructor(env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "resuming" not in out
    assert results.read_bytes() == interrupted


def test_a_damaged_cache_line_is_set_aside_and_generation_redone(tiny_model, tokenizer, data_dir, tmp_path):
    dialogues = _dialogues(data_dir)
    cache = tmp_path / "gen.jsonl"
    expected = summarize(
        tiny_model, tokenizer, dialogues, SETTINGS, GEN, batch_size=2, progress=False, store=GenerationCache(cache)
    )
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text(lines[0] + "this is not JSON\n" + lines[1])  # something else wrote into the cache
    with pytest.warns(UserWarning, match="had a damaged line; moved it to .*gen.jsonl.damaged"):
        again = summarize(
            tiny_model, tokenizer, dialogues, SETTINGS, GEN, batch_size=2, progress=False, store=GenerationCache(cache)
        )
    assert again == expected
    assert (tmp_path / "gen.jsonl.damaged").read_text().count("\n") == 3
    assert len(cache.read_text().splitlines()) == 3


def test_int8_generation_can_use_the_cache(tiny_model, tokenizer, data_dir, tmp_path):
    from lab_utils.engines import prepare_for_inference
    from lab_utils.models import fingerprint

    quantized = prepare_for_inference(tiny_model, "int8")
    assert fingerprint(quantized) != fingerprint(tiny_model)  # a different model: its own cache key
    dialogues = _dialogues(data_dir)
    first, again = (
        summarize(quantized, tokenizer, dialogues, SETTINGS, GEN, batch_size=2, progress=False, store=cache)
        for cache in (GenerationCache(tmp_path / "q.jsonl"), GenerationCache(tmp_path / "q.jsonl"))
    )
    assert first == again and len((tmp_path / "q.jsonl").read_text().splitlines()) == 3
