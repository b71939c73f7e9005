"""Serving engines: what runs `generate` for `summarize`, with the same prompts, batches and decoding settings.

| engine | what it is |
|---|---|
| `fp32` | PyTorch `generate`, fp32 weights (the course's) |
| `int8` | PyTorch, every `nn.Linear` replaced by `Int8Linear` (int8 weights, int8 matmuls), CPU |
| `bf16` | PyTorch under CPU bf16 autocast (only where the CPU has bf16 instructions) |
| `ctranslate2` | the model converted to CTranslate2 with int8 weights, on the CPU (what people serve T5 with) |
| `ctranslate2-fp32` | the same conversion with fp32 weights |

A LoRA adapter is served by CTranslate2 once merged (`merge_and_unload`, the notebook's 6.1): the converter reads a
plain transformers checkpoint. `CTranslate2Model` gives the converted model a `generate` of the transformers kind, so
`summarize`, the instructor's results stage and the summarize command use it unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .devices import cpu_supports_bf16, device_of
from .errors import LabError

ENGINES = ("fp32", "int8", "bf16", "ctranslate2", "ctranslate2-fp32")
CT2_QUANTIZATION = {"ctranslate2": "int8", "ctranslate2-fp32": "float32"}
# how each conversion computes on a CPU: int8 matmuls with fp32 for the rest (the default would follow the saved
# dtype, float16, which CPUs do not compute efficiently: CTranslate2 then converts it with a warning)
CT2_COMPUTE_TYPE = {"int8": "int8_float32", "float32": "float32"}
CT2_SUB_BATCH = 8  # prompts CTranslate2 encodes and decodes together at most (see CTranslate2Model.generate)
# what CTranslate2's converter writes: a cache folder holding only these (and the stamp) is one the lab made
CT2_FILES = frozenset(
    {"model.bin", "config.json", "shared_vocabulary.json", "shared_vocabulary.txt", "lab_source.json"}
)


# --- PyTorch int8 and bf16 -----------------------------------------------------------------------------------------


class Int8Linear(torch.nn.Module):
    """An `nn.Linear` with int8 weights (one scale per output row) whose input is quantized per row at every call
    (dynamic quantization), multiplied in int8 with int32 sums (`torch._int_mm`) and scaled back to fp32.

    It replaces `torch.ao.quantization.quantize_dynamic`, deprecated in torch 2.13 (it moves to torchao). Measured on
    a 2-core AMD EPYC, one 768 x 2048 layer: 16 rows (a decoding step) 152 us vs quantize_dynamic's 103 us and fp32's
    467 us; 256 rows 1.59 ms vs 1.51 ms and 5.27 ms. torchao 0.18's int8 on the CPU took 2.0 ms at 16 rows (slower
    than fp32), so the lab does not install it.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer(
            "weight_int8", torch.round(weight / scale).clamp(-127, 127).to(torch.int8).t().contiguous()
        )
        self.register_buffer("weight_scale", scale.t().contiguous())
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)

    @property
    def weight(self) -> torch.Tensor:
        """The int8 weights, (out, in) as `nn.Linear`'s: what code reading `layer.weight` (T5's feed-forward checks
        its dtype) sees. A view of the stored (in, out) copy that the matmul reads."""
        return self.weight_int8.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        quantized = torch.round(rows / scale).clamp(-127, 127).to(torch.int8)
        out = torch._int_mm(quantized, self.weight_int8).float() * scale * self.weight_scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """An int8 copy of `model`: every `nn.Linear` replaced by an `Int8Linear` (the model itself is not changed).

    A `PeftModel` is merged first (on the copy): quantized LoRA matrices would cast the layer's input to int8 and
    round the adapter's contribution away. CPU only (`torch._int_mm` on a GPU needs more than 16 rows).
    """
    if device_of(model) != "cpu":
        raise LabError("int8 runs on the CPU", "move the model to the CPU first (model.to('cpu')), or use fp32")
    quantized = (_merged(model) if hasattr(model, "merge_and_unload") else copy.deepcopy(model)).eval()
    for module in list(quantized.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, Int8Linear(child))
    return quantized


