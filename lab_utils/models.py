"""Loading models and tokenizers, parameter reports, and LoRA (without touching the original model)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import Settings
from .errors import LabError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def ensure_offline_model(settings: Settings, progress: bool = True) -> Path:
    """Build the offline stand-in model (tokenizer + pretraining) unless a complete one exists."""
    out = settings.path(settings.model_id)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from .training import is_main_process

    if not is_main_process():
        return _wait_for_model(out)
    from .data import load_dialogsum
    from .offline import build_offline_model

    print(f"Building the offline stand-in model in {out} (first run only; a few minutes on 2 CPUs)...")
    train = load_dialogsum(settings)["train"]
    texts = list(train["dialogue"]) + list(train["summary"])
    return build_offline_model(out, texts, settings.pretrain_steps, seed=settings.seed, progress=progress)


def _wait_for_model(out: Path, timeout_s: float = 3600.0) -> Path:
    """Data-parallel runs: the other processes wait while rank 0 builds the stand-in (it appears by a rename)."""
    import time

    deadline = time.time() + timeout_s
    while not (out / "model.safetensors").is_file():
        if time.time() > deadline:
            raise LabError(
                f"timed out waiting for rank 0 to build {out}", "run `python -m lab_utils build-model` first"
            )
        time.sleep(2)
    return out


def load_tokenizer(settings: Settings) -> PreTrainedTokenizerBase:
    """The tokenizer of the original model (Hub id or local folder)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(settings.model_path_or_id)


def load_model(name_or_path: str | Path, setting: str = "LAB_MODEL_ID") -> PreTrainedModel:
    """A seq2seq model in float32 from the Hub or a folder, with a clear error when it cannot be found."""
    from transformers import AutoModelForSeq2SeqLM

    path = Path(str(name_or_path))
    local = path.is_absolute() or str(name_or_path).startswith(".")
    if local:
        check_checkpoint_dir(path, setting)
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(str(name_or_path), dtype=torch.float32)
    except Exception as exc:
        if local:  # a truncated or garbled file: say which one
            bad = _first_unreadable(path)
            if bad is not None:
                raise LabError(
                    f"checkpoint folder {path} is corrupt: {bad.name} cannot be read ({exc})",
                    "delete the folder and pull (or train) the checkpoint again",
                ) from None
        if not isinstance(exc, OSError):
            raise
        raise LabError(
            f"cannot load model {str(name_or_path)!r}: {exc}",
            f"check `{setting}` (a Hub id such as google/flan-t5-base, or a checkpoint folder)",
        ) from None


def _first_unreadable(path: Path) -> Path | None:
    """The first weights or JSON file of a checkpoint folder that does not parse, if any."""
    import json

    from safetensors import safe_open

    for f in sorted(path.iterdir()):
        try:
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as st:
                    for key in st.keys():
                        st.get_tensor(key)
        except Exception:
            return f
    return None


def check_checkpoint_dir(path: Path, setting: str = "checkpoint") -> None:
    """Fail with the missing file's name when a checkpoint folder is incomplete."""
    if not path.is_dir():
        raise LabError(f"checkpoint folder {path} does not exist", f"check `{setting}` or pull the checkpoint first")
    if (path / "adapter_config.json").is_file():
        needed = [("adapter_config.json",), ("adapter_model.safetensors", "adapter_model.bin")]
    else:
        needed = [("config.json",), ("model.safetensors", "pytorch_model.bin")]
    for names in needed:
        if not any((path / n).is_file() for n in names):
            raise LabError(
                f"checkpoint folder {path} has no {' or '.join(names)}",
                "pull the checkpoint again (it is incomplete or corrupt)",
            )


def load_original_model(settings: Settings, progress: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The original model and its tokenizer for this profile (the offline stand-in is built on first use)."""
    if settings.offline:
        ensure_offline_model(settings, progress=progress)
    return load_model(settings.model_path_or_id), load_tokenizer(settings)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def parameter_report(model: torch.nn.Module) -> str:
    """The course's three-line report: trainable, all, and percentage of trainable parameters."""
    trainable, total = count_parameters(model)
    return (
        f"trainable model parameters: {trainable:,}\n"
        f"all model parameters: {total:,}\n"
        f"percentage of trainable model parameters: {100 * trainable / total:.2f}%"
    )


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer: equal fingerprints mean identical weights."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        # int8-quantized models keep packed (tensor, bias) tuples and dtypes in their state dict
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, torch.Tensor):
                t = item.detach().cpu()
                t = torch.cat([t.int_repr().flatten().float(), torch.tensor([t.q_scale()])]) if t.is_quantized else t
                h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
            else:
                h.update(repr(item).encode())
    return h.hexdigest()[:16]


def lora_config(
    r: int = 32,
    lora_alpha: int = 32,
    target_modules: Sequence[str] = ("q", "v"),
    lora_dropout: float = 0.05,
    model: torch.nn.Module | None = None,
) -> LoraConfig:
    """The lab's LoRA configuration, checked: positive rank and alpha, dropout in [0, 1), existing modules."""
    from peft import LoraConfig, TaskType

    if not isinstance(r, int) or r <= 0:
        raise LabError(f"LoRA rank r={r!r} must be a positive integer", "use e.g. r=32 (the lab's value)")
    if lora_alpha <= 0:
        raise LabError(f"LoRA lora_alpha={lora_alpha!r} must be positive", "use e.g. lora_alpha=32")
    if not 0 <= lora_dropout < 1:
        raise LabError(f"LoRA lora_dropout={lora_dropout!r} must be in [0, 1)", "use e.g. lora_dropout=0.05")
    targets = list(target_modules)
    if model is not None:
        leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        absent = [t for t in targets if t not in leaf_names]
        if absent:
            raise LabError(
                f"LoRA target module(s) {absent} are not in the model",
                "T5 attention projections are named q, k, v, o (the lab uses q and v)",
            )
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=targets,
        lora_dropout=lora_dropout,
        bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM,
    )


def add_lora(model: PreTrainedModel, config: LoraConfig) -> PeftModel:
    """Wrap a *copy* of `model` with LoRA adapters; `model` itself stays untouched.

    `get_peft_model` injects adapters in place: wrapping the original model directly (as the course did) makes
    every later "original model" result come from the LoRA-trained model.
    """
    from peft import get_peft_model

    return get_peft_model(copy.deepcopy(model), config)


def load_peft_for_inference(settings: Settings, adapter_dir: str | Path) -> PeftModel:
    """A fresh original model with the adapter from `adapter_dir` loaded, frozen (`is_trainable=False`)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    check_checkpoint_dir(adapter_dir, "adapter folder")
    base = load_model(settings.model_path_or_id)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
