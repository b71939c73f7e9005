"""One settings object for the lab: profile defaults, overridden by `LAB_*` environment variables.

Two profiles run the same notebook code:
- `course`: `google/flan-t5-base` and `knkarthick/dialogsum` from the Hugging Face Hub, checkpoints on S3.
- `offline`: DialogSum CSVs from a local folder, a tiny Flan-T5-architecture model built by `lab_utils.offline`,
  and a local S3-compatible server on 127.0.0.1 holding what `python -m lab_utils instructor` produced.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

PROFILES = ("course", "offline")

# Every setting, its default per profile, and what it means. Environment variable = "LAB_" + name.upper().
DEFAULTS: dict[str, dict[str, object]] = {
    "course": {
        "model_id": "google/flan-t5-base",  # Hub id (or a local folder) of the original model
        "dataset": "knkarthick/dialogsum",  # Hub id of DialogSum
        "data_dir": "",  # a folder with train/validation/test CSVs; empty = load `dataset` from the Hub
        "s3_uri": "s3://dlai-generative-ai/models/",  # where the offline-trained checkpoints + results live
        "s3_anonymous": False,  # True for a public bucket without AWS credentials
        "work_dir": "data",  # where checkpoints are pulled and runs are written
        "seed": 42,
        "max_source_length": 512,  # tokens of prompt kept (Flan-T5's limit)
        "max_target_length": 128,  # tokens of summary kept
        "max_new_tokens": 200,  # generation length, as in the course
        "no_repeat_ngram_size": 0,  # 0 = off, as in the course
        "notebook_full_steps": 2,  # the notebook's short full fine-tune (the course ran 1 step)
        "notebook_lora_steps": 2,
        "train_batch_size": 8,
        "gradient_checkpointing": False,  # True: recompute activations in backward (less memory, longer steps)
        "eval_batch_size": 16,  # the notebook's 10 dialogues in one batch; bench part (a) measures this batch
        "eval_dialogues": 10,  # test dialogues scored live in the notebook
        "full_lr": 1e-5,  # the course's learning rates
        "lora_lr": 1e-3,
        "instructor_full_steps": 1600,  # ~1 epoch of DialogSum train at batch 8
        "instructor_lora_steps": 1600,
        "instructor_full_lr": 1e-5,
        "instructor_lora_lr": 1e-3,
        "pretrain_steps": 0,  # only the offline stand-in is pretrained by the project
    },
    "offline": {
        "model_id": "data/offline/flan-t5-tiny",
        "dataset": "knkarthick/dialogsum",
        "data_dir": "../shared/dialogsum",
        "s3_uri": "s3://lab-offline/models/",
        "s3_anonymous": False,
        "work_dir": "data",
        "seed": 42,
        "max_source_length": 256,  # median DialogSum prompt: ~200 tokens of the stand-in's tokenizer
        "max_target_length": 96,
        "max_new_tokens": 60,
        "no_repeat_ngram_size": 3,  # the tiny model loops without it
        "notebook_full_steps": 10,
        "notebook_lora_steps": 10,
        "train_batch_size": 32,
        "gradient_checkpointing": False,
        "eval_batch_size": 32,
        "eval_dialogues": 10,
        "full_lr": 1e-5,
        "lora_lr": 1e-3,
        "instructor_full_steps": 250,
        "instructor_lora_steps": 250,
        "instructor_full_lr": 2e-3,  # a tiny model trained for minutes needs a larger step than Flan-T5
        "instructor_lora_lr": 5e-3,
        "pretrain_steps": 200,  # span-corruption pretraining of the stand-in "original" model
    },
}

# Settings that are not of the lab but that the lab reads, documented in the README.
KNOWN_OTHER_ENV = {"LAB_PROFILE"}


@dataclass(frozen=True)
class Settings:
    """All knobs of one lab run; build it with `load_settings`."""

    profile: str
    model_id: str
    dataset: str
    data_dir: str
    s3_uri: str
    s3_anonymous: bool
    work_dir: str
    seed: int
    max_source_length: int
    max_target_length: int
    max_new_tokens: int
    no_repeat_ngram_size: int
    notebook_full_steps: int
    notebook_lora_steps: int
    train_batch_size: int
    gradient_checkpointing: bool
    eval_batch_size: int
    eval_dialogues: int
    full_lr: float
    lora_lr: float
    instructor_full_steps: int
    instructor_lora_steps: int
    instructor_full_lr: float
    instructor_lora_lr: float
    pretrain_steps: int
    profile_reason: str = field(default="", compare=False)

    @property
    def offline(self) -> bool:
        return self.profile == "offline"

    def path(self, value: str) -> Path:
        """Resolve a path setting against the project root, so the notebook works from any folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()

    @property
    def work_path(self) -> Path:
        return self.path(self.work_dir)

    @property
    def model_path_or_id(self) -> str:
        """A local folder for the offline stand-in, the Hub id otherwise."""
        if self.offline or Path(self.model_id).expanduser().exists():
            return str(self.path(self.model_id))
        return self.model_id

    def s3(self, name: str) -> str:
        """The S3 URI of one published object or folder under `s3_uri`."""
        return self.s3_uri.rstrip("/") + "/" + name

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    def show(self) -> None:
        """Print the settings as a table, marking the ones overridden from the environment."""
        defaults = DEFAULTS[self.profile]
        print(f"Profile: {self.profile}  ({self.profile_reason})")
        for f in dataclasses.fields(self):
            if f.name in ("profile", "profile_reason"):
                continue
            value = getattr(self, f.name)
            mark = "  <- LAB_" + f.name.upper() if value != defaults[f.name] else ""
            print(f"  {f.name:<24} {value!r}{mark}")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face Hub answers within `timeout` seconds."""
    import requests

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        requests.head(f"{endpoint}/api/models/google/flan-t5-base", timeout=timeout)
        return True
    except requests.RequestException:
        return False


def _convert(name: str, raw: str, default: object) -> object:
    env = "LAB_" + name.upper()
    try:
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = type(default).__name__
        raise LabError(f"`{env}`={raw!r} is not a valid {kind}", f"set `{env}` to a {kind}, e.g. {default!r}") from None
    return raw


def choose_profile(requested: str | None = None) -> tuple[str, str]:
    """Pick the profile: `requested`, else `LAB_PROFILE`, else `course` when the Hub answers, else `offline`."""
    name = requested if requested is not None else os.environ.get("LAB_PROFILE", "")
    name = name.strip().lower()
    if name in ("", "auto"):
        if hub_reachable():
            return "course", "LAB_PROFILE unset and the Hugging Face Hub answers"
        return "offline", "LAB_PROFILE unset and the Hugging Face Hub cannot be reached"
    if name not in PROFILES:
        raise LabError(
            f"unknown profile `LAB_PROFILE`={name!r}",
            f"set `LAB_PROFILE` to one of {', '.join(PROFILES)} (or leave it unset to choose automatically)",
        )
    return name, "chosen by LAB_PROFILE" if requested is None else "chosen by the caller"


def load_settings(profile: str | None = None, environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Build the settings: profile defaults, then `LAB_*` environment variables, then keyword overrides."""
    env = os.environ if environ is None else environ
    if environ is not None and profile is None:
        profile = environ.get("LAB_PROFILE", "")
    name, reason = choose_profile(profile)
    values = dict(DEFAULTS[name])
    known = {"LAB_" + k.upper() for k in values} | KNOWN_OTHER_ENV
    for key in sorted(env):
        if key.startswith("LAB_") and key not in known:
            raise LabError(
                f"unknown setting `{key}`",
                "remove it or use one of: " + ", ".join(sorted(known)),
            )
    for key, default in DEFAULTS[name].items():
        raw = env.get("LAB_" + key.upper())
        if raw is not None:
            values[key] = _convert(key, raw, default)
    for key, value in overrides.items():
        if key not in values:
            raise LabError(f"unknown setting {key!r}", "use one of: " + ", ".join(sorted(values)))
        values[key] = value
    return Settings(profile=name, profile_reason=reason, **values)


