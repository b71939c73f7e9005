"""A simulated course world: the course's artifacts in the course's formats, on an S3 server named like the course's."""

# The course's full checkpoint is a `pytorch_model.bin` saved by transformers 4.27, its adapter an `adapter_model.bin`
# with the fields peft 0.3 wrote, and its results file a CSV with a leading unnamed index column and no `id`. This
# module writes such files from the offline release's tiny models, so that the course profile's cells run here, with
# no Hub and no AWS.

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from lab_utils.checkpoints import FULL_CHECKPOINT, PEFT_CHECKPOINT, RESULTS_FILE
from lab_utils.config import RELEASE_DIR

COURSE_BUCKET = "dlai-generative-ai"
COURSE_PREFIX = f"s3://{COURSE_BUCKET}/models/"

# every field of the adapter_config.json that peft 0.3 wrote (no newer field)
PEFT_0_3_CONFIG = json.loads("""{"base_model_name_or_path": "google/flan-t5-base", "bias": "none", "enable_lora": null,
  "fan_in_fan_out": false, "inference_mode": true, "lora_alpha": 32, "lora_dropout": 0.05, "merge_weights": false,
  "modules_to_save": null, "peft_type": "LORA", "r": 32, "target_modules": ["q", "v"], "task_type": "SEQ_2_SEQ_LM"}""")


def write_full_checkpoint_4_27(source: Path, out: Path) -> Path:
    """A full checkpoint as transformers 4.27 saved it: `pytorch_model.bin`, a config with `torch_dtype`."""
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(source, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=False)
    config = json.loads((out / "config.json").read_text())
    config["torch_dtype"] = str(config.pop("dtype", "float32"))
    config["transformers_version"] = "4.27.2"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    assert (out / "pytorch_model.bin").is_file() and not (out / "model.safetensors").exists()
    return out


def write_adapter_peft_0_3(source: Path, out: Path) -> Path:
    """An adapter as peft 0.3 saved it: `adapter_model.bin` (keys without the adapter's name) and its config."""
    from safetensors.torch import load_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(source / "adapter_model.safetensors"))
    torch.save({k: v.float() for k, v in tensors.items()}, out / "adapter_model.bin")
    rank = next(t.shape[0] for k, t in tensors.items() if ".lora_A." in k)
    (out / "adapter_config.json").write_text(json.dumps(dict(PEFT_0_3_CONFIG, r=rank), indent=2))
    return out


def write_course_results_file(source: Path, out: Path) -> Path:
    """The course's results file: the lab's columns without `id`, and pandas' index as an unnamed first column."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False).drop(columns=["id"])
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out)  # index=True: the course's leading unnamed column
    return out


def build_course_artifacts(folder: Path) -> dict[str, Path]:
    """The course's three published artifacts, in its formats, from the offline release."""
    return {
        FULL_CHECKPOINT: write_full_checkpoint_4_27(RELEASE_DIR / FULL_CHECKPOINT, folder / FULL_CHECKPOINT),
        PEFT_CHECKPOINT: write_adapter_peft_0_3(RELEASE_DIR / PEFT_CHECKPOINT, folder / PEFT_CHECKPOINT),
        RESULTS_FILE: write_course_results_file(RELEASE_DIR / RESULTS_FILE, folder / RESULTS_FILE),
    }
