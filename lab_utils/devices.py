"""Where models run and in what precision: one rule for the notebook, the instructor and the summarize command."""

# A CUDA GPU when there is one, else the CPU. LAB_PRECISION=auto is bf16 mixed precision on a GPU that has it and fp32
# everywhere else (the course's CPU trains and generates in fp32 as the course did). bf16 on a CPU only where it has
# bf16 instructions (elsewhere emulated, slower than fp32), fp16 only on a GPU: checked when the settings load.

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .errors import LabError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def best_device() -> str:
    """ "cuda" when a CUDA GPU is present, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: ask oneDNN
        return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str | None = None) -> str:
    """What `LAB_PRECISION` means on `device`: "fp32", "bf16" or "fp16", or a `LabError` where it cannot run."""
    device = device or best_device()
    gpu_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if gpu_bf16 else "fp32"
    fix = "set `LAB_PRECISION` to auto or fp32"
    if precision == "fp16" and device != "cuda":
        raise LabError("`LAB_PRECISION`=fp16 needs a GPU: fp16 mixed precision does not run on a CPU", fix)
    if precision == "bf16" and device == "cpu" and not cpu_supports_bf16():
        raise LabError("`LAB_PRECISION`=bf16 on a CPU without bf16 instructions (avx512_bf16 / amx_bf16): it would be "
                       "emulated, slower than fp32",
                       fix + " here; bf16 pays on CPUs with AVX512-BF16 or AMX, and on GPUs")  # fmt: skip
    if precision == "bf16" and device == "cuda" and not gpu_bf16:
        raise LabError("`LAB_PRECISION`=bf16: this GPU has no bf16", "set `LAB_PRECISION` to auto or fp16")
    return precision


def autocast(device: str, precision: str):
    """The context generation runs in: nothing for fp32, else autocast to bf16 or fp16 (weights stay fp32)."""
    return contextlib.nullcontext() if precision == "fp32" else torch.autocast(device, dtype=DTYPES[precision])


def device_of(model) -> str:
    """The device type ("cpu", "cuda") a model's weights are on (a CTranslate2 engine: "cpu")."""
    tensor = next(iter(model.parameters()), None)
    return "cpu" if tensor is None else tensor.device.type
