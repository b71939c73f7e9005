"""The instructor command: train what the notebook trains, for longer; summarize the whole test set; publish."""

# The recipe is the notebook itself: its cells `tokenize`, `collator`, `full-training-args`, `lora-config` and
# `lora-training-args` are executed here (with the instructor's step counts), and only how the run goes is changed
# (checkpoints, the validation loss, the best checkpoint kept). Stages, each an output in the run folder
# (`data/<profile>/instructor-run/`):
#
#   full     the fully fine-tuned ("instruct") model          -> flan-dialogue-summary-checkpoint/
#   lora     the LoRA adapter for summaries                    -> peft-dialogue-summary-checkpoint/
#   topic    a second LoRA adapter: the dialogue's topic       -> peft-dialogue-topic-checkpoint/
#   results  every test row summarized by the three models     -> dialogue-summary-training-results.csv
#            and every test dialogue's topic by the topic adapter -> dialogue-topic-results.csv
#
# A stage is done when its output records the identity it would be made with now: a hash of the settings it reads, the
# original model's fingerprint, the datasets' fingerprints, the recipe cells' text and the precision. Training saves
# Trainer checkpoints every `LAB_SAVE_STEPS` steps in `<output>.trainer/`; a rerun resumes from the newest whole one.
# Each finished column of summaries is kept in `generation/`, so a rerun regenerates only what changed.

from __future__ import annotations

import ast
import collections
import copy
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from .. import data, generation
from ..checkpoints import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE, TOPIC_CHECKPOINT, TOPIC_RESULTS_FILE
from ..config import PROJECT_ROOT, Settings, looks_like_hub_id
from ..devices import best_device, resolve_precision
from ..engines import prepare_for_inference
from ..errors import LabError
from ..files import check_output, digest_of, write_folder, write_json
from ..models import check_adapter_dir, check_model_dir, fingerprint
from ..results_file import write_results_file
from ..s3 import check_publish_target, upload_folder
from .local_s3 import local_s3_for

NOTEBOOK = PROJECT_ROOT / "lab2_fine_tune_peft.ipynb"
# the notebook's cells that build a stage's trainer (after `tokenize` and `collator`), and the variable they leave it in
CELLS = {"full": (("full-training-args",), "trainer"), "lora": (("lora-config", "lora-training-args"), "peft_trainer")}


# a stage's `name` gives its step count (the setting `instructor_<name>_steps`); `folder` is its output in the run
# folder (published as is); the `recipe` "full" or "lora" names its cells, which read the settings `<recipe>_lr` and
# `notebook_<recipe>_steps`; the topic adapter is trained on the `topic` column with its own `prompt`
Stage = collections.namedtuple("Stage", "name folder recipe prompt", defaults=(data.build_prompt,))
STAGES = (Stage("full", FULL_CHECKPOINT, "full"), Stage("lora", PEFT_CHECKPOINT, "lora"),
          Stage("topic", TOPIC_CHECKPOINT, "lora", data.build_topic_prompt))  # fmt: skip
PUBLISHED = (*(stage.folder for stage in STAGES), RESULTS_FILE, TOPIC_RESULTS_FILE)
# the settings a trained stage depends on, besides its learning rate and step count (the validation loss, measured
# every `eval_steps` on `validation_rows` rows, picks the checkpoint kept among those saved every `save_steps`)
TRAINING_SETTINGS = ("seed", "max_source_length", "max_target_length", "train_batch_size", "warmup_ratio",
                     "save_steps", "eval_steps", "validation_rows")  # fmt: skip
GENERATION_SETTINGS = ("max_source_length", "max_new_tokens", "no_repeat_ngram_size", "eval_batch_size")


def run_dir(settings: Settings) -> Path:
    """Where the instructor's run for this profile is written."""
    return settings.work_path / settings.profile / "instructor-run"


def hash_of(value: object) -> str:
    return digest_of(value)[:16]


