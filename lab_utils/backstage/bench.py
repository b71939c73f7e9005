"""`python -m lab_utils bench`: what the lab's speed-ups are worth on this machine, measured in one run.

Needs no download: the flan-t5-base architecture is built with random weights from its public config values
(timings and memory do not depend on the weights), the prompts are DialogSum's, and the tokenizer is the offline
stand-in's (its ids are valid for flan-t5-base's 32,128-token vocabulary). Every measurement runs in its own
process, so one part's memory never shows up in another's numbers, and each process flushes denormal floats to
zero (random weights produce them in the backward pass, where x86 CPUs compute them in slow microcode). Parts:

  a  evaluation: the course's loop (each test row generated alone) vs `summarize` (unique dialogues, batched)
  b  training step: the course's padding (512 / 512, labels padded with 0) vs dynamic padding with -100; and ours
     under bf16 autocast, where the CPU has bf16 instructions
  c  LoRA (r=32, q,v) vs full fine-tuning: time per step, peak resident memory and the activations kept for the
     backward pass, without and with gradient checkpointing (on both sides)
  d  inference memory: base model + LoRA adapter (`PeftModel.from_pretrained`) vs the full model alone
  e  achieved training FLOP/s as a fraction of this machine's peak dense fp32 matmul FLOP/s (the best of several
     sizes and repeats, measured before and after training in the same process); training FLOPs counted as each
     token passing only the weights it goes through, so the fraction cannot exceed 100%
  f  int8 / bf16 generation vs fp32 (`prepare_for_inference`), and what they cost in ROUGE on the stand-in
  g  serving: generation time of the base model with an unmerged LoRA adapter vs the merged model
     (`merge_and_unload`) vs the original model; resident memory of one base + N adapters vs N merged models
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .. import isolated
from ..config import RELEASE_DIR, load_settings
from ..errors import LabError
from ..outputs import check_output_file
from ..serving import serving_memory

PARTS = ("a", "b", "c", "d", "e", "f", "g")
PART_TITLES = {
    "a": "evaluation: the course's loop vs summarize",
    "b": "training step: the course's padding vs dynamic padding",
    "c": "LoRA vs full fine-tuning: step time and peak memory",
    "d": "inference memory: base + LoRA adapter vs the full model",
    "e": "achieved training FLOP/s vs dense matmul FLOP/s",
    "f": "int8 / bf16 generation vs fp32",
    "g": "serving: base + unmerged adapter vs merged vs original; one base + N adapters vs N merged models",
}
# the targets: (part, key, comparison, threshold, what)
TARGETS = (
    ("a", "speedup", ">=", 8.0, "evaluation speed-up"),
    ("b", "speedup", ">=", 2.0, "training-step speed-up"),
    ("c", "memory_ratio", "<=", 0.7, "LoRA peak memory / full"),
    ("c", "memory_ratio_checkpointing", "<=", 0.7, "LoRA peak memory / full, both with gradient checkpointing"),
)
POOL_BATCHES = 12  # (b, c, e) typical examples come from the middle of a random pool this many times larger
# an encoder-decoder sends input tokens through the encoder only and label tokens through the decoder only
FLOPS_FORMULA_SPLIT = "6 x (encoder weights x input tokens + (decoder weights + lm_head) x label tokens)"


@dataclasses.dataclass
class Sizes:
    """How much work each part does; the defaults took 19 minutes on a 2-core AMD EPYC (docs/benchmark.md)."""

    model: dict  # T5Config values
    rows: int = 48  # (a) test rows, i.e. 16 dialogues of 3 rows each
    # (a) generated tokens per summary, fixed (min = max) so both sides do the same work: 100 covers 99.9% of the
    # test references (stand-in tokenizer); the course's limit of 200 makes (a) take ~9 minutes on 2 cores
    eval_new_tokens: int = 100
    max_new_tokens: int = 16  # (d, f) generated tokens per summary, fixed (min = max)
    eval_batch_size: int = 16  # (a, d, f) summarize's batch: the lab's (LAB_EVAL_BATCH_SIZE)
    infer_dialogues: int = 8  # (d, f) dialogues generated per model / inference mode
    batch_size: int = 2  # (b, e) training batch, the same for both preprocessings (pad-512 x 8 needs > 24 GB)
    lora_batch_size: int = 8  # (c) the lab's training batch
    steps: int = 2  # (b, e) measured training steps, after one warm-up step
    lora_steps: int = 1  # (c) measured steps after one warm-up step: the second step holds AdamW's state, so the peak
    pad_length: int = 512  # (b) the course's padding="max_length" (flan-t5's model_max_length)
    max_source_length: int = 512  # the course's input limit
    max_target_length: int = 128  # the course profile's label limit
    matmul_sizes: tuple = (1024, 2048, 3072)  # (e) n of the n x n fp32 matmuls whose best FLOP/s is the peak
    matmul_repeats: int = 5  # (e) timed products per size, before and after training
    serving_adapters: int = 3  # (g) adapters on one base vs as many merged models
    rouge_dialogues: int = 16  # (f) stand-in test dialogues scored per inference mode
    threads: int = 0  # torch threads in each measuring process; 0 = this machine's cores


def machine_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    """CPU model, cores, memory, bf16 support and torch version, for the report's first line."""
    import torch

    from .inference import cpu_supports_bf16

    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        mem_gb = float("nan")
    return {
        "cpu": cpu_model(),
        "cores": machine_cores(),
        "memory_gb": round(mem_gb, 1),
        "bf16_instructions": cpu_supports_bf16(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def run_isolated(measure, threads: int, **kwargs) -> dict:
    """Run the measurement `measure` (a function of this module) in a fresh process, denormals flushed."""

    return isolated.run_isolated(measure, threads=threads, flush_denormals=True, **kwargs)


# --- Building blocks (run inside the measuring processes) ---------------------------------------------------------


def _build_model(model_config: dict, seed: int = 42):
    """The flan-t5-base architecture (or the smoke test's tiny one) with random weights."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**model_config))
    model.eval()
    return model


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _bench_settings(sz: Sizes):
    """The course profile's settings with the benchmark's lengths and batch (what `summarize` and the recipe read)."""

    return load_settings(
        "course",
        environ={},
        max_source_length=sz.max_source_length,
        max_target_length=sz.max_target_length,
        eval_batch_size=sz.eval_batch_size,
    )


def _fixed_length(max_new_tokens: int) -> dict:
    """Greedy decoding of exactly `max_new_tokens` tokens: every summary costs the same work."""
    return {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, "num_beams": 1, "do_sample": False}


def _course_generate(model, tokenizer, dialogues: list[str], gen_kwargs: dict, max_length: int) -> list[str]:
    """The course's evaluation loop: one test row at a time, no batching, no de-duplication.

    Unlike the course, prompts are truncated at `max_length` as `summarize` does, so both read the same tokens.
    """
    from ..data import build_prompt

    out = []
    for dialogue in dialogues:
        input_ids = tokenizer(
            build_prompt(dialogue), return_tensors="pt", truncation=True, max_length=max_length
        ).input_ids
        ids = model.generate(input_ids=input_ids, **gen_kwargs)
        out.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return out


def _course_batches(tokenizer, examples: list[dict], batch_size: int, pad_length: int) -> list[dict]:
    """The course's preprocessing: prompts and labels padded to `pad_length`, label padding 0 (counted in the loss).

    The course kept only `input_ids` and `labels`, so the model attended to the padding too (no attention mask).
    """
    import torch

    from ..data import build_prompt

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


def _our_batches(tokenizer, examples: list[dict], batch_size: int, sizes: Sizes, seed: int = 42) -> list[dict]:
    """The lab's preprocessing: the recipe's tokenization and collator (pad to the longest, labels -100), with
    examples grouped by length as `group_by_length=True` does (batch order shuffled)."""

    from datasets import Dataset, DatasetDict

    from .recipe import data_collator, tokenize

    rows = {k: [e[k] for e in examples] for k in ("dialogue", "summary")}
    settings = _bench_settings(sizes)
    enc = tokenize(DatasetDict({"train": Dataset.from_dict(rows)}), tokenizer, settings)["train"]
    features = [dict(f) for f in enc]
    features.sort(key=lambda f: -len(f["input_ids"]))
    collate = data_collator(tokenizer, None)
    batches = [collate(features[i : i + batch_size]) for i in range(0, len(features), batch_size)]
    random.Random(seed).shuffle(batches)
    return [dict(b) for b in batches]


def typical_examples(tokenizer, pool: list[dict], n: int) -> list[dict]:
    """The `n` examples in the middle of `pool` sorted by prompt length: the batches of a typical step.

    `group_by_length` batches examples of similar length, so a typical step sees the median length, not the
    longest: measuring the middle of a random pool gives the usual step time (and peak memory) of training.
    """
    from ..data import build_prompt

    lengths = [len(ids) for ids in tokenizer([build_prompt(e["dialogue"]) for e in pool]).input_ids]
    order = sorted(range(len(pool)), key=lambda i: lengths[i])
    start = max(0, (len(pool) - n) // 2)
    return [pool[i] for i in order[start : start + n]]


def _batch_tokens(batch: dict, pad_id: int) -> tuple[int, int]:
    """Tokens the step actually learns from: (non-pad input tokens, label tokens that are neither -100 nor padding)."""
    mask = batch["attention_mask"] if "attention_mask" in batch else batch["input_ids"] != pad_id
    labels = batch["labels"]
    return int(mask.sum()), int(((labels != -100) & (labels != pad_id)).sum())


def _weights_per_token(model) -> tuple[int, int]:
    """Matmul weights an input token passes (encoder) and a label token passes (decoder + lm_head); embedding
    lookups cost no FLOPs."""
    shared = model.shared.weight.numel()
    encoder = sum(p.numel() for p in model.encoder.parameters()) - shared
    decoder = sum(p.numel() for p in model.decoder.parameters()) - shared + model.lm_head.weight.numel()
    return encoder, decoder


def _time_steps(model, batches: list[dict], lr: float, saved: dict | None = None, bf16: bool = False) -> list[float]:
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
            hooks = _count_saved_tensors(saved, skip={p.untyped_storage().data_ptr() for p in model.parameters()})
        t0 = time.perf_counter()
        with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer's max_grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def _count_saved_tensors(saved: dict, skip: set[int]):
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


def measure_matmul_peak(sizes: tuple = (1024, 2048, 3072), repeats: int = 5) -> float:
    """This process's peak dense fp32 matmul FLOP/s: the fastest single n x n @ n x n product (2 n^3 FLOPs) of
    `repeats` per size. One timing of a second swings 100-164 GFLOP/s on a 2-core machine; the best of many does not
    understate the peak, so a training fraction measured against it stays below 100%."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


# --- The measurements ----------------------------------------------------------------------------------------------


def measure_evaluation(sizes: dict, tokenizer_dir: str, test_dialogues: list[str]) -> dict:
    """(a) Seconds for the course's row-by-row loop and for `summarize`, over the same test rows."""
    from ..generation import summarize

    sz = Sizes(**sizes)
    model, tokenizer = _build_model(sz.model), _load_tokenizer(tokenizer_dir)
    gen = _fixed_length(sz.eval_new_tokens)
    limit, settings = sz.max_source_length, _bench_settings(sz)
    # warm-up of both paths (one-off allocations), on the first dialogue
    _course_generate(model, tokenizer, test_dialogues[:1], _fixed_length(2), limit)
    summarize(model, tokenizer, test_dialogues[:1], settings, _fixed_length(2), progress=False)
    t0 = time.perf_counter()
    _course_generate(model, tokenizer, test_dialogues, gen, limit)
    course = time.perf_counter() - t0
    t0 = time.perf_counter()
    summarize(model, tokenizer, test_dialogues, settings, gen, progress=False)
    ours = time.perf_counter() - t0
    return {
        "rows": len(test_dialogues),
        "dialogues": len(set(test_dialogues)),
        "course_s": course,
        "ours_s": ours,
    }


def measure_training_step(
    sizes: dict, tokenizer_dir: str, examples: list[dict], course: bool = True, flops: bool = True
) -> dict:
    """(b, e) Median seconds per full fine-tuning step with the course's padding and with ours; matmul FLOP/s."""

    sz = Sizes(**sizes)
    tokenizer = _load_tokenizer(tokenizer_dir)
    result: dict = {"batch_size": sz.batch_size, "measured_steps": len(examples) // sz.batch_size - 1}
    if flops:  # first, while nothing else is allocated (and again after training, below)
        result["matmul_flops_before"] = measure_matmul_peak(sz.matmul_sizes, sz.matmul_repeats)
    model = _build_model(sz.model)
    n_params = sum(p.numel() for p in model.parameters())
    if course:
        batches = _course_batches(tokenizer, examples, sz.batch_size, sz.pad_length)
        times = _time_steps(model, batches, lr=1e-5)[1:]
        result["course_step_s"] = statistics.median(times)
        result["course_tokens_per_step"] = 2 * sz.pad_length * sz.batch_size
        del batches
        gc.collect()
    batches = _our_batches(tokenizer, examples, sz.batch_size, sz)
    times = _time_steps(model, batches, lr=1e-5)
    measured = batches[1:]
    result["ours_step_s"] = statistics.median(times[1:])
    result["ours_tokens_per_step"] = statistics.mean(b["input_ids"].numel() + b["labels"].numel() for b in measured)
    from .inference import cpu_supports_bf16

    result["bf16_supported"] = cpu_supports_bf16()
    if result["bf16_supported"]:  # emulated bf16 (no bf16 instructions) is slower than fp32: not worth measuring
        result["ours_bf16_step_s"] = statistics.median(_time_steps(model, batches, lr=1e-5, bf16=True)[1:])
    if flops:
        counts = [_batch_tokens(b, tokenizer.pad_token_id) for b in measured]
        inputs, labels = sum(c[0] for c in counts), sum(c[1] for c in counts)
        encoder, decoder = _weights_per_token(model)
        result["parameters"] = n_params
        result["train_flops_per_s"] = 6 * (encoder * inputs + decoder * labels) / sum(times[1:])
        result["matmul_flops_after"] = measure_matmul_peak(sz.matmul_sizes, sz.matmul_repeats)
        result["matmul_flops"] = max(result["matmul_flops_before"], result["matmul_flops_after"])
    return result


def measure_lora_vs_full(
    sizes: dict, tokenizer_dir: str, examples: list[dict], lora: bool, checkpointing: bool = False
) -> dict:
    """(c) Median seconds per step of full fine-tuning or LoRA (r=32, alpha 32, q and v), in this process, and the
    activations one step keeps for the backward pass; with `checkpointing`, gradient checkpointing is on (each
    block's activations are recomputed in the backward pass instead of kept), as `LAB_GRADIENT_CHECKPOINTING=1`
    does in the lab."""
    from ..models import count_parameters
    from .recipe import lora_config

    sz = Sizes(**sizes)
    tokenizer = _load_tokenizer(tokenizer_dir)
    model = _build_model(sz.model)
    if lora:
        from peft import get_peft_model

        # in place: the lab wraps a deep copy (to keep the original), which would add one more copy of the weights
        # to the peak that has nothing to do with training
        model = get_peft_model(model, lora_config())
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # what the Trainer does too: no decoder cache while training
    trainable, total = count_parameters(model)
    batches = _our_batches(tokenizer, examples, sz.lora_batch_size, sz)
    saved: dict = {}
    times = _time_steps(model, batches, lr=1e-3 if lora else 1e-5, saved=saved)
    return {
        "step_s": statistics.median(times[1:]),
        "trainable": trainable,
        "parameters": total,
        "activations_mb": saved["bytes"] / 1024**2,
    }


def save_models_for_inference(sizes: dict, out_dir: str) -> dict:
    """(d) Save a random flan-t5-base and a LoRA adapter for it (as the instructor's run would)."""
    from peft import get_peft_model

    from .recipe import lora_config

    sz = Sizes(**sizes)
    model = _build_model(sz.model)
    model.save_pretrained(Path(out_dir) / "full")
    peft_model = get_peft_model(model, lora_config())
    peft_model.save_pretrained(Path(out_dir) / "adapter")
    return {}


def measure_inference_memory(sizes: dict, tokenizer_dir: str, out_dir: str, dialogues: list[str], peft: bool) -> dict:
    """(d) Load the full model, or base + adapter with `PeftModel.from_pretrained(is_trainable=False)`, and
    summarize one batch; the parent reads this process's peak resident memory."""
    from transformers import AutoModelForSeq2SeqLM

    from ..generation import summarize

    sz = Sizes(**sizes)
    tokenizer = _load_tokenizer(tokenizer_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(Path(out_dir) / "full")
    if peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(out_dir) / "adapter"), is_trainable=False)
    summarize(model, tokenizer, dialogues, _bench_settings(sz), _fixed_length(sz.max_new_tokens), progress=False)
    return {}


def measure_inference_modes(sizes: dict, tokenizer_dir: str, dialogues: list[str]) -> dict:
    """(f) Seconds for `summarize` with fp32, int8 and (where the CPU has it) bf16, same prompts, fixed length."""
    from ..generation import summarize
    from .inference import cpu_supports_bf16, prepare_for_inference

    sz = Sizes(**sizes)
    model, tokenizer = _build_model(sz.model), _load_tokenizer(tokenizer_dir)
    gen, settings = _fixed_length(sz.max_new_tokens), _bench_settings(sz)
    kw = dict(progress=False)
    modes = ["fp32", "int8"] + (["bf16"] if cpu_supports_bf16() else [])
    result: dict = {"dialogues": len(dialogues), "bf16_supported": "bf16" in modes}
    for mode in modes:
        prepared = prepare_for_inference(model, mode)
        summarize(prepared, tokenizer, dialogues[:1], settings, gen, **kw)  # warm-up
        t0 = time.perf_counter()
        summarize(prepared, tokenizer, dialogues, settings, gen, **kw)
        result[f"{mode}_s"] = time.perf_counter() - t0
        del prepared
    return result


def measure_standin_rouge(
    model_dir: str, tokenizer_dir: str, dialogues: list[str], references: list[str], max_new_tokens: int | None = None
) -> dict:
    """(f) ROUGE of the stand-in's trained instruct model with each inference mode, over the same test rows.

    Generation settings are the offline profile's (the lab's), `max_new_tokens` aside when given.
    """
    from transformers import AutoModelForSeq2SeqLM

    from ..generation import generation_kwargs, summarize
    from ..scoring import compute_rouge
    from .inference import cpu_supports_bf16, prepare_for_inference

    settings = load_settings("offline", environ={})
    model = AutoModelForSeq2SeqLM.from_pretrained(Path(model_dir), dtype="float32")
    tokenizer = _load_tokenizer(tokenizer_dir)
    gen = generation_kwargs(settings)
    if max_new_tokens:
        gen["max_new_tokens"] = max_new_tokens
    modes = ["fp32", "int8"] + (["bf16"] if cpu_supports_bf16() else [])
    result: dict = {"rows": len(dialogues), "dialogues": len(set(dialogues)), "max_new_tokens": gen["max_new_tokens"]}
    for mode in modes:
        prepared = prepare_for_inference(model, mode)
        t0 = time.perf_counter()
        preds = summarize(prepared, tokenizer, dialogues, settings, gen, progress=False)
        result[f"{mode}_s"] = time.perf_counter() - t0
        result[f"{mode}_rouge"] = compute_rouge(preds, references)
    return result


def _adapter_with_weights(model, seed: int):
    """A LoRA adapter (the lab's: r=32 on q and v) on a copy of `model`, with random B matrices, as after training."""

    import torch
    from peft import get_peft_model

    from .recipe import lora_config

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), lora_config())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return peft_model.eval()


