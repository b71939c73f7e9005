"""`python -m lab_utils bench`: four questions about the lab's speed-ups, answered on this machine.

1. evaluation: `summarize` against the course's loop (one `generate` per test row), same prompts and settings;
2. training step: the course's padding (every example to 512 tokens) against dynamic padding;
3. LoRA against full fine-tuning: time per step and peak memory;
4. serving engines (PyTorch fp32, CTranslate2 int8 and fp32) against the memory-bandwidth limit of decoding.

No download: the flan-t5-base architecture is built from its config with random weights (time and memory do not
depend on the weights), the prompts are DialogSum's (the offline profile's `LAB_DATA_DIR`), the tokenizer is the
offline stand-in's (its ids are valid for flan-t5-base's vocabulary). Every measurement runs in a fresh process
(`run_isolated`) that flushes denormal floats, which random weights produce and x86 CPUs compute in slow microcode.
The lab's goals are printed as met or NOT met with the measured figure; docs/benchmark.md says where they come from.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import operator
import os
import platform
import random
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

from ..config import RELEASE_DIR, load_settings
from ..errors import LabError
from ..files import check_output, write_json
from ..isolated import run_isolated

TOKENIZER = RELEASE_DIR / "flan-t5-tiny"
BASE = dict(
    rows=48,  # 1: test rows (16 dialogues, each three times)
    eval_new_tokens=100,  # 1: new tokens per summary, fixed so both sides do the same work
    eval_batch_size=16,  # 1: summarize's batch (the lab's LAB_EVAL_BATCH_SIZE)
    step_batch=2,  # 2: the course's padding at batch 8 needs more than 24 GB
    pad_length=512,  # 2: the course's padding="max_length" (flan-t5's model_max_length)
    steps=2,  # 2, 3: measured steps after one warm-up step (the second step holds AdamW's state: the peak)
    lora_batch=8,  # 3: the lab's training batch
    engine_prompts=16,  # 4: prompts in the one batch each engine generates
    engine_new_tokens=48,  # 4: new tokens per prompt, fixed
    copy_mb=1024,  # 4: bytes copied by the bandwidth test
    max_source_length=512,  # the course profile's prompt and label limits
    max_target_length=128,
)
SMOKE = dict(rows=6, eval_new_tokens=4, eval_batch_size=4, pad_length=64, steps=1, lora_batch=2, engine_prompts=4)
SMOKE.update(copy_mb=16, max_source_length=64, max_target_length=32)  # --smoke: a few prompts and steps
# per question: the figure, how it compares with the goal's threshold, and the goal (docs/benchmark.md, "The goals")
GOALS = {
    "1": ("speedup", ">=", 8.0, "evaluation: summarize at least 8x faster than the course's loop"),
    "2": ("speedup", ">=", 2.0, "training step: dynamic padding at least 2x faster than the course's"),
    "3": ("memory_ratio", "<", 1.0, "LoRA: a lower peak memory than full fine-tuning's"),
    "4": ("ctranslate2_speedup", ">", 1.0, "serving: CTranslate2 int8 faster than PyTorch fp32"),
}
OPS = {">=": operator.ge, ">": operator.gt, "<": operator.lt}


def sizes(smoke: bool) -> dict:
    """The default sizes (flan-t5-base architecture), or a tiny model and a few prompts and steps."""
    from .standin import FLAN_T5_BASE_CONFIG, TINY_CONFIG

    if not smoke:
        return dict(BASE, model=dict(FLAN_T5_BASE_CONFIG))
    tiny = dict(TINY_CONFIG, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)
    return dict(BASE, **SMOKE, model=tiny)


# --- In the measuring processes ------------------------------------------------------------------------------------


def build_model(config: dict):
    """The architecture of `config` with random weights (seeded: every process builds the same model)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(**config)).eval()


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def course_settings(sz: dict, **changes):
    """The course profile's settings (environment ignored) with the benchmark's lengths and batch."""
    limits = {k: sz[k] for k in ("max_source_length", "max_target_length", "eval_batch_size")}
    return load_settings("course", environ={}, **{**limits, **changes})


