"""(e) What share of this machine's dense fp32 matmul FLOP/s does a training step reach?

The peak is the best of several n x n matmuls, measured before and after training in the same process; a step's
work counts each token passing only the weights it goes through, so the share cannot exceed 100%.
"""

from __future__ import annotations

import statistics
import time

from .b_training_step import time_steps
from .common import Context, Sizes, build_model, load_tokenizer, our_batches, ratio

TITLE = "achieved training FLOP/s vs dense matmul FLOP/s"
GOALS = ()
FLOPS_FORMULA_SPLIT = "6 x (encoder weights x input tokens + (decoder weights + lm_head) x label tokens)"


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


def batch_tokens(batch: dict, pad_id: int) -> tuple[int, int]:
    """Tokens the step actually learns from: (non-pad input tokens, label tokens that are neither -100 nor padding)."""
    mask = batch["attention_mask"] if "attention_mask" in batch else batch["input_ids"] != pad_id
    labels = batch["labels"]
    return int(mask.sum()), int(((labels != -100) & (labels != pad_id)).sum())


def weights_per_token(model) -> tuple[int, int]:
    """Matmul weights an input token passes (encoder) and a label token passes (decoder + lm_head); embedding
    lookups cost no FLOPs."""
    shared = model.shared.weight.numel()
    encoder = sum(p.numel() for p in model.encoder.parameters()) - shared
    decoder = sum(p.numel() for p in model.decoder.parameters()) - shared + model.lm_head.weight.numel()
    return encoder, decoder


def measure(sizes: dict, tokenizer_dir: str, examples: list[dict]) -> dict:
    """The matmul peak, the lab's training steps' FLOP/s, and the matmul peak again."""
    sz = Sizes(**sizes)
    tokenizer = load_tokenizer(tokenizer_dir)
    result: dict = {"matmul_flops_before": measure_matmul_peak(sz.matmul_sizes, sz.matmul_repeats)}
    model = build_model(sz.model)
    batches = our_batches(tokenizer, examples, sz.batch_size, sz)
    times = time_steps(model, batches, lr=1e-5)[1:]
    counts = [batch_tokens(b, tokenizer.pad_token_id) for b in batches[1:]]
    inputs, labels = sum(c[0] for c in counts), sum(c[1] for c in counts)
    encoder, decoder = weights_per_token(model)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    result["step_s"] = statistics.median(times)
    result["train_flops_per_s"] = 6 * (encoder * inputs + decoder * labels) / sum(times)
    result["matmul_flops_after"] = measure_matmul_peak(sz.matmul_sizes, sz.matmul_repeats)
    result["matmul_flops"] = max(result["matmul_flops_before"], result["matmul_flops_after"])
    return result


def detail(ctx: Context) -> str:
    return f"batch {ctx.sizes.batch_size}, 1 warm-up + {ctx.sizes.steps} measured steps, matmuls before and after"


def run(ctx: Context) -> dict:
    r = ctx.isolated(measure, sizes=ctx.sz, tokenizer_dir=ctx.tokenizer_dir, examples=ctx.train_examples)
    r.update(
        matmul_sizes=list(ctx.sizes.matmul_sizes),
        fraction=ratio(r["train_flops_per_s"], r["matmul_flops"]),
        formula=FLOPS_FORMULA_SPLIT,
    )
    sizes_text = "/".join(str(n) for n in ctx.sizes.matmul_sizes)
    print(
        f"    peak dense fp32 matmul (best of {ctx.sizes.matmul_repeats} x sizes {sizes_text}): "
        f"{r['matmul_flops_before'] / 1e9:.1f} GFLOP/s before training, {r['matmul_flops_after'] / 1e9:.1f} after\n"
        f"    training: {r['train_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * r['fraction']:.0f}% of the peak, "
        f"counting {FLOPS_FORMULA_SPLIT}"
    )
    return r


def summary(r: dict) -> list[tuple[str, float | None, str]]:
    fraction = r.get("fraction")
    return [("training FLOP/s / peak matmul FLOP/s", None if fraction is None else 100 * fraction, "%")]
