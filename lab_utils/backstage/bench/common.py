"""What every part of the benchmark shares: its sizes, the machine, the model and tokenizer it builds, the prompts'
batches, the context a part runs in, and the lab's goals a part is checked against."""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import time
from pathlib import Path

from ... import isolated
from ...config import load_settings

# an encoder-decoder sends input tokens through the encoder only and label tokens through the decoder only
POOL_BATCHES = 12  # (b, c, e) typical examples come from the middle of a random pool this many times larger


@dataclasses.dataclass
class Sizes:
    """How much work each part does; the defaults' times are in docs/benchmark.md (2-core AMD EPYC)."""

    model: dict  # T5Config values
    rows: int = 48  # (a) test rows, i.e. 16 dialogues of 3 rows each
    # (a) generated tokens per summary, fixed (min = max) so both sides do the same work: 100 covers 99.9% of the
    # test references (stand-in tokenizer); the course's limit of 200 makes (a) take ~9 minutes on 2 cores
    eval_new_tokens: int = 100
    max_new_tokens: int = 16  # (d, f, g) generated tokens per summary, fixed (min = max)
    eval_batch_size: int = 16  # (a, d, f, g, h) summarize's batch: the lab's (LAB_EVAL_BATCH_SIZE)
    infer_dialogues: int = 8  # (d, f, g) dialogues generated per model / inference mode
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
    rouge_dialogues: int = 16  # (f, h) offline test dialogues scored per engine
    engine_dialogues: int = 16  # (h) dialogues in one batch per engine
    engine_new_tokens: int = 48  # (h) generated tokens per summary, fixed
    copy_mb: int = 1024  # (h) bytes copied per pass of the memory-bandwidth test
    threads: int = 0  # torch threads in each measuring process; 0 = this machine's cores


@dataclasses.dataclass(frozen=True)
class Goal:
    """One of the lab's goals: `key` of a part's result compared with `threshold`, and where the lab states it."""

    key: str
    op: str  # ">=" or "<="
    threshold: float
    what: str
    source: str  # where the lab states the goal (docs/benchmark.md, "The lab's goals")

    def check(self, part: str, result: dict) -> dict | None:
        value = result.get(self.key)
        if value is None:
            return None
        met = value >= self.threshold if self.op == ">=" else value <= self.threshold
        return {
            "part": part,
            "key": self.key,
            "what": self.what,
            "target": f"{self.op} {self.threshold}x",
            "measured": value,
            "met": met,
            "source": self.source,
        }


@dataclasses.dataclass
class Context:
    """What a part reads: the sizes, the threads of each measuring process, the tokenizer, the prompts and examples,
    the offline settings and test split, and a scratch folder removed after the run. Parts share nothing else."""

    sizes: Sizes
    threads: int
    tokenizer_dir: str
    rows: list  # (a) the test rows' dialogues (each dialogue three times)
    unique: list  # their distinct dialogues
    train_examples: list  # (b, e)
    lora_examples: list  # (c)
    settings: object  # the offline profile's settings
    test: object  # the offline test split
    work: Path

    @property
    def sz(self) -> dict:
        """The sizes as the measuring processes take them."""
        return dataclasses.asdict(self.sizes)

    @property
    def infer(self) -> list[str]:
        """(d, f, g) the dialogues generated per model or mode."""
        return self.unique[: self.sizes.infer_dialogues]

    def isolated(self, measure, **kwargs) -> dict:
        """`measure(**kwargs)` in a fresh process with this run's threads, denormals flushed."""
        return isolated.run_isolated(measure, threads=self.threads, flush_denormals=True, **kwargs)


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

    from ...devices import cpu_supports_bf16

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


def ratio(num: float | None, den: float | None) -> float | None:
    return None if not num or not den else num / den


# --- Building blocks (run inside the measuring processes) ---------------------------------------------------------


def build_model(model_config: dict, seed: int = 42):
    """The flan-t5-base architecture (or the smoke test's tiny one) with random weights."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**model_config))
    model.eval()
    return model


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def bench_settings(sz: Sizes):
    """The course profile's settings with the benchmark's lengths and batch (what `summarize` and the recipe read)."""

    return load_settings(
        "course",
        environ={},
        max_source_length=sz.max_source_length,
        max_target_length=sz.max_target_length,
        eval_batch_size=sz.eval_batch_size,
    )


def fixed_length(max_new_tokens: int) -> dict:
    """Greedy decoding of exactly `max_new_tokens` tokens: every summary costs the same work."""
    return {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens, "num_beams": 1, "do_sample": False}


def our_batches(tokenizer, examples: list[dict], batch_size: int, sizes: Sizes, seed: int = 42) -> list[dict]:
    """The lab's preprocessing: the recipe's tokenization and collator (pad to the longest, labels -100), with
    examples grouped by length as `group_by_length=True` does (batch order shuffled)."""

    from datasets import Dataset, DatasetDict

    from ..instructor import data_collator, tokenize

    rows = {k: [e[k] for e in examples] for k in ("dialogue", "summary")}
    settings = bench_settings(sizes)
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
    from ...data import build_prompt

    lengths = [len(ids) for ids in tokenizer([build_prompt(e["dialogue"]) for e in pool]).input_ids]
    order = sorted(range(len(pool)), key=lambda i: lengths[i])
    start = max(0, (len(pool) - n) // 2)
    return [pool[i] for i in order[start : start + n]]


def default_sizes(smoke: bool) -> Sizes:
    """The flan-t5-base architecture with the default sizes, or a tiny model and a few examples (`--smoke`)."""
    from ..standin import FLAN_T5_BASE_CONFIG, TINY_CONFIG

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
        engine_dialogues=4,
        engine_new_tokens=4,
        copy_mb=16,
    )


def prepare_tokenizer(settings, train_texts: list[str], work: Path, smoke: bool) -> tuple[str, str]:
    """The stand-in's tokenizer folder when it is built, else a tokenizer trained here on the training texts."""
    standin = settings.path(settings.model_id)
    if (standin / "tokenizer_config.json").is_file():
        return str(standin), f"the offline stand-in's ({standin})"
    from ..standin import TINY_VOCAB, train_tokenizer

    texts = train_texts[:600] if smoke else train_texts
    t0 = time.perf_counter()
    tok = train_tokenizer(texts, work / "tokenizer", vocab_size=1000 if smoke else TINY_VOCAB)
    return str(work / "tokenizer"), (
        f"SentencePiece, {len(tok):,} tokens, trained here on {len(texts):,} DialogSum texts "
        f"({time.perf_counter() - t0:.0f} s)"
    )


def offline_release_rows(ctx: Context) -> tuple[str, str, list, list] | str:
    """(f, h) The offline release's instruct model, its tokenizer, and `rouge_dialogues` test dialogues with their
    references; or why they cannot be scored (the release is absent)."""
    from ...checkpoints import FULL_CHECKPOINT
    from ...config import RELEASE_DIR
    from ...data import first_dialogue_rows

    tokenizer_dir = RELEASE_DIR / "flan-t5-tiny"
    checkpoint = RELEASE_DIR / FULL_CHECKPOINT
    missing = [p for p in (tokenizer_dir / "tokenizer_config.json", checkpoint / "config.json") if not p.is_file()]
    if missing:
        return f"{missing[0].parent} is absent"
    if (checkpoint / "tokenizer_config.json").is_file():
        tokenizer_dir = checkpoint
    rows = first_dialogue_rows(ctx.test, ctx.sizes.rouge_dialogues)
    return str(checkpoint), str(tokenizer_dir), list(rows["dialogue"]), list(rows["summary"])
