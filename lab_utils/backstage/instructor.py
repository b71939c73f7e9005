"""The instructor command: train what the notebook trains, for longer; summarize the whole test set; publish.

Stages, each with its own folder in `data/<profile>/instructor-run/` and an identity (what its result depends on:
the original model's weights, the data, the recipe, the generation settings), kept in `stages/<stage>.json`:

  full     the fully fine-tuned ("instruct") model          -> flan-dialogue-summary-checkpoint/
  lora     the LoRA adapter for summaries                    -> peft-dialogue-summary-checkpoint/
  topic    a second LoRA adapter: the dialogue's topic       -> peft-dialogue-topic-checkpoint/
  results  every test row summarized by the three models     -> dialogue-summary-training-results.csv
           and every test dialogue's topic by the topic adapter -> dialogue-topic-results.csv

A re-run reuses every stage whose identity is unchanged: a changed generation setting regenerates, it does not
retrain. A stage whose identity changed is moved aside (`<name>.previous`) and removed only once its replacement is
complete; running again with the old settings brings it back instead of training it again. Every stage is written
under a temporary name and renamed when complete, and checked (finite losses and weights, no empty summary) before
anything is published. One instructor process at a time works on a run folder (a lock).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..checkpoints import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE, TOPIC_CHECKPOINT, TOPIC_RESULTS_FILE
from ..config import Settings, looks_like_hub_id
from ..devices import best_device, resolve_precision
from ..errors import LabError
from ..s3 import check_publish_target, upload_folder
from .generation_cache import GenerationCache
from .local_s3 import local_s3_for
from .recipe import (
    instructor_run_options,
    is_main_process,
    lora_config,
    make_trainer,
    recipe_identity,
    recipe_of,
    tokenize,
    training_arguments,
)

# the settings each stage's result depends on (besides the original model's weights and the data)
TRAINING_SETTINGS = ("seed", "max_source_length", "max_target_length", "train_batch_size", "warmup_ratio")
GENERATION_SETTINGS = ("max_source_length", "max_new_tokens", "no_repeat_ngram_size", "eval_batch_size")


@dataclass(frozen=True)
class Stage:
    """One training stage of the instructor's run: the one table training, identity, results and release read."""

    name: str  # its record in stages/<name>.json
    folder: str  # what it writes (and publishes) in the run folder
    label: str  # how messages name it
    lr_setting: str  # the settings field of its learning rate
    steps_setting: str  # the settings field of its step count
    lora: bool  # a LoRA adapter on the original model (else all weights are trained)
    task: str = "summary"  # "summary" (the course's prompt and target) or "topic"

    def lr(self, settings: Settings) -> float:
        return getattr(settings, self.lr_setting)

    def steps(self, settings: Settings) -> int:
        return getattr(settings, self.steps_setting)

    @property
    def prompt(self):
        from ..data import build_prompt, build_topic_prompt

        return build_topic_prompt if self.task == "topic" else build_prompt


TRAINED = (
    Stage("full", FULL_CHECKPOINT, "full fine-tuned (instruct) model", "full_lr", "instructor_full_steps", False),
    Stage("lora", PEFT_CHECKPOINT, "LoRA adapter", "lora_lr", "instructor_lora_steps", True),
    Stage("topic", TOPIC_CHECKPOINT, "topic LoRA adapter", "lora_lr", "instructor_topic_steps", True, "topic"),
)
STAGES = {stage.name: stage for stage in TRAINED}
STAGE_NAMES = (*STAGES, "results")  # the results stage: every test row summarized, every topic named
PUBLISHED = (*(stage.folder for stage in TRAINED), RESULTS_FILE, TOPIC_RESULTS_FILE)


def run_dir(settings: Settings) -> Path:
    """Where the instructor's run for this profile is written."""
    return settings.work_path / settings.profile / "instructor-run"


