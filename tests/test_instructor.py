"""The instructor command on tiny data: trains with the notebook's recipe, generates as the notebook does, publishes,
and never throws away a finished stage for a change that does not need it."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from lab_utils.backstage.instructor import Stages, run_dir, run_instructor, run_lock
from lab_utils.checkpoints import (
    FULL_CHECKPOINT,
    PEFT_CHECKPOINT,
    RESULTS_FILE,
    TOPIC_CHECKPOINT,
    TOPIC_RESULTS_FILE,
    pull,
)
from lab_utils.config import load_settings
from lab_utils.errors import LabError
from lab_utils.results_file import RESULTS_COLUMNS, read_results_file


def tiny(work, data_dir, standin_dir, prefix: str):
    """The instructor's settings for the unit tests: tiny data, 3 steps a stage, short generation."""
    return load_settings(
        "offline",
        environ={},
        data_dir=str(data_dir),
        model_id=str(standin_dir),
        work_dir=str(work),
        s3_uri=f"s3://lab-test/{prefix}/",  # a prefix of its own: the S3 server lives for the session
        instructor_full_steps=3,
        instructor_lora_steps=3,
        instructor_topic_steps=3,
        train_batch_size=4,
        eval_batch_size=4,
        max_new_tokens=8,
        max_source_length=40,  # shorter than most test prompts: truncation shows
        no_repeat_ngram_size=0,
    )


@pytest.fixture
def tiny_settings(tmp_path, data_dir, standin_dir):
    return tiny(tmp_path / "work", data_dir, standin_dir, tmp_path.name)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir, standin_dir):
    """One finished instructor run with `tiny` settings, trained once for the tests of this module."""
    work = tmp_path_factory.mktemp("trained")
    return run_instructor(tiny(work, data_dir, standin_dir, "trained"), upload=False, progress=False)


@pytest.fixture
def finished(tiny_settings, trained_run):
    """`tiny_settings`' run folder holding a copy of the finished run (the same identities: nothing to redo)."""
    shutil.copytree(trained_run, run_dir(tiny_settings), ignore=shutil.ignore_patterns(".lock"))
    return run_dir(tiny_settings)


def retrained(run, before: dict[str, dict]) -> list[str]:
    """The stage folders (of `before`, a snapshot of each) whose files changed since."""
    return sorted(name for name, files in before.items() if snapshot(run / name) != files)


def stage_snapshots(run) -> dict[str, dict]:
    return {name: snapshot(run / name) for name in (FULL_CHECKPOINT, PEFT_CHECKPOINT, TOPIC_CHECKPOINT)}


def published(settings) -> dict[str, tuple]:
    """Every object under the run's S3 prefix, with its ETag and when it was written."""
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket="lab-test", Prefix=settings.s3_uri.split("/", 3)[3])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed.get("Contents", [])}


def snapshot(folder) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_instructor_publishes_checkpoints_and_results(tiny_settings, local_s3, tmp_path):
    run = run_instructor(tiny_settings, progress=False)
    pulled = tmp_path / "pulled"
    full = pull(tiny_settings.s3(FULL_CHECKPOINT + "/"), pulled / FULL_CHECKPOINT)
    peft = pull(tiny_settings.s3(PEFT_CHECKPOINT + "/"), pulled / PEFT_CHECKPOINT)
    topic = pull(tiny_settings.s3(TOPIC_CHECKPOINT + "/"), pulled / TOPIC_CHECKPOINT)
    results = pull(tiny_settings.s3(RESULTS_FILE), pulled / RESULTS_FILE)
    pull(tiny_settings.s3(TOPIC_RESULTS_FILE), pulled / TOPIC_RESULTS_FILE)
    assert (full / "model.safetensors").read_bytes() == (run / FULL_CHECKPOINT / "model.safetensors").read_bytes()
    for adapter in (peft, topic):
        assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()

    frame = read_results_file(results)
    assert list(frame.columns) == ["id", *RESULTS_COLUMNS] and len(frame) == 18
    # each dialogue's summary is generated once and fanned out to its three reference rows
    assert frame["instruct_model_summaries"].iloc[0] == frame["instruct_model_summaries"].iloc[2]
    assert frame["human_baseline_summaries"].iloc[0] != frame["human_baseline_summaries"].iloc[1]

    # a second run reuses every finished stage and uploads nothing new
    files, objects = snapshot(run), published(tiny_settings)
    assert len(objects) >= 5
    run_instructor(tiny_settings, progress=False)
    assert snapshot(run) == files and published(tiny_settings) == objects


