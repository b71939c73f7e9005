"""`python -m lab_utils bench`: four questions about the lab's speed-ups, answered on this machine."""

# The questions (`QUESTIONS`, each titled by its docstring in --help and in the output; docs/benchmark.md says how each
# is measured and where its goal comes from):
# 1. evaluation: `summarize` against the course's loop (one `generate` per test row), same prompts and settings;
# 2. training step: the course's padding (every example to 512 tokens) against dynamic padding;
# 3. LoRA against full fine-tuning: time per step and peak memory;
# 4. serving engines (PyTorch fp32, CTranslate2 int8 and fp32) against the memory-bandwidth limit of decoding.
# No download: the flan-t5-base architecture is built from its config with random weights (time and memory do not
# depend on the weights), the prompts are DialogSum's (the offline profile's `LAB_DATA_DIR`), the tokenizer is the
# offline stand-in's (its ids are valid for flan-t5-base's vocabulary). Every measurement runs in a fresh process
# (`run_isolated`) that flushes denormal floats, which random weights produce and x86 CPUs compute in slow microcode;
# --smoke measures in this process instead (a tiny model: it shows that every question runs, not what it costs).
# The lab's goals are printed as met or NOT met with the measured figure.

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from importlib import metadata
from pathlib import Path
from statistics import mean, median

from ..config import RELEASE_DIR, load_settings
from ..errors import LabError
from ..files import check_output, write_json
from ..isolated import peak_rss_mb, run_isolated

TOKENIZER = RELEASE_DIR / "flan-t5-tiny"
# 1: 48 test rows (16 dialogues, each three times), a fixed 100 new tokens per summary (both sides do the same work),
#    summarize's batch of 16 (the lab's LAB_EVAL_BATCH_SIZE);
# 2: batch 2 (the course's padding at batch 8 needs more than 24 GB), the course's padding="max_length" to 512 tokens
#    (flan-t5's model_max_length); 2 and 3: measured steps after one warm-up step (the second holds AdamW's state: the
#    peak); 3: the lab's training batch of 8; 4: 16 prompts in the one batch each engine generates, a fixed 48 new
#    tokens each, 1 GB copied by the bandwidth test; all: the course profile's prompt and label limits.
BASE = dict(rows=48, eval_new_tokens=100, eval_batch_size=16, step_batch=2, pad_length=512, steps=2, lora_batch=8)
BASE.update(engine_prompts=16, engine_new_tokens=48, copy_mb=1024, max_source_length=512, max_target_length=128)
SMOKE = dict(rows=6, eval_new_tokens=4, eval_batch_size=4, pad_length=64, steps=1, lora_batch=2, engine_prompts=4)
SMOKE.update(copy_mb=4, max_source_length=64, max_target_length=32, in_process=True)
TINY = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)  # --smoke's T5


# --- The measurements (each in a fresh process, but with --smoke) ----------------------------------------------------


def setup(sz: dict):
    # The model of `sz` with random weights, the tokenizer, and the course profile's settings at the prompt limit.
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)  # every process builds the same model; the settings ignore the environment
    model, tok = T5ForConditionalGeneration(T5Config(**sz["model"])).eval(), AutoTokenizer.from_pretrained(TOKENIZER)
    limits = {k: sz[k] for k in ("max_source_length", "max_target_length")}
    return model, tok, load_settings("course", environ={}, **limits)


def fixed(n: int) -> dict:
    # Greedy decoding of exactly `n` new tokens: every summary costs the same work.
    return {"max_new_tokens": n, "min_new_tokens": n, "num_beams": 1, "do_sample": False}


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def measure_evaluation(sz: dict, rows: list[str]) -> dict:
    # Seconds for the course's loop (each row alone, repeats included) and for `summarize`, over the same rows.
    from ..data import build_prompt
    from ..generation import summarize

    (model, tok, settings), gen = setup(sz), fixed(sz["eval_new_tokens"])

    def course(dialogues, gen):  # truncated like summarize's prompts, so both read the same tokens
        for d in dialogues:
            ids = tok(build_prompt(d), return_tensors="pt", truncation=True, max_length=sz["max_source_length"])
            tok.decode(model.generate(input_ids=ids.input_ids, **gen)[0], skip_special_tokens=True)

    course(rows[:1], fixed(2))  # warm-up (of the model both use)
    course_s = timed(course, rows, gen)
    summarize_s = timed(summarize, model, tok, rows, settings, gen, batch_size=sz["eval_batch_size"], progress=False)
    return {"rows": len(rows), "dialogues": len(set(rows)), "course_s": course_s, "summarize_s": summarize_s}


