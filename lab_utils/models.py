"""Looking at models: parameter counts, a fingerprint of the weights, and checks that a checkpoint folder will load.

The notebook loads models with transformers and peft itself (`AutoModelForSeq2SeqLM.from_pretrained`,
`PeftModel.from_pretrained`); the checks here run first, so a damaged or mismatched folder is reported by name
instead of failing deep inside those calls.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from .errors import LabError

MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # transformers today, and 4.2x (the course's checkpoint)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # peft today, and 0.3 (the course's adapter)


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
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_json(path: Path, what: str, fix: str) -> dict:
    """A JSON object from `path`, or a `LabError` naming the file when it is missing, truncated or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"{what} {path.parent} has no {path.name}", fix) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise LabError(f"{path} is not valid JSON ({exc}): the {what} is damaged", fix) from None
    if not isinstance(value, dict):
        raise LabError(f"{path} holds a {type(value).__name__}, not a JSON object: the {what} is damaged", fix)
    return value


def weights_file(folder: Path, names: tuple[str, ...], what: str, fix: str) -> Path:
    """The first of `names` present in `folder`, or a `LabError` saying none is."""
    path = next((folder / n for n in names if (folder / n).is_file()), None)
    if path is None:
        raise LabError(f"{what} {folder} has no {' or '.join(names)}", fix)
    return path


def tensor_shapes(path: Path, what: str, fix: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a weights file, read by the libraries without loading the weights.

    safetensors refuses a file its header does not fully cover (a truncated download); a `.bin` (a zip archive) has
    its directory at the end of the file, which `torch.load` reads through a memory map.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {k: tuple(t.shape) for k, t in state.items()}
    except Exception as exc:  # a damaged file raises many types (OSError, ValueError, RuntimeError, ...)
        raise LabError(f"{path} cannot be read ({type(exc).__name__}: {exc}): the {what} is damaged", fix) from None


def non_finite_tensors(path: Path) -> list[str]:
    """The names of the floating-point tensors of a weights file that hold NaN or inf."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def check_model_dir(
    folder: str | Path, fix: str = "pull (or train) the checkpoint again", finite: bool = False
) -> Path:
    """Check that a transformers checkpoint folder has a readable config and whole weights (`finite`: and no NaN)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LabError(f"checkpoint folder {folder} does not exist", fix)
    read_json(folder / "config.json", "checkpoint folder", fix)
    path = weights_file(folder, MODEL_WEIGHTS, "checkpoint folder", fix)
    tensor_shapes(path, "checkpoint folder", fix)
    bad = non_finite_tensors(path) if finite else []
    if bad:
        tensors = f"{len(bad)} tensor{'s' if len(bad) > 1 else ''}"
        raise LabError(f"checkpoint {folder} has non-finite weights (NaN or inf in {tensors}, e.g. {bad[0]})", fix)
    return folder


def _lora_config_fields() -> set[str]:

    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig)}


def shape_model(model_path_or_id: str) -> torch.nn.Module:
    """The architecture of a model on the meta device, from its config alone: shapes without weights or memory."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(model_path_or_id)
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read the config of {model_path_or_id!r}: {exc}", "check `LAB_MODEL_ID`") from None
    with torch.device("meta"):
        return AutoModelForSeq2SeqLM.from_config(config)


def check_adapter_dir(folder: str | Path, base: torch.nn.Module, base_id: str, fix: str | None = None) -> dict:
    """Check a LoRA adapter folder against the base model it will be loaded onto, before peft tries.

    Reports a missing or damaged `adapter_config.json` or weights file, a config without a field peft needs, weights
    of another rank than the config says, and weights shaped for another model (e.g. an adapter for flan-t5-large
    onto flan-t5-base). `base` may be a `shape_model`. Returns the adapter's config.
    """
    folder = Path(folder)
    fix = fix or "publish the adapter folder again (`python -m lab_utils instructor`), then pull it again"
    if not folder.is_dir():
        raise LabError(f"adapter folder {folder} does not exist", fix)
    config_path = folder / "adapter_config.json"
    config = read_json(config_path, "adapter folder", fix)
    for needed in ("peft_type", "r", "target_modules"):
        if needed not in config:
            raise LabError(
                f"{config_path} has no `{needed}` field, which peft needs to rebuild the adapter",
                f"add `{needed}` to the file (the value the adapter was trained with), or publish it again",
            )
    if str(config["peft_type"]).upper() != "LORA":
        raise LabError(f"{folder} holds a {config['peft_type']} adapter, not LoRA", fix)
    unknown = sorted(set(config) - _lora_config_fields())
    if unknown:
        print(
            f"Note: {config_path.name} has fields this peft version does not know ({', '.join(unknown)}): another "
            "peft version wrote it (the course's adapter: peft 0.3). peft ignores them, with a warning; they change "
            "nothing in the adapter's weights."
        )
    path = weights_file(folder, ADAPTER_WEIGHTS, "adapter folder", fix)
    shapes = tensor_shapes(path, "adapter folder", fix)
    if not any(".lora_A." in name for name in shapes):
        raise LabError(f"the weights in {folder} hold no LoRA matrices (lora_A / lora_B)", fix)
    declared = config.get("base_model_name_or_path") or "another model"
    bad = non_finite_tensors(path)  # adapters are small: read them whole
    if bad:
        raise LabError(f"adapter weight {bad[0]} in {folder} is not finite (NaN or inf)", fix)
    for name, shape in shapes.items():
        kind = "lora_A" if ".lora_A." in name else "lora_B" if ".lora_B." in name else None
        if kind is None:
            continue
        rank = shape[0] if kind == "lora_A" else shape[1]
        if rank != config["r"]:
            raise LabError(
                f"adapter weight {name} has rank {rank}, but {config_path} says r={config['r']}",
                "the config and the weights come from different adapters: publish the adapter folder again",
            )
        path = name.split(f".{kind}.")[0].removeprefix("base_model.model.")
        try:
            layer = base.get_submodule(path)
        except AttributeError:
            layer = None
        expected = None if layer is None else (layer.in_features if kind == "lora_A" else layer.out_features)
        got = shape[1] if kind == "lora_A" else shape[0]
        if layer is None or got != expected:
            where = f"has no layer {path}" if layer is None else f"has {expected} features there, the adapter {got}"
            raise LabError(
                f"the adapter in {folder} was trained for a different model ({declared}): {base_id} {where}",
                "load it onto the model it was trained for (`LAB_MODEL_ID`), or use an adapter trained for this one",
            )
    return config
