"""`python -m lab_utils bench`: what the lab's speed-ups are worth on this machine, measured in one run.

Needs no download: the flan-t5-base architecture is built with random weights from its public config values
(timings and memory do not depend on the weights), the prompts are DialogSum's, and the tokenizer is the offline
stand-in's (its ids are valid for flan-t5-base's 32,128-token vocabulary). Every measurement runs in its own
process (`Context.isolated`), so one part's memory never shows up in another's numbers, and each process flushes
denormal floats to zero (random weights produce them in the backward pass, where x86 CPUs compute them in slow
microcode). One module per part, its question in its first line; `run` is a loop over them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ...config import load_settings
from ...errors import LabError
from ...outputs import check_output_file
from . import (
    a_evaluation,
    b_training_step,
    c_lora_vs_full,
    d_inference_memory,
    e_flops,
    f_inference_modes,
    g_serving,
    h_engines,
)
from .common import (
    POOL_BATCHES,
    Context,
    default_sizes,
    load_tokenizer,
    machine_cores,
    machine_description,
    prepare_tokenizer,
    typical_examples,
)

MODULES = {
    "a": a_evaluation,
    "b": b_training_step,
    "c": c_lora_vs_full,
    "d": d_inference_memory,
    "e": e_flops,
    "f": f_inference_modes,
    "g": g_serving,
    "h": h_engines,
}
PARTS = tuple(MODULES)
GOALS_SOURCE = "docs/benchmark.md, 'The lab's goals'"
SIZE_FLAGS = {
    "rows": "(a) test rows, 3 per dialogue",
    "batch_size": "(b, e) training batch for both preprocessings",
    "eval_batch_size": "(a, d, f, g) summarize's batch",
    "lora_batch_size": "(c) training batch",
    "steps": "(b, e) measured training steps after a warm-up step",
    "lora_steps": "(c) measured training steps after a warm-up step",
    "eval_new_tokens": "(a) generated tokens per summary",
    "max_new_tokens": "(d, f, g) generated tokens per summary",
    "engine_dialogues": "(h) dialogues in the one batch each engine generates",
    "engine_new_tokens": "(h) generated tokens per summary",
}


def parse_only(only: str | None) -> list[str]:
    if not only:
        return list(PARTS)
    parts = [p.strip().lower() for p in only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise LabError(
            f"--only {only!r}: unknown part(s) {', '.join(bad) or '(none)'}", f"use some of {','.join(PARTS)}"
        )
    return [p for p in PARTS if p in parts]


def make_sizes(args):
    sizes = default_sizes(args.smoke)
    for flag in (*SIZE_FLAGS, "threads"):
        value = getattr(args, flag, None)
        if value is not None:
            if value < (0 if flag == "threads" else 1):
                raise LabError(f"--{flag.replace('_', '-')}={value} must be positive", "pass a positive integer")
            setattr(sizes, flag, value)
    sizes.threads = sizes.threads or machine_cores()
    return sizes


def make_context(args, sizes, work: Path) -> Context:
    """The prompts, examples and tokenizer every part reads."""
    from ...data import load_dialogsum_csv

    settings = load_settings("offline")
    data_dir = Path(args.data_dir) if args.data_dir else settings.path(settings.data_dir)
    data = load_dialogsum_csv(data_dir, setting="--data-dir")
    test, train = data["test"], data["train"]
    print(
        f"Model: {'tiny T5 (--smoke)' if args.smoke else 'flan-t5-base architecture'}, random weights; data: {data_dir}"
    )
    if sizes.rows > len(test):
        raise LabError(f"--rows={sizes.rows} but the test split has {len(test)} rows", "pass a smaller --rows")
    rows = list(test["dialogue"][: sizes.rows])
    n_train = sizes.batch_size * (sizes.steps + 1)
    n_lora = sizes.lora_batch_size * (sizes.lora_steps + 1)
    if max(n_train, n_lora) > len(train):
        raise LabError(f"the training split has only {len(train)} examples", "pass smaller batch sizes / --steps")
    pool = train.shuffle(seed=42).select(range(min(len(train), POOL_BATCHES * max(n_train, n_lora))))
    pool = [{"dialogue": d, "summary": s} for d, s in zip(pool["dialogue"], pool["summary"])]
    texts = list(train["dialogue"]) + list(train["summary"])
    tok_dir, tok_what = prepare_tokenizer(settings, texts, work, args.smoke)
    print(f"Tokenizer: {tok_what}")
    tokenizer = load_tokenizer(tok_dir)
    unique = list(dict.fromkeys(rows + list(dict.fromkeys(test["dialogue"]))[: sizes.engine_dialogues]))
    return Context(
        sizes=sizes,
        threads=sizes.threads,
        tokenizer_dir=tok_dir,
        rows=rows,
        unique=unique,
        train_examples=typical_examples(tokenizer, pool, n_train),
        lora_examples=typical_examples(tokenizer, pool, n_lora),
        settings=settings,
        test=test,
        work=work,
    )


def run(args) -> dict:
    """Measure the requested parts and return every number (seconds, MB, FLOP/s) and the ratios between them."""
    import tempfile

    sizes = make_sizes(args)
    parts = parse_only(args.only)
    report: dict = {"machine": machine_description(), "parts": parts, "smoke": bool(args.smoke)}
    m = report["machine"]
    print(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']:.0f} GB RAM, "
        f"bf16 instructions: {'yes' if m['bf16_instructions'] else 'no'}, torch {m['torch']} "
        f"({sizes.threads} torch threads per measuring process)"
    )
    report["part_s"] = {}
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as tmp:
        ctx = make_context(args, sizes, Path(tmp))
        report["sizes"] = dataclasses.asdict(sizes)
        for part in parts:
            module = MODULES[part]
            print(f"[{part}] {module.TITLE}: {module.detail(ctx)} ...", flush=True)
            t0 = time.perf_counter()
            result = module.run(ctx)
            result.pop("peak_rss_mb", None)
            report[part] = result
            report["part_s"][part] = round(time.perf_counter() - t0, 1)
    report["targets"] = check_goals(report)
    return report


def check_goals(report: dict) -> list[dict]:
    """The lab's goals (each part's GOALS), met or not, with the measured number; parts not run are left out."""
    out = []
    for part, module in MODULES.items():
        for goal in module.GOALS:
            checked = goal.check(part, report.get(part) or {})
            if checked is not None:
                out.append(checked)
    return out


def summary_table(report: dict) -> list[str]:
    """The final table: one line per ratio measured, in the parts' order."""
    rows = []
    for part, module in MODULES.items():
        if part not in report:
            continue
        for what, value, unit in module.summary(report[part]):
            if value is not None:
                rows.append(f"  ({part}) {what:<58} {value:>8.2f}{unit}")
            elif not unit:  # a line of text (ROUGE changes)
                rows.append(f"  ({part}) {what}")
    return rows


def print_report(report: dict) -> None:
    print("\nSummary (ratios measured in this run):")
    for line in summary_table(report):
        print(line)
    if report["targets"]:
        print(f"Targets (the lab's goals, {GOALS_SOURCE}):")
    for t in report["targets"]:
        verdict = "met" if t["met"] else "NOT met"
        print(f"  ({t['part']}) {t['what']} {t['target']}: measured {t['measured']:.2f}x -> {verdict} ({t['source']})")
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
    defaults = default_sizes(False)
    for name, what in SIZE_FLAGS.items():
        default = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=int, help=f"{what} (default {default})")
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