def measure_steps(sz: dict, examples: list[dict], batch: int, padding: str, lora=False, checkpointing=False) -> dict:
    # Median seconds per training step after a warm-up step, full fine-tuning or the lab's LoRA (r=32 on q and v).
    import torch
    from datasets import Dataset, DatasetDict

    from ..data import build_prompt
    from .instructor import data_collator, lora_config, tokenize

    model, tok, settings = setup(sz)
    if lora:  # in place: the lab's deep copy would add a copy to the peak
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # as the Trainer does
    params = [p for p in model.train().parameters() if p.requires_grad]  # train(): dropout on, as in training
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step(b):  # forward, backward, clipping, AdamW
        model(**b).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer's max_grad_norm
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # the batches of `examples`, padded as the course did or as the lab does
    starts = range(0, len(examples), batch)
    if padding == "course":  # prompts and labels to `pad_length`, label padding 0 counted in the loss, no mask
        prompts, summaries = [build_prompt(e["dialogue"]) for e in examples], [e["summary"] for e in examples]
        kw = dict(padding="max_length", truncation=True, max_length=sz["pad_length"], return_tensors="pt")
        ids, labels = tok(prompts, **kw).input_ids, tok(summaries, **kw).input_ids
        todo = [{"input_ids": ids[i : i + batch], "labels": labels[i : i + batch]} for i in starts]
    else:  # the lab's: the notebook's `tokenize_function` (no padding), examples sorted by length as `group_by_length`
        # groups them, each batch padded to its longest by the notebook's collator (label padding -100)
        tokenized = tokenize(DatasetDict(train=Dataset.from_list(examples)), tok, settings)["train"]
        features = sorted(tokenized, key=lambda f: len(f["input_ids"]))
        collate = data_collator(tok, None)
        todo = [dict(collate(features[i : i + batch])) for i in starts]
    times, tokens = [timed(step, b) for b in todo][1:], [b["input_ids"].numel() + b["labels"].numel() for b in todo][1:]
    return {"step_s": median(times), "tokens_per_step": mean(tokens), "trainable": sum(p.numel() for p in params)}


def measure_engine(sz: dict, engine: str, prompts: list[str]) -> dict:
    # Seconds for `summarize` on `engine` generating 1 and `engine_new_tokens` tokens, then the copy bandwidth.
    import torch

    from ..data import build_prompt
    from ..engines import prepare_for_inference
    from ..generation import summarize

    (model, tok, settings), n, b = setup(sz), sz["engine_new_tokens"], len(prompts)
    model = prepare_for_inference(model, engine, tok)  # CTranslate2: converted here, not timed
    # all prompts in one batch, 1 and n new tokens: the difference is the decoding steps alone (the encoder's work and
    # the first step cancel)

    def best(k):  # seconds for summarize generating k tokens per prompt, best of 2 (the first also warms up)
        return min(timed(summarize, model, tok, prompts, settings, fixed(k), b, progress=False) for _ in range(2))

    s = {1: best(1), n: best(n)}
    # the copy bandwidth, after the timings (its two tensors live until the return): the best of 5 copies, read +
    # write counted (as STREAM does)
    src, dst = (torch.ones(sz["copy_mb"] * 2**18) for _ in range(2))  # 2**18 floats a MB
    bandwidth = 2 * src.numel() * 4 / min(timed(dst.copy_, src) for _ in range(5))
    lengths = tok([build_prompt(p) for p in prompts], truncation=True, max_length=sz["max_source_length"]).input_ids
    step_s = max(s[n] - s[1], 0) / (n - 1) or None  # None: too short to time apart
    return dict(s=s[n], step_s=step_s, bandwidth_bytes_per_s=bandwidth, prompt_lengths=[len(i) for i in lengths])


def bytes_per_step(config: dict, engine: str, lengths: list[int], new_tokens: int) -> float:
    # Bytes one greedy decoding step of the batch reads at least.
    from ..engines import CT2_QUANTIZATION, CT2_SUB_BATCH

    # the decoder's matmul weights (self-attention q, k, v, o; cross-attention q, o; the feed-forward) and the lm_head
    # at the engine's weight size, once per batch the engine decodes (CTranslate2: `CT2_SUB_BATCH` prompts, longest
    # first); the cross-attention keys and values of every prompt, padded to its batch's longest, and the
    # self-attention cache at the mean length, both fp32. Flan-T5's feed-forward is gated: 3 matrices (wi_0, wi_1, wo)
    d, inner, layers = config["d_model"], config["num_heads"] * config["d_kv"], config["num_decoder_layers"]
    weights = layers * (6 * d * inner + 3 * d * config["d_ff"]) + d * config["vocab_size"]
    size, lengths = CT2_SUB_BATCH if engine in CT2_QUANTIZATION else len(lengths), sorted(lengths, reverse=True)
    passes = [lengths[i : i + size] for i in range(0, len(lengths), size)]
    positions = sum(len(p) * p[0] for p in passes) + len(lengths) * (new_tokens + 1) / 2
    weight_bytes = 1 if CT2_QUANTIZATION.get(engine) == "int8" else 4
    return weights * weight_bytes * len(passes) + layers * 2 * inner * 4 * positions