def fixed(n: int) -> dict:
    """Greedy decoding of exactly `n` new tokens: every summary costs the same work."""
    return {"max_new_tokens": n, "min_new_tokens": n, "num_beams": 1, "do_sample": False}


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def measure_evaluation(sz: dict, rows: list[str]) -> dict:
    """Seconds for the course's loop (each row alone, repeats included) and for `summarize`, over the same rows."""
    from ..data import build_prompt
    from ..generation import summarize

    model, tok, settings = build_model(sz["model"]), tokenizer(), course_settings(sz)

    def course(dialogues, gen):  # truncated like summarize's prompts, so both read the same tokens
        for d in dialogues:
            ids = tok(build_prompt(d), return_tensors="pt", truncation=True, max_length=sz["max_source_length"])
            tok.decode(model.generate(input_ids=ids.input_ids, **gen)[0], skip_special_tokens=True)

    with contextlib.redirect_stdout(io.StringIO()):  # summarize's note on truncated prompts, at every call
        course(rows[:1], fixed(2))  # warm-up of both
        summarize(model, tok, rows[:1], settings, fixed(2), progress=False)
        gen = fixed(sz["eval_new_tokens"])
        course_s, summarize_s = (
            timed(course, rows, gen),
            timed(summarize, model, tok, rows, settings, gen, progress=False),
        )
    return {"rows": len(rows), "dialogues": len(set(rows)), "course_s": course_s, "summarize_s": summarize_s}


