"""(c) What does LoRA save over full fine-tuning in time per step and peak memory, without and with gradient
checkpointing?

Each side trains in its own process at the lab's batch; the activations autograd keeps for the backward pass are
counted too, since they are what LoRA does not save.
"""

from __future__ import annotations

import statistics

from .b_training_step import time_steps
from .common import Context, Goal, Sizes, build_model, load_tokenizer, our_batches, ratio

TITLE = "LoRA vs full fine-tuning: step time and peak memory"
GOALS = (
    Goal("memory_ratio", "<=", 0.7, "LoRA peak memory / full", "LoRA's peak memory: at most 0.7x full fine-tuning's"),
    Goal(
        "memory_ratio_checkpointing",
        "<=",
        0.7,
        "LoRA peak memory / full, both with gradient checkpointing",
        "LoRA's peak memory: at most 0.7x full fine-tuning's",
    ),
)


def measure(sizes: dict, tokenizer_dir: str, examples: list[dict], lora: bool, checkpointing: bool = False) -> dict:
    """Median seconds per step of full fine-tuning or LoRA (r=32, alpha 32, q and v), in this process, and the
    activations one step keeps for the backward pass; with `checkpointing`, gradient checkpointing is on (each
    block's activations are recomputed in the backward pass instead of kept), as `LAB_GRADIENT_CHECKPOINTING=1`
    does in the lab."""
    from ...models import count_parameters
    from ..instructor import lora_config

    sz = Sizes(**sizes)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = build_model(sz.model)
    if lora:
        from peft import get_peft_model

        # in place: the lab wraps a deep copy (to keep the original), which would add one more copy of the weights
        # to the peak that has nothing to do with training
        model = get_peft_model(model, lora_config())
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # what the Trainer does too: no decoder cache while training
    trainable, total = count_parameters(model)
    batches = our_batches(tokenizer, examples, sz.lora_batch_size, sz)
    saved: dict = {}
    times = time_steps(model, batches, lr=1e-3 if lora else 1e-5, saved=saved)
    return {
        "step_s": statistics.median(times[1:]),
        "trainable": trainable,
        "parameters": total,
        "activations_mb": saved["bytes"] / 1024**2,
    }


def compare(ctx: Context, checkpointing: bool) -> dict:
    """Full fine-tuning and LoRA, each in its own process, with or without gradient checkpointing."""
    kw = dict(sizes=ctx.sz, tokenizer_dir=ctx.tokenizer_dir, examples=ctx.lora_examples, checkpointing=checkpointing)
    full = ctx.isolated(measure, lora=False, **kw)
    lora = ctx.isolated(measure, lora=True, **kw)
    c = {
        "batch_size": ctx.sizes.lora_batch_size,
        "full_step_s": full["step_s"],
        "lora_step_s": lora["step_s"],
        "step_ratio": ratio(lora["step_s"], full["step_s"]),
        "full_peak_rss_mb": full["peak_rss_mb"],
        "lora_peak_rss_mb": lora["peak_rss_mb"],
        "memory_ratio": ratio(lora["peak_rss_mb"], full["peak_rss_mb"]),
        "full_activations_mb": full["activations_mb"],
        "lora_activations_mb": lora["activations_mb"],
        "lora_trainable": lora["trainable"],
        "parameters": full["parameters"],
    }
    print(
        f"    {'with' if checkpointing else 'without'} gradient checkpointing: "
        f"full {c['full_step_s']:.2f} s/step, {c['full_peak_rss_mb']:.0f} MB peak "
        f"({c['full_activations_mb']:.0f} MB of activations kept for backward); "
        f"LoRA {c['lora_step_s']:.2f} s/step, {c['lora_peak_rss_mb']:.0f} MB peak "
        f"({c['lora_activations_mb']:.0f} MB): time {c['step_ratio']:.2f}x, memory {c['memory_ratio']:.2f}x"
    )
    return c


def detail(ctx: Context) -> str:
    steps = ctx.sizes.lora_steps
    return f"batch {ctx.sizes.lora_batch_size}, 1 warm-up + {steps} measured step{'s' if steps > 1 else ''}"


def run(ctx: Context) -> dict:
    r = compare(ctx, checkpointing=False)
    r["checkpointing"] = compare(ctx, checkpointing=True)
    r["memory_ratio_checkpointing"] = r["checkpointing"]["memory_ratio"]
    return r


def summary(r: dict) -> list[tuple[str, float | None, str]]:
    ck = r.get("checkpointing") or {}
    return [
        ("LoRA / full fine-tuning: time per step", r.get("step_ratio"), "x"),
        ("LoRA / full fine-tuning: peak resident memory", r.get("memory_ratio"), "x"),
        ("  the same, both with gradient checkpointing: time", ck.get("step_ratio"), "x"),
        ("  the same, both with gradient checkpointing: memory", ck.get("memory_ratio"), "x"),
    ]
