"""The instructor command on tiny data."""

# it trains with the notebook's own cells, resumes from the Trainer's checkpoints, generates the results files,
# publishes, and redoes only what a change needs; release and build-model write only what passes their checks, into
# folders the lab owns.

from __future__ import annotations

import hashlib
import json
import shutil

import boto3
import pytest
import torch
from conftest import refused
from safetensors.torch import load_file, save_file

from lab_utils import checkpoints, generation
from lab_utils.__main__ import main
from lab_utils.backstage import instructor
from lab_utils.backstage.instructor import resume_point, run_dir, run_instructor
from lab_utils.backstage.release import verify_release
from lab_utils.checkpoints import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE, TOPIC_CHECKPOINT, TOPIC_RESULTS_FILE
from lab_utils.config import RELEASE_DIR, load_settings
from lab_utils.errors import LabError
from lab_utils.files import MARK, write_file
from lab_utils.results_file import RESULTS_COLUMNS, TOPIC_COLUMNS, read_results_file

STAGE_FOLDERS = (FULL_CHECKPOINT, PEFT_CHECKPOINT, TOPIC_CHECKPOINT)


def tiny(work, data_dir, standin_dir, prefix: str):
    """The instructor's settings for the unit tests: tiny data, 4 steps a stage, a checkpoint every 2."""
    return load_settings(
        "offline", environ={}, data_dir=str(data_dir), model_id=str(standin_dir), work_dir=str(work),
        s3_uri=f"s3://lab-test/{prefix}/", instructor_full_steps=4, instructor_lora_steps=4, instructor_topic_steps=4,
        save_steps=2, eval_steps=2, validation_rows=4, train_batch_size=4, eval_batch_size=4, max_new_tokens=8,
        max_source_length=40, no_repeat_ngram_size=0,
    )  # fmt: skip


@pytest.fixture
def tiny_settings(tmp_path, data_dir, standin_dir):
    return tiny(tmp_path / "work", data_dir, standin_dir, tmp_path.name)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir, standin_dir):
    return run_instructor(tiny(tmp_path_factory.mktemp("trained"), data_dir, standin_dir, "x"), False, False)


def copy_as_the_lab(source, dest):  # what the lab writes at `dest` is recorded as its own (a copy is not)
    with write_file(dest) as tmp:
        shutil.copy2(source, tmp)


@pytest.fixture
def finished(tiny_settings, trained_run):
    """`tiny_settings`' run folder holding the lab's copy of the finished run (the same identities: nothing to redo)."""
    shutil.copytree(trained_run, run_dir(tiny_settings), copy_function=copy_as_the_lab)
    return run_dir(tiny_settings)


def snapshot(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def retrained(run, before: dict) -> list[str]:
    return sorted(name for name in STAGE_FOLDERS if snapshot(run / name) != before[name])


def stages(run) -> dict:
    return {name: snapshot(run / name) for name in STAGE_FOLDERS}


def published(settings) -> dict[str, tuple]:
    listed = boto3.client("s3").list_objects_v2(Bucket="lab-test", Prefix=settings.s3_uri.split("/", 3)[3])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed.get("Contents", [])}


def test_the_run_writes_checkpoints_adapters_and_results(trained_run):
    for name in STAGE_FOLDERS:
        facts = json.loads((trained_run / name / "train_facts.json").read_text())
        assert facts["best_checkpoint"] in ("checkpoint-2", "checkpoint-4") and facts["identity"]
        assert max(e["step"] for e in json.loads((trained_run / name / "train_log.json").read_text())) == 4
        assert not (trained_run / f"{name}.trainer").exists()  # the checkpoints go with the finished stage
    assert (trained_run / FULL_CHECKPOINT / "tokenizer_config.json").is_file()
    assert (trained_run / PEFT_CHECKPOINT / "adapter_model.safetensors").is_file()
    frame = read_results_file(trained_run / RESULTS_FILE)
    assert list(frame.columns) == ["id", *RESULTS_COLUMNS] and len(frame) == 18
    assert frame["peft_model_summaries"].iloc[0] == frame["peft_model_summaries"].iloc[2]  # one dialogue, 3 rows
    topics = read_results_file(trained_run / TOPIC_RESULTS_FILE, TOPIC_COLUMNS)
    assert len(topics) == 18 and topics["peft_model_topics"].str.strip().all()


