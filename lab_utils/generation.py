"""Generating summaries: the instruction prompt, length-sorted batches, greedy decoding.

The notebook, the instructor and the summarize command all call `summarize`, so a summary is made the same way
wherever it is made.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from tqdm.auto import tqdm

from .data import build_prompt
from .devices import autocast, device_of, resolve_precision
from .errors import LabError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .config import Settings


def generation_kwargs(settings: Settings) -> dict:
    """Greedy decoding settings for this profile (the course: greedy, up to 200 new tokens)."""
    kwargs = {"max_new_tokens": settings.max_new_tokens, "num_beams": 1, "do_sample": False}
    if settings.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
    return kwargs


def check_dialogues(dialogues) -> list[str]:
    """The dialogues as a list of non-empty strings (one string is one dialogue), or a `LabError` naming the bad one."""
    if isinstance(dialogues, str):
        dialogues = [dialogues]
    dialogues = list(dialogues)
    if not dialogues:
        raise LabError("no dialogues to summarize", "pass at least one dialogue")
    for i, d in enumerate(dialogues):
        if not isinstance(d, str):
            raise LabError(f"dialogue #{i} is a {type(d).__name__}, not a string", "pass dialogue text (str)")
        if not d.strip():
            raise LabError(f"dialogue #{i} is empty", "pass a non-empty dialogue")
    return dialogues


def plan_batches(tokenizer, prompts: Sequence[str], batch_size: int, max_source_length: int) -> list[list[int]]:
    """The prompts' positions in batches of `batch_size`, longest first: each batch pads little. Warns (once per
    session) when prompts are longer than `max_source_length`, where they are truncated as in training."""
    lengths = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True).input_ids]
    too_long = sum(n > max_source_length for n in lengths)
    if too_long:
        warnings.warn(
            f"{too_long} of {len(prompts)} prompts exceed {max_source_length} tokens and were truncated "
            "(the model cannot read past its input limit)",
            stacklevel=1,  # a fixed location: shown once per session, the same in every run of the notebook
        )
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def generate_batches(
    model,
    tokenizer,
    prompts: Sequence[str],
    batches: list[list[int]],
    gen_kwargs: dict,
    max_source_length: int,
    skip: Collection[int] = (),
) -> Iterator[tuple[int, list[str]]]:
    """(batch number, its summaries) for each batch not in `skip`, generated under `torch.inference_mode()`."""
    device = device_of(model)
    with torch.inference_mode():
        for b, idx in enumerate(batches):
            if b in skip:
                continue
            enc = tokenizer(
                [prompts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_source_length,
            ).to(device)
            out = model.generate(**encoded_inputs(model, tokenizer, enc), **gen_kwargs)
            yield b, [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


ENCODE_MAX_CHUNK = 8  # prompts per encoder pass at most
ENCODE_MAX_PADDING = 0.1  # a chunk grows while its padding stays under this share of its tokens


def encoder_chunks(lengths: Sequence[int]) -> list[range]:
    """Split a batch sorted by decreasing prompt length into chunks whose padding stays under ENCODE_MAX_PADDING.

    A batch is padded to its longest prompt, and a test set's dialogues differ a lot in length (the first 16 of
    DialogSum's test split: 125 to 489 tokens), so encoding a batch at once spends about half of the encoder's work on
    padding (and more of its attention); encoding it in chunks of similar length spends almost none. Measured at the
    lab's own batches (2-core AMD EPYC, greedy, same summaries): the notebook's 10 live dialogues in the course
    profile (flan-t5-base architecture, batch 16, 512-token prompts, 30 new tokens) 7.2-8.2 s chunked vs 12.5-12.8 s
    whole (1.6x); the offline instructor's 500 test dialogues (stand-in, batch 32) 8.2-8.8 s vs 9.0-13.1 s.
    """
    chunks, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and end - start < ENCODE_MAX_CHUNK:
            longest, total = lengths[start], sum(lengths[start : end + 1])
            if longest * (end + 1 - start) > (1 + ENCODE_MAX_PADDING) * total:
                break
            end += 1
        chunks.append(range(start, end))
        start = end
    return chunks


def encoded_inputs(model, tokenizer, enc) -> dict:
    """`generate`'s inputs with the encoder already run chunk by chunk (see `encoder_chunks`): each chunk is padded to
    its own longest prompt, then the outputs are laid out at the batch's length; the padding stays masked."""
    from transformers.modeling_outputs import BaseModelOutput

    lengths = enc["attention_mask"].sum(dim=1).tolist()
    if (
        not hasattr(model, "get_encoder")
        or tokenizer.padding_side != "right"
        or lengths != sorted(lengths, reverse=True)
    ):
        return dict(enc)  # not an encoder-decoder, or not the layout assumed here: generate encodes the batch
    encoder = model.get_encoder()
    hidden = None
    for chunk in encoder_chunks(lengths):
        width = lengths[chunk.start]
        rows = slice(chunk.start, chunk.stop)
        out = encoder(input_ids=enc["input_ids"][rows, :width], attention_mask=enc["attention_mask"][rows, :width])
        states = out.last_hidden_state
        if hidden is None:
            hidden = states.new_zeros((len(lengths), enc["input_ids"].shape[1], states.shape[-1]))
        hidden[rows, :width] = states
    return {"encoder_outputs": BaseModelOutput(last_hidden_state=hidden), "attention_mask": enc["attention_mask"]}