class BF16Autocast(torch.nn.Module):
    """A model whose `generate` and forward run under CPU bf16 autocast (weights stay fp32, matmuls run in bf16)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model.generate(*args, **kwargs)

    def get_encoder(self):
        """The wrapped model's encoder, run under the same autocast (`summarize` encodes before generating)."""
        encoder = self.model.get_encoder()

        def encode(*args, **kwargs):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return encoder(*args, **kwargs)

        return encode

    def __getattr__(self, name):
        # `config`, `generation_config`, `device`, ...: whatever the wrapped model has
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)


def check_engine(engine: str) -> str:
    """The engine's name, lower case, or a `LabError` naming the valid ones."""
    name = str(engine).strip().lower()
    if name not in ENGINES:
        raise LabError(f"unknown engine {engine!r}", f"use one of {', '.join(ENGINES)}")
    return name


def prepare_for_inference(model: torch.nn.Module, engine: str = "fp32", tokenizer=None):
    """The model to pass to `summarize` on `engine` (see ENGINES); the caller's model is never modified.

    bf16 falls back to fp32 (with a warning) on CPUs without bf16 instructions, where it would be slower. The
    CTranslate2 engines convert a merged or full model (a `PeftModel` is merged on a copy first) and need its
    `tokenizer` (the converter reads its vocabulary).
    """
    engine = check_engine(engine)
    if engine == "int8":
        return quantize_int8(model)
    if engine == "bf16":
        if not cpu_supports_bf16():
            warnings.warn(
                "this CPU has no bf16 instructions (avx512_bf16 / amx_bf16): bf16 would be slower, using fp32",
                stacklevel=2,
            )
            return model
        return BF16Autocast(model)
    if engine in CT2_QUANTIZATION:
        if tokenizer is None:
            raise LabError(f"the {engine} engine needs the model's tokenizer", "pass tokenizer=...")
        return ctranslate2_from_model(model, tokenizer, CT2_QUANTIZATION[engine])
    return model


# --- CTranslate2 ---------------------------------------------------------------------------------------------------


class CTranslate2Model(torch.nn.Module):
    """A CTranslate2 `Translator` behind a transformers-like `generate(input_ids, attention_mask, ...)`.

    It takes the token ids `summarize` prepares (padding dropped by the attention mask) and returns the generated
    ids padded with the pad token, without the end token (the summaries are decoded with `skip_special_tokens`); the
    greedy settings map one to one (`max_new_tokens` -> `max_decoding_length`, `min_new_tokens` ->
    `min_decoding_length`, `no_repeat_ngram_size`). Greedy only: CTranslate2's beam search normalises lengths unlike
    transformers', so beams are refused rather than served differently. A buffer holds the converted source's digest,
    so the generation cache (keyed by the model's `fingerprint`) tells two converted models apart.
    """

    def __init__(self, translator, tokenizer, digest: str):
        super().__init__()
        self.translator = translator
        self.tokenizer = tokenizer
        self.register_buffer("source_digest", torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8))

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        do_sample: bool = False,
        no_repeat_ngram_size: int = 0,
        **unsupported,
    ) -> torch.Tensor:
        if do_sample or num_beams != 1 or unsupported:
            what = ", ".join(sorted(unsupported)) or ("do_sample=True" if do_sample else f"num_beams={num_beams}")
            raise LabError(f"the CTranslate2 engine does not take {what}", "serve it with greedy settings")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tokens = [
            self.tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
            for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())
        ]
        results = self.translator.translate_batch(
            tokens,
            beam_size=1,
            max_decoding_length=max_new_tokens,
            min_decoding_length=min_new_tokens,
            no_repeat_ngram_size=no_repeat_ngram_size,
            max_input_length=0,  # summarize truncated the prompts already, at the lab's limit
            # CTranslate2 encodes and decodes each sub-batch together: sub-batches of similar length pad the encoder
            # less and decode more often. Measured (flan-t5-base, int8, 2-core AMD EPYC, 16 DialogSum prompts of 125
            # to 489 tokens, 48 new tokens): all 16 at once 9.0-9.3 s, by 8 7.5-7.7 s, by 4 11.5 s
            max_batch_size=CT2_SUB_BATCH,
        )
        pad = self.tokenizer.pad_token_id
        generated = [[pad, *self.tokenizer.convert_tokens_to_ids(r.hypotheses[0])] for r in results]
        width = max(len(ids) for ids in generated)
        return torch.tensor([ids + [pad] * (width - len(ids)) for ids in generated])


