"""Serving engines: what runs `generate` for `summarize`, with the same prompts, batches and decoding settings."""

# | engine             | what it is                                                                              |
# | `pytorch`          | transformers' `generate` (at `LAB_PRECISION`: fp32 on a CPU)                            |
# | `ctranslate2`      | the model converted to CTranslate2 with int8 weights, on the CPU (what serves T5 there) |
# | `ctranslate2-fp32` | the same conversion with fp32 weights                                                   |
# A LoRA adapter is served by CTranslate2 once merged (`merge_and_unload`): the converter reads a plain checkpoint.

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .errors import LabError

ENGINES = ("pytorch", "ctranslate2", "ctranslate2-fp32")
CT2_QUANTIZATION = {"ctranslate2": "int8", "ctranslate2-fp32": "float32"}
# int8 matmuls with fp32 for the rest (the default would follow the saved dtype, fp16, which CPUs compute slowly)
CT2_COMPUTE_TYPE = {"int8": "int8_float32", "float32": "float32"}
# prompts encoded and decoded together at most. Measured (flan-t5-base, int8, 2-core AMD EPYC, 16 DialogSum prompts
# of 125-489 tokens, 48 new tokens): all 16 at once 9.0-9.3 s, by 8 7.5-7.7 s, by 4 11.5 s
CT2_SUB_BATCH = 8


class CTranslate2Model(torch.nn.Module):
    """A CTranslate2 `Translator` behind a transformers-style `generate(input_ids, attention_mask, ...)`."""

    # greedy only (CTranslate2's beam search normalises lengths unlike transformers'): max_new_tokens, min_new_tokens
    # and no_repeat_ngram_size map one to one; anything else is refused

    def __init__(self, translator, tokenizer):
        super().__init__()
        self.translator, self.tokenizer = translator, tokenizer

    def generate(self, input_ids, attention_mask=None, max_new_tokens=20, min_new_tokens=0, num_beams=1,
                 do_sample=False, no_repeat_ngram_size=0, **unsupported):  # fmt: skip
        if do_sample or num_beams != 1 or unsupported:
            what = ", ".join(sorted(unsupported)) or ("do_sample=True" if do_sample else f"num_beams={num_beams}")
            raise LabError(f"the CTranslate2 engine does not take {what}", "serve it with greedy settings")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        tokens = [self.tokenizer.convert_ids_to_tokens(ids[m.bool()].tolist()) for ids, m in zip(input_ids, mask)]
        results = self.translator.translate_batch(
            tokens, beam_size=1, max_decoding_length=max_new_tokens, min_decoding_length=min_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram_size, max_input_length=0, max_batch_size=CT2_SUB_BATCH,
        )  # fmt: skip
        pad = self.tokenizer.pad_token_id
        generated = [[pad, *self.tokenizer.convert_tokens_to_ids(r.hypotheses[0])] for r in results]
        width = max(len(ids) for ids in generated)
        return torch.tensor([ids + [pad] * (width - len(ids)) for ids in generated])


def load_ctranslate2(folder: str | Path, tokenizer, quantization: str) -> CTranslate2Model:
    """A converted folder on the CPU, with as many threads as torch uses."""
    import ctranslate2

    translator = ctranslate2.Translator(str(folder), device="cpu", compute_type=CT2_COMPUTE_TYPE[quantization],
                                        intra_threads=torch.get_num_threads())  # fmt: skip
    return CTranslate2Model(translator, tokenizer)


def merged(model):
    """A plain transformers model: a `PeftModel` merged on a copy (the caller's model is not changed)."""
    return copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _convert(model, tokenizer, folder: Path, quantization: str) -> Path:
    """Save `model` (merged) with its tokenizer in `folder`/model and convert it to `folder`/converted."""
    import ctranslate2

    merged(model).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*")  # the converter's, for transformers' loader
        converter = ctranslate2.converters.TransformersConverter(str(folder / "model"))
        converter.convert(str(folder / "converted"), quantization=quantization, force=True)
    return folder / "converted"


