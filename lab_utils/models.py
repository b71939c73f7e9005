"""Looking at models: parameter counts, a fingerprint of the weights, checks that a checkpoint folder will load."""

# The checks run before transformers and peft load a folder, so a damaged or mismatched one is named with what to do.

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import LabError

MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # transformers today, and 4.2x (the course's checkpoint)
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # peft today, and 0.3 (the course's adapter)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def parameter_report(model: torch.nn.Module) -> str:
    """The course's three-line report: trainable, all, and percentage of trainable parameters."""
    trainable, total = count_parameters(model)
    return (f"trainable model parameters: {trainable:,}\nall model parameters: {total:,}\n"
            f"percentage of trainable model parameters: {100 * trainable / total:.2f}%")  # fmt: skip


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
    except (OSError, ValueError) as exc:
        raise LabError(f"the {what} {path.parent} has no readable {path.name} ({exc})", fix) from exc
    if not isinstance(value, dict):
        raise LabError(f"{path} holds a {type(value).__name__}, not a JSON object: the {what} is damaged", fix)
    return value


def read_weights(folder: Path, names: tuple[str, ...], what: str, fix: str, load: bool = False) -> dict:
    """Name -> shape (with `load`: tensor) of every tensor in the first of `names` in `folder`."""
    # read by the libraries: safetensors refuses a file its header does not cover (a truncated download), torch a torn
    # zip
    path = next((folder / n for n in names if (folder / n).is_file()), None)
    if path is None:
        raise LabError(f"the {what} {folder} has no {' or '.join(names)}", fix)
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt") as f:
                return {k: f.get_tensor(k) if load else tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return state if load else {k: tuple(t.shape) for k, t in state.items()}
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise LabError(f"{path} cannot be read ({type(exc).__name__}: {exc}): the {what} is damaged", fix) from exc


def non_finite(tensors: dict) -> list[str]:
    """The names of the floating-point tensors that hold NaN or inf."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def check_model_dir(folder: str | Path, fix: str = "pull (or train) the checkpoint again",
                    finite: bool = False) -> Path:  # fmt: skip
    """Check that a transformers checkpoint folder has a readable config and whole weights (`finite`: and no NaN)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LabError(f"checkpoint folder {folder} does not exist", fix)
    read_json(folder / "config.json", "checkpoint folder", fix)
    weights = read_weights(folder, MODEL_WEIGHTS, "checkpoint folder", fix, load=finite)
    if finite and (bad := non_finite(weights)):
        raise LabError(f"checkpoint {folder} has non-finite weights (NaN or inf in {len(bad)}, e.g. {bad[0]})", fix)
    return folder


def shape_model(model_path_or_id: str) -> torch.nn.Module:
    """The architecture of a model on the meta device, from its config alone: shapes without weights or memory."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(model_path_or_id)
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read the config of {model_path_or_id!r}: {exc}", "check `LAB_MODEL_ID`") from exc
    with torch.device("meta"):
        return AutoModelForSeq2SeqLM.from_config(config)


def check_adapter_dir(folder: str | Path, base: torch.nn.Module, base_id: str, fix: str | None = None) -> dict:
    """The config of a LoRA adapter folder, checked against `base` (a model or `shape_model`) before peft loads it."""
    # config and weights readable and finite, the rank the config says, the shapes of `base`'s layers
    folder = Path(folder)
    fix = fix or "publish the adapter folder again (`python -m lab_utils instructor`), then pull it again"
    if not folder.is_dir():
        raise LabError(f"adapter folder {folder} does not exist", fix)
    config = read_json(folder / "adapter_config.json", "adapter folder", fix)
    if missing := [k for k in ("peft_type", "r", "target_modules") if k not in config]:
        raise LabError(f"{folder}/adapter_config.json has no `{missing[0]}` field, which peft needs", fix)
    if str(config["peft_type"]).upper() != "LORA":
        raise LabError(f"{folder} holds a {config['peft_type']} adapter, not LoRA", fix)
    weights = read_weights(folder, ADAPTER_WEIGHTS, "adapter folder", fix, load=True)  # adapters are small
    lora = {k: t.shape for k, t in weights.items() if ".lora_A." in k or ".lora_B." in k}
    if not lora:
        raise LabError(f"the weights in {folder} hold no LoRA matrices (lora_A / lora_B)", fix)
    if bad := non_finite(weights):
        raise LabError(f"adapter weight {bad[0]} in {folder} is not finite (NaN or inf)", fix)
    declared = config.get("base_model_name_or_path") or "another model"
    for name, shape in lora.items():
        kind = "lora_A" if ".lora_A." in name else "lora_B"
        rank, features = (shape[0], shape[1]) if kind == "lora_A" else (shape[1], shape[0])
        if rank != config["r"]:
            raise LabError(f"adapter weight {name} has rank {rank}, but its config says r={config['r']}",
                           "the config and the weights come from different adapters: publish it again")  # fmt: skip
        path = name.split(f".{kind}.")[0].removeprefix("base_model.model.")
        try:
            layer = base.get_submodule(path)
            expected = layer.in_features if kind == "lora_A" else layer.out_features
            where = f"has {expected} features there, the adapter {features}"
        except AttributeError:
            expected, where = None, f"has no layer {path}"
        if features != expected:
            raise LabError(
                f"the adapter in {folder} was trained for a different model ({declared}): {base_id} {where}",
                "load it onto the model it was trained for (`LAB_MODEL_ID`), or use an adapter trained for this one",
            )
    return config
