"""The instructor's training recipe: the calls the notebook writes in its cells, as functions.

The notebook shows each call where a learner reads it (sections 3.1, 3.2, 4.1, 4.2); the instructor command needs the
same calls with longer runs. `tests/test_recipe.py` executes the notebook's cells and checks that they build exactly
what these functions build (tokenization, collator, `Seq2SeqTrainingArguments`, `LoraConfig`), so the two cannot
drift apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import build_prompt

if TYPE_CHECKING:
    from collections.abc import Callable

    from datasets import DatasetDict
    from peft import LoraConfig
    from transformers import PreTrainedTokenizerBase, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from ..config import Settings

# what a run of the recipe may change without changing what it trains: where it writes, how long it runs, how often it
# logs, and how its processes talk to each other (data-parallel runs under torchrun)
RUN_FIELDS = ("output_dir", "logging_dir", "max_steps", "logging_steps", "run_name", "ddp_backend")
# what only the instructor's long runs set (`instructor_run_options`): checkpoints to resume from, the validation loss
# that picks the best one, mixed precision (recorded in the stage's identity as `precision`), progress on a terminal
INSTRUCTOR_FIELDS = (
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "eval_strategy",
    "do_eval",  # the Trainer derives it from eval_strategy
    "eval_steps",
    "per_device_eval_batch_size",
    "load_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
    "bf16",
    "fp16",
    "disable_tqdm",
)


def tokenize(
    dataset: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    settings: Settings,
    prompt: Callable[[str], str] | None = None,
    target: str = "summary",
) -> DatasetDict:
    """Notebook 3.1: the instruction prompt around each dialogue, the summary as labels, no padding yet.

    (`prompt` and `target` serve the second adapter's task: `build_topic_prompt` and the `topic` column.)
    """
    prompt = prompt or build_prompt

    def tokenize_function(batch):
        prompts = [prompt(dialogue) for dialogue in batch["dialogue"]]
        model_inputs = tokenizer(prompts, max_length=settings.max_source_length, truncation=True)
        labels = tokenizer(text_target=batch[target], max_length=settings.max_target_length, truncation=True)
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    return dataset.map(tokenize_function, batched=True, remove_columns=dataset["train"].column_names)


def data_collator(tokenizer: PreTrainedTokenizerBase, model):
    """Notebook 3.1: pad each batch to its longest example, label padding -100 (the index the loss ignores)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)


def training_arguments(
    settings: Settings, learning_rate: float, output_dir: str | Path, max_steps: int, logging_steps: int = 1, **run
) -> Seq2SeqTrainingArguments:
    """Notebook 3.2 and 4.2: the course's recipe (weight decay 0.01), full fine-tuning and LoRA alike.

    `run` sets only how a run is carried out (`INSTRUCTOR_FIELDS`, from `instructor_run_options`). Under torchrun
    (several processes) the processes talk over NCCL on GPUs, gloo on CPUs.
    """
    unknown = sorted(set(run) - (set(INSTRUCTOR_FIELDS) - {"do_eval"}))
    if unknown:
        raise TypeError(f"training_arguments sets the recipe itself; a run may set only {INSTRUCTOR_FIELDS}: {unknown}")
    import torch
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        weight_decay=0.01,
        warmup_ratio=settings.warmup_ratio,
        per_device_train_batch_size=settings.train_batch_size,
        max_steps=max_steps,
        group_by_length=True,
        gradient_checkpointing=settings.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        dataloader_pin_memory=torch.cuda.is_available(),
        logging_steps=logging_steps,
        report_to="none",
        seed=settings.seed,
        ddp_backend=None if world_size() == 1 else ("nccl" if torch.cuda.is_available() else "gloo"),
        **{"save_strategy": "no", **run},
    )


def instructor_run_options(settings: Settings, precision: str, progress: bool) -> dict:
    """How the instructor's long runs go: a checkpoint every `LAB_SAVE_STEPS` steps (the last two kept, and the best),
    the validation loss every `LAB_EVAL_STEPS`, the best model by it at the end, `precision` mixed precision."""
    return {
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "save_total_limit": 2,
        "eval_strategy": "steps",
        "eval_steps": settings.eval_steps,
        "per_device_eval_batch_size": settings.eval_batch_size,
        "load_best_model_at_end": True,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "disable_tqdm": not progress,
    }


def world_size() -> int:
    """Processes in this run (`torchrun` sets WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def lora_config(r: int = 32) -> LoraConfig:
    """Notebook 4.1: LoRA of rank 32 on the query and value projections, as the course does."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=r,
        lora_alpha=32,
        target_modules=["q", "v"],
        lora_dropout=0.05,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM,
    )


def make_trainer(model, tokenizer, train_dataset, args: Seq2SeqTrainingArguments, eval_dataset=None) -> Seq2SeqTrainer:
    """Notebook 3.2 and 4.2: the `Seq2SeqTrainer` over the tokenized training split (and the validation split)."""
    from transformers import Seq2SeqTrainer

    return Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator(tokenizer, model),
    )


def recipe_of(args: Seq2SeqTrainingArguments) -> dict:
    """The arguments that define what is trained, leaving out where the run writes, how long it runs and logs."""
    return {k: v for k, v in args.to_dict().items() if k not in RUN_FIELDS + INSTRUCTOR_FIELDS}


# how a run is carried out, not what it trains: left out of a stage's identity (test_models shows that gradient
# checkpointing trains the same weights; pinned memory only speeds up copies to a GPU; the default `report_to` is
# whatever logging packages happen to be installed)
HOW_FIELDS = ("dataloader_pin_memory", "gradient_checkpointing", "gradient_checkpointing_kwargs", "report_to")


def recipe_identity(settings: Settings, learning_rate: float, lora: bool, prompt: Callable[[str], str]) -> dict:
    """What a stage's training recipe sets beyond the libraries' defaults, and the prompt it trains on.

    The instructor records this with each stage: a change to `training_arguments`, `lora_config` or a prompt
    retrains the stage instead of reusing a checkpoint trained another way. Only values that differ from
    `Seq2SeqTrainingArguments`' and `LoraConfig`'s own defaults are listed, so a new library version that adds a
    field does not count as a change (and one that changes a default the recipe relies on is not seen either:
    requirements.txt pins the versions). `tokenize` and `data_collator` are not covered: a change there must change
    the prompt or a setting, or the run must be started afresh.
    """

    from peft import LoraConfig
    from transformers import Seq2SeqTrainingArguments

    def plain(d: dict) -> dict:  # JSON-comparable values (sets become sorted lists, enums their values)
        return json.loads(json.dumps(d, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))

    def differences(ours: dict, default: dict, leave_out=()) -> dict:
        ours, default = plain(ours), plain(default)
        return {k: v for k, v in sorted(ours.items()) if k not in leave_out and default.get(k) != v}

    args = training_arguments(settings, learning_rate, "identity", max_steps=1)
    identity = {
        "training_arguments": differences(
            recipe_of(args), Seq2SeqTrainingArguments(output_dir="identity").to_dict(), HOW_FIELDS
        ),
        "prompt": prompt("{dialogue}"),
    }
    if lora:
        identity["lora_config"] = differences(lora_config().to_dict(), LoraConfig().to_dict())
    return identity


def loss_history(trainer) -> list[tuple[int, float]]:
    """(step, training loss) pairs from a trainer's log."""
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


def is_main_process() -> bool:
    """True on the process that saves, evaluates and uploads (rank 0, or the only process under torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0