def measure_serving_speed(sizes: dict, tokenizer_dir: str, dialogues: list[str]) -> dict:
    """(g) Seconds for `summarize` with the original model, the base + an unmerged adapter, and the merged model."""

    from ..generation import summarize

    sz = Sizes(**sizes)
    model, tokenizer = _build_model(sz.model), _load_tokenizer(tokenizer_dir)
    unmerged = _adapter_with_weights(model, seed=0)
    merged = copy.deepcopy(unmerged).merge_and_unload()
    gen, settings = _fixed_length(sz.max_new_tokens), _bench_settings(sz)
    result: dict = {"dialogues": len(dialogues)}
    for name, m in (("original", model), ("unmerged", unmerged), ("merged", merged)):
        summarize(m, tokenizer, dialogues[:1], settings, gen, progress=False)  # warm-up
        t0 = time.perf_counter()
        summarize(m, tokenizer, dialogues, settings, gen, progress=False)
        result[f"{name}_s"] = time.perf_counter() - t0
    return result


def save_models_for_serving(sizes: dict, out_dir: str, n: int) -> dict:
    """(g) Save a random base model, `n` adapters for it and the `n` merged models they make."""
    sz = Sizes(**sizes)
    model = _build_model(sz.model)
    out = Path(out_dir) / "serving"
    model.save_pretrained(out / "base")
    paths: dict = {"base": str(out / "base"), "adapters": [], "merged": []}
    for i in range(n):
        adapter = _adapter_with_weights(model, seed=i)
        adapter.save_pretrained(out / f"adapter-{i}")
        adapter.merge_and_unload().save_pretrained(out / f"merged-{i}")
        paths["adapters"].append(str(out / f"adapter-{i}"))
        paths["merged"].append(str(out / f"merged-{i}"))
    return paths