def batches(tok, examples: list[dict], batch: int, sz: dict, padding: str) -> list[dict]:
    """The course's batches (prompts and labels padded to `pad_length`, label padding 0 counted in the loss, no
    attention mask), or the lab's: no padding at tokenization, examples sorted by length as `group_by_length` groups
    them, each batch padded to its longest by `DataCollatorForSeq2Seq` (label padding -100)."""
    from ..data import build_prompt
    from .instructor import data_collator

    prompts, summaries = [build_prompt(e["dialogue"]) for e in examples], [e["summary"] for e in examples]
    if padding == "course":
        kw = dict(padding="max_length", truncation=True, max_length=sz["pad_length"], return_tensors="pt")
        return [
            {
                "input_ids": tok(prompts[i : i + batch], **kw).input_ids,
                "labels": tok(summaries[i : i + batch], **kw).input_ids,
            }
            for i in range(0, len(examples), batch)
        ]
    enc = tok(prompts, max_length=sz["max_source_length"], truncation=True)
    labels = tok(text_target=summaries, max_length=sz["max_target_length"], truncation=True).input_ids
    features = [
        {"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(enc.input_ids, enc.attention_mask, labels)
    ]
    features.sort(key=lambda f: len(f["input_ids"]))
    collate = data_collator(tok, None)
    return [dict(collate(features[i : i + batch])) for i in range(0, len(features), batch)]


def measure_steps(sz: dict, examples: list[dict], batch: int, padding: str, lora=False, checkpointing=False) -> dict:
    """Median seconds per training step (forward, backward, gradient clipping, AdamW) after a warm-up step, full
    fine-tuning or the lab's LoRA (r=32 on q and v), with or without gradient checkpointing."""
    import torch

    model = build_model(sz["model"])
    if lora:
        from peft import get_peft_model

        from .instructor import lora_config

        model = get_peft_model(model, lora_config())  # in place: the lab's deep copy would add a copy to the peak
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # as the Trainer does
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    times, tokens = [], []
    for b in batches(tokenizer(), examples, batch, sz, padding):
        t0 = time.perf_counter()
        model(**b).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer's max_grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        tokens.append(b["input_ids"].numel() + b["labels"].numel())
    return {
        "step_s": statistics.median(times[1:]),
        "tokens_per_step": statistics.mean(tokens[1:]),
        "trainable": sum(p.numel() for p in params),
    }


def measure_engine(sz: dict, engine: str, prompts: list[str]) -> dict:
    """This process's copy bandwidth (best of 5, read + write counted, as STREAM does), then seconds for `summarize`
    on `engine` with all prompts in one batch, generating 1 and `engine_new_tokens` tokens (best of 2 each): their
    difference is the decoding steps alone (the encoder's work and the first step cancel)."""
    import torch

    from ..data import build_prompt
    from ..engines import prepare_for_inference
    from ..generation import summarize

    src = torch.ones(sz["copy_mb"] * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # the pages are touched
    bandwidth = 2 * src.numel() * 4 / min(timed(dst.copy_, src) for _ in range(5))
    del src, dst
    tok = tokenizer()
    model = prepare_for_inference(build_model(sz["model"]), engine, tok)  # CTranslate2: converted here, not timed
    settings, n = course_settings(sz, eval_batch_size=len(prompts)), sz["engine_new_tokens"]
    with contextlib.redirect_stdout(io.StringIO()):  # summarize's note on truncated prompts, at every call
        summarize(model, tok, prompts[:2], settings, fixed(2), progress=False)  # warm-up
        best = {
            k: min(timed(summarize, model, tok, prompts, settings, fixed(k), progress=False) for _ in range(2))
            for k in (1, n)
        }
    lengths = tok([build_prompt(p) for p in prompts], truncation=True, max_length=sz["max_source_length"]).input_ids
    return {
        "s": best[n],
        "step_s": max(best[n] - best[1], 0) / (n - 1) or None,  # None: too short to time apart
        "bandwidth_bytes_per_s": bandwidth,
        "prompt_lengths": [len(ids) for ids in lengths],
    }


def bytes_per_step(config: dict, engine: str, lengths: list[int], new_tokens: int) -> float:
    """Bytes one greedy decoding step of the batch reads at least: the decoder's matmul weights (self-attention
    q, k, v, o; cross-attention q, o; the feed-forward) and the lm_head at the engine's weight size, once per batch
    the engine decodes (CTranslate2: `CT2_SUB_BATCH` prompts, longest first); the cross-attention keys and values of
    every prompt, padded to its batch's longest, and the self-attention cache at the mean length, both fp32."""
    from ..engines import CT2_QUANTIZATION, CT2_SUB_BATCH

    d, inner, layers = config["d_model"], config["num_heads"] * config["d_kv"], config["num_decoder_layers"]
    ff = (3 if config["feed_forward_proj"].startswith("gated") else 2) * d * config["d_ff"]
    weights = layers * (6 * d * inner + ff) + d * config["vocab_size"]
    size = CT2_SUB_BATCH if engine in CT2_QUANTIZATION else len(lengths)
    lengths = sorted(lengths, reverse=True)
    passes = [lengths[i : i + size] for i in range(0, len(lengths), size)]
    positions = sum(len(p) * p[0] for p in passes) + len(lengths) * (new_tokens + 1) / 2
    return (
        weights * (1 if CT2_QUANTIZATION.get(engine) == "int8" else 4) * len(passes)
        + layers * 2 * inner * 4 * positions
    )


# --- The questions (in this process: each measures in fresh ones) ----------------------------------------------------


def isolated(fn, **kwargs) -> dict:
    return run_isolated(fn, threads=None, flush_denormals=True, **kwargs)


def typical_examples(train, n: int) -> list[dict]:
    """`n` training examples of typical length: the middle of a random sample sorted by dialogue length, so the
    batches are of similar length as `group_by_length` makes them, at the length of a usual step."""
    if n > len(train):
        raise LabError(f"the training split has {len(train)} examples, the benchmark needs {n}", "use --smoke")
    dialogues, summaries = train["dialogue"], train["summary"]
    pool = sorted(random.Random(42).sample(range(len(train)), min(len(train), 12 * n)), key=lambda i: len(dialogues[i]))
    start = (len(pool) - n) // 2
    return [{"dialogue": dialogues[i], "summary": summaries[i]} for i in pool[start : start + n]]


def evaluation(sz: dict, data) -> tuple[dict, list]:
    r = isolated(measure_evaluation, sz=sz, rows=list(data["test"]["dialogue"][: sz["rows"]]))
    r["speedup"] = r["course_s"] / r["summarize_s"]
    return r, [
        f"{r['rows']} test rows ({r['dialogues']} dialogues), {sz['eval_new_tokens']} new tokens each",
        ("course loop: one generate per row", f"{r['course_s']:.2f} s"),
        (f"summarize: each dialogue once, batches of {sz['eval_batch_size']}", f"{r['summarize_s']:.2f} s"),
    ]


def training_step(sz: dict, data) -> tuple[dict, list]:
    kw = dict(sz=sz, examples=typical_examples(data["train"], sz["step_batch"] * (sz["steps"] + 1)))
    r = {p: isolated(measure_steps, batch=sz["step_batch"], padding=p, **kw) for p in ("course", "dynamic")}
    r["speedup"] = r["course"]["step_s"] / r["dynamic"]["step_s"]
    lines = [f"full fine-tuning, batch {sz['step_batch']}, a warm-up step, then the median of {sz['steps']}"]
    for p in ("course", "dynamic"):
        lines.append((f"{p} padding ({r[p]['tokens_per_step']:.0f} positions)", f"{r[p]['step_s']:.2f} s/step"))
    return r, lines


def lora_vs_full(sz: dict, data) -> tuple[dict, list]:
    ck = course_settings(sz).gradient_checkpointing  # the course profile's default
    examples = typical_examples(data["train"], sz["lora_batch"] * (sz["steps"] + 1))
    kw = dict(sz=sz, examples=examples, batch=sz["lora_batch"], padding="dynamic", checkpointing=ck)
    r: dict = {"full": isolated(measure_steps, lora=False, **kw), "lora": isolated(measure_steps, lora=True, **kw)}
    r["step_ratio"] = r["lora"]["step_s"] / r["full"]["step_s"]
    r["memory_ratio"] = r["lora"]["peak_rss_mb"] / r["full"]["peak_rss_mb"]
    lines = [f"batch {sz['lora_batch']}, dynamic padding, gradient checkpointing {'on' if ck else 'off'}"]
    for k, m in (("full fine-tuning", r["full"]), ("LoRA", r["lora"])):
        lines.append(
            (f"{k} ({m['trainable']:,} trained)", f"{m['step_s']:.2f} s/step, {m['peak_rss_mb']:,.0f} MB peak")
        )
    return r, [*lines, ("LoRA / full", f"time {r['step_ratio']:.2f}x, peak memory {r['memory_ratio']:.2f}x")]


def engines(sz: dict, data) -> tuple[dict, list]:
    from ..engines import ENGINES

    prompts, n = list(dict.fromkeys(data["test"]["dialogue"]))[: sz["engine_prompts"]], sz["engine_new_tokens"]
    r: dict = {"prompts": len(prompts), "new_tokens": n}
    lines = [f"{len(prompts)} prompts in one batch, {n} new tokens each; share = bytes a step reads / step time / copy"]
    for engine in ENGINES:
        m = r[engine] = isolated(measure_engine, sz=sz, engine=engine, prompts=prompts)
        m["bytes_per_step"] = bytes_per_step(sz["model"], engine, m["prompt_lengths"], n)
        m["tokens_per_s"] = len(prompts) * n / m["s"]
        m["speedup"] = r.get("pytorch", m)["s"] / m["s"]  # pytorch is ENGINES[0]
        m["bandwidth_share"] = m["bytes_per_step"] / m["step_s"] / m["bandwidth_bytes_per_s"] if m["step_s"] else None
        share = f"{100 * m['bandwidth_share']:.0f}%" if m["bandwidth_share"] else "n/a (too short to time)"
        speed = f"{m['s']:.2f} s, {m['tokens_per_s']:.0f} tokens/s, {m['speedup']:.2f}x"
        step = f"{1e3 * (m['step_s'] or 0):.1f} ms, {m['bytes_per_step'] / 1e6:.0f} MB"
        lines.append((engine, f"{speed}; a step {step}, {m['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s: {share}"))
    r["ctranslate2_speedup"] = r["ctranslate2"]["speedup"]
    return r, lines


QUESTIONS = {
    "1": ("evaluation", "Evaluation: summarize vs the course's loop", evaluation),
    "2": ("training_step", "Training step: the course's padding vs dynamic padding", training_step),
    "3": ("lora_vs_full", "LoRA vs full fine-tuning", lora_vs_full),
    "4": ("engines", "Serving engines against the memory-bandwidth limit", engines),
}


def parse_only(only: str) -> list[str]:
    asked = [q.strip() for q in only.split(",") if q.strip()]
    if not asked or any(q not in QUESTIONS for q in asked):
        raise LabError(f"--only {only!r}: the questions are {', '.join(QUESTIONS)}", "pass e.g. --only 1,3")
    return [q for q in QUESTIONS if q in asked]


def machine() -> dict:
    """The CPU's model and the cores this process may use, and the versions that set the speed."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, **{p: metadata.version(p) for p in ("torch", "transformers", "ctranslate2")}}


def run(only: list[str], smoke: bool) -> dict:
    """Answer the questions in `only`, printing a table for each; return every number and the goals' verdicts."""
    from ..data import load_dialogsum

    sz, m = sizes(smoke), machine()
    report: dict = {"machine": m, "smoke": smoke, "sizes": sz, "goals": []}
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, transformers {m['transformers']}, "
        f"ctranslate2 {m['ctranslate2']}"
    )
    model = "a tiny T5 (--smoke: its figures say nothing of flan-t5-base)" if smoke else "flan-t5-base's architecture"
    print(f"Model: {model}, random weights; tokenizer {TOKENIZER}")
    data = load_dialogsum(load_settings("offline"))
    for q in only:
        key, title, answer = QUESTIONS[q]
        print(f"\n{q}. {title} ...", flush=True)
        t0 = time.perf_counter()
        result, lines = answer(sz, data)
        report[key] = result
        print(f"   {lines[0]} ({time.perf_counter() - t0:.0f} s in all)")
        width = max(len(label) for label, _ in lines[1:])
        for label, value in lines[1:]:
            print(f"   {label:<{width}}  {value}")
        name, op, threshold, what = GOALS[q]
        met = OPS[op](result[name], threshold)
        report["goals"].append({"question": q, "goal": what, "measured": result[name], "met": met})
        print(
            f"   goal: {what}: {name} {op} {threshold:g}x, measured {result[name]:.2f}x: {'met' if met else 'NOT met'}"
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab_utils bench",
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", default=",".join(QUESTIONS), help="questions to answer, e.g. 1,3 (default: all)")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and a few prompts and steps (a test run)")
    parser.add_argument("--output", help="write the report (JSON) here; a file the lab did not write is never replaced")
    args = parser.parse_args(argv)
    try:
        only = parse_only(args.only)
        output = args.output and check_output(args.output, "the report (--output)")  # before minutes of measuring
        report = run(only, args.smoke)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if output:
        write_json(output, report, mark=True)
        print(f"\nReport: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
