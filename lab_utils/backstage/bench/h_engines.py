"""(h) How fast does each serving engine generate (PyTorch fp32 and int8, CTranslate2 fp32 and int8), what does
each cost in ROUGE, and how close does each come to the memory-bandwidth limit of greedy decoding?

A greedy decoding step at a small batch does little arithmetic per byte: it reads every decoder weight (and the
lm_head), the cross-attention keys and values of the whole batch's prompts, and the self-attention cache so far. So
its limit is this machine's memory bandwidth (measured here with a copy test) divided by the bytes a step reads; a
step's time is measured as the difference between generating N tokens and generating one (the encoder's work and
the first step cancel).
"""

from __future__ import annotations

import time
from pathlib import Path

from .common import Context, Goal, Sizes, bench_settings, build_model, fixed_length, load_tokenizer, ratio
from .f_inference_modes import release_rouge, rouge_change_rows

TITLE = "serving engines: PyTorch fp32 / int8 vs CTranslate2 fp32 / int8, against the memory-bandwidth limit"
ENGINES = ("fp32", "int8", "ctranslate2-fp32", "ctranslate2")
GOALS = (
    Goal(
        "ctranslate2_speedup",
        ">=",
        3.0,
        "CTranslate2 int8 generation / PyTorch fp32, batched",
        "serving: CTranslate2 int8 at 3x PyTorch fp32 generation",
    ),
)
ENGINE_REPEATS = 2  # timings per engine and length, the best kept
WEIGHT_BYTES = {"fp32": 4, "int8": 1, "ctranslate2-fp32": 4, "ctranslate2": 1}  # per decoder weight


def save_and_convert(sizes: dict, tokenizer_dir: str, out_dir: str) -> dict:
    """A random model of the sizes' architecture saved with the tokenizer, and its two CTranslate2 conversions."""
    from ...engines import CT2_QUANTIZATION, convert_to_ctranslate2

    out = Path(out_dir)
    model = build_model(Sizes(**sizes).model)
    model.save_pretrained(out / "model")
    load_tokenizer(tokenizer_dir).save_pretrained(out / "model")
    del model
    t0 = time.perf_counter()
    folders = {}
    for engine, quantization in CT2_QUANTIZATION.items():
        folders[engine] = str(convert_to_ctranslate2(out / "model", out / engine, quantization))
    return {"model": str(out / "model"), "converted": folders, "convert_s": time.perf_counter() - t0}


def measure_engine(sizes: dict, model_dir: str, converted: dict, dialogues: list[str], engine: str) -> dict:
    """Seconds for `summarize` on `engine` with 1 and with `engine_new_tokens` new tokens (greedy, fixed length),
    all dialogues in one batch; and the prompts' lengths (what cross-attention reads)."""
    import hashlib

    from transformers import AutoModelForSeq2SeqLM

    from ...data import build_prompt
    from ...engines import CT2_QUANTIZATION, load_ctranslate2, prepare_for_inference
    from ...generation import summarize

    sz = Sizes(**sizes)
    tokenizer = load_tokenizer(model_dir)
    if engine in CT2_QUANTIZATION:
        digest = hashlib.sha256(converted[engine].encode()).hexdigest()  # no generation cache here: a name suffices
        model = load_ctranslate2(converted[engine], tokenizer, CT2_QUANTIZATION[engine], digest)
    else:
        model = prepare_for_inference(AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype="float32"), engine)
    settings = bench_settings(Sizes(**{**sizes, "eval_batch_size": len(dialogues)}))
    summarize(model, tokenizer, dialogues[:2], settings, fixed_length(2), progress=False)  # warm-up
    times: dict = {}
    for _ in range(ENGINE_REPEATS):  # the best of each: one timing on a shared 2-core machine swings by 30%
        for n in (1, sz.engine_new_tokens):
            t0 = time.perf_counter()
            summarize(model, tokenizer, dialogues, settings, fixed_length(n), progress=False)
            times[n] = min(times.get(n, float("inf")), time.perf_counter() - t0)
    lengths = tokenizer([build_prompt(d) for d in dialogues], truncation=True, max_length=sz.max_source_length)
    return {
        "s": times[sz.engine_new_tokens],
        "one_token_s": times[1],
        "step_s": (times[sz.engine_new_tokens] - times[1]) / (sz.engine_new_tokens - 1),
        "prompt_lengths": [len(ids) for ids in lengths.input_ids],
    }