def test_the_instructor_trains_with_the_notebook_s_recipe(finished, tiny_settings):
    """The recipe the instructor recorded beside each checkpoint is what the notebook's cells build."""
    import torch
    from notebook import source
    from transformers import Seq2SeqTrainingArguments

    from lab_utils.backstage.recipe import recipe_of

    run = finished

    namespace = {"settings": tiny_settings, "torch": torch, "Seq2SeqTrainingArguments": Seq2SeqTrainingArguments}
    for cell, name, folder in (
        ("full-training-args", "training_args", FULL_CHECKPOINT),
        ("lora-training-args", "peft_training_args", PEFT_CHECKPOINT),
    ):
        # only the arguments: the cell's statement that builds them (the trainer needs the notebook's data)
        text = source(cell)
        start = text.index(f"{name} = Seq2SeqTrainingArguments(")
        end = text.index("\n)\n", start) + 2
        exec("runs = settings.work_path\n" + text[start:end], namespace)
        notebook_recipe = json.loads(json.dumps(recipe_of(namespace[name]), default=str))
        recorded = json.loads((run / folder / "train_facts.json").read_text())["recipe"]
        assert recorded == notebook_recipe, folder


def test_live_and_results_file_generation_truncate_alike(finished, tiny_settings, data_dir):
    """The notebook's live summaries (section 3.5) equal the results file's rows for the same dialogues."""
    import torch
    from notebook import run_cells
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from lab_utils.data import load_dialogsum_csv
    from lab_utils.generation import summarize

    run = finished
    frame = read_results_file(run / RESULTS_FILE)
    dataset = load_dialogsum_csv(data_dir)
    ns = run_cells(
        ["live-summaries"],
        {
            "settings": tiny_settings.replace(eval_dialogues=4),
            "dataset": dataset,
            "tokenizer": AutoTokenizer.from_pretrained(tiny_settings.model_path_or_id),
            "original_model": AutoModelForSeq2SeqLM.from_pretrained(
                tiny_settings.model_path_or_id, dtype=torch.float32
            ),
            "instruct_model": AutoModelForSeq2SeqLM.from_pretrained(run / FULL_CHECKPOINT, dtype=torch.float32),
            "summarize": summarize,
        },
    )
    n = len(ns["eval_rows"])
    assert n == 12  # 4 dialogues x 3 references
    assert ns["summaries"]["original"] == frame["original_model_summaries"].tolist()[:n]
    assert ns["summaries"]["instruct"] == frame["instruct_model_summaries"].tolist()[:n]


def test_a_typo_on_a_finished_run_changes_nothing(finished, tiny_settings, monkeypatch, capsys):
    from lab_utils.__main__ import main

    run = finished
    before = snapshot(run)
    for name in (
        "data_dir",
        "model_id",
        "work_dir",
        "instructor_full_steps",
        "instructor_lora_steps",
        "instructor_topic_steps",
        "max_new_tokens",
        "max_source_length",
        "train_batch_size",
        "eval_batch_size",
        "no_repeat_ngram_size",
    ):
        monkeypatch.setenv("LAB_" + name.upper(), str(getattr(tiny_settings, name)))
    for variable, value in (("LAB_TRAIN_BATCH_SIZE", "0"), ("LAB_MAX_NEW_TOKENS", "0"), ("LAB_FULL_LR", "inf")):
        monkeypatch.setenv(variable, value)
        assert main(["--profile", "offline", "instructor", "--no-upload"]) == 2
        assert variable in capsys.readouterr().err
        monkeypatch.setenv(variable, str(getattr(tiny_settings, variable[4:].lower())))
    assert snapshot(run) == before


def test_an_interrupted_stage_leaves_no_debris(finished, tiny_settings):
    """What a killed stage left half-written (its `.partial` folder, a torn record) is gone after the next run,
    which keeps every finished result."""
    run = finished
    before = snapshot(run)
    (run / (TOPIC_CHECKPOINT + ".partial") / "trainer").mkdir(parents=True)
    (run / (TOPIC_CHECKPOINT + ".partial") / "trainer" / "optimizer.pt").write_bytes(b"\0" * 1000)
    (run / "stages" / "topic.json.tmp").write_text('{"half": ')
    run_instructor(tiny_settings, upload=False, progress=False)
    assert snapshot(run) == before


