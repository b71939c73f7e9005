"""Fine-tuning with the Hugging Face `Trainer`: full fine-tuning and LoRA share one recipe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .data import make_collator

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase, Seq2SeqTrainer, Trainer


def world_size() -> int:
    """Processes in this run (`torchrun`/`accelerate launch` set WORLD_SIZE; 1 otherwise)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the process that saves, evaluates and uploads (rank 0, or the only process)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def make_trainer(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: Dataset,
    output_dir: str | Path,
    learning_rate: float,
    max_steps: int,
    batch_size: int = 8,
    seed: int = 42,
    eval_dataset: Dataset | None = None,
    logging_steps: int = 1,
    warmup_ratio: float = 0.0,
    lr_scheduler: str = "linear",
    save_steps: int = 0,
    gradient_checkpointing: bool = False,
) -> Seq2SeqTrainer:
    """A `Seq2SeqTrainer` with the course's weight decay, dynamic padding and -100 label padding.

    `gradient_checkpointing` keeps only each block's input for the backward pass and recomputes the rest: the
    activations (at batch 8 about as large as full fine-tuning's weights, gradients and AdamW state together) all but
    vanish, for a somewhat longer step (`python -m lab_utils.bench`, part c, measures both). Dropout masks are
    replayed, so the losses are the same.
    """
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        weight_decay=0.01,  # the course's value
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        warmup_ratio=warmup_ratio,
        lr_scheduler_type=lr_scheduler,
        logging_steps=logging_steps,
        # group_by_length: batches of similar length pad less (the sampler stays seeded)
        group_by_length=True,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=1,
        report_to=[],
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        # data-parallel under torchrun/accelerate: NCCL on GPUs, gloo on CPUs
        ddp_backend=None if world_size() == 1 else ("nccl" if torch.cuda.is_available() else "gloo"),
        disable_tqdm=False,
        gradient_checkpointing=gradient_checkpointing,
        # the non-reentrant variant needs no trainable input, so it works for LoRA's frozen embeddings as well
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
    )
    return Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=make_collator(tokenizer, model),
        processing_class=tokenizer,
    )


def loss_history(trainer: Trainer) -> list[tuple[int, float]]:
    """(step, training loss) pairs from the trainer's log."""
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