def recorded(path: Path) -> str | None:
    """The identity a JSON record holds (None: no record, or a damaged one)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("identity")
    except (OSError, ValueError, AttributeError):  # AttributeError: JSON that is not an object
        return None


# --- the notebook's cells ------------------------------------------------------------------------------------------


def cell_source(cell_id: str) -> str:
    cells = {c.get("id"): "".join(c["source"]) for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]}
    if cell_id not in cells:
        raise LabError(f"{NOTEBOOK.name} has no cell {cell_id!r}, which holds the recipe", "restore it from git")
    return cells[cell_id]


def run_cell(cell_id: str, namespace: dict, keep: set[str] | None = None) -> dict:
    """Execute a notebook cell in `namespace` without its `print` lines (with `keep`: its imports and those names)."""

    def wanted(node) -> bool:
        printing = isinstance(node, ast.Expr) and getattr(getattr(node.value, "func", None), "id", "") == "print"
        names = {getattr(node, "name", "")} | {getattr(target, "id", "") for target in getattr(node, "targets", ())}
        return not printing and (keep is None or isinstance(node, ast.Import | ast.ImportFrom) or bool(names & keep))

    tree = ast.parse(cell_source(cell_id))
    tree.body = [node for node in tree.body if wanted(node)]
    exec(compile(tree, f"<notebook cell {cell_id}>", "exec"), namespace)  # noqa: S102 - the lab's own notebook
    return namespace


def tokenize(dataset, tokenizer, settings: Settings, prompt=data.build_prompt):
    """Notebook 3.1: the cell's `tokenize_function` mapped over every split (`prompt`: instead of `build_prompt`)."""
    namespace = {"tokenizer": tokenizer, "settings": settings, "build_prompt": prompt}
    function = run_cell("tokenize", namespace, keep={"tokenize_function"})["tokenize_function"]
    return dataset.map(function, batched=True, remove_columns=dataset["train"].column_names)


def data_collator(tokenizer, model):
    """Notebook 3.1: the cell's `DataCollatorForSeq2Seq`."""
    return run_cell("collator", {"tokenizer": tokenizer, "original_model": model}, {"data_collator"})["data_collator"]


def lora_config(r: int = 32):
    """Notebook 4.1: the cell's `LoraConfig` (rank `r`)."""
    return run_cell("lora-config", {"LORA_RANK": r}, keep={"lora_config"})["lora_config"]


# --- training -------------------------------------------------------------------------------------------------------