# --- The questions ---------------------------------------------------------------------------------------------------


def measure(sz: dict, fn, **kwargs) -> dict:
    # `fn(sz=sz, **kwargs)` in a fresh process, or with --smoke in this one, with the process's peak memory.
    if sz.get("in_process"):  # --smoke: no fresh Python importing torch for each measurement
        # unprinted: summarize's notes on the prompts it truncates at 64 tokens (at 512, real runs truncate none)
        with contextlib.redirect_stdout(None):
            return dict(fn(sz=sz, **kwargs), peak_rss_mb=peak_rss_mb())
    return run_isolated(fn, flush_denormals=True, sz=sz, **kwargs)


def train_steps(sz: dict, train, batch: int, variants: dict) -> dict:
    # `measure_steps` of each variant (its arguments) on the same `batch` x (steps + 1) examples of typical length.
    n = batch * (sz["steps"] + 1)
    # the middle n of a random sample sorted by dialogue length: the length of a usual step, and of similar length as
    # `group_by_length` batches them
    dialogues, summaries = train["dialogue"], train["summary"]
    pool = sorted(random.Random(42).sample(range(len(train)), min(len(train), 12 * n)), key=lambda i: len(dialogues[i]))
    examples = [{"dialogue": dialogues[i], "summary": summaries[i]} for i in pool[(len(pool) - n) // 2 :][:n]]
    return {k: measure(sz, measure_steps, examples=examples, batch=batch, **kw) for k, kw in variants.items()}


def evaluation(sz: dict, data) -> tuple[dict, list]:
    """Evaluation: summarize vs the course's loop"""
    r = measure(sz, measure_evaluation, rows=list(data["test"]["dialogue"][: sz["rows"]]))
    r["speedup"] = r["course_s"] / r["summarize_s"]
    return r, [
        f"{r['rows']} test rows ({r['dialogues']} dialogues), {sz['eval_new_tokens']} new tokens each",
        ("course loop: one generate per row", f"{r['course_s']:.2f} s"),
        (f"summarize: each dialogue once, batches of {sz['eval_batch_size']}", f"{r['summarize_s']:.2f} s"),
    ]


def training_step(sz: dict, data) -> tuple[dict, list]:
    """Training step: the course's padding vs dynamic padding"""
    r = train_steps(sz, data["train"], sz["step_batch"], {p: {"padding": p} for p in ("course", "dynamic")})
    r["speedup"] = r["course"]["step_s"] / r["dynamic"]["step_s"]
    lines = [f"full fine-tuning, batch {sz['step_batch']}, a warm-up step, then the median of {sz['steps']}"]
    for p in ("course", "dynamic"):
        lines.append((f"{p} padding ({r[p]['tokens_per_step']:.0f} positions)", f"{r[p]['step_s']:.2f} s/step"))
    return r, lines


def lora_vs_full(sz: dict, data) -> tuple[dict, list]:
    """LoRA vs full fine-tuning"""
    kw = {"padding": "dynamic", "checkpointing": (ck := load_settings("course", environ={}).gradient_checkpointing)}
    r = train_steps(sz, data["train"], sz["lora_batch"], {"full": kw, "lora": dict(kw, lora=True)})
    r["step_ratio"] = r["lora"]["step_s"] / r["full"]["step_s"]
    r["memory_ratio"] = r["lora"]["peak_rss_mb"] / r["full"]["peak_rss_mb"]
    lines = [f"batch {sz['lora_batch']}, dynamic padding, gradient checkpointing {'on' if ck else 'off'}"]
    for k, m in (("full fine-tuning", r["full"]), ("LoRA", r["lora"])):
        cost = f"{m['step_s']:.2f} s/step, {m['peak_rss_mb']:,.0f} MB peak"
        lines.append((f"{k} ({m['trainable']:,} trained)", cost))
    return r, [*lines, ("LoRA / full", f"time {r['step_ratio']:.2f}x, peak memory {r['memory_ratio']:.2f}x")]


def engines(sz: dict, data) -> tuple[dict, list]:
    """Serving engines against the memory-bandwidth limit"""
    from ..engines import ENGINES

    prompts, n = list(dict.fromkeys(data["test"]["dialogue"]))[: sz["engine_prompts"]], sz["engine_new_tokens"]
    r: dict = {"prompts": len(prompts), "new_tokens": n}
    lines = [f"{len(prompts)} prompts in one batch, {n} new tokens each; share = bytes a step reads / step time / copy"]
    for engine in ENGINES:
        m = r[engine] = measure(sz, measure_engine, engine=engine, prompts=prompts)
        m["bytes_per_step"] = bytes_per_step(sz["model"], engine, m["prompt_lengths"], n)
        m["speedup"] = r.get("pytorch", m)["s"] / m["s"]  # pytorch is ENGINES[0]
        m["bandwidth_share"] = m["bytes_per_step"] / m["step_s"] / m["bandwidth_bytes_per_s"] if m["step_s"] else None
        share = f"{100 * m['bandwidth_share']:.0f}%" if m["bandwidth_share"] else "n/a (too short to time)"
        speed = f"{m['s']:.2f} s, {len(prompts) * n / m['s']:.0f} tokens/s, {m['speedup']:.2f}x"
        step = f"{1e3 * (m['step_s'] or 0):.1f} ms, {m['bytes_per_step'] / 1e6:.0f} MB"
        lines.append((engine, f"{speed}; a step {step}, {m['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s: {share}"))
    r["ctranslate2_speedup"] = r["ctranslate2"]["speedup"]
    return r, lines


# per question: its answer, the figure, how it compares with the goal's threshold, and the goal (docs/benchmark.md)
QUESTIONS = {"1": (evaluation, "speedup", ">=", 8.0, "evaluation: summarize at least 8x faster than the course's loop"),
    "2": (training_step, "speedup", ">=", 2.0, "training step: dynamic padding at least 2x faster than the course's"),
    "3": (lora_vs_full, "memory_ratio", "<", 1.0, "LoRA: a lower peak memory than full fine-tuning's"),
    "4": (engines, "ctranslate2_speedup", ">", 1.0, "serving: CTranslate2 int8 faster than PyTorch fp32")}  # fmt: skip


def machine() -> dict:
    # The CPU's model and the cores this process may use, and the versions that set the speed.
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "unknown")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, **{p: metadata.version(p) for p in ("torch", "transformers", "ctranslate2")}}


