"""Where models run and in what precision: one rule for the notebook, the instructor and the summarize command.

The best device present (a CUDA GPU when there is one, else the CPU) and `LAB_PRECISION`: `auto` is bf16 mixed
precision on a GPU that supports it and fp32 everywhere else, so the course's CPU (SageMaker's ml.m5.2xlarge) trains
and generates in fp32 exactly as the course did. `bf16` on a CPU is offered where the CPU has native bf16
instructions (AVX512-BF16 or AMX: newer instance types than ml.m5), and refused where it would only be emulated.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .errors import LabError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def best_device() -> str:
    """ "cuda" when a CUDA GPU is present, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    if "AMX" in torch.backends.cpu.get_cpu_capability().upper():
        return True
    if flags:  # Linux without the flags: bf16 would be emulated (slower than fp32)
        return False
    try:  # elsewhere, ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str) -> str:
    """The precision `LAB_PRECISION` means on `device`: "fp32", "bf16" or "fp16" (`auto` decided), or a `LabError`
    where the device cannot run it."""
    if precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device != "cuda":
        raise LabError(
            "`LAB_PRECISION`=fp16 needs a GPU: fp16 mixed precision does not run on a CPU",
            "set `LAB_PRECISION` to auto or fp32 (or bf16 on a CPU with bf16 instructions)",
        )
    if precision == "bf16" and device == "cpu" and not cpu_supports_bf16():
        raise LabError(
            "`LAB_PRECISION`=bf16 on this CPU: it has no bf16 instructions (avx512_bf16 / amx_bf16), so bf16 would "
            "be emulated, slower than fp32",
            "set `LAB_PRECISION` to auto or fp32 here; bf16 pays on newer CPUs (AVX512-BF16 or AMX) and on GPUs",
        )
    if precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise LabError("`LAB_PRECISION`=bf16: this GPU has no bf16", "set `LAB_PRECISION` to auto or fp16")
    return precision


def autocast(device: str, precision: str):
    """The context generation runs in: nothing for fp32, else autocast to bf16 or fp16 (weights stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[precision])


def device_of(model) -> str:
    """The device type ("cpu", "cuda") a model's weights are on."""
    tensor = next(iter(model.parameters()), None)
    if tensor is None:  # a served engine (CTranslate2) holds buffers only
        tensor = next(iter(model.buffers()))
    return tensor.device.type
