"""The offline stand-in for Flan-T5: a SentencePiece tokenizer and a tiny T5 v1.1 model built from DialogSum."""

# Same architecture family as `google/flan-t5-base` (gated-GELU feed-forward, relative attention, untied `lm_head`),
# about 100x smaller, pretrained on DialogSum's text (dialogues and summaries as plain text, never as pairs) so that the
# "original model" of the offline lab knows some language but was never taught to summarize.
#
# What made it work (measured; docs/instructor.md has the figures): a tiny encoder-decoder learns to read its encoder
# very slowly (T5's span corruption, and a high learning rate, left the decoder writing one typical sentence for every
# input after fine-tuning). So pretraining first teaches it to copy its input (short chunks, target = the input), then
# to restore a noised input (longer chunks, 15% of the tokens in masked spans, target = the clean text), at a moderate
# learning rate with warm-up and cosine decay. Fine-tuned, it then summarizes each dialogue differently.

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

import torch

from ..config import looks_like_hub_id
from ..errors import LabError
from ..files import check_output, write_folder

# The architecture of google/flan-t5-base, from its public config.json (used by tests: no download).
FLAN_T5_BASE_CONFIG = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)  # fmt: skip

# The offline stand-in: sized so that CI (2 cores) trains it in minutes (measured: 2.8M parameters, ~1 s a step at
# batch 32, against 11.5M and ~3.8 s for d_model 256 with 4+4 layers; docs/instructor.md says how it is trained).
TINY_CONFIG = dict(FLAN_T5_BASE_CONFIG, d_model=128, d_kv=32, d_ff=512, num_layers=3, num_decoder_layers=3, num_heads=4)
TINY_VOCAB = 4000  # SentencePiece pieces, before T5's 100 sentinel tokens


def train_tokenizer(texts, out_dir: str | Path, vocab_size: int = TINY_VOCAB):
    """Train a SentencePiece unigram model on `texts` and save it as a T5 tokenizer (with 100 sentinels)."""
    import sentencepiece as spm
    from transformers import T5Tokenizer, T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "spiece")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)), model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5's special ids: pad 0, eos 1, unk 2, no bos
            character_coverage=1.0, num_threads=2, minloglevel=2,
            hard_vocab_limit=False,  # small corpora (tests) get a smaller vocabulary instead of an error
        )  # fmt: skip
        slow = T5Tokenizer(vocab_file=prefix + ".model", extra_ids=100, legacy=False)
        fast = T5TokenizerFast(__slow_tokenizer=slow, vocab_file=prefix + ".model", extra_ids=100, legacy=False)
        fast.save_pretrained(out_dir)  # the folder, and any above it, made if missing
    return fast


def build_tiny_t5(vocab_size: int, seed: int = 42, **overrides):
    """A randomly initialised tiny T5 v1.1 (untied `lm_head`), initialised so its first loss is sane."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**dict(TINY_CONFIG, vocab_size=vocab_size, **overrides)))
    # T5's default init gives the untied lm_head std 1.0: initial logits are huge and the first loss is ~2x a
    # uniform guess. The head starts as the input embedding scaled by d_model^-0.5 (still untied): logits O(1), and a
    # token's output row starts where its input row is, which helps the copy objective below.
    with torch.no_grad():
        model.lm_head.weight.copy_(model.shared.weight * model.config.d_model**-0.5)
    return model


# The pretraining recipe: (share of the steps, tokens per chunk, objective), run in this order.
PRETRAIN_PHASES = ((2 / 3, 32, "copy"), (1 / 3, 64, "denoise"))
PRETRAIN_LR = 1e-3  # peak learning rate (3e-3 stalls: see the notes at the top)
PRETRAIN_WARMUP = 100  # steps of rising learning rate; then cosine decay to 10% of the peak
PRETRAIN_BATCH = 32
MASK_FRACTION, MEAN_SPAN = 0.15, 3.0  # denoising: share of tokens masked, mean length of a masked span


def denoise(ids: list[int], sentinel_ids: list[int], eos_id: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Mask spans covering MASK_FRACTION of the tokens (one sentinel per span); the target is the clean text."""
    n = len(ids)
    masked, covered, tries = [False] * n, 0, 0
    while covered < round(n * MASK_FRACTION) and tries < 100:
        tries, length, p = tries + 1, 0, rng.random()
        while p > math.exp(-MEAN_SPAN):  # the span's length: a Poisson draw (Knuth's), as BART's text infilling
            length, p = length + 1, p * rng.random()
        start = rng.randrange(n)
        for i in range(start, min(n, start + max(1, length))):
            covered += not masked[i]
            masked[i] = True
    source, spans = [], 0
    for i, token in enumerate(ids):
        if not masked[i]:
            source.append(token)
        elif i == 0 or not masked[i - 1]:
            source.append(sentinel_ids[min(spans, len(sentinel_ids) - 1)])
            spans += 1
    return source + [eos_id], ids + [eos_id]