def main(argv: list[str] | None = None) -> int:
    # Answer the questions asked, printing a table for each, and write every number and the goals' verdicts.
    about = "\n".join([__doc__, "", *(f"{q}. {answer.__doc__}" for q, (answer, *_) in QUESTIONS.items())])
    cli = ArgumentParser("python -m lab_utils bench", description=about, formatter_class=RawDescriptionHelpFormatter)
    cli.add_argument("--only", default=",".join(QUESTIONS), help="questions to answer, e.g. 1,3 (default: all)")
    cli.add_argument("--smoke", action="store_true", help="a tiny model and a few prompts and steps (a test run)")
    cli.add_argument("--output", help="write the report (JSON) here; a file the lab did not write is never replaced")
    args = cli.parse_args(argv)
    try:
        if not (asked := {q.strip() for q in args.only.split(",")}) <= set(QUESTIONS):
            raise LabError(f"--only {args.only!r}: the questions are {', '.join(QUESTIONS)}", "pass e.g. --only 1,3")
        output = args.output and check_output(args.output, "the report (--output)")  # before minutes of measuring
        # after the checks: torch (with the stand-in's config) and the datasets library take a while to import
        from ..data import load_dialogsum
        from .standin import FLAN_T5_BASE_CONFIG as T5

        sz = dict(BASE, **SMOKE, model=dict(T5, **TINY)) if args.smoke else dict(BASE, model=dict(T5))
        report: dict = {"machine": (m := machine()), "smoke": args.smoke, "sizes": sz, "goals": []}
        print(f"Machine: {m['cpu']}, {m['cores']} cores; " + ", ".join(f"{p} {m[p]}" for p in list(m)[2:]))  # versions
        print(f"Model: {'a tiny T5 (--smoke: figures mean nothing)' if args.smoke else 'flan-t5-base'}, random weights")
        data = load_dialogsum(load_settings("offline"))
        for q in (q for q in QUESTIONS if q in asked):
            answer, name, op, threshold, what = QUESTIONS[q]
            print(f"\n{q}. {answer.__doc__} ...", flush=True)
            t0 = time.perf_counter()
            report[answer.__name__], lines = answer(sz, data)
            print(f"   {lines[0]} ({time.perf_counter() - t0:.0f} s in all)")
            width = max(len(label) for label, _ in lines[1:])
            print("\n".join(f"   {label:<{width}}  {value}" for label, value in lines[1:]))
            figure = report[answer.__name__][name]
            met = {">=": figure >= threshold, ">": figure > threshold, "<": figure < threshold}[op]
            report["goals"].append({"question": q, "goal": what, "measured": figure, "met": met})
            print(f"   goal: {what}: {name} {op} {threshold:g}x, measured {figure:.2f}x: {'met' if met else 'NOT met'}")
        if output:
            write_json(output, report)
            print(f"\nReport: {output}")
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
