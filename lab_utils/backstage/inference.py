"""Faster CPU generation: an int8 copy of the model, or bf16 autocast where the CPU has bf16 instructions."""

from __future__ import annotations

import copy
import warnings

import torch

from ..devices import cpu_supports_bf16
from ..errors import LabError

INFERENCE_MODES = ("fp32", "int8", "bf16")


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


def quantize_int8(model: torch.nn.Module):
    """An int8 copy of `model`: every `nn.Linear` dynamically quantized (weights int8, activations per batch)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which the lab does not install
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        # copy first: quantize_dynamic(inplace=False) deep-copies too, but say so here where it matters
        return quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def prepare_for_inference(model: torch.nn.Module, mode: str = "fp32"):
    """The model to pass to `summarize`: unchanged (fp32), an int8 copy, or a bf16-autocast wrapper.

    The caller's model is never modified. bf16 falls back to fp32 (with a warning) on CPUs without bf16
    instructions, where it would be slower, not faster.
    """
    mode = str(mode).strip().lower()
    if mode not in INFERENCE_MODES:
        raise LabError(f"unknown inference mode {mode!r}", f"use one of {', '.join(INFERENCE_MODES)}")
    if mode == "int8":
        return quantize_int8(model)
    if mode == "bf16":
        if not cpu_supports_bf16():
            warnings.warn(
                "this CPU has no bf16 instructions (avx512_bf16 / amx_bf16): bf16 would be slower, using fp32",
                stacklevel=2,
            )
            return model
        return BF16Autocast(model)
    return model
