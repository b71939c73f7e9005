"""The offline stand-in for Flan-T5: a SentencePiece tokenizer and a tiny T5 v1.1 model built from DialogSum.

Same architecture family as `google/flan-t5-base` (gated-GELU feed-forward, relative attention, untied
`lm_head`), about 100x smaller, briefly pretrained with T5's span-corruption objective on dialogue text so
that the "original model" of the offline lab knows some language but was never taught to summarize.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import LabError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from transformers import PreTrainedTokenizerBase, T5TokenizerFast

# The architecture of google/flan-t5-base, from its public config.json (used by tests: no download).
FLAN_T5_BASE_CONFIG = dict(
    vocab_size=32128,
    d_model=768,
    d_kv=64,
    d_ff=2048,
    num_layers=12,
    num_decoder_layers=12,
    num_heads=12,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.1,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
)

# The offline stand-in: sized so that CI (2 cores) trains it in minutes (see shared/notes/offline-stand-in.md).
TINY_CONFIG = dict(FLAN_T5_BASE_CONFIG, d_model=128, d_kv=32, d_ff=512, num_layers=3, num_decoder_layers=3, num_heads=4)
TINY_VOCAB = 4000  # SentencePiece pieces, before T5's 100 sentinel tokens


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = TINY_VOCAB, seed: int = 42
) -> T5TokenizerFast:
    """Train a SentencePiece unigram model on `texts` and save it as a T5 tokenizer (with 100 sentinels)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer, T5TokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "spiece")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)),
            model_prefix=prefix,
            vocab_size=vocab_size,
            model_type="unigram",
            # T5's special ids: pad 0, eos 1, unk 2, no bos
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            hard_vocab_limit=False,  # small corpora (tests) get a smaller vocabulary instead of an error
            num_threads=2,
            minloglevel=2,
        )
        slow = T5Tokenizer(vocab_file=prefix + ".model", extra_ids=100, legacy=False)
        fast = T5TokenizerFast(__slow_tokenizer=slow, vocab_file=prefix + ".model", extra_ids=100, legacy=False)
        fast.save_pretrained(out)
    return fast


def build_tiny_t5(vocab_size: int, seed: int = 42, **overrides):
    """A randomly initialised tiny T5 v1.1 (untied `lm_head`), initialised so its first loss is sane."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(**dict(TINY_CONFIG, vocab_size=vocab_size, **overrides))
    model = T5ForConditionalGeneration(config)
    # T5's default init gives the untied lm_head std 1.0: initial logits are huge and the first loss is ~2x a
    # uniform guess. std d_model^-0.5 keeps initial logits O(1).
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, config.d_model**-0.5)
    return model


def span_corrupt(
    ids: list[int],
    sentinel_ids: list[int],
    eos_id: int,
    rng: random.Random,
    noise_density: float = 0.15,
    mean_span: float = 3.0,
) -> tuple[list[int], list[int]]:
    """T5's span corruption: replace random spans by sentinels; the target lists the spans after their sentinels."""
    n = len(ids)
    n_noise = max(1, round(n * noise_density))
    n_spans = max(1, min(len(sentinel_ids), round(n_noise / mean_span)))
    starts = sorted(rng.sample(range(n), n_spans))
    source, target, pos = [], [], 0
    for k, start in enumerate(starts):
        if start < pos:
            continue
        length = max(1, min(n - start, int(rng.expovariate(1 / mean_span)) + 1))
        source += ids[pos:start] + [sentinel_ids[k]]
        target += [sentinel_ids[k]] + ids[start : start + length]
        pos = start + length
    source += ids[pos:] + [eos_id]
    target += [eos_id]
    return source, target


def pretrain_span_corruption(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    steps: int,
    batch_size: int = 32,
    chunk_tokens: int = 128,
    lr: float = 3e-3,
    seed: int = 42,
    progress: bool = True,
):
    """Briefly pretrain `model` on `texts` with span corruption; returns the per-step losses."""
    from torch.nn.utils.rnn import pad_sequence
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    torch.manual_seed(seed)
    sentinels = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    eos = tokenizer.eos_token_id
    # chunks of running text, so every example is about chunk_tokens long
    stream = [t for text in texts for t in tokenizer(text, add_special_tokens=False).input_ids]
    chunks = [stream[i : i + chunk_tokens] for i in range(0, len(stream) - chunk_tokens, chunk_tokens)]
    if not chunks:
        raise LabError("no text to pretrain on", "pass the DialogSum training dialogues")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="Pretraining (span corruption)", disable=not progress)
    for _ in bar:
        pairs = [span_corrupt(rng.choice(chunks), sentinels, eos, rng) for _ in range(batch_size)]
        inputs = pad_sequence([torch.tensor(s) for s, _ in pairs], batch_first=True, padding_value=0)
        labels = pad_sequence([torch.tensor(t) for _, t in pairs], batch_first=True, padding_value=-100)
        loss = model(input_ids=inputs, attention_mask=(inputs != 0).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sched.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def build_offline_model(
    out_dir: str | Path, train_texts: list[str], pretrain_steps: int, seed: int = 42, progress: bool = True
) -> Path:
    """Build the offline stand-in (tokenizer + span-corruption-pretrained tiny T5) into `out_dir`."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    try:
        tokenizer = train_tokenizer(train_texts, tmp, seed=seed)
        print(f"Tokenizer: SentencePiece unigram, {len(tokenizer):,} tokens ({time.time() - t0:.0f} s)")
        model = build_tiny_t5(len(tokenizer), seed=seed)
        print(f"Model: tiny T5 v1.1, {sum(p.numel() for p in model.parameters()):,} parameters, untied lm_head")
        losses = pretrain_span_corruption(
            model, tokenizer, train_texts, steps=pretrain_steps, seed=seed, progress=progress
        )
        if not all(math.isfinite(x) for x in losses):
            raise LabError("pretraining the stand-in diverged (a non-finite loss)", "lower the pretraining rate")
        print(f"Pretraining: {len(losses)} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f}")
        model.half().save_pretrained(tmp)  # fp16 on disk: half the size; loaded as float32
        # renamed into place when complete: a crash never leaves a half-built model under the final name
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Saved the offline original model to {out} ({time.time() - t0:.0f} s)")
    return out


def build_standin(settings, out: str | Path, progress: bool = True) -> Path:
    """`python -m lab_utils build-model`: train the stand-in's tokenizer and pretrain it on DialogSum's text."""
    from ..config import RELEASE_DIR, looks_like_hub_id
    from ..data import load_dialogsum

    if looks_like_hub_id(str(out)):
        raise LabError(
            f"{out!r} looks like a Hugging Face Hub id, and the lab never creates a Hub id as a local folder",
            "give a folder path, e.g. --out data/offline/flan-t5-tiny (or ./name for a folder in the project)",
        )
    out = settings.path(out)
    if out == RELEASE_DIR / "flan-t5-tiny" or RELEASE_DIR in out.parents:
        raise LabError(
            f"{out} is inside the committed release",
            "build into data/ (the default), run the instructor on it, then `python -m lab_utils release`",
        )
    train = load_dialogsum(settings)["train"]
    texts = list(train["dialogue"]) + list(train["summary"])
    return build_offline_model(out, texts, settings.pretrain_steps, seed=settings.seed, progress=progress)