class Progress(TrainerCallback):
    """A stage's plan; after 3 steps its seconds per step and expected end; in a log, a line every tenth."""

    def __init__(self, label: str, terminal: bool):
        self.label, self.terminal, self.first, self.start = label, terminal, 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        print(f"Training the {self.label}: {state.max_steps} steps (from step {state.global_step}), batch "
              f"{args.per_device_train_batch_size}, learning rate {args.learning_rate}", flush=True)  # fmt: skip
        self.first = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        done, tenth = state.global_step - self.first, max(1, state.max_steps // 10)
        self.start = time.perf_counter() if done == 1 else self.start
        if done == 3 or (done > 3 and not self.terminal and state.global_step % tenth == 0):
            per_step = (time.perf_counter() - self.start) / (done - 1)
            end = time.strftime("%H:%M", time.localtime(time.time() + (state.max_steps - state.global_step) * per_step))
            print(f"  {self.label}: step {state.global_step}/{state.max_steps}, {per_step:.2f} s/step, ends ~{end}",
                  flush=True)  # fmt: skip


def checkpoint_problem(folder: Path, max_steps: int) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from, or None when it is whole."""
    from ..models import ADAPTER_WEIGHTS, MODEL_WEIGHTS, non_finite, read_json, read_weights

    try:
        step = read_json(folder / "trainer_state.json", "checkpoint", "").get("global_step")
        if not isinstance(step, int) or not 0 < step <= max_steps:
            return f"trainer_state.json gives step {step!r} (of {max_steps})"
        if non_finite(read_weights(folder, (*MODEL_WEIGHTS, *ADAPTER_WEIGHTS), "checkpoint", "", load=True)):
            return "non-finite weights"
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            with zipfile.ZipFile(folder / name) as archive:  # torch.save writes a zip: a torn one has no directory
                if archive.testzip() is not None:
                    return f"{name} is damaged"
    except (LabError, OSError, zipfile.BadZipFile) as exc:
        return str(exc).splitlines()[0]
    return None


def resume_point(folder: Path, max_steps: int) -> str | None:
    """The newest whole checkpoint in a trainer folder; newer damaged ones are set aside (a unique hidden name)."""
    while folder.is_dir() and (last := get_last_checkpoint(str(folder))) is not None:
        if (problem := checkpoint_problem(Path(last), max_steps)) is None:
            return last
        aside = Path(tempfile.mkdtemp(dir=folder, prefix=f".{Path(last).name}.damaged.")) / "checkpoint"
        os.replace(last, aside)
        print(f"Warning: {Path(last).name} cannot be resumed from ({problem}); set it aside in {aside.parent.name}")
    return None


def train_stage(stage: Stage, settings: Settings, out: Path, world: dict, identity: str, progress: bool) -> None:
    """Train one stage (resuming from its newest whole checkpoint) and save the best model to its output folder."""
    t0, folder = time.time(), out / f"{stage.folder}.trainer"
    if recorded(folder / "stage.json") != identity:
        shutil.rmtree(folder, ignore_errors=True)  # another identity's checkpoints: nothing to resume
        write_json(folder / "stage.json", {"identity": identity})
    # the notebook's cells run with the instructor's step count; their trainer's model, data and collator are kept in
    # a trainer whose arguments add checkpoints, the validation loss and the best checkpoint loaded at the end
    steps = {f"notebook_{stage.recipe}_steps": getattr(settings, f"instructor_{stage.name}_steps")}
    namespace = {**world, "settings": settings.replace(**steps), "tokenized_datasets": world["tokenized"][stage.prompt],
                 "LORA_RANK": 32}  # fmt: skip
    run_cell("full-training-args", namespace, keep=set())  # its imports: the LoRA cells use them too
    for cell in ("collator", *CELLS[stage.recipe][0]):
        run_cell(cell, namespace)
    cell = namespace[CELLS[stage.recipe][1]]
    args = dataclasses.replace(cell.args, output_dir=str(folder), save_strategy="steps", save_steps=settings.save_steps,
                               save_total_limit=2, eval_strategy="steps", eval_steps=settings.eval_steps,
                               per_device_eval_batch_size=settings.eval_batch_size, load_best_model_at_end=True,
                               metric_for_best_model="eval_loss", greater_is_better=False, disable_tqdm=not progress,
                               logging_steps=max(1, min(settings.eval_steps, cell.args.max_steps // 50)))  # fmt: skip
    trainer = type(cell)(model=cell.model, args=args, train_dataset=cell.train_dataset,
                         eval_dataset=cell.eval_dataset, data_collator=cell.data_collator,
                         callbacks=[Progress(stage.name, progress)])  # fmt: skip
    if resume := resume_point(folder, trainer.args.max_steps):
        print(f"Resuming the {stage.name} stage from {Path(resume).name}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    for entry in trainer.state.log_history:
        if key := next((k for k in ("loss", "grad_norm") if not math.isfinite(entry.get(k, 0.0))), None):
            raise LabError(
                f"training the {stage.name} stage diverged: {key} = {entry[key]} at step {entry.get('step')}; "
                "nothing was saved",
                f"lower `LAB_{stage.recipe.upper()}_LR` (the learning rate that diverged) and run it again",
            )
    with write_folder(out / stage.folder) as tmp:  # offline (the release is in git): fp16 on disk
        trainer.model.to("cpu", torch.float16 if settings.offline else None).save_pretrained(tmp)  # loaded as fp32
        if stage.name == "full":  # a full checkpoint carries its tokenizer; an adapter is only the adapter
            world["tokenizer"].save_pretrained(tmp)
        write_json(tmp / "train_log.json", trainer.state.log_history)
        facts = {"identity": identity, "original": world["original_fingerprint"], "seconds": round(time.time() - t0),
                 "precision": world["precision"], "device": world["device"],
                 "best_checkpoint": Path(trainer.state.best_model_checkpoint or "none").name,
                 "best_eval_loss": trainer.state.best_metric}  # fmt: skip
        write_json(tmp / "train_facts.json", facts)
    shutil.rmtree(folder)
    print(f"Saved the {stage.name} stage to {out / stage.folder} ({time.time() - t0:.0f} s)", flush=True)


def identities(settings: Settings, original_fingerprint: str, dataset, precision: str) -> dict[str, str]:
    """Each trained stage's identity (see the top of this module)."""
    splits = {split: dataset[split]._fingerprint for split in ("train", "validation")}
    read = {stage: (*TRAINING_SETTINGS, f"{stage.recipe}_lr", f"instructor_{stage.name}_steps") for stage in STAGES}
    return {stage.name: hash_of({
        "settings": {k: getattr(settings, k) for k in read[stage]}, "original": original_fingerprint, "data": splits,
        "precision": precision, "prompt": stage.prompt("{dialogue}"),
        "recipe": [cell_source(c) for c in ("tokenize", "collator", *CELLS[stage.recipe][0])],
    }) for stage in STAGES}  # fmt: skip


def run_instructor(settings: Settings, upload: bool = True, progress: bool = True, fast_inference: str = "pytorch"):
    """Train the stages not done, write the results files with `fast_inference`, publish; returns the run folder."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if upload:
        local_s3_for(settings)  # offline: the local S3 server (one named by AWS_ENDPOINT_URL_S3, or this process's)
        check_publish_target(settings)  # before hours of training, not after
    out = run_dir(settings)
    for name in PUBLISHED:  # before any work: an output the user put there or changed stops the command, untouched
        check_output(out / name, "the instructor's output", folder=name not in (RESULTS_FILE, TOPIC_RESULTS_FILE))
    if not looks_like_hub_id(source := settings.model_path_or_id):  # a local folder: check it before loading
        check_model_dir(source, fix="check `LAB_MODEL_ID`, or build the stand-in: `python -m lab_utils build-model`")
    original = AutoModelForSeq2SeqLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    dataset = data.load_dialogsum(settings)
    device = best_device()
    world = {"original_model": original, "tokenizer": tokenizer, "original_fingerprint": fingerprint(original),
             "device": device, "precision": resolve_precision(settings.precision, device), "runs": out}  # fmt: skip
    ids = identities(settings, world["original_fingerprint"], dataset, world["precision"])
    for stage in (s for s in STAGES if recorded(out / s.folder / "train_facts.json") != ids[s.name]):
        if "tokenized" not in world:  # keyed by prompt: summaries, or (the `topic` column as the target) topics
            rows = range(min(settings.validation_rows, len(dataset["validation"])))
            splits = DatasetDict(train=dataset["train"], validation=dataset["validation"].select(rows))
            topics = splits.map(lambda batch: {"summary": batch["topic"]}, batched=True)
            pairs = ((data.build_prompt, splits), (data.build_topic_prompt, topics))
            world["tokenized"] = {prompt: tokenize(d, tokenizer, settings, prompt) for prompt, d in pairs}
        train_stage(stage, settings, out, world, ids[stage.name], progress)
    results_stage(settings, out, world, dataset["test"], ids, fast_inference, progress)
    if upload:
        upload_folder(settings, out, PUBLISHED)
    return out


# --- results --------------------------------------------------------------------------------------------------------


def results_stage(settings: Settings, out: Path, world: dict, test, ids: dict, engine: str, progress: bool) -> None:
    """Both results files, generated with `summarize` on `engine`, each model's column reused when unchanged."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    device = world["device"] if engine == "pytorch" else "cpu"  # CTranslate2 runs on the CPU
    how = {**{k: getattr(settings, k) for k in GENERATION_SETTINGS}, "engine": engine, "device": device,
           "precision": resolve_precision(settings.precision, device), "test": test._fingerprint}  # fmt: skip
    identity = hash_of({**how, "models": ids, "original": world["original_fingerprint"]})
    if recorded(out / "results.json") == identity and all((out / n).is_file() for n in PUBLISHED[3:]):
        return
    fix = "run the command again: it retrains what is damaged"
    full_dir = check_model_dir(out / FULL_CHECKPOINT, finite=True, fix=fix)
    original, tokenizer = world["original_model"], world["tokenizer"]
    for stage in STAGES[1:]:
        check_adapter_dir(out / stage.folder, original, settings.model_id, fix=fix)

    def lora(name):  # an adapter, on a copy of the original model
        return PeftModel.from_pretrained(copy.deepcopy(original), out / name, is_trainable=False)

    plan = (("original_model_summaries", world["original_fingerprint"], lambda: original, None),
            ("instruct_model_summaries", ids["full"],
             lambda: AutoModelForSeq2SeqLM.from_pretrained(full_dir, dtype=torch.float32), None),
            ("peft_model_summaries", ids["lora"], lambda: lora(PEFT_CHECKPOINT), None),
            ("peft_model_topics", ids["topic"], lambda: lora(TOPIC_CHECKPOINT), data.build_topic_prompt))  # fmt: skip
    summaries = {"human_baseline_summaries": list(test["summary"])}
    for column, model_id, make, prompt in plan:
        # a column of summaries is kept in `generation/` when it is whole (no empty summary), and reused by a rerun
        # that would make this very generation
        key = hash_of({**how, "model": model_id, "prompt": prompt is not None})
        path = out / "generation" / f"{column}-{key}.json"
        if recorded(path) != key:
            name = column.removesuffix("_summaries")
            print(f"Generating the test set's {name.replace('_', ' ')}", flush=True)
            model = prepare_for_inference(make().to(device), engine, tokenizer)
            texts = generation.summarize(model, tokenizer, list(test["dialogue"]), settings, progress=progress,
                                         desc=name, prompt=prompt)  # fmt: skip
            if empty := sum(not text.strip() for text in texts):
                raise LabError(
                    f"the {column.replace('_', ' ')} are empty for {empty} of {len(texts)} test rows; the results "
                    "files were not written (and nothing was published)",
                    "check the model (a diverged or untrained model writes nothing) and `LAB_MAX_NEW_TOKENS`",
                )
            write_json(path, {"identity": key, "texts": texts})
        summaries[column] = json.loads(path.read_text(encoding="utf-8"))["texts"]
    topics = {"human_baseline_topics": list(test["topic"]), "peft_model_topics": summaries.pop("peft_model_topics")}
    for name, values in ((RESULTS_FILE, summaries), (TOPIC_RESULTS_FILE, topics)):
        write_results_file(out / name, values, extra={"id": list(test["id"])})  # written whole (files.write_file)
    write_json(out / "results.json", {"identity": identity})
    print(f"Wrote {out / RESULTS_FILE} and {out / TOPIC_RESULTS_FILE} ({len(test)} test rows)")