def measure_bandwidth(megabytes: int, repeats: int = 5) -> dict:
    """This process's memory bandwidth, best of `repeats`: a copy of `megabytes` (read + write counted, as STREAM
    does; the cache also reads each destination line before writing it, so the true traffic is higher) and a read
    (a sum over `megabytes` of fp32). The limit is the higher: a decoding step mostly reads."""
    import torch

    src = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: the pages are touched
    nbytes = src.numel() * 4
    copy = 2 * nbytes / min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    read = nbytes / min(_timed(lambda: src.sum()) for _ in range(repeats))
    return {"copy_bytes_per_s": copy, "read_bytes_per_s": read, "bytes_per_s": max(copy, read)}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bytes_per_step(model_config: dict, engine: str, prompt_lengths: list[int], new_tokens: int) -> dict:
    """What one greedy decoding step of the whole batch reads, in bytes: the decoder's matmul weights (self-attention
    q/k/v/o, the cross-attention's q and o (its k and v are computed once, from the encoder's output), the
    feed-forward) and the lm_head, at the engine's weight size, once per sub-batch the engine decodes (PyTorch decodes
    the batch at once, CTranslate2 in length-sorted sub-batches of `CT2_SUB_BATCH`); the cross-attention keys and
    values of every prompt, padded to its sub-batch's longest; and the self-attention cache at the mean length of
    the generation; caches and activations in fp32 on every engine."""
    from ...engines import CT2_QUANTIZATION, CT2_SUB_BATCH

    d, inner = model_config["d_model"], model_config["num_heads"] * model_config["d_kv"]
    layers = model_config.get("num_decoder_layers") or model_config["num_layers"]
    gated = str(model_config.get("feed_forward_proj", "")).startswith("gated")
    ff = (3 if gated else 2) * d * model_config["d_ff"]
    weights = layers * (4 * d * inner + 2 * d * inner + ff) + d * model_config["vocab_size"]
    lengths = sorted(prompt_lengths, reverse=True)
    size = CT2_SUB_BATCH if engine in CT2_QUANTIZATION else len(lengths)
    passes = [lengths[i : i + size] for i in range(0, len(lengths), size)]
    padded = sum(len(p) * p[0] for p in passes)  # prompt positions cross-attention reads, padding included
    weight_bytes = weights * WEIGHT_BYTES[engine] * len(passes)
    cross = layers * 2 * padded * inner * 4
    self_cache = layers * 2 * len(lengths) * ((new_tokens + 1) / 2) * inner * 4
    return {
        "decoder_weights": weights,
        "passes": len(passes),
        "weight_bytes": weight_bytes,
        "cross_attention_bytes": cross,
        "self_attention_bytes": self_cache,
        "total": weight_bytes + cross + self_cache,
    }


def detail(ctx: Context) -> str:
    n = min(ctx.sizes.engine_dialogues, len(ctx.unique))
    return f"{n} dialogues in one batch, {ctx.sizes.engine_new_tokens} new tokens each, one process per engine"


def run(ctx: Context) -> dict:
    sz = ctx.sizes
    dialogues = ctx.unique[: sz.engine_dialogues]
    saved = ctx.isolated(save_and_convert, sizes=ctx.sz, tokenizer_dir=ctx.tokenizer_dir, out_dir=str(ctx.work / "h"))
    print(f"    saved and converted to CTranslate2 fp32 and int8 in {saved['convert_s']:.0f} s")
    measured = ctx.isolated(measure_bandwidth, megabytes=sz.copy_mb)
    bandwidth = measured["bytes_per_s"]
    print(
        f"    memory bandwidth, best of 5 over {sz.copy_mb} MB: copy {measured['copy_bytes_per_s'] / 1e9:.1f} GB/s "
        f"(read + write), read {measured['read_bytes_per_s'] / 1e9:.1f} GB/s; the limit below uses "
        f"{bandwidth / 1e9:.1f} GB/s"
    )
    r: dict = {"dialogues": len(dialogues), "new_tokens": sz.engine_new_tokens, "bandwidth_bytes_per_s": bandwidth}
    r["copy_bytes_per_s"], r["read_bytes_per_s"] = measured["copy_bytes_per_s"], measured["read_bytes_per_s"]
    r["convert_s"] = saved["convert_s"]
    batch = len(dialogues)
    for engine in ENGINES:
        m = ctx.isolated(
            measure_engine,
            sizes=ctx.sz,
            model_dir=saved["model"],
            converted=saved["converted"],
            dialogues=dialogues,
            engine=engine,
        )
        m.pop("peak_rss_mb", None)
        step = bytes_per_step(sz.model, engine, m["prompt_lengths"], sz.engine_new_tokens)
        m["bytes_per_step"] = step["total"]
        m["bytes"] = step
        m["tokens_per_s"] = batch * sz.engine_new_tokens / m["s"]
        m["decode_tokens_per_s"] = batch / m["step_s"] if m["step_s"] > 0 else None
        m["limit_tokens_per_s"] = batch * bandwidth / step["total"]
        m["bandwidth_share"] = ratio(m["decode_tokens_per_s"], m["limit_tokens_per_s"])
        r[engine] = m
        share = m["bandwidth_share"]
        limit = "too short to time apart" if share is None else f"{100 * share:.0f}% of the bandwidth limit"
        print(
            f"    {engine:<16} {m['s']:6.2f} s ({m['tokens_per_s']:.0f} tokens/s); "
            f"a decoding step {1e3 * m['step_s']:.0f} ms reads {step['total'] / 1e6:.0f} MB: {limit}"
        )
    for engine in ENGINES[1:]:
        r[f"{engine.replace('-', '_')}_speedup"] = ratio(r["fp32"]["s"], r[engine]["s"])
    print("    vs PyTorch fp32: " + ", ".join(f"{e} {r[e.replace('-', '_') + '_speedup']:.2f}x" for e in ENGINES[1:]))
    r["release"] = release_rouge(ctx, list(ENGINES[1:]))
    return r


def summary(r: dict) -> list[tuple[str, float | None, str]]:
    rows = []
    for engine in ENGINES[1:]:
        rows.append((f"generation speed-up {engine} / PyTorch fp32", r.get(f"{engine.replace('-', '_')}_speedup"), "x"))
    for engine in ENGINES:
        share = (r.get(engine) or {}).get("bandwidth_share")
        rows.append((f"{engine}: decoding speed / memory-bandwidth limit", None if share is None else 100 * share, "%"))
    rows += rouge_change_rows(r.get("release") or {}, ENGINES[1:])
    return rows