def test_a_changed_generation_setting_regenerates_without_retraining(finished, tiny_settings):
    run = finished
    checkpoints = stage_snapshots(run)
    run_instructor(tiny_settings.replace(max_new_tokens=5), upload=False, progress=False)
    assert retrained(run, checkpoints) == []
    assert Stages(run).identity("results")["max_new_tokens"] == 5  # the results file was made again


def test_a_changed_recipe_keeps_the_old_stage_until_the_new_one_is_done(finished, tiny_settings, monkeypatch):
    run = finished
    old = snapshot(run / PEFT_CHECKPOINT)

    # the retraining crashes: the finished adapter is still on disk, set aside
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.Seq2SeqTrainer.train", crash)
    changed = tiny_settings.replace(instructor_lora_steps=4)
    with pytest.raises(KeyboardInterrupt):
        run_instructor(changed, upload=False, progress=False)
    assert snapshot(run / (PEFT_CHECKPOINT + ".previous")) == old
    monkeypatch.undo()

    # back to the old settings: the adapter set aside comes back, nothing is trained
    others = {n: snapshot(run / n) for n in (FULL_CHECKPOINT, TOPIC_CHECKPOINT)}
    run_instructor(tiny_settings, upload=False, progress=False)
    assert snapshot(run / PEFT_CHECKPOINT) == old and not (run / (PEFT_CHECKPOINT + ".previous")).exists()
    assert retrained(run, others) == []

    # the new settings, to the end: only that stage is retrained, and what was set aside is gone
    before = stage_snapshots(run)
    run_instructor(changed, upload=False, progress=False)
    assert retrained(run, before) == [PEFT_CHECKPOINT]
    assert max(e["step"] for e in json.loads((run / PEFT_CHECKPOINT / "train_log.json").read_text())) == 4
    assert not (run / (PEFT_CHECKPOINT + ".previous")).exists()


@pytest.mark.parametrize("change", ["weight_decay", "lora_rank", "prompt"])
def test_a_changed_recipe_in_the_code_retrains_what_it_changes(change, finished, tiny_settings, monkeypatch):
    """The recipe's code (not only the settings) is part of each stage's identity: a stale checkpoint is not reused."""
    from lab_utils import data
    from lab_utils.backstage import recipe

    if change == "weight_decay":
        original = recipe.training_arguments

        def heavier_decay(*args, **kwargs):
            out = original(*args, **kwargs)
            out.weight_decay = 0.1
            return out

        monkeypatch.setattr(recipe, "training_arguments", heavier_decay)
        expected = [FULL_CHECKPOINT, PEFT_CHECKPOINT, TOPIC_CHECKPOINT]
    elif change == "lora_rank":
        original = recipe.lora_config
        monkeypatch.setattr(recipe, "lora_config", lambda r=32: original(r=16))
        expected = [PEFT_CHECKPOINT, TOPIC_CHECKPOINT]
    else:
        monkeypatch.setattr(data, "build_topic_prompt", lambda d: "Name the topic:\n\n" + d + "\n\nTopic: ")
        expected = [TOPIC_CHECKPOINT]
    before = stage_snapshots(finished)
    run_instructor(tiny_settings, upload=False, progress=False)
    assert retrained(finished, before) == sorted(expected)


def test_the_data_is_part_of_the_run_s_identity(finished, tiny_settings, tmp_path):
    from conftest import write_dialogsum

    bigger = write_dialogsum(tmp_path / "more", n_test_dialogues=8)  # same seed: same training rows, more tests
    before = stage_snapshots(finished)
    run = run_instructor(tiny_settings.replace(data_dir=str(bigger)), upload=False, progress=False)
    assert retrained(run, before) == []
    assert len(read_results_file(run / RESULTS_FILE)) == 24


