"""(a) How much faster is the lab's evaluation than the course's loop, over the same test rows?

The course generated each test row alone (every dialogue three times, no batching); `summarize` generates each
distinct dialogue once, in length-sorted batches, each batch encoded in chunks of similar length.
"""

from __future__ import annotations

import time

from .common import Context, Goal, Sizes, bench_settings, build_model, fixed_length, load_tokenizer, ratio

TITLE = "evaluation: the course's loop vs summarize"
GOALS = (Goal("speedup", ">=", 8.0, "evaluation speed-up", "the live evaluation: 8x the course's loop"),)


def course_generate(model, tokenizer, dialogues: list[str], gen_kwargs: dict, max_length: int) -> list[str]:
    """The course's evaluation loop: one test row at a time, no batching, no de-duplication.

    Unlike the course, prompts are truncated at `max_length` as `summarize` does, so both read the same tokens.
    """
    from ...data import build_prompt

    out = []
    for dialogue in dialogues:
        input_ids = tokenizer(
            build_prompt(dialogue), return_tensors="pt", truncation=True, max_length=max_length
        ).input_ids
        ids = model.generate(input_ids=input_ids, **gen_kwargs)
        out.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return out


def measure(sizes: dict, tokenizer_dir: str, test_dialogues: list[str]) -> dict:
    """Seconds for the course's row-by-row loop and for `summarize`, over the same test rows."""
    from ...generation import summarize

    sz = Sizes(**sizes)
    model, tokenizer = build_model(sz.model), load_tokenizer(tokenizer_dir)
    gen = fixed_length(sz.eval_new_tokens)
    limit, settings = sz.max_source_length, bench_settings(sz)
    # warm-up of both paths (one-off allocations), on the first dialogue
    course_generate(model, tokenizer, test_dialogues[:1], fixed_length(2), limit)
    summarize(model, tokenizer, test_dialogues[:1], settings, fixed_length(2), progress=False)
    t0 = time.perf_counter()
    course_generate(model, tokenizer, test_dialogues, gen, limit)
    course = time.perf_counter() - t0
    t0 = time.perf_counter()
    summarize(model, tokenizer, test_dialogues, settings, gen, progress=False)
    ours = time.perf_counter() - t0
    return {"rows": len(test_dialogues), "dialogues": len(set(test_dialogues)), "course_s": course, "ours_s": ours}


def detail(ctx: Context) -> str:
    return f"{len(ctx.rows)} test rows ({len(ctx.unique)} dialogues), {ctx.sizes.eval_new_tokens} new tokens each"


def run(ctx: Context) -> dict:
    r = ctx.isolated(measure, sizes=ctx.sz, tokenizer_dir=ctx.tokenizer_dir, test_dialogues=ctx.rows)
    r["speedup"] = ratio(r["course_s"], r["ours_s"])
    print(f"    course {r['course_s']:.1f} s, ours {r['ours_s']:.1f} s: {r['speedup']:.1f}x")
    return r


def summary(r: dict) -> list[tuple[str, float | None, str]]:
    return [("evaluation speed-up (course loop / summarize)", r.get("speedup"), "x")]