# --- The run -------------------------------------------------------------------------------------------------------


def default_sizes(smoke: bool) -> Sizes:
    """The flan-t5-base architecture with the default sizes, or a tiny model and a few examples (`--smoke`)."""
    from .standin import FLAN_T5_BASE_CONFIG, TINY_CONFIG

    if not smoke:
        return Sizes(model=dict(FLAN_T5_BASE_CONFIG))
    tiny = dict(TINY_CONFIG, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)
    return Sizes(
        model=tiny,
        rows=6,
        max_new_tokens=4,
        eval_new_tokens=4,
        eval_batch_size=4,
        batch_size=2,
        lora_batch_size=2,
        steps=2,
        pad_length=64,
        max_source_length=64,  # the smoke tokenizer is coarse: keep both preprocessings within the course padding
        max_target_length=32,
        matmul_sizes=(128, 256),
        matmul_repeats=2,
        serving_adapters=2,
        rouge_dialogues=2,
    )


def prepare_tokenizer(settings, train_texts: list[str], work: Path, smoke: bool) -> tuple[str, str]:
    """The stand-in's tokenizer folder when it is built, else a tokenizer trained here on the training texts."""
    standin = settings.path(settings.model_id)
    if (standin / "tokenizer_config.json").is_file():
        return str(standin), f"the offline stand-in's ({standin})"
    from .standin import TINY_VOCAB, train_tokenizer

    texts = train_texts[:600] if smoke else train_texts
    t0 = time.perf_counter()
    tok = train_tokenizer(texts, work / "tokenizer", vocab_size=1000 if smoke else TINY_VOCAB)
    return str(work / "tokenizer"), (
        f"SentencePiece, {len(tok):,} tokens, trained here on {len(texts):,} DialogSum texts "
        f"({time.perf_counter() - t0:.0f} s)"
    )


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if not num or not den else num / den