def test_a_diverging_run_stops_before_saving_or_publishing(tiny_settings, local_s3, capsys, monkeypatch):
    import math

    real_log = {}

    def diverge(self, logs, *args, **kwargs):  # the trainer's logging: report a non-finite loss
        logs = dict(logs, loss=math.nan) if "loss" in logs else logs
        real_log["log"](self, logs, *args, **kwargs)

    from transformers import Trainer

    real_log["log"] = Trainer.log
    monkeypatch.setattr(Trainer, "log", diverge)
    with pytest.raises(LabError, match="diverged: loss = nan at step 1; nothing was saved") as error:
        run_instructor(tiny_settings, progress=False)
    assert "LAB_FULL_LR" in error.value.fix
    run = run_dir(tiny_settings)
    assert not (run / FULL_CHECKPOINT).exists()
    import boto3

    listed = boto3.client("s3").list_objects_v2(Bucket="lab-test", Prefix=tiny_settings.s3_uri.split("/", 3)[3])
    assert listed.get("KeyCount", 0) == 0  # nothing published


def test_empty_summaries_are_never_written_or_published(tiny_settings, local_s3, monkeypatch):
    from lab_utils import generation  # the instructor imports `summarize` from here when its stage runs

    original = generation.summarize

    def silent_peft(model, tokenizer, dialogues, settings, **kwargs):
        texts = original(model, tokenizer, dialogues, settings, **kwargs)
        return [""] * len(texts) if kwargs.get("desc") == "peft_model" else [t or "x" for t in texts]

    monkeypatch.setattr(generation, "summarize", silent_peft)
    with pytest.raises(LabError, match="peft model summaries are empty for 18 of 18 test rows"):
        run_instructor(tiny_settings, progress=False)
    assert not (run_dir(tiny_settings) / RESULTS_FILE).exists()


def test_a_second_instructor_on_the_same_run_stops_with_a_message(tiny_settings):
    with run_lock(run_dir(tiny_settings)):
        with pytest.raises(LabError, match="another instructor command .* is working in") as error:
            run_instructor(tiny_settings, upload=False, progress=False)
    assert "wait for it" in error.value.fix


def test_a_missing_bucket_is_found_before_training(tiny_settings, local_s3, monkeypatch):
    monkeypatch.setattr("lab_utils.s3.is_local", lambda client: False)  # as on AWS: never create it
    with pytest.raises(LabError, match="The bucket s3://never-made/ .* does not exist"):
        run_instructor(tiny_settings.replace(s3_uri="s3://never-made/models/"), progress=False)
    assert not (run_dir(tiny_settings) / FULL_CHECKPOINT).exists()


def test_a_damaged_stage_record_is_set_aside_and_the_stage_redone(finished, tiny_settings):
    run = finished
    (run / "stages" / "lora.json").write_text('{"original": "ab')  # truncated
    before = stage_snapshots(run)
    run_instructor(tiny_settings, upload=False, progress=False)
    assert PEFT_CHECKPOINT in retrained(run, before) and FULL_CHECKPOINT not in retrained(run, before)
    assert (run / "stages" / "lora.json.damaged").is_file()
    json.loads((run / "stages" / "lora.json").read_text())


def test_cli_reports_bad_configuration_in_one_line(monkeypatch, capsys):
    from lab_utils.__main__ import main

    monkeypatch.setenv("LAB_PROFILE", "offline")
    monkeypatch.setenv("LAB_DATA_DIR", "/nonexistent/dialogsum")
    monkeypatch.setenv("LAB_MODEL_ID", "/nonexistent/model")
    assert main(["instructor", "--no-upload"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint folder /nonexistent/model does not exist")
    assert "build-model" in err and "Traceback" not in err


@pytest.mark.parametrize(("code", "fix"), [(28, "free some space"), (13, "writable"), (30, "read-only")])
def test_a_full_or_read_only_work_dir_is_one_message(code, fix, monkeypatch, capsys, tiny_settings):
    """ENOSPC, EACCES, EROFS while the instructor writes: exit 2, the file and the fix, no traceback."""
    import os

    from lab_utils.__main__ import main

    def refuse(self, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    for name in ("data_dir", "model_id", "work_dir"):
        monkeypatch.setenv("LAB_" + name.upper(), str(getattr(tiny_settings, name)))
    assert main(["--profile", "offline", "instructor", "--no-upload"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "instructor-run" in err and fix in err
    assert "Traceback" not in err
