"""(b) How much faster is a training step with the lab's padding than with the course's?

The course padded prompts and labels to 512 tokens (labels padded with 0, counted in the loss); the lab pads each
batch to its longest example and masks label padding with -100. Where the CPU has bf16 instructions, the lab's step
is also timed under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time

from .common import Context, Goal, Sizes, build_model, load_tokenizer, our_batches, ratio

TITLE = "training step: the course's padding vs dynamic padding"
GOALS = (Goal("speedup", ">=", 2.0, "training-step speed-up", "a training step: 2x the course's padding"),)


def course_batches(tokenizer, examples: list[dict], batch_size: int, pad_length: int) -> list[dict]:
    """The course's preprocessing: prompts and labels padded to `pad_length`, label padding 0 (counted in the loss).

    The course kept only `input_ids` and `labels`, so the model attended to the padding too (no attention mask).
    """
    import torch

    from ...data import build_prompt

    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        inputs = tokenizer(
            [build_prompt(e["dialogue"]) for e in chunk],
            padding="max_length",
            truncation=True,
            max_length=pad_length,
            return_tensors="pt",
        )
        labels = tokenizer(
            [e["summary"] for e in chunk], padding="max_length", truncation=True, max_length=pad_length
        ).input_ids
        batches.append({"input_ids": inputs.input_ids, "labels": torch.tensor(labels)})
    return batches


def time_steps(model, batches: list[dict], lr: float, saved: dict | None = None, bf16: bool = False) -> list[float]:
    """Seconds per training step (forward, backward, clip, AdamW, zero_grad) for each batch; the first warms up.

    With `saved` (a dict), the first step also records in saved["bytes"] the tensors autograd keeps for the
    backward pass, weights left out and each storage counted once: the activation memory of one step. With `bf16`,
    the forward pass runs under CPU bf16 autocast (weights and optimizer stay fp32).
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.train()
    times = []
    for i, batch in enumerate(batches):
        hooks = contextlib.nullcontext()
        if saved is not None and i == 0:
            hooks = count_saved_tensors(saved, skip={p.untyped_storage().data_ptr() for p in model.parameters()})
        t0 = time.perf_counter()
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer's max_grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def count_saved_tensors(saved: dict, skip: set[int]):
    """A context in which every tensor autograd saves for backward adds its storage's bytes to saved["bytes"], once
    per storage; storages whose address is in `skip` (the weights) are left out."""
    import torch

    seen = set(skip)
    saved["bytes"] = 0

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved["bytes"] += storage.nbytes()
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


def measure(sizes: dict, tokenizer_dir: str, examples: list[dict]) -> dict:
    """Median seconds per full fine-tuning step with the course's padding and with ours (and ours under bf16)."""
    from ...devices import cpu_supports_bf16

    sz = Sizes(**sizes)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = build_model(sz.model)
    batches = course_batches(tokenizer, examples, sz.batch_size, sz.pad_length)
    result: dict = {"batch_size": sz.batch_size, "measured_steps": len(batches) - 1}
    result["course_step_s"] = statistics.median(time_steps(model, batches, lr=1e-5)[1:])
    result["course_tokens_per_step"] = 2 * sz.pad_length * sz.batch_size
    del batches
    gc.collect()
    batches = our_batches(tokenizer, examples, sz.batch_size, sz)
    result["ours_step_s"] = statistics.median(time_steps(model, batches, lr=1e-5)[1:])
    result["ours_tokens_per_step"] = statistics.mean(b["input_ids"].numel() + b["labels"].numel() for b in batches[1:])
    result["bf16_supported"] = cpu_supports_bf16()
    if result["bf16_supported"]:  # emulated bf16 (no bf16 instructions) is slower than fp32: not worth measuring
        result["ours_bf16_step_s"] = statistics.median(time_steps(model, batches, lr=1e-5, bf16=True)[1:])
    return result


def detail(ctx: Context) -> str:
    return f"batch {ctx.sizes.batch_size}, 1 warm-up + {ctx.sizes.steps} measured steps, AdamW"


def run(ctx: Context) -> dict:
    r = ctx.isolated(measure, sizes=ctx.sz, tokenizer_dir=ctx.tokenizer_dir, examples=ctx.train_examples)
    r["speedup"] = ratio(r["course_step_s"], r["ours_step_s"])
    r["bf16_speedup"] = ratio(r["ours_step_s"], r.get("ours_bf16_step_s"))
    print(
        f"    course {r['course_step_s']:.2f} s/step ({r['course_tokens_per_step']:.0f} tokens), "
        f"ours {r['ours_step_s']:.2f} s/step ({r['ours_tokens_per_step']:.0f} tokens): {r['speedup']:.1f}x"
    )
    if r["bf16_speedup"]:
        print(f"    ours with bf16 autocast {r['ours_bf16_step_s']:.2f} s/step: {r['bf16_speedup']:.2f}x faster")
    else:
        print("    bf16 training skipped (this CPU has no bf16 instructions)")
    return r


def summary(r: dict) -> list[tuple[str, float | None, str]]:
    return [
        ("training-step speed-up (course padding / ours)", r.get("speedup"), "x"),
        ("training-step speed-up, ours with bf16 autocast / fp32", r.get("bf16_speedup"), "x"),
    ]