class BatchStore(Protocol):
    """Where finished batches are kept, so a killed run resumes (the instructor's `GenerationCache`)."""

    def restore(self, model, prompts: list[str], batches: list[list[int]], settings: list) -> dict[int, list[str]]: ...

    def save(self, batch: int, summaries: list[str]) -> None: ...


def summarize(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dialogues: str | Sequence[str],
    settings: Settings,
    gen_kwargs: dict | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "Summarizing",
    prompt: Callable[[str], str] | None = None,
    store: BatchStore | None = None,
) -> list[str]:
    """Summarize dialogues with the instruction prompt, as the notebook and the instructor both do.

    Prompts are truncated at `settings.max_source_length` (as in training) and decoded with
    `generation_kwargs(settings)` unless `gen_kwargs` is given; each distinct dialogue is generated once (the test
    split repeats each three times), in length-sorted batches of `settings.eval_batch_size`. `prompt` replaces the
    summary prompt (the topic adapter's task); with a `store`, batches it already holds are not generated again.
    """
    prompt = prompt or build_prompt
    dialogues = check_dialogues(dialogues)
    gen_kwargs = generation_kwargs(settings) if gen_kwargs is None else gen_kwargs
    batch_size = settings.eval_batch_size if batch_size is None else batch_size
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise LabError(f"batch_size={batch_size!r} must be a whole number of at least 1", "use e.g. batch_size=16")
    if gen_kwargs.get("max_new_tokens", 1) < 1:
        raise LabError(
            f"max_new_tokens={gen_kwargs['max_new_tokens']!r} must be at least 1", "set `LAB_MAX_NEW_TOKENS`"
        )
    distinct = list(dict.fromkeys(dialogues))
    prompts = [prompt(d) for d in distinct]
    batches = plan_batches(tokenizer, prompts, batch_size, settings.max_source_length)
    done = {}
    if store is not None:
        done = store.restore(model, prompts, batches, [settings.max_source_length, sorted(gen_kwargs.items())])
        if done:
            print(f"{desc}: resuming, {len(done)} of {len(batches)} batches already done")
    summaries = [""] * len(prompts)
    device = device_of(model)
    precision = resolve_precision(settings.precision, device)  # fp32 on the course's CPU: generation as the course's
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=len(batches), initial=len(done), desc=desc, disable=not progress, unit="batch")
        with bar, autocast(device, precision):
            length = settings.max_source_length
            for b, texts in generate_batches(model, tokenizer, prompts, batches, gen_kwargs, length, skip=set(done)):
                if store is not None:
                    store.save(b, texts)
                done[b] = texts
                bar.update(1)
    finally:
        model.train(was_training)
    for b, idx in enumerate(batches):
        for i, text in zip(idx, done[b]):
            summaries[i] = text
    by_dialogue = dict(zip(distinct, summaries))
    return [by_dialogue[d] for d in dialogues]