def test_a_rerun_reuses_everything_and_publishes_once(finished, tiny_settings, local_s3, tmp_path):
    run_instructor(tiny_settings, progress=False)
    full = checkpoints.pull(tiny_settings.s3(FULL_CHECKPOINT + "/"), tmp_path / "pulled" / FULL_CHECKPOINT)
    assert snapshot(full) == {k: v for k, v in snapshot(finished / FULL_CHECKPOINT).items() if k != MARK}  # unpublished
    files, objects = snapshot(finished), published(tiny_settings)
    assert len(objects) >= 5
    run_instructor(tiny_settings, progress=False)
    assert snapshot(finished) == files and published(tiny_settings) == objects


def test_a_changed_generation_setting_regenerates_without_retraining(finished, tiny_settings):
    before, results = stages(finished), (finished / RESULTS_FILE).read_bytes()
    run_instructor(tiny_settings.replace(max_new_tokens=3), upload=False, progress=False)
    assert retrained(finished, before) == [] and (finished / RESULTS_FILE).read_bytes() != results


@pytest.mark.parametrize("change", ["lora-cell", "full_lr"])
def test_a_changed_recipe_or_setting_retrains_what_it_changes(change, finished, tiny_settings, monkeypatch):
    settings, expected = tiny_settings, [PEFT_CHECKPOINT, TOPIC_CHECKPOINT]
    if change == "full_lr":
        settings, expected = tiny_settings.replace(full_lr=2e-3), [FULL_CHECKPOINT]
    else:
        source = instructor.cell_source
        monkeypatch.setattr(
            instructor, "cell_source", lambda c: source(c).replace("lora_dropout=0.05", "lora_dropout=0.1")
        )
    before = stages(finished)
    run_instructor(settings, upload=False, progress=False)
    assert retrained(finished, before) == expected


