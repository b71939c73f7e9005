"""`summarize`: the instruction prompt, each distinct dialogue once, length-sorted batches, greedy decoding."""

# The notebook, the instructor and the summarize command all call it, so a summary is made the same way everywhere.

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .data import build_prompt
from .devices import autocast, device_of, resolve_precision
from .errors import LabError

_NOTED: set[tuple] = set()  # truncation notes already printed in this process


def summarize(model, tokenizer, dialogues: str | Sequence[str], settings, gen_kwargs: dict | None = None,
              batch_size: int | None = None, progress: bool = True, desc: str = "Summarizing",
              prompt: Callable[[str], str] | None = None) -> list[str]:  # fmt: skip
    """Summaries of `dialogues` with the instruction prompt (or `prompt`), greedy (or `gen_kwargs`), as the course."""
    # prompts are truncated at max_source_length, as in training; each distinct dialogue is generated once (the test
    # split repeats each three times), longest first in batches of eval_batch_size, so that a batch pads little
    dialogues = [dialogues] if isinstance(dialogues, str) else list(dialogues)  # one string is one dialogue
    if not dialogues:
        raise LabError("no dialogues to summarize", "pass at least one dialogue")
    for i, d in enumerate(dialogues):  # each a non-empty string, or a `LabError` naming the bad one
        if not isinstance(d, str) or not d.strip():
            what = "empty" if isinstance(d, str) else f"a {type(d).__name__}, not a string"
            raise LabError(f"dialogue #{i} is {what}", "pass non-empty dialogue text (str)")
    if gen_kwargs is None:  # greedy, as the course (no_repeat_ngram_size 0 is off in transformers and CTranslate2)
        gen_kwargs = dict(max_new_tokens=settings.max_new_tokens, num_beams=1, do_sample=False,
                          no_repeat_ngram_size=settings.no_repeat_ngram_size)  # fmt: skip
    batch_size = settings.eval_batch_size if batch_size is None else batch_size
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise LabError(f"batch_size={batch_size!r} must be a whole number of at least 1", "use e.g. batch_size=16")
    distinct = list(dict.fromkeys(dialogues))
    prompts = [(prompt or build_prompt)(d) for d in distinct]
    lengths = [len(ids) for ids in tokenizer(prompts).input_ids]
    too_long = sum(n > settings.max_source_length for n in lengths)
    if too_long and (note := (too_long, settings.max_source_length, hash(tuple(prompts)))) not in _NOTED:
        _NOTED.add(note)  # once per set of dialogues: the next model's summaries of them need not say it again
        print(f"Note: {too_long} of {len(prompts)} prompts are longer than {settings.max_source_length} tokens and "
              "were truncated, as in training.")  # fmt: skip
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    device = device_of(model)
    precision = resolve_precision(settings.precision, device)
    summaries = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, precision):
            for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
                idx = order[start : start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                                max_length=settings.max_source_length).to(device)  # fmt: skip
                out = model.generate(**enc, **gen_kwargs)
                for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
                    summaries[i] = text.strip()
    finally:
        model.train(was_training)
    by_dialogue = dict(zip(distinct, summaries))
    return [by_dialogue[d] for d in dialogues]