def load_ctranslate2(folder: str | Path, tokenizer, quantization: str, digest: str) -> CTranslate2Model:
    """A converted folder on the CPU, as many threads as torch uses, computing as its `quantization` says; `digest`
    names what it was converted from (the generation cache tells converted models apart by it)."""
    import ctranslate2

    translator = ctranslate2.Translator(
        str(folder), device="cpu", compute_type=CT2_COMPUTE_TYPE[quantization], intra_threads=torch.get_num_threads()
    )
    return CTranslate2Model(translator, tokenizer, digest)


def convert_to_ctranslate2(model_dir: str | Path, out_dir: str | Path, quantization: str = "int8") -> Path:
    """Convert a saved transformers model (with its tokenizer) to CTranslate2, weights as `quantization`."""
    import ctranslate2

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*")  # the converter's, for transformers' loader
        ctranslate2.converters.TransformersConverter(str(model_dir)).convert(
            str(out_dir), quantization=quantization, force=True
        )
    return Path(out_dir)


def _merged(model):
    """A plain transformers model: a `PeftModel` merged on a copy, anything else as it is."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def convert_model_to_ctranslate2(model, tokenizer, out_dir: str | Path, quantization: str) -> Path:
    """Convert a plain transformers model in memory (an adapter merged already): saved with its tokenizer to a
    temporary folder, which the converter reads."""
    with tempfile.TemporaryDirectory(prefix="lab-ct2-") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return convert_to_ctranslate2(tmp, out_dir, quantization)


def ctranslate2_from_model(model, tokenizer, quantization: str = "int8") -> CTranslate2Model:
    """A model in memory (merged first if it carries an adapter) converted to CTranslate2 in a temporary folder."""
    from .models import fingerprint

    with tempfile.TemporaryDirectory(prefix="lab-ct2-") as tmp:
        converted = convert_model_to_ctranslate2(_merged(model), tokenizer, Path(tmp) / "converted", quantization)
        digest = hashlib.sha256(f"{fingerprint(model)} {quantization}".encode()).hexdigest()
        return load_ctranslate2(converted, tokenizer, quantization, digest)


def folder_digest(*folders: str | Path, extra: str = "") -> str:
    """A sha256 of the files in `folders` (names and bytes; hidden ones such as .git left out) and `extra`: it
    changes when a model, tokenizer or adapter file changes."""
    h = hashlib.sha256(extra.encode())
    for folder in folders:
        files = (p for p in Path(folder).rglob("*") if p.is_file())
        for path in sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(folder).parts)):
            h.update(str(path.relative_to(folder)).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def not_a_ct2_folder(folder: Path) -> list[str]:
    """What in `folder` the lab did not write: all of it without the lab's stamp (a conversion the user made is
    theirs), else what is not from CTranslate2's converter."""
    names = sorted(p.name for p in folder.iterdir())
    if "lab_source.json" not in names:
        return names
    return [n for n in names if n not in CT2_FILES or not (folder / n).is_file()]