def run(args) -> dict:
    """Measure the requested parts and return every number (seconds, MB, FLOP/s) and the ratios between them."""
    from ..data import load_dialogsum_csv

    sizes = default_sizes(args.smoke)
    flags = ("rows", "batch_size", "lora_batch_size", "eval_batch_size", "steps", "lora_steps")
    for flag in (*flags, "eval_new_tokens", "max_new_tokens", "threads"):
        value = getattr(args, flag)
        if value is not None:
            if value < (0 if flag == "threads" else 1):
                raise LabError(f"--{flag.replace('_', '-')}={value} must be positive", "pass a positive integer")
            setattr(sizes, flag, value)
    threads = sizes.threads or machine_cores()
    sizes.threads = threads
    parts = _parse_only(args.only)
    settings = load_settings("offline")
    data_dir = Path(args.data_dir) if args.data_dir else settings.path(settings.data_dir)
    data = load_dialogsum_csv(data_dir, setting="--data-dir")
    test, train = data["test"], data["train"]
    report: dict = {"machine": machine_description(), "parts": parts, "smoke": bool(args.smoke)}
    m = report["machine"]
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']:.0f} GB RAM, "
        f"bf16 instructions: {'yes' if m['bf16_instructions'] else 'no'}, torch {m['torch']} "
        f"({threads} torch threads per measuring process)"
    )
    arch = "tiny T5 (--smoke)" if args.smoke else "flan-t5-base architecture"
    print(f"Model: {arch}, random weights; data: {data_dir}")
    if sizes.rows > len(test):
        raise LabError(f"--rows={sizes.rows} but the test split has {len(test)} rows", "pass a smaller --rows")
    rows = list(test["dialogue"][: sizes.rows])
    unique = list(dict.fromkeys(rows))
    n_train = sizes.batch_size * (sizes.steps + 1)
    n_lora = sizes.lora_batch_size * (sizes.lora_steps + 1)
    if max(n_train, n_lora) > len(train):
        raise LabError(f"the training split has only {len(train)} examples", "pass smaller batch sizes / --steps")
    pool = train.shuffle(seed=42).select(range(min(len(train), POOL_BATCHES * max(n_train, n_lora))))
    pool = [{"dialogue": d, "summary": s} for d, s in zip(pool["dialogue"], pool["summary"])]
    report["sizes"] = dataclasses.asdict(sizes)

    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        work = Path(tmp)
        texts = list(train["dialogue"]) + list(train["summary"])
        tok_dir, tok_what = prepare_tokenizer(settings, texts, work, args.smoke)
        print(f"Tokenizer: {tok_what}")
        tokenizer = _load_tokenizer(tok_dir)
        train_examples = typical_examples(tokenizer, pool, n_train)
        lora_examples = typical_examples(tokenizer, pool, n_lora)
        sz = dataclasses.asdict(sizes)
        if "a" in parts:
            _start("a", f"{len(rows)} test rows ({len(unique)} dialogues), {sizes.eval_new_tokens} new tokens each")
            r = run_isolated(measure_evaluation, threads, sizes=sz, tokenizer_dir=tok_dir, test_dialogues=rows)
            r["speedup"] = _ratio(r["course_s"], r["ours_s"])
            report["a"] = r
            print(f"    course {r['course_s']:.1f} s, ours {r['ours_s']:.1f} s: {r['speedup']:.1f}x")
        if "b" in parts or "e" in parts:
            what = "b" if "b" in parts else "e"
            _start(what, f"batch {sizes.batch_size}, 1 warm-up + {sizes.steps} measured steps, AdamW")
            r = run_isolated(
                measure_training_step,
                threads,
                sizes=sz,
                tokenizer_dir=tok_dir,
                examples=train_examples,
                course="b" in parts,
                flops="e" in parts,
            )
            if "b" in parts:
                r["speedup"] = _ratio(r["course_step_s"], r["ours_step_s"])
                r["bf16_speedup"] = _ratio(r["ours_step_s"], r.get("ours_bf16_step_s"))
                report["b"] = {k: v for k, v in r.items() if "flops" not in k}
                print(
                    f"    course {r['course_step_s']:.2f} s/step ({r['course_tokens_per_step']:.0f} tokens), "
                    f"ours {r['ours_step_s']:.2f} s/step ({r['ours_tokens_per_step']:.0f} tokens): {r['speedup']:.1f}x"
                )
                if r["bf16_speedup"]:
                    bf16 = r["ours_bf16_step_s"]
                    print(f"    ours with bf16 autocast {bf16:.2f} s/step: {r['bf16_speedup']:.2f}x faster than fp32")
                else:
                    print("    bf16 training skipped (this CPU has no bf16 instructions)")
            if "e" in parts:
                if what == "b":
                    _start("e", "(measured in part b's process)")
                report["e"] = {
                    "matmul_flops": r["matmul_flops"],
                    "matmul_flops_before": r["matmul_flops_before"],
                    "matmul_flops_after": r["matmul_flops_after"],
                    "matmul_sizes": list(sizes.matmul_sizes),
                    "train_flops_per_s": r["train_flops_per_s"],
                    "parameters": r["parameters"],
                    "fraction": _ratio(r["train_flops_per_s"], r["matmul_flops"]),
                    "formula": FLOPS_FORMULA_SPLIT,
                }
                e = report["e"]
                sizes_text = "/".join(str(n) for n in sizes.matmul_sizes)
                print(
                    f"    peak dense fp32 matmul (best of {sizes.matmul_repeats} x sizes {sizes_text}): "
                    f"{e['matmul_flops_before'] / 1e9:.1f} GFLOP/s before training, "
                    f"{e['matmul_flops_after'] / 1e9:.1f} after\n"
                    f"    training: {e['train_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * e['fraction']:.0f}% of the "
                    f"peak, counting {FLOPS_FORMULA_SPLIT}"
                )
        if "c" in parts:
            steps = f"1 warm-up + {sizes.lora_steps} measured step{'s' if sizes.lora_steps > 1 else ''}"
            _start("c", f"batch {sizes.lora_batch_size}, {steps}, one process each")
            report["c"] = _lora_vs_full(sz, threads, tok_dir, lora_examples, checkpointing=False)
            report["c"]["checkpointing"] = _lora_vs_full(sz, threads, tok_dir, lora_examples, checkpointing=True)
            report["c"]["memory_ratio_checkpointing"] = report["c"]["checkpointing"]["memory_ratio"]
        infer = unique[: sizes.infer_dialogues]  # (d, f)
        if "d" in parts:
            _start("d", f"load + summarize {len(infer)} dialogues, one process each")
            run_isolated(save_models_for_inference, threads, sizes=sz, out_dir=str(work))
            kw = dict(sizes=sz, tokenizer_dir=tok_dir, out_dir=str(work), dialogues=infer)
            full = run_isolated(measure_inference_memory, threads, peft=False, **kw)
            peft = run_isolated(measure_inference_memory, threads, peft=True, **kw)
            report["d"] = {
                "full_peak_rss_mb": full["peak_rss_mb"],
                "peft_peak_rss_mb": peft["peak_rss_mb"],
                "memory_ratio": _ratio(peft["peak_rss_mb"], full["peak_rss_mb"]),
            }
            d = report["d"]
            print(
                f"    full model {d['full_peak_rss_mb']:.0f} MB, base + adapter {d['peft_peak_rss_mb']:.0f} MB: "
                f"{d['memory_ratio']:.2f}x"
            )
        if "f" in parts:
            _start("f", f"{len(infer)} dialogues, {sizes.max_new_tokens} new tokens each, summarize")
            r = run_isolated(measure_inference_modes, threads, sizes=sz, tokenizer_dir=tok_dir, dialogues=infer)
            r["int8_speedup"] = _ratio(r["fp32_s"], r["int8_s"])
            r["bf16_speedup"] = _ratio(r["fp32_s"], r.get("bf16_s"))
            r.pop("peak_rss_mb", None)
            line = f"    fp32 {r['fp32_s']:.1f} s, int8 {r['int8_s']:.1f} s ({r['int8_speedup']:.2f}x)"
            if r["bf16_supported"]:
                line += f", bf16 {r['bf16_s']:.1f} s ({r['bf16_speedup']:.2f}x)"
            else:
                line += ", bf16 skipped (this CPU has no bf16 instructions)"
            print(line)
            r["standin"] = _standin_rouge(settings, test, sizes, threads)
            report["f"] = r
        if "g" in parts:
            n = sizes.serving_adapters
            _start("g", f"{len(infer)} dialogues, {sizes.max_new_tokens} new tokens each; {n} adapters vs {n} models")
            r = run_isolated(measure_serving_speed, threads, sizes=sz, tokenizer_dir=tok_dir, dialogues=infer)
            r.pop("peak_rss_mb", None)
            r["unmerged_over_merged"] = _ratio(r["unmerged_s"], r["merged_s"])
            r["merged_over_original"] = _ratio(r["merged_s"], r["original_s"])
            print(
                f"    original {r['original_s']:.2f} s, base + unmerged adapter {r['unmerged_s']:.2f} s, merged "
                f"{r['merged_s']:.2f} s: unmerged / merged {r['unmerged_over_merged']:.2f}x, "
                f"merged / original {r['merged_over_original']:.2f}x"
            )
            saved = run_isolated(save_models_for_serving, threads, sizes=sz, out_dir=str(work), n=n)

            memory = serving_memory(saved["base"], saved["adapters"], saved["merged"])
            r.update(
                adapters=n,
                floor_mb=memory["nothing"],
                adapters_mb=memory["adapters"] - memory["nothing"],
                merged_mb=memory["full"] - memory["nothing"],
            )
            r["memory_ratio"] = _ratio(r["adapters_mb"], r["merged_mb"])
            print(
                f"    resident memory above the imports ({r['floor_mb']:.0f} MB): one base + {n} adapters "
                f"{r['adapters_mb']:.0f} MB, {n} merged models {r['merged_mb']:.0f} MB: {r['memory_ratio']:.2f}x"
            )
            report["g"] = r
    report.pop("peak_rss_mb", None)
    for part in PARTS:
        if isinstance(report.get(part), dict):
            report[part].pop("peak_rss_mb", None)
    report["part_s"] = _part_seconds()
    report["targets"] = check_targets(report)
    return report