def test_a_damaged_newest_checkpoint_is_never_resumed_from(tiny_settings, monkeypatch, tmp_path):
    """The stage stops after its checkpoints are written; each damage to checkpoint-4 makes it unusable."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(instructor, "write_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_instructor(tiny_settings, upload=False, progress=False)
    folder = run_dir(tiny_settings) / f"{FULL_CHECKPOINT}.trainer"
    assert resume_point(folder, 4) == str(folder / "checkpoint-4")

    def nan_weights(p):
        save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(p / "model.safetensors").items()},
                  p / "model.safetensors")  # fmt: skip

    damages = {
        "truncated weights": lambda p: (p / "model.safetensors").write_bytes(b"\0" * 99),
        "empty state": lambda p: (p / "trainer_state.json").write_text("{}"),
        "no rng state": lambda p: (p / "rng_state.pth").unlink(),
        "past max_steps": lambda p: (p / "trainer_state.json").write_text('{"global_step": 9}'),
        "torn optimizer": lambda p: (p / "optimizer.pt").write_bytes((p / "optimizer.pt").read_bytes()[:500]),
        "nan weights": nan_weights,
    }  # fmt: skip
    for name, damage in damages.items():
        copy = shutil.copytree(folder, tmp_path / name)
        damage(copy / "checkpoint-4")
        assert resume_point(copy, 4) == str(copy / "checkpoint-2"), name
        assert not (copy / "checkpoint-4").exists(), name  # set aside, under a name no resume picks
        assert [p.name for p in copy.glob(".checkpoint-4.damaged.*/checkpoint")] == ["checkpoint"], name
    record = (folder / "stage.json").stat()
    with pytest.raises(KeyboardInterrupt):  # the same identity again: it resumes, and its record is not rewritten
        run_instructor(tiny_settings, upload=False, progress=False)
    assert (folder / "stage.json").stat().st_ino == record.st_ino


def test_a_diverging_run_stops_and_saves_or_publishes_nothing(tiny_settings, local_s3):
    with pytest.raises(LabError, match="diverged") as error:
        run_instructor(tiny_settings.replace(full_lr=1e30), progress=False)
    assert "LAB_FULL_LR" in error.value.fix
    assert not (run_dir(tiny_settings) / FULL_CHECKPOINT).exists() and published(tiny_settings) == {}


def test_a_missing_bucket_is_found_before_training(tiny_settings, local_s3, monkeypatch):
    monkeypatch.setattr("lab_utils.s3.is_local", lambda client: False)  # as on AWS: never create it
    with pytest.raises(LabError, match="s3://never-made/"):
        run_instructor(tiny_settings.replace(s3_uri="s3://never-made/models/"), progress=False)
    assert not (run_dir(tiny_settings) / FULL_CHECKPOINT).exists()


def test_empty_summaries_are_never_written_or_published(finished, tiny_settings, local_s3, monkeypatch):
    real = generation.summarize

    def silent_peft(model, tokenizer, dialogues, settings, **kwargs):
        texts = real(model, tokenizer, dialogues, settings, **kwargs)
        return [""] * len(texts) if kwargs.get("desc") == "peft_model" else texts

    monkeypatch.setattr(generation, "summarize", silent_peft)
    before = snapshot(finished)
    with pytest.raises(LabError, match="peft model summaries are empty for 18 of 18 test rows"):
        run_instructor(tiny_settings.replace(max_new_tokens=5), progress=False)
    after = snapshot(finished)
    assert {k: v for k, v in after.items() if k in before} == before and published(tiny_settings) == {}


# --- release and build-model -----------------------------------------------------------------------------------------


def cli(monkeypatch, work, model, data, *argv) -> int:
    for name, value in (("PROFILE", "offline"), ("WORK_DIR", work), ("MODEL_ID", model), ("DATA_DIR", data)):
        monkeypatch.setenv("LAB_" + name, str(value))
    return main(list(argv))


def test_a_run_that_fails_the_story_checks_is_not_released(finished, tiny_settings, monkeypatch, tmp_path, capsys):
    code = cli(monkeypatch, tiny_settings.work_dir, tiny_settings.model_id, tiny_settings.data_dir,
               "release", "--to", str(tmp_path / "trial"))  # fmt: skip
    refused(code, capsys, "story checks")
    assert not (tmp_path / "trial").exists()


@pytest.mark.slow
def test_the_committed_release_s_own_run_is_released_and_verifies(tmp_path, monkeypatch, capsys):
    manifest = verify_release(RELEASE_DIR)
    settings = load_settings("offline", environ={})
    if not settings.path(settings.data_dir).is_dir():
        pytest.skip("needs DialogSum in LAB_DATA_DIR")
    run = tmp_path / "work" / "offline" / "instructor-run"
    for name in instructor.PUBLISHED:  # the committed release laid out as the run it was, with its base's fingerprint
        (shutil.copytree if (RELEASE_DIR / name).is_dir() else shutil.copy2)(RELEASE_DIR / name, run / name)
    for stage in instructor.STAGES:
        facts = run / stage.folder / "train_facts.json"
        facts.write_text(
            json.dumps({**json.loads(facts.read_text()), "original": manifest["stages"]["full"]["original"]})
        )
    model = RELEASE_DIR / "flan-t5-tiny"
    args = (monkeypatch, tmp_path / "work", model, settings.path(settings.data_dir), "release", "--to")
    assert cli(*args, str(tmp_path / "trial"), "--build-seconds", "7") == 0, capsys.readouterr().err
    assert verify_release(tmp_path / "trial")["training_seconds"]["flan-t5-tiny"] == 7.0
    assert cli(*args, str(tmp_path / "trial")) == 0  # its own earlier release: replaced
    (tmp_path / "trial" / "notes.txt").write_text("mine\n")
    assert cli(*args, str(tmp_path / "trial")) == 2 and (tmp_path / "trial" / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("mine", [f"{FULL_CHECKPOINT}/notes.txt", f"{PEFT_CHECKPOINT}/.notes", RESULTS_FILE])
def test_a_user_s_file_among_the_run_s_outputs_stops_the_instructor(mine, finished, tiny_settings, monkeypatch, capsys):
    with open(finished / mine, "a") as f:
        f.write("mine\n")
    before = snapshot(finished)
    code = cli(monkeypatch, tiny_settings.work_dir, tiny_settings.model_id, tiny_settings.data_dir,
               "instructor", "--no-upload", "--full-steps", "5")  # fmt: skip
    refused(code, capsys, "did not write", mine.split("/")[0])
    assert snapshot(finished) == before


def test_build_model_refuses_a_folder_it_did_not_write(tmp_path, monkeypatch, data_dir, standin_dir, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    code = cli(monkeypatch, tmp_path / "work", standin_dir, data_dir, "build-model", "--out", str(tmp_path / "mine"))
    refused(code, capsys, "did not write")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
