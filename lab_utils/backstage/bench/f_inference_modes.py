"""(f) How much faster is PyTorch generation with int8 weights or bf16 autocast than fp32, and what does it cost in
ROUGE on the offline release's instruct model?"""

from __future__ import annotations

import time
from pathlib import Path

from .common import (
    Context,
    Sizes,
    bench_settings,
    build_model,
    fixed_length,
    load_tokenizer,
    offline_release_rows,
    ratio,
)

TITLE = "int8 / bf16 generation vs fp32"
GOALS = ()


def pytorch_modes() -> list[str]:
    """fp32 and int8, and bf16 where the CPU has bf16 instructions (emulated bf16 is slower than fp32)."""
    from ...devices import cpu_supports_bf16

    return ["fp32", "int8"] + (["bf16"] if cpu_supports_bf16() else [])


def measure(sizes: dict, tokenizer_dir: str, dialogues: list[str]) -> dict:
    """Seconds for `summarize` with fp32, int8 and (where the CPU has it) bf16, same prompts, fixed length."""
    from ...engines import prepare_for_inference
    from ...generation import summarize

    sz = Sizes(**sizes)
    model, tokenizer = build_model(sz.model), load_tokenizer(tokenizer_dir)
    gen, settings = fixed_length(sz.max_new_tokens), bench_settings(sz)
    modes = pytorch_modes()
    result: dict = {"dialogues": len(dialogues), "bf16_supported": "bf16" in modes}
    for mode in modes:
        prepared = prepare_for_inference(model, mode)
        summarize(prepared, tokenizer, dialogues[:1], settings, gen, progress=False)  # warm-up
        t0 = time.perf_counter()
        summarize(prepared, tokenizer, dialogues, settings, gen, progress=False)
        result[f"{mode}_s"] = time.perf_counter() - t0
        del prepared
    return result


def measure_release_rouge(
    model_dir: str, tokenizer_dir: str, dialogues: list[str], references: list[str], engines: list[str]
) -> dict:
    """(f, h) ROUGE and seconds of the offline release's instruct model on each engine, over the same test rows,
    with the offline profile's generation settings (the lab's)."""
    from transformers import AutoModelForSeq2SeqLM

    from ...config import load_settings
    from ...engines import prepare_for_inference
    from ...generation import summarize
    from ...scoring import compute_rouge

    settings = load_settings("offline", environ={})
    model = AutoModelForSeq2SeqLM.from_pretrained(Path(model_dir), dtype="float32")
    tokenizer = load_tokenizer(tokenizer_dir)
    result: dict = {"rows": len(dialogues), "dialogues": len(set(dialogues)), "max_new_tokens": settings.max_new_tokens}
    for engine in engines:
        prepared = prepare_for_inference(model, engine, tokenizer)
        t0 = time.perf_counter()
        predictions = summarize(prepared, tokenizer, dialogues, settings, progress=False)
        result[f"{engine}_s"] = time.perf_counter() - t0
        result[f"{engine}_rouge"] = compute_rouge(predictions, references)
    return result


def release_rouge(ctx: Context, engines: list[str]) -> dict:
    """ROUGE of each engine on the offline release, and its change against fp32 in points (or why it was skipped)."""
    found = offline_release_rows(ctx)
    if isinstance(found, str):
        print(
            f"    offline release ROUGE: skipped, {found} (build it with `python -m lab_utils build-model` and "
            "`python -m lab_utils instructor` under LAB_PROFILE=offline)"
        )
        return {"skipped": found}
    model_dir, tokenizer_dir, dialogues, references = found
    print(f"    offline release ROUGE: {Path(model_dir).name}, {len(dialogues)} test rows")
    r = ctx.isolated(
        measure_release_rouge,
        model_dir=model_dir,
        tokenizer_dir=tokenizer_dir,
        dialogues=dialogues,
        references=references,
        engines=["fp32", *engines],
    )
    r.pop("peak_rss_mb", None)
    for engine in engines:
        delta = {k: 100 * (r[f"{engine}_rouge"][k] - r["fp32_rouge"][k]) for k in ("rouge1", "rouge2", "rougeL")}
        r[f"{engine}_rouge_change_pp"] = delta
        r[f"{engine}_speedup"] = ratio(r["fp32_s"], r[f"{engine}_s"])
        print(
            f"    {engine}: ROUGE-1/2/L change vs fp32 "
            + " / ".join(f"{v:+.2f}" for v in delta.values())
            + f" points, {r[f'{engine}_speedup']:.2f}x faster"
        )
    return r


def detail(ctx: Context) -> str:
    return f"{len(ctx.infer)} dialogues, {ctx.sizes.max_new_tokens} new tokens each, summarize"


def run(ctx: Context) -> dict:
    r = ctx.isolated(measure, sizes=ctx.sz, tokenizer_dir=ctx.tokenizer_dir, dialogues=ctx.infer)
    r.pop("peak_rss_mb", None)
    r["int8_speedup"] = ratio(r["fp32_s"], r["int8_s"])
    r["bf16_speedup"] = ratio(r["fp32_s"], r.get("bf16_s"))
    line = f"    fp32 {r['fp32_s']:.1f} s, int8 {r['int8_s']:.1f} s ({r['int8_speedup']:.2f}x)"
    if r["bf16_supported"]:
        line += f", bf16 {r['bf16_s']:.1f} s ({r['bf16_speedup']:.2f}x)"
    else:
        line += ", bf16 skipped (this CPU has no bf16 instructions)"
    print(line)
    r["standin"] = release_rouge(ctx, [m for m in pytorch_modes() if m != "fp32"])
    return r


def summary(r: dict) -> list[tuple[str, float | None, str]]:
    rows = [
        ("generation speed-up int8 / fp32", r.get("int8_speedup"), "x"),
        ("generation speed-up bf16 / fp32", r.get("bf16_speedup"), "x"),
    ]
    rows += rouge_change_rows(r.get("standin") or {}, ("int8", "bf16"))
    return rows


def rouge_change_rows(release: dict, engines) -> list[tuple[str, None, str]]:
    """(f, h) The summary's text lines: each engine's ROUGE change against fp32 on the offline release."""
    rows = []
    for engine in engines:
        delta = release.get(f"{engine}_rouge_change_pp")
        if delta:
            change = " / ".join(f"{v:+.2f}" for v in delta.values())
            rows.append((f"offline ROUGE-1/2/L change with {engine}: {change}", None, ""))
    return rows
