"""The instructor's run: train the full model and the LoRA adapter for longer than the notebook does,
summarize the whole test set with the original, instruct and PEFT models, and publish everything to S3.

Each stage writes to a temporary name and renames when complete, so a crash loses at most the stage in
progress, and a re-run skips finished stages.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .config import Settings
from .training import is_main_process

FULL_CHECKPOINT = "flan-dialogue-summary-checkpoint"
PEFT_CHECKPOINT = "peft-dialogue-summary-checkpoint"
RESULTS_FILE = "dialogue-summary-training-results.csv"


def run_dir(settings: Settings) -> Path:
    """Where the instructor's run for this profile is written."""
    return settings.work_path / settings.profile / "instructor-run"


def _train_and_save(model, tokenizer, train, out: Path, lr: float, steps: int, settings: Settings, what: str):
    from .training import make_trainer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"Training the {what}: {steps} steps, learning rate {lr}, batch {settings.train_batch_size}")
    t0 = time.time()
    trainer = make_trainer(
        model,
        tokenizer,
        train,
        tmp / "trainer",
        learning_rate=lr,
        max_steps=steps,
        batch_size=settings.train_batch_size,
        seed=settings.seed,
        warmup_ratio=0.05,
        gradient_checkpointing=settings.gradient_checkpointing,
        logging_steps=max(1, steps // 20),
    )
    trainer.train()
    if not trainer.is_world_process_zero():
        return  # data-parallel: the other processes helped train; rank 0 saves
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    # how it was trained: processes (data-parallel) and the effective batch size
    run_facts = {
        "world_size": trainer.args.world_size,
        "per_device_batch_size": settings.train_batch_size,
        "steps": steps,
        "learning_rate": lr,
    }
    (tmp / "train_facts.json").write_text(json.dumps(run_facts, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"Saved the {what} to {out} ({time.time() - t0:.0f} s)")


def run_instructor(
    settings: Settings, upload: bool = True, progress: bool = True, fast_inference: str = "fp32"
) -> Path:
    """Train, evaluate on the full test set, and (optionally) publish; returns the run folder.

    `fast_inference` ("fp32", "int8" or "bf16") speeds up the test-set generation on CPUs (see the benchmark
    command for its measured speed and ROUGE cost).
    """
    import torch

    from .checkpoints import push_checkpoint
    from .data import load_dialogsum, tokenize_dataset
    from .evaluation import RESULTS_COLUMNS, generation_kwargs, summarize, write_results_file
    from .inference import prepare_for_inference
    from .models import add_lora, fingerprint, load_model, load_original_model, load_peft_for_inference, lora_config

    torch.manual_seed(settings.seed)
    out = run_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    original, tokenizer = load_original_model(settings, progress=progress)
    meta_path = out / "run.json"
    # what the run's results depend on: a change to any of these makes the earlier stages stale
    recipe = (
        "max_source_length",
        "max_target_length",
        "max_new_tokens",
        "no_repeat_ngram_size",
        "train_batch_size",
        "instructor_full_steps",
        "instructor_lora_steps",
        "instructor_full_lr",
        "instructor_lora_lr",
        "seed",
    )
    meta = {
        "profile": settings.profile,
        "model_id": settings.model_id,
        "original_fingerprint": fingerprint(original),
        **{k: getattr(settings, k) for k in recipe},
    }
    if is_main_process() and meta_path.is_file() and json.loads(meta_path.read_text()) != meta:
        # the original model (e.g. a rebuilt stand-in) or the recipe changed: earlier stages no longer match
        print(f"The original model or the training settings changed since the run in {out}; starting it afresh.")
        shutil.rmtree(out)
        out.mkdir(parents=True)
    if is_main_process():
        meta_path.write_text(json.dumps(meta, indent=1))

    dataset = load_dialogsum(settings)
    full_dir, peft_dir, results = out / FULL_CHECKPOINT, out / PEFT_CHECKPOINT, out / RESULTS_FILE
    if not (full_dir / "config.json").is_file() or not (peft_dir / "adapter_config.json").is_file():
        train = tokenize_dataset(dataset, tokenizer, settings)["train"]
        if not (full_dir / "config.json").is_file():
            import copy

            _train_and_save(
                copy.deepcopy(original),
                tokenizer,
                train,
                full_dir,
                settings.instructor_full_lr,
                settings.instructor_full_steps,
                settings,
                "full fine-tuned (instruct) model",
            )
        if not (peft_dir / "adapter_config.json").is_file():
            peft_model = add_lora(original, lora_config(model=original))
            _train_and_save(
                peft_model,
                tokenizer,
                train,
                peft_dir,
                settings.instructor_lora_lr,
                settings.instructor_lora_steps,
                settings,
                "LoRA adapter",
            )
    if not is_main_process():
        return out  # data-parallel: the other processes only help train
    if not results.is_file():
        test = dataset["test"]
        gen = generation_kwargs(settings)
        kw = dict(batch_size=settings.eval_batch_size, max_source_length=settings.max_source_length, progress=progress)
        columns = {RESULTS_COLUMNS[0]: list(test["summary"])}
        models = {
            "original_model_summaries": lambda: original,
            "instruct_model_summaries": lambda: load_model(full_dir),
            "peft_model_summaries": lambda: load_peft_for_inference(settings, peft_dir),
        }
        for column, make in models.items():
            name = column.replace("_summaries", "")
            print(f"Generating {name} summaries of the test set", flush=True)
            # each finished batch is on disk: a crash or kill resumes here instead of starting over
            columns[column] = summarize(
                prepare_for_inference(make(), fast_inference),
                tokenizer,
                list(test["dialogue"]),
                gen,
                desc=name,
                cache=out / "generation" / f"{name}.jsonl",
                **kw,
            )
        write_results_file(results, columns, extra={"id": list(test["id"])})
        shutil.rmtree(out / "generation", ignore_errors=True)
        print(f"Wrote {results} ({len(test)} test rows)")
    if upload:
        for name in (FULL_CHECKPOINT, PEFT_CHECKPOINT):
            push_checkpoint(out / name, settings.s3(name + "/"))
        push_checkpoint(results, settings.s3(RESULTS_FILE))
        print(f"Published the run to {settings.s3_uri}")
    return out


_LOCAL_S3 = None  # the offline profile's local S3 server, one per process


def local_s3_for(settings: Settings):
    """Offline profile: the local S3 server of this process (started on first use), unless one is configured."""
    global _LOCAL_S3
    import os

    if not settings.offline or (_LOCAL_S3 is None and os.environ.get("AWS_ENDPOINT_URL_S3")):
        return None
    if _LOCAL_S3 is None:
        from .s3local import start_local_s3

        _LOCAL_S3 = start_local_s3()
    return _LOCAL_S3


def publish_run(settings: Settings, upload: bool = True, progress: bool = True, fast_inference: str = "fp32") -> Path:
    """The instructor command: run (or reuse) the instructor's run and publish it to the profile's S3 prefix."""
    if upload:
        local_s3_for(settings)
    return run_instructor(settings, upload=upload, progress=progress, fast_inference=fast_inference)


def ensure_published(settings: Settings, progress: bool = True) -> None:
    """Before the notebook pulls: offline, make sure the instructor's run exists and is on the local S3 server.

    In the course profile the instructor published long ago; there is nothing to do.
    """
    if not settings.offline:
        return
    print("Offline profile: the 'offline-trained' checkpoints come from `python -m lab_utils instructor`;")
    print(f"reusing its run in {run_dir(settings)} if complete, else running it now (minutes on 2 CPUs).")
    publish_run(settings, upload=True, progress=progress)