def prepare_for_inference(model, engine: str = "pytorch", tokenizer=None):
    """The model to pass to `summarize` on `engine` (see ENGINES); the caller's model is never modified."""
    if engine not in ENGINES:
        raise LabError(f"unknown engine {engine!r}", f"use one of {', '.join(ENGINES)}")
    if engine == "pytorch":
        return model
    if tokenizer is None:
        raise LabError(f"the {engine} engine needs the model's tokenizer", "pass tokenizer=...")
    quantization = CT2_QUANTIZATION[engine]
    with tempfile.TemporaryDirectory(prefix="lab-ct2-") as tmp:  # read by the Translator before it goes
        return load_ctranslate2(_convert(model, tokenizer, Path(tmp), quantization), tokenizer, quantization)


def cached_ctranslate2(cache: Path, load_model, tokenizer, engine: str) -> CTranslate2Model:
    """The CTranslate2 conversion kept in `cache`, made from `load_model()` when it is missing or damaged."""
    # reused while it is as the lab wrote it (`files.owned`), so a cache hit loads no PyTorch model; written with
    # `files.write_folder`
    from .files import MARK, owned, write_folder

    quantization = CT2_QUANTIZATION[engine]
    if cache.is_dir() and owned(cache.resolve()):
        print(f"CTranslate2: {cache} (converted earlier, unchanged since)", file=sys.stderr)
    else:
        model = load_model()  # before anything is written: a model that cannot load leaves no folder behind
        print(f"CTranslate2: converting to {cache} ...", file=sys.stderr)
        if (cache / MARK).is_file():  # the lab's conversion, damaged since: converted again (a user's is refused)
            shutil.rmtree(cache)
        with write_folder(cache) as tmp:
            _convert(model, tokenizer, tmp, quantization)
    return load_ctranslate2(cache / "converted", tokenizer, quantization)


def compare_engines(reference_dir, translator, tokenizer, dialogues, settings) -> dict:
    """The notebook's 6.1b: CTranslate2 (`translator`) against PyTorch's model in `reference_dir`: agreement, times."""
    from transformers import AutoModelForSeq2SeqLM

    from .generation import summarize

    pytorch = AutoModelForSeq2SeqLM.from_pretrained(reference_dir, dtype=torch.float32)
    models = {"PyTorch": pytorch, "CTranslate2": CTranslate2Model(translator, tokenizer)}
    dialogues, times, out = list(dialogues), {}, {}
    for name, model in models.items():
        with contextlib.redirect_stdout(io.StringIO()):  # a warm-up (one-off allocations): its notes would repeat
            summarize(model, tokenizer, dialogues[:1], settings, progress=False)
        start = time.perf_counter()
        out[name] = summarize(model, tokenizer, dialogues, settings, progress=False)
        times[name] = time.perf_counter() - start
    distinct = dict(zip(dialogues, zip(out["PyTorch"], out["CTranslate2"])))
    differ = sum(a != b for a, b in distinct.values())
    print(f"summaries: {len(distinct) - differ} of {len(distinct)} dialogues identical")
    ratio = times["PyTorch"] / max(times["CTranslate2"], 1e-9)
    verdict = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    print(f"time: PyTorch {times['PyTorch']:.2f} s, CTranslate2 {times['CTranslate2']:.2f} s (CTranslate2 {verdict})")
    if sum(p.numel() for p in pytorch.parameters()) < 50_000_000:  # the tiny stand-in: say what it measures
        why = ", whose fixed cost per call (tokens converted, threads started) outweighs its int8 savings" * (ratio < 1)
        print(f"This is the tiny stand-in{why}. At Flan-T5's size the benchmark measured CTranslate2 int8 1.83x faster "
              "than PyTorch fp32 (16 prompts, 48 new tokens, 2-core AMD EPYC; docs/benchmark.md).")  # fmt: skip
    return {"dialogues": len(distinct), "differ": differ, "times_s": times, "speedup": ratio}
