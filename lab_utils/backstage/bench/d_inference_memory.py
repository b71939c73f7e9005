"""(d) Does a LoRA adapter loaded for inference (`is_trainable=False`) take less memory than the full model?"""

from __future__ import annotations

from pathlib import Path

from .common import Context, Sizes, bench_settings, build_model, fixed_length, load_tokenizer, ratio

TITLE = "inference memory: base + LoRA adapter vs the full model"
GOALS = ()


def save_models(sizes: dict, out_dir: str) -> dict:
    """Save a random flan-t5-base and a LoRA adapter for it (as the instructor's run would)."""
    from peft import get_peft_model

    from ..instructor import lora_config

    model = build_model(Sizes(**sizes).model)
    model.save_pretrained(Path(out_dir) / "full")
    get_peft_model(model, lora_config()).save_pretrained(Path(out_dir) / "adapter")
    return {}


def measure(sizes: dict, tokenizer_dir: str, out_dir: str, dialogues: list[str], peft: bool) -> dict:
    """Load the full model, or base + adapter with `PeftModel.from_pretrained(is_trainable=False)`, and summarize one
    batch; the parent reads this process's peak resident memory."""
    from transformers import AutoModelForSeq2SeqLM

    from ...generation import summarize

    sz = Sizes(**sizes)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(Path(out_dir) / "full")
    if peft:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(out_dir) / "adapter"), is_trainable=False)
    summarize(model, tokenizer, dialogues, bench_settings(sz), fixed_length(sz.max_new_tokens), progress=False)
    return {}


def detail(ctx: Context) -> str:
    return f"load + summarize {len(ctx.infer)} dialogues, one process each"


def run(ctx: Context) -> dict:
    out = str(ctx.work / "d")
    ctx.isolated(save_models, sizes=ctx.sz, out_dir=out)
    kw = dict(sizes=ctx.sz, tokenizer_dir=ctx.tokenizer_dir, out_dir=out, dialogues=ctx.infer)
    full, peft = ctx.isolated(measure, peft=False, **kw), ctx.isolated(measure, peft=True, **kw)
    r = {
        "full_peak_rss_mb": full["peak_rss_mb"],
        "peft_peak_rss_mb": peft["peak_rss_mb"],
        "memory_ratio": ratio(peft["peak_rss_mb"], full["peak_rss_mb"]),
    }
    print(
        f"    full model {r['full_peak_rss_mb']:.0f} MB, base + adapter {r['peft_peak_rss_mb']:.0f} MB: "
        f"{r['memory_ratio']:.2f}x"
    )
    return r


def summary(r: dict) -> list[tuple[str, float | None, str]]:
    return [("inference memory: base + adapter / full model", r.get("memory_ratio"), "x")]