def _lora_vs_full(sz: dict, threads: int, tok_dir: str, examples: list[dict], checkpointing: bool) -> dict:
    """(c) Full fine-tuning and LoRA, each in its own process, with or without gradient checkpointing."""
    kw = dict(sizes=sz, tokenizer_dir=tok_dir, examples=examples, checkpointing=checkpointing)
    full = run_isolated(measure_lora_vs_full, threads, lora=False, **kw)
    lora = run_isolated(measure_lora_vs_full, threads, lora=True, **kw)
    c = {
        "batch_size": sz["lora_batch_size"],
        "full_step_s": full["step_s"],
        "lora_step_s": lora["step_s"],
        "step_ratio": _ratio(lora["step_s"], full["step_s"]),
        "full_peak_rss_mb": full["peak_rss_mb"],
        "lora_peak_rss_mb": lora["peak_rss_mb"],
        "memory_ratio": _ratio(lora["peak_rss_mb"], full["peak_rss_mb"]),
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


def _standin_rouge(settings, test, sizes: Sizes, threads: int) -> dict:
    """(f) ROUGE change of int8 / bf16 on the stand-in's trained instruct model, or why it was skipped."""
    from ..checkpoints import FULL_CHECKPOINT

    tokenizer_dir = RELEASE_DIR / "flan-t5-tiny"
    checkpoint = RELEASE_DIR / FULL_CHECKPOINT
    missing = [p for p in (tokenizer_dir / "tokenizer_config.json", checkpoint / "config.json") if not p.is_file()]
    if missing:
        why = f"{missing[0].parent} is absent"
        print(
            f"    stand-in ROUGE: skipped, {why} (build it with `python -m lab_utils build-model` and "
            "`python -m lab_utils instructor` under LAB_PROFILE=offline)"
        )
        return {"skipped": why}
    if (checkpoint / "tokenizer_config.json").is_file():
        tokenizer_dir = checkpoint
    from ..data import first_dialogue_rows

    rows = first_dialogue_rows(test, sizes.rouge_dialogues)
    print(f"    stand-in ROUGE: {checkpoint.name}, {len(rows)} test rows ({sizes.rouge_dialogues} dialogues)")
    r = run_isolated(
        measure_standin_rouge,
        threads,
        model_dir=str(checkpoint),
        tokenizer_dir=str(tokenizer_dir),
        dialogues=list(rows["dialogue"]),
        references=list(rows["summary"]),
    )
    r.pop("peak_rss_mb", None)
    base = r["fp32_rouge"]
    for mode in ("int8", "bf16"):
        if f"{mode}_rouge" in r:
            delta = {k: 100 * (r[f"{mode}_rouge"][k] - base[k]) for k in ("rouge1", "rouge2", "rougeL")}
            r[f"{mode}_rouge_change_pp"] = delta
            r[f"{mode}_speedup"] = _ratio(r["fp32_s"], r[f"{mode}_s"])
            print(
                f"    {mode}: ROUGE-1/2/L change vs fp32 "
                + " / ".join(f"{v:+.2f}" for v in delta.values())
                + f" points, {r[f'{mode}_speedup']:.2f}x faster"
            )
    return r


_PART_STARTS: list[tuple[str, float]] = []


def _start(part: str, detail: str) -> None:
    """Announce a part; its wall time (until the next part starts) goes into the report's part_s."""
    _PART_STARTS.append((part, time.perf_counter()))
    print(f"[{part}] {PART_TITLES[part]}: {detail} ...", flush=True)


def _part_seconds() -> dict:
    """Wall seconds of each part announced since the last call (the last one ends now)."""
    ends = [t for _, t in _PART_STARTS[1:]] + [time.perf_counter()]
    out = {part: round(end - t0, 1) for (part, t0), end in zip(_PART_STARTS, ends)}
    _PART_STARTS.clear()
    return out


def _parse_only(only: str | None) -> list[str]:
    if not only:
        return list(PARTS)
    parts = [p.strip().lower() for p in only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise LabError(
            f"--only {only!r}: unknown part(s) {', '.join(bad) or '(none)'}", f"use some of {','.join(PARTS)}"
        )
    return [p for p in PARTS if p in parts]


def check_targets(report: dict) -> list[dict]:
    """The issue's targets, met or not, with the measured number (parts not run are left out)."""
    out = []
    for part, key, op, threshold, what in TARGETS:
        value = report.get(part, {}).get(key) if isinstance(report.get(part), dict) else None
        if value is None:
            continue
        met = value >= threshold if op == ">=" else value <= threshold
        out.append(
            {"part": part, "key": key, "what": what, "target": f"{op} {threshold}x", "measured": value, "met": met}
        )
    return out


def summary_table(report: dict) -> list[str]:
    """The final table: one line per ratio measured."""
    rows = []

    def add(part, what, value, unit="x"):
        if value is not None:
            rows.append(f"  ({part}) {what:<58} {value:>8.2f}{unit}")

    a, b, c, d, e, f, g = (report.get(p) or {} for p in PARTS)
    add("a", "evaluation speed-up (course loop / summarize)", a.get("speedup"))
    add("b", "training-step speed-up (course padding / ours)", b.get("speedup"))
    add("b", "training-step speed-up, ours with bf16 autocast / fp32", b.get("bf16_speedup"))
    add("c", "LoRA / full fine-tuning: time per step", c.get("step_ratio"))
    add("c", "LoRA / full fine-tuning: peak resident memory", c.get("memory_ratio"))
    ck = c.get("checkpointing") or {}
    add("c", "  the same, both with gradient checkpointing: time", ck.get("step_ratio"))
    add("c", "  the same, both with gradient checkpointing: memory", ck.get("memory_ratio"))
    add("d", "inference memory: base + adapter / full model", d.get("memory_ratio"))
    if e.get("fraction") is not None:
        add("e", "training FLOP/s / peak matmul FLOP/s", 100 * e["fraction"], "%")
    add("f", "generation speed-up int8 / fp32", f.get("int8_speedup"))
    add("f", "generation speed-up bf16 / fp32", f.get("bf16_speedup"))
    standin = f.get("standin") or {}
    for mode in ("int8", "bf16"):
        delta = standin.get(f"{mode}_rouge_change_pp")
        if delta:
            change = " / ".join(f"{v:+.2f}" for v in delta.values())
            rows.append(f"  (f) stand-in ROUGE-1/2/L change with {mode}, points: {change}")
    add("g", "generation time: base + unmerged adapter / merged model", g.get("unmerged_over_merged"))
    add("g", "generation time: merged model / original model", g.get("merged_over_original"))
    if g.get("adapters"):
        add("g", f"memory: one base + {g['adapters']} adapters / {g['adapters']} merged models", g["memory_ratio"])
    return rows


def print_report(report: dict) -> None:
    print("\nSummary (ratios measured in this run):")
    for line in summary_table(report):
        print(line)
    if report["targets"]:
        print("Targets:")
    for t in report["targets"]:
        print(f"  {t['what']} {t['target']}: measured {t['measured']:.2f}x -> {'met' if t['met'] else 'NOT met'}")
    if report.get("smoke"):
        print("(--smoke: a tiny model; these ratios say nothing about flan-t5-base)")


def is_bench_report(path: Path) -> bool:
    """True for a report an earlier `bench --json` wrote (it has the parts' times): one it may replace."""
    try:
        return "part_s" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab_utils bench",
        description="Measure the lab's speed-ups on this machine (flan-t5-base architecture, random weights).",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny model and a few examples (about 2 minutes)")
    parser.add_argument("--only", help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)")
    default = {f.name: f.default for f in dataclasses.fields(Sizes)}
    for name, what in (
        ("rows", "(a) test rows, 3 per dialogue"),
        ("batch_size", "(b, e) training batch for both preprocessings"),
        ("eval_batch_size", "(a, d, f, g) summarize's batch"),
        ("lora_batch_size", "(c) training batch"),
        ("steps", "(b, e) measured training steps after a warm-up step"),
        ("lora_steps", "(c) measured training steps after a warm-up step"),
        ("eval_new_tokens", "(a) generated tokens per summary"),
        ("max_new_tokens", "(d, f, g) generated tokens per summary"),
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int, help=f"{what} (default {default[name]})")
    parser.add_argument("--threads", type=int, help="torch threads per measuring process (default: all cores)")
    parser.add_argument("--data-dir", help="DialogSum CSV folder (default: the offline profile's LAB_DATA_DIR)")
    parser.add_argument("--json", help="write every measured number to this file")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        # checked before minutes of measuring: a bad path fails now, and a file the lab did not write is kept
        json_path = args.json and check_output_file(args.json, ours=is_bench_report, what="the report (--json)")
        report = run(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["total_s"] = time.perf_counter() - t0
    print_report(report)
    parts = ", ".join(f"{p} {s:.0f} s" for p, s in report["part_s"].items())
    print(f"Total: {report['total_s']:.0f} s ({parts})")
    if json_path:
        json_path.write_text(json.dumps(report, indent=1))
        print(f"Numbers: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