def hardware_summary() -> str:
    """One line: CPU count, memory, accelerator, and whether this is SageMaker."""
    import torch

    cpus = os.cpu_count() or 0
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        mem_gb = float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.node() or socket.gethostname()}: {cpus} CPUs, {mem_gb:.0f} GB RAM, {gpu}, torch {torch.__version__}"
    )


def on_sagemaker() -> bool:
    """True inside a SageMaker Studio/notebook instance."""
    return bool(
        os.environ.get("SAGEMAKER_INTERNAL_IMAGE_URI") or Path("/opt/ml/metadata/resource-metadata.json").exists()
    )


def show_banner(settings: Settings) -> None:
    """Say loudly which profile runs, on what hardware; warn (not fail) outside SageMaker."""
    line = "=" * 78
    print(line)
    print(f"PROFILE: {settings.profile.upper()}   ({settings.profile_reason})")
    if settings.offline:
        print("  Offline stand-ins: local DialogSum CSVs, a tiny Flan-T5-architecture model built by lab_utils,")
        print("  and a local S3 server on 127.0.0.1. Numbers are the tiny model's, not Flan-T5's.")
    print(f"HARDWARE: {hardware_summary()}")
    if not on_sagemaker():
        print("  Note: not running on SageMaker (the lab targets ml.m5.2xlarge: 8 vCPU, 32 GB); continuing.")
    print(line)