def cached_ctranslate2(source: Path, digest: str, build, cache: Path, tokenizer, quantization: str) -> CTranslate2Model:
    """The converted model in `cache`, converted again (by `build(folder)`) when `digest` of its source changed.

    The conversion is written to `<cache>.partial` and renamed when whole, so a crash never leaves a half cache;
    `lab_source.json` records the source and its digest.
    """
    from .outputs import check_output_dir

    stamp = cache / "lab_source.json"
    try:
        current = json.loads(stamp.read_text(encoding="utf-8")).get("digest")
    except (OSError, ValueError, AttributeError):
        current = None
    if current == digest:
        print(f"CTranslate2: {cache} (converted earlier from {source}, unchanged since)", flush=True)
        return load_ctranslate2(cache, tokenizer, quantization, digest)
    check_output_dir(cache, not_a_ct2_folder, "the CTranslate2 cache")
    partial = cache.with_name(cache.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    why = "its source changed" if current else "first use"
    print(f"CTranslate2: converting {source} to {cache} ({why}) ...", flush=True)
    t0 = time.perf_counter()
    build(partial)
    (partial / "lab_source.json").write_text(json.dumps({"source": str(source), "digest": digest}) + "\n")
    # swapped by renames: an interruption leaves the old conversion or the new one whole, never a stamp without it
    old = cache.with_name(cache.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if cache.exists():
        cache.rename(old)
    partial.rename(cache)
    shutil.rmtree(old, ignore_errors=True)
    print(f"CTranslate2: converted in {time.perf_counter() - t0:.0f} s", flush=True)
    return load_ctranslate2(cache, tokenizer, quantization, digest)


def compare_engines(reference_dir, translator, tokenizer, dialogues, settings, references=None, rouge=None) -> dict:
    """The notebook's 6.1 check: CTranslate2 (`translator`) against PyTorch's `generate` of the model saved in
    `reference_dir`, on the same dialogues, batches and settings. Prints whether the summaries agree (how many
    differ and, given the `references`, the ROUGE change), both times and the speed-up."""
    from transformers import AutoModelForSeq2SeqLM

    from .generation import summarize
    from .scoring import compute_rouge

    pytorch = AutoModelForSeq2SeqLM.from_pretrained(reference_dir, dtype=torch.float32)
    served = CTranslate2Model(translator, tokenizer, hashlib.sha256(str(reference_dir).encode()).hexdigest())
    dialogues = list(dialogues)
    times, out = {}, {}
    for name, model in (("PyTorch", pytorch), ("CTranslate2", served)):
        with warnings.catch_warnings():  # the warm-up's own truncation warning would only repeat the timed run's
            warnings.simplefilter("ignore")
            summarize(model, tokenizer, dialogues[:1], settings, progress=False)  # warm-up: one-off allocations
        t0 = time.perf_counter()
        out[name] = summarize(model, tokenizer, dialogues, settings, progress=False)
        times[name] = time.perf_counter() - t0
    del pytorch
    pairs = dict(zip(dialogues, zip(out["PyTorch"], out["CTranslate2"])))
    differ = sum(a != b for a, b in pairs.values())
    result = {"dialogues": len(pairs), "differ": differ, "times_s": times}
    if differ == 0:
        print(f"summaries: identical for all {len(pairs)} dialogues")
    else:
        line = f"summaries: {differ} of {len(pairs)} dialogues differ"
        if references is not None:
            scores = {name: compute_rouge(s, list(references), rouge) for name, s in out.items()}
            result["rouge_change"] = {k: scores["CTranslate2"][k] - scores["PyTorch"][k] for k in scores["PyTorch"]}
            line += ", ROUGE-1 change " + f"{result['rouge_change']['rouge1']:+.4f}"
        print(line)
    result["speedup"] = speedup = times["PyTorch"] / max(times["CTranslate2"], 1e-9)
    verdict = f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"
    print(f"time: PyTorch {times['PyTorch']:.2f} s, CTranslate2 {times['CTranslate2']:.2f} s: {verdict}")
    return result