def write_json_atomic(path: Path, value: object) -> None:
    """Write JSON under a temporary name, flush it to disk, then rename: a crash leaves the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def text_digest(*columns) -> str:
    """A short hash of some text columns (the data a stage learned from or generated for)."""
    h = hashlib.sha256()
    for column in columns:
        for text in column:
            h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


class Stages:
    """The stages of one run folder: their identities, reuse, setting aside and restoring."""

    def __init__(self, root: Path):
        self.root = root
        self.records = root / "stages"

    def _record(self, stage: str) -> Path:
        return self.records / f"{stage}.json"

    def identity(self, stage: str, previous: bool = False) -> dict | None:
        """The identity recorded for a stage (or its set-aside copy); a damaged record is set aside with a warning."""
        path = self._record(stage + (".previous" if previous else ""))
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
        except (ValueError, UnicodeDecodeError) as exc:
            aside = path.with_name(path.name + ".damaged")
            path.replace(aside)
            print(f"Warning: {path} was damaged ({exc}); moved it to {aside.name}; the stage '{stage}' is done again.")
            return None

    def done(self, stage: str, outputs: list[Path], identity: dict) -> bool:
        """True when the stage is complete with this identity. Otherwise its outputs are set aside (or a set-aside
        copy with this identity is brought back, which also counts as done)."""
        if self.identity(stage) == identity and all(p.exists() for p in outputs):
            return True
        if any(p.exists() for p in outputs):
            self._set_aside(stage, outputs)
        if self.identity(stage, previous=True) == identity and all(_previous(p).exists() for p in outputs):
            for p in outputs:
                _previous(p).rename(p)
            self._record(stage + ".previous").rename(self._record(stage))
            print(f"Stage '{stage}': brought back the result set aside earlier (same settings).")
            return True
        return False

    def _set_aside(self, stage: str, outputs: list[Path]) -> None:
        print(
            f"Stage '{stage}': settings or inputs changed; its earlier result is kept aside until the new one is done."
        )
        for p in outputs:
            _remove(_previous(p))
            if p.exists():
                p.rename(_previous(p))
        record = self._record(stage)
        if record.is_file():
            record.replace(self._record(stage + ".previous"))
        else:
            self._record(stage + ".previous").unlink(missing_ok=True)

    def complete(self, stage: str, outputs: list[Path], identity: dict) -> None:
        """Record a finished stage and drop what was set aside for it."""
        self.records.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._record(stage), identity)
        for p in outputs:
            _remove(_previous(p))
        self._record(stage + ".previous").unlink(missing_ok=True)


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(root: Path):
    """Hold the run folder's lock; a second instructor process on the same folder stops with a clear message."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise LabError(
                f"another instructor command ({holder}) is working in {root}",
                "wait for it to finish (or stop it), then run this command again; it reuses what that one finished",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_debris(root: Path) -> None:
    """Remove the files an interrupted run left half-written (`*.tmp`); the lock is held, so no other instructor is
    writing them. (A stage's `.partial` folder is resumed from, or removed, when the stage comes.)"""
    for path in sorted([*root.glob("*.tmp"), *root.glob("stages/*.tmp")]):
        print(f"Removing {path.name}, left half-written by an interrupted run")
        _remove(path)


def check_losses(log_history: list[dict], what: str, setting: str) -> None:
    """Stop with a clear message when training produced a non-finite loss or gradient norm (it diverged)."""
    for entry in log_history:
        for key in ("loss", "grad_norm"):
            value = entry.get(key)
            if value is not None and not math.isfinite(value):
                raise LabError(
                    f"training the {what} diverged: {key} = {value} at step {entry.get('step')}; nothing was saved",
                    f"lower `{setting}` (now the learning rate that diverged) and run the command again",
                )


def checkpoints_newest_first(trainer_dir: Path) -> list[Path]:
    """The Trainer's `checkpoint-<step>` folders, newest first."""
    found = [p for p in trainer_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: -int(p.name.split("-")[-1]))


def checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from (a file missing, truncated or unreadable), or None."""
    import zipfile

    from ..models import ADAPTER_WEIGHTS, MODEL_WEIGHTS, read_json, tensor_shapes

    try:
        read_json(folder / "trainer_state.json", "checkpoint", "")
        weights = next((folder / n for n in (*MODEL_WEIGHTS, *ADAPTER_WEIGHTS) if (folder / n).is_file()), None)
        if weights is None:
            return "no weights file"
        tensor_shapes(weights, "checkpoint", "")
        for name in ("optimizer.pt", "scheduler.pt"):
            with zipfile.ZipFile(folder / name) as archive:  # torch.save writes a zip: a torn one has no directory
                bad = archive.testzip()
            if bad is not None:
                return f"{name} is damaged ({bad})"
    except (LabError, OSError, zipfile.BadZipFile) as exc:
        return str(exc).splitlines()[0]
    return None


def resume_point(trainer_dir: Path, set_aside: bool = True) -> Path | None:
    """The newest whole checkpoint to resume from; a damaged newer one is set aside (`.damaged`) with a warning
    (by the main process; the others only skip it)."""
    for folder in checkpoints_newest_first(trainer_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if not set_aside:
            continue
        aside = folder.with_name(folder.name + ".damaged")
        _remove(aside)
        folder.rename(aside)
        print(f"Warning: {folder.name} cannot be resumed from ({problem}); set it aside as {aside.name}", flush=True)
    return None


def _train_stage(model, tokenizer, data, out: Path, stage: Stage, settings: Settings, identity: dict, progress: bool):
    """Train one stage with the notebook's recipe; rank 0 saves the best model by validation loss to `out`.

    The Trainer saves a checkpoint every `LAB_SAVE_STEPS` steps under `<out>.partial/trainer/`; a run of the same
    identity resumes from the newest whole one (same data order, optimizer, scheduler and random states), a run of
    another identity starts over. The best checkpoint by validation loss (measured every `LAB_EVAL_STEPS` steps) is
    what is saved; the checkpoints are removed once the stage is complete.
    """
    from .progress import StageProgress

    tmp = out.with_name(out.name + ".partial")
    started = tmp / "identity.json"
    t0 = time.time()
    device, precision, steps = best_device(), identity["precision"], stage.steps(settings)
    args = training_arguments(  # under torchrun this also joins the processes' group
        settings,
        stage.lr(settings),
        tmp / "trainer",
        steps,
        logging_steps=max(1, min(settings.eval_steps, steps // 50)),
        **instructor_run_options(settings, precision, progress),
    )
    with args.main_process_first(desc="the stage's checkpoints"):  # rank 0 tidies them, then every rank reads them
        if is_main_process():
            if tmp.exists() and (not started.is_file() or json.loads(started.read_text(encoding="utf-8")) != identity):
                _remove(tmp)  # half of a run with other settings: nothing to resume
            tmp.mkdir(parents=True, exist_ok=True)
            write_json_atomic(started, identity)
        resume = resume_point(tmp / "trainer", set_aside=is_main_process())
    trainer = make_trainer(model, tokenizer, data["train"], args, eval_dataset=data["validation"])
    trainer.add_callback(StageProgress(stage.label, settings.train_batch_size, device, precision, progress))
    if resume is not None:
        print(f"Resuming the {stage.label} from {resume.name} (step {resume.name.split('-')[-1]} of {steps})")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if not trainer.is_world_process_zero():
        return  # data-parallel: the other processes helped train; rank 0 saves
    check_losses(trainer.state.log_history, stage.label, "LAB_" + stage.lr_setting.upper())
    best = Path(trainer.state.best_model_checkpoint or "none").name
    _remove(tmp / "trainer")
    model = trainer.model.to("cpu")
    if settings.offline:
        model.half()  # the offline release is committed to git: fp16 on disk, loaded as float32
    model.save_pretrained(tmp)
    if not stage.lora:  # a full checkpoint carries its tokenizer; an adapter is only the adapter
        tokenizer.save_pretrained(tmp)
    write_json_atomic(tmp / "train_log.json", trainer.state.log_history)
    facts = {
        "world_size": args.world_size,
        "seconds": round(time.time() - t0),
        "recipe": recipe_of(args),
        "device": device,
        "precision": precision,
        "best_checkpoint": best,
        "best_eval_loss": trainer.state.best_metric,
    }
    write_json_atomic(tmp / "train_facts.json", facts)
    started.unlink()
    tmp.rename(out)
    print(f"Saved the {stage.label} ({best}: the best validation loss) to {out} ({time.time() - t0:.0f} s)", flush=True)


def _check_summaries(column: str, texts: list[str]) -> None:
    empty = sum(not t.strip() for t in texts)
    if empty:
        raise LabError(
            f"the {column.replace('_', ' ')} are empty for {empty} of {len(texts)} test rows; the results file was "
            "not written (and nothing was published)",
            "check the model (a diverged or untrained model writes nothing) and `LAB_MAX_NEW_TOKENS`",
        )


def run_instructor(
    settings: Settings, upload: bool = True, progress: bool = True, fast_inference: str = "fp32"
) -> Path:
    """Train, evaluate on the full test set, and (optionally) publish; returns the run folder.

    `fast_inference` (an engine of `engines.ENGINES`: "int8", "bf16", "ctranslate2", ...) speeds up the test-set
    generation on CPUs (`bench --only f,h` measures its speed and ROUGE cost); it is part of the results' identity.
    """
    from ..data import load_dialogsum

    if upload:
        local_s3_for(settings)  # offline: the local S3 server (one named by AWS_ENDPOINT_URL_S3, or this process's)
    out = run_dir(settings)
    original, tokenizer = _load_original(settings)
    dataset = load_dialogsum(settings)
    if not is_main_process():
        return _train_stages(settings, out, original, tokenizer, dataset, progress)
    with run_lock(out):
        remove_debris(out)
        if upload:
            check_publish_target(settings)  # before hours of training, not after
        _train_stages(settings, out, original, tokenizer, dataset, progress)
        _results_stage(settings, out, original, tokenizer, dataset["test"], progress, fast_inference)
        if upload:
            upload_folder(settings, out, PUBLISHED)
    return out


def _load_original(settings: Settings):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ..models import check_model_dir

    source = settings.model_path_or_id
    if not looks_like_hub_id(settings.model_id):  # a local folder: check it before loading
        check_model_dir(source, fix="check `LAB_MODEL_ID`, or build the stand-in: `python -m lab_utils build-model`")
    model = AutoModelForSeq2SeqLM.from_pretrained(source, dtype="float32")
    return model, AutoTokenizer.from_pretrained(source)


def _identities(settings: Settings, original_fp: str, dataset) -> dict[str, dict]:

    base = {
        "original": original_fp,
        "precision": resolve_precision(settings.precision, best_device()),
        "validation": [settings.validation_rows, settings.eval_steps],  # they choose the best checkpoint
        "train": text_digest(dataset["train"]["dialogue"], dataset["train"]["summary"], dataset["train"]["topic"]),
        **{k: getattr(settings, k) for k in TRAINING_SETTINGS},
    }
    return {
        stage.name: {
            **base,
            "lr": stage.lr(settings),
            "steps": stage.steps(settings),
            **({"task": stage.task} if stage.task != "summary" else {}),
            "recipe": recipe_identity(settings, stage.lr(settings), lora=stage.lora, prompt=stage.prompt),
        }
        for stage in TRAINED
    }


def _train_stages(settings: Settings, out: Path, original, tokenizer, dataset, progress: bool = True) -> Path:
    from peft import get_peft_model

    from ..models import fingerprint

    ids = _identities(settings, fingerprint(original), dataset)
    stages = Stages(out)
    tokenized = {}
    for stage in TRAINED:
        folder = out / stage.folder
        if is_main_process() and stages.done(stage.name, [folder], ids[stage.name]):
            _remove(folder.with_name(folder.name + ".partial"))  # debris of an interrupted run of another identity
            continue
        if not is_main_process() and stages.identity(stage.name) == ids[stage.name] and folder.exists():
            continue
        if stage.task not in tokenized:
            splits = tokenize(dataset, tokenizer, settings, prompt=stage.prompt, target=stage.task)
            rows = min(settings.validation_rows, len(splits["validation"]))  # the validation loss: the first rows
            tokenized[stage.task] = {"train": splits["train"], "validation": splits["validation"].select(range(rows))}
        model = get_peft_model(copy.deepcopy(original), lora_config()) if stage.lora else copy.deepcopy(original)
        _train_stage(model, tokenizer, tokenized[stage.task], folder, stage, settings, ids[stage.name], progress)
        if is_main_process():
            stages.complete(stage.name, [folder], ids[stage.name])
    return out


def _results_stage(settings: Settings, out: Path, original, tokenizer, test, progress: bool, fast_inference: str):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from ..engines import prepare_for_inference
    from ..generation import summarize
    from ..models import check_adapter_dir, check_model_dir, fingerprint
    from ..results_file import RESULTS_COLUMNS, write_results_file

    trained = {stage.folder: json.dumps(Stages(out).identity(stage.name), sort_keys=True) for stage in TRAINED}
    identity = {
        "models": trained,
        "test": text_digest(test["id"], test["dialogue"], test["summary"], test["topic"]),
        "fast_inference": fast_inference,
        "precision": resolve_precision(settings.precision, best_device()),
        **{k: getattr(settings, k) for k in GENERATION_SETTINGS},
    }
    # int8, bf16 autocast and CTranslate2 are the CPU's speed-ups
    device = best_device() if fast_inference == "fp32" else "cpu"
    outputs = [out / RESULTS_FILE, out / TOPIC_RESULTS_FILE]
    stages = Stages(out)
    if stages.done("results", outputs, identity):
        return
    full_dir = check_model_dir(out / FULL_CHECKPOINT, finite=True, fix="run the command again to retrain it")
    for stage in TRAINED:
        if stage.lora:
            check_adapter_dir(out / stage.folder, original, settings.model_id, fix="run the command again: it retrains")

    def adapter(name):
        return PeftModel.from_pretrained(copy.deepcopy(original), out / name, is_trainable=False)

    models = {
        "original_model_summaries": lambda: original,
        "instruct_model_summaries": lambda: AutoModelForSeq2SeqLM.from_pretrained(full_dir, dtype="float32"),
        "peft_model_summaries": lambda: adapter(PEFT_CHECKPOINT),
    }
    before = fingerprint(original)
    columns = {RESULTS_COLUMNS[0]: list(test["summary"])}
    cache = out / "generation"
    for column, make in models.items():
        name = column.replace("_summaries", "")
        print(f"Generating {name} summaries of the test set", flush=True)
        # each finished batch is on disk: a crash or kill resumes here instead of starting over
        columns[column] = summarize(
            prepare_for_inference(make().to(device), fast_inference, tokenizer),
            tokenizer,
            list(test["dialogue"]),
            settings,
            progress=progress,
            desc=name,
            store=GenerationCache(cache / f"{name}.jsonl"),
        )
        _check_summaries(column, columns[column])
    print("Generating the topic adapter's topics of the test set", flush=True)
    topics = summarize(
        prepare_for_inference(adapter(TOPIC_CHECKPOINT).to(device), fast_inference, tokenizer),
        tokenizer,
        list(test["dialogue"]),
        settings,
        progress=progress,
        desc="topic",
        store=GenerationCache(cache / "topic.jsonl"),
        prompt=STAGES["topic"].prompt,
    )
    _check_summaries("peft_model_topics", topics)
    assert fingerprint(original) == before, "generation changed the original model"
    write_results_file(out / RESULTS_FILE, columns, extra={"id": list(test["id"])})
    write_results_file(
        out / TOPIC_RESULTS_FILE,
        {"human_baseline_topics": list(test["topic"]), "peft_model_topics": topics},
        extra={"id": list(test["id"])},
    )
    stages.complete("results", outputs, identity)
    shutil.rmtree(cache, ignore_errors=True)
    print(f"Wrote {out / RESULTS_FILE} and {out / TOPIC_RESULTS_FILE} ({len(test)} test rows)")
