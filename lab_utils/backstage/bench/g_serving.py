"""(g) What does serving cost: the base with an unmerged adapter vs the merged model vs the original in generation
time, and one base with N adapters vs N merged models in resident memory?"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from ...serving import serving_memory
from .common import Context, Sizes, bench_settings, build_model, fixed_length, load_tokenizer, ratio

TITLE = "serving: base + unmerged adapter vs merged vs original; one base + N adapters vs N merged models"
GOALS = ()


def adapter_with_weights(model, seed: int):
    """A LoRA adapter (the lab's: r=32 on q and v) on a copy of `model`, with random B matrices, as after training."""
    import torch
    from peft import get_peft_model

    from ..instructor import lora_config

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), lora_config())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return peft_model.eval()


def measure(sizes: dict, tokenizer_dir: str, dialogues: list[str]) -> dict:
    """Seconds for `summarize` with the original model, the base + an unmerged adapter, and the merged model."""
    from ...generation import summarize

    sz = Sizes(**sizes)
    model, tokenizer = build_model(sz.model), load_tokenizer(tokenizer_dir)
    unmerged = adapter_with_weights(model, seed=0)
    merged = copy.deepcopy(unmerged).merge_and_unload()
    gen, settings = fixed_length(sz.max_new_tokens), bench_settings(sz)
    result: dict = {"dialogues": len(dialogues)}
    for name, m in (("original", model), ("unmerged", unmerged), ("merged", merged)):
        summarize(m, tokenizer, dialogues[:1], settings, gen, progress=False)  # warm-up
        t0 = time.perf_counter()
        summarize(m, tokenizer, dialogues, settings, gen, progress=False)
        result[f"{name}_s"] = time.perf_counter() - t0
    return result


def save_models(sizes: dict, out_dir: str, n: int) -> dict:
    """Save a random base model, `n` adapters for it and the `n` merged models they make."""
    model = build_model(Sizes(**sizes).model)
    out = Path(out_dir)
    model.save_pretrained(out / "base")
    paths: dict = {"base": str(out / "base"), "adapters": [], "merged": []}
    for i in range(n):
        adapter = adapter_with_weights(model, seed=i)
        adapter.save_pretrained(out / f"adapter-{i}")
        adapter.merge_and_unload().save_pretrained(out / f"merged-{i}")
        paths["adapters"].append(str(out / f"adapter-{i}"))
        paths["merged"].append(str(out / f"merged-{i}"))
    return paths


def detail(ctx: Context) -> str:
    n = ctx.sizes.serving_adapters
    return f"{len(ctx.infer)} dialogues, {ctx.sizes.max_new_tokens} new tokens each; {n} adapters vs {n} models"


def run(ctx: Context) -> dict:
    n = ctx.sizes.serving_adapters
    r = ctx.isolated(measure, sizes=ctx.sz, tokenizer_dir=ctx.tokenizer_dir, dialogues=ctx.infer)
    r.pop("peak_rss_mb", None)
    r["unmerged_over_merged"] = ratio(r["unmerged_s"], r["merged_s"])
    r["merged_over_original"] = ratio(r["merged_s"], r["original_s"])
    print(
        f"    original {r['original_s']:.2f} s, base + unmerged adapter {r['unmerged_s']:.2f} s, merged "
        f"{r['merged_s']:.2f} s: unmerged / merged {r['unmerged_over_merged']:.2f}x, "
        f"merged / original {r['merged_over_original']:.2f}x"
    )
    saved = ctx.isolated(save_models, sizes=ctx.sz, out_dir=str(ctx.work / "g"), n=n)
    memory = serving_memory(saved["base"], saved["adapters"], saved["merged"])
    r.update(
        adapters=n,
        floor_mb=memory["nothing"],
        adapters_mb=memory["adapters"] - memory["nothing"],
        merged_mb=memory["full"] - memory["nothing"],
    )
    r["memory_ratio"] = ratio(r["adapters_mb"], r["merged_mb"])
    print(
        f"    resident memory above the imports ({r['floor_mb']:.0f} MB): one base + {n} adapters "
        f"{r['adapters_mb']:.0f} MB, {n} merged models {r['merged_mb']:.0f} MB: {r['memory_ratio']:.2f}x"
    )
    return r


def summary(r: dict) -> list[tuple[str, float | None, str]]:
    n = r.get("adapters")
    return [
        ("generation time: base + unmerged adapter / merged model", r.get("unmerged_over_merged"), "x"),
        ("generation time: merged model / original model", r.get("merged_over_original"), "x"),
        (f"memory: one base + {n} adapters / {n} merged models", r.get("memory_ratio") if n else None, "x"),
    ]