def pretrain(model, tokenizer, texts: list[str], steps: int, seed: int = 42) -> list[float]:
    """Pretrain `model` on `texts` with PRETRAIN_PHASES (copy, then denoise); returns the per-step losses."""
    from torch.nn.utils.rnn import pad_sequence
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    torch.manual_seed(seed)
    texts = list(texts)
    rng.shuffle(texts)
    sentinels, eos = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)]), tokenizer.eos_token_id
    stream = [t for ids in tokenizer(texts, add_special_tokens=False).input_ids for t in ids]
    if len(stream) <= max(length for _, length, _ in PRETRAIN_PHASES):
        raise LabError("no text to pretrain on", "pass the DialogSum training dialogues")
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01)

    def rate(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))
        return min(1.0, (step + 1) / PRETRAIN_WARMUP) * (0.1 + 0.9 * cosine)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    plan = [(length, objective) for share, length, objective in PRETRAIN_PHASES for _ in range(round(share * steps))]
    plan = (plan + [plan[-1]] * steps)[:steps]
    dropouts = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    # no dropout layers while pretraining (T5's attention dropout, a functional call, stays on in train mode); the
    # saved model keeps its configured rate
    for module in dropouts:
        module.p = 0.0
    model.train()
    losses = []
    bar = tqdm(plan, desc="Pretraining (copy, then denoise)")
    for length, objective in bar:
        pairs = []
        for _ in range(PRETRAIN_BATCH):
            start = rng.randrange(len(stream) - length)
            ids = stream[start : start + length]
            pairs.append((ids + [eos], ids + [eos]) if objective == "copy" else denoise(ids, sentinels, eos, rng))
        inputs = pad_sequence([torch.tensor(s) for s, _ in pairs], batch_first=True, padding_value=0)
        labels = pad_sequence([torch.tensor(t) for _, t in pairs], batch_first=True, padding_value=-100)
        loss = model(input_ids=inputs, attention_mask=(inputs != 0).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(objective=objective, loss=f"{loss.item():.3f}")
    for module in dropouts:
        module.p = model.config.dropout_rate
    model.eval()
    return losses


def build_offline_model(out_dir: str | Path, train_texts: list[str], pretrain_steps: int, seed: int = 42) -> Path:
    """Build the offline stand-in (tokenizer + pretrained tiny T5) into `out_dir`."""
    # random weights give denormal floats in the backward pass, which x86 computes in slow microcode (measured 1.6 vs
    # 1.2 s/step for this model): flushing them to zero changes nothing that matters to training
    torch.set_flush_denormal(True)
    t0 = time.time()
    with write_folder(out_dir) as tmp:  # in place only when complete, recorded as the lab's
        tokenizer = train_tokenizer(train_texts, tmp)
        print(f"Tokenizer: SentencePiece unigram, {len(tokenizer):,} tokens ({time.time() - t0:.0f} s)")
        model = build_tiny_t5(len(tokenizer), seed=seed)
        print(f"Model: tiny T5 v1.1, {sum(p.numel() for p in model.parameters()):,} parameters, untied lm_head")
        losses = pretrain(model, tokenizer, train_texts, steps=pretrain_steps, seed=seed)
        if not all(math.isfinite(x) for x in losses):
            raise LabError("pretraining the stand-in diverged (a non-finite loss)", "lower the pretraining rate")
        print(f"Pretraining: {len(losses)} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f}")
        model.half().save_pretrained(tmp)  # fp16 on disk: half the size; loaded as float32
    print(f"Saved the offline original model to {out_dir} ({time.time() - t0:.0f} s)")
    return Path(out_dir)


def build_standin(settings, out: str | Path) -> Path:
    """`python -m lab_utils build-model`: train the stand-in's tokenizer and pretrain it on DialogSum's text."""
    # `out` is resolved against the current folder (a command-line path); the release is made by `release`, never here
    from ..data import load_dialogsum

    if looks_like_hub_id(str(out)):
        raise LabError(
            f"{out!r} looks like a Hugging Face Hub id, and the lab never creates a Hub id as a local folder",
            "give a folder path, e.g. --out data/offline/flan-t5-tiny (or ./name for a new folder here)",
        )
    out = check_output(out, "the stand-in's folder (--out)", folder=True)  # a folder the lab did not write: refused
    train = load_dialogsum(settings)["train"]
    return build_offline_model(out, [*train["dialogue"], *train["summary"]], settings.pretrain_steps, settings.seed)
