"""One settings object for the lab: the course's values, the offline profile's differences, `LAB_*` overrides.

Two profiles run the same notebook:
- `course`: `google/flan-t5-base` and `knkarthick/dialogsum` from the Hugging Face Hub, checkpoints on S3.
- `offline`: DialogSum CSVs from a local folder, a tiny Flan-T5-architecture stand-in that the project trained
  (`lab_utils/backstage/release/`), and a local S3 server on 127.0.0.1 holding that release.

Every setting is written once, in `Settings` below: its default is the course's value, `OFFLINE` lists only what the
offline profile changes, and each field's metadata says what it means and which values it accepts. Settings are
checked when they load, so a bad value stops every command before any work, with one message naming the variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RELEASE_DIR = Path(__file__).resolve().parent / "backstage" / "release"  # the offline profile's trained artifacts
PROFILES = ("course", "offline")


def _setting(default, meaning: str, check: str = ""):
    """A settings field: its course default, what it means, and the form its values must have (see `_CHECKS`)."""
    return field(default=default, metadata={"meaning": meaning, "check": check})


@dataclass(frozen=True)
class Settings:
    """All knobs of one lab run; build it with `load_settings`. Environment variable = `LAB_` + name in capitals."""

    profile: str = field(default="course", metadata={"meaning": "`course`, `offline`, or unset (automatic)"})
    model_id: str = _setting("google/flan-t5-base", "the original model: Hub id or folder", "model")
    dataset: str = _setting("knkarthick/dialogsum", "Hub id of DialogSum (used when `data_dir` is empty)", "text")
    data_dir: str = _setting("", "folder with `train.csv`, `validation.csv`, `test.csv` (empty: the Hub)")
    s3_uri: str = _setting(
        "s3://dlai-generative-ai/models/", "where checkpoints and the results file are published", "s3"
    )
    s3_anonymous: bool = _setting(False, "`true` to read a public bucket without AWS credentials")
    rouge_metric: str = _setting("rouge", "what `evaluate.load` loads: the Hub's `rouge`, or a local metric", "text")
    work_dir: str = _setting("data", "where checkpoints are pulled and runs are written", "text")
    seed: int = _setting(42, "seed of training and data order", "seed")
    max_source_length: int = _setting(512, "tokens kept of the prompt, in training and in generation", "length")
    max_target_length: int = _setting(128, "tokens kept of the summary (labels)", "length")
    max_new_tokens: int = _setting(200, "generation length (greedy)", "length")
    no_repeat_ngram_size: int = _setting(0, "forbid repeated n-grams in generation (0 = off)", ">=0")
    notebook_full_steps: int = _setting(2, "steps of the notebook's short full fine-tune", ">=1")
    notebook_lora_steps: int = _setting(2, "steps of the notebook's short LoRA training", ">=1")
    train_batch_size: int = _setting(8, "training batch size (per process)", ">=1")
    eval_batch_size: int = _setting(16, "generation batch size", ">=1")
    eval_dialogues: int = _setting(10, "test dialogues scored live in the notebook", ">=1")
    full_lr: float = _setting(1e-5, "learning rate of full fine-tuning (the course's)", ">0")
    lora_lr: float = _setting(1e-3, "learning rate of LoRA (the course's)", ">0")
    warmup_ratio: float = _setting(0.0, "share of training steps with a rising learning rate", "[0,1)")
    gradient_checkpointing: bool = _setting(
        True, "`true`: recompute activations in backward (the same weights, less memory, a little slower)"
    )
    precision: str = _setting(
        "auto",
        "`auto` (bf16 on a GPU that has it, else fp32), `fp32`, `bf16` or `fp16`: training and generation",
        "precision",
    )
    save_steps: int = _setting(50, "the instructor saves a checkpoint to resume from every this many steps", ">=1")
    eval_steps: int = _setting(
        50, "the instructor's validation loss every this many steps (divides `save_steps`)", ">=1"
    )
    validation_rows: int = _setting(200, "validation rows the instructor's validation loss is measured on", ">=1")
    instructor_full_steps: int = _setting(1600, "the instructor's full fine-tuning steps", ">=1")
    instructor_lora_steps: int = _setting(1600, "the instructor's LoRA steps", ">=1")
    instructor_topic_steps: int = _setting(800, "the instructor's steps for the topic adapter", ">=1")
    pretrain_steps: int = _setting(1800, "pretraining steps of the offline stand-in (`build-model`)", ">=1")
    profile_reason: str = field(default="", compare=False, metadata={"internal": True})

    @property
    def offline(self) -> bool:
        return self.profile == "offline"

    def path(self, value: str | Path) -> Path:
        """Resolve a path setting against the project root, so the notebook works from any folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()

    @property
    def work_path(self) -> Path:
        return self.path(self.work_dir)

    @property
    def model_path_or_id(self) -> str:
        """The folder of a local model, or the Hub id."""
        return self.model_id if looks_like_hub_id(self.model_id) else str(self.path(self.model_id))

    def s3(self, name: str) -> str:
        """The S3 URI of one published object or folder under `s3_uri`."""
        return self.s3_uri.rstrip("/") + "/" + name

    def replace(self, **changes) -> Settings:
        """A copy with some settings changed, checked like loaded ones (types included)."""
        defaults = profile_defaults(self.profile)
        for key, value in changes.items():
            if key not in defaults:
                raise LabError(f"unknown setting {key!r}", "use one of: " + ", ".join(sorted(defaults)))
            changes[key] = _check_type(key, value, defaults[key])
        return check_settings(dataclasses.replace(self, **changes))

    def show(self) -> None:
        """Print the settings, marking those that differ from the profile's default."""
        defaults = profile_defaults(self.profile)
        print(f"Profile: {self.profile}  ({self.profile_reason})")
        for name in setting_names():
            value = getattr(self, name)
            mark = "  <- changed (LAB_" + name.upper() + " or a parameter)" if value != defaults[name] else ""
            print(f"  {name:<24} {value!r}{mark}")


# The offline profile: only what differs from the course's values.
OFFLINE = {
    "model_id": str(RELEASE_DIR.relative_to(PROJECT_ROOT) / "flan-t5-tiny"),
    "data_dir": "../shared/dialogsum",
    "s3_uri": "s3://lab-offline/models/",
    "rouge_metric": "lab_utils/backstage/rouge_metric",  # the same computation as the Hub's, without the Hub
    "max_source_length": 256,  # the stand-in's tokenizer: a median DialogSum prompt is ~200 tokens
    "max_target_length": 96,
    "max_new_tokens": 60,
    "no_repeat_ngram_size": 3,  # the tiny model loops without it
    "notebook_full_steps": 10,
    "notebook_lora_steps": 10,
    "train_batch_size": 32,
    "eval_batch_size": 32,
    "full_lr": 1e-3,  # a tiny model trained for minutes needs a larger step than Flan-T5
    "lora_lr": 3e-3,
    "warmup_ratio": 0.05,
    "gradient_checkpointing": False,  # the stand-in's activations are small: nothing to save
    "instructor_full_steps": 500,  # 1.3 epochs of DialogSum's training split at batch 32
    "instructor_lora_steps": 500,
    "instructor_topic_steps": 300,
    "save_steps": 100,  # ~2 minutes of the stand-in's training
    "validation_rows": 500,  # the whole split: the stand-in scores it in seconds
}


def setting_names() -> list[str]:
    """The names of the settings a user can change (every field but the profile)."""
    return [f.name for f in dataclasses.fields(Settings) if f.name != "profile" and not f.metadata.get("internal")]


def profile_defaults(profile: str) -> dict[str, object]:
    """Every setting's default in `profile`."""
    course = {f.name: f.default for f in dataclasses.fields(Settings) if f.name in setting_names()}
    return {**course, **OFFLINE} if profile == "offline" else course


def looks_like_hub_id(value: str) -> bool:
    """True for `org/name` (or `name`) that is no local path: the Hub's form, which the lab never creates on disk."""
    text = str(value)
    if text.startswith((".", "/", "~")) or os.sep != "/" and os.sep in text:
        return False
    if (PROJECT_ROOT / text).exists():
        return False
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", text))


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split "s3://bucket/some/prefix/" into ("bucket", "some/prefix/"), checking the bucket's name."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise LabError(f"{uri!r} is not an S3 URI", "write it as s3://BUCKET/path/ (a folder ends with '/')")
    bucket, _, key = uri[len("s3://") :].partition("/")
    # S3's rule: 3-63 characters of lowercase letters, digits, dots and dashes, starting and ending alphanumeric
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise LabError(
            f"{uri!r} does not start with a valid bucket name (got {bucket!r})",
            "write it as s3://BUCKET/path/; bucket names are 3-63 lowercase letters, digits, '.' or '-'",
        )
    return bucket, key


# numpy's and torch's seeds are unsigned 32-bit numbers: a larger one is refused at training time, not here
MAX_SEED = 2**32 - 1
# token lengths: Flan-T5 was trained on 512-token inputs, and attention's memory grows with the square of the length
# (4,096 tokens: batch 16 x 12 heads x 4096^2 floats = 12.9 GB a layer): longer ones end in a failed allocation
MAX_TOKENS = 4096


def _check_value(name: str, value: object, check: str) -> str | None:
    """Why `value` is not acceptable for the setting `name` (None when it is)."""
    if check == "seed" and not 0 <= value <= MAX_SEED:
        return f"must be a whole number from 0 to {MAX_SEED:,} (2^32 - 1, what numpy and torch accept)"
    if check == "length" and not 1 <= value <= MAX_TOKENS:
        return f"must be a whole number of tokens from 1 to {MAX_TOKENS} (Flan-T5 was trained on 512)"
    if check == ">=1" and value < 1:
        return "must be a whole number of at least 1"
    if check == ">=0" and value < 0:
        return "must be a whole number of at least 0"
    if check == ">0" and not (math.isfinite(value) and value > 0):
        return "must be a finite number above 0 (e.g. 1e-5)"
    if check == "[0,1)" and not (math.isfinite(value) and 0 <= value < 1):
        return "must be at least 0 and below 1"
    if check in ("text", "model") and not str(value).strip():
        return "must not be empty"
    if check == "precision" and value not in ("auto", "fp32", "bf16", "fp16"):
        return "must be one of auto, fp32, bf16, fp16"
    if check == "s3":
        try:
            parse_s3_uri(value)
        except LabError as exc:
            return f"is not a valid S3 URI: {exc.what}"
    return None


def check_settings(settings: Settings) -> Settings:
    """Raise one `LabError` naming the first setting whose value is out of its range or form."""
    for f in dataclasses.fields(settings):
        problem = _check_value(f.name, getattr(settings, f.name), f.metadata.get("check", ""))
        if not problem and f.name == "model_id" and settings.offline and looks_like_hub_id(settings.model_id):
            problem = "is a Hugging Face Hub id, and the offline profile cannot reach the Hub (give a local folder)"
        if not problem and f.name == "precision" and settings.precision not in ("auto", "fp32"):
            from .devices import best_device, resolve_precision  # torch, only when a precision is asked for

            resolve_precision(settings.precision, best_device())  # refused here when this machine cannot run it
        if not problem and f.name == "save_steps" and settings.save_steps % settings.eval_steps:
            problem = (
                f"must be a multiple of `LAB_EVAL_STEPS`={settings.eval_steps} (the best checkpoint is a saved one)"
            )
        if problem:
            env = "LAB_" + f.name.upper()
            example = profile_defaults(settings.profile)[f.name]
            raise LabError(
                f"`{env}`={getattr(settings, f.name)!r} {problem}",
                f"set `{env}` (or the matching notebook parameter) to a valid value, e.g. {example!r}",
            )
    return settings


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
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as exc:
        kind = {bool: "true/false", int: "whole number", float: "number"}[type(default)]
        raise LabError(f"`{env}`={raw!r} is not a {kind}", f"set `{env}` to a {kind}, e.g. {default!r}") from exc
    return raw


def _check_type(name: str, value: object, default: object) -> object:
    """A keyword override (e.g. a notebook parameter) of the default's type: whole numbers stay whole."""
    kind = type(default)
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        need = {bool: "True or False", int: "a whole number", float: "a number", str: "a string"}[kind]
        raise LabError(f"setting {name}={value!r} is not {need}", f"pass {need}, e.g. {default!r}")
    return value


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
    """Build and check the settings: profile defaults, then `LAB_*` environment variables, then keyword overrides."""
    env = os.environ if environ is None else environ
    if environ is not None and profile is None:
        profile = environ.get("LAB_PROFILE", "")
    name, reason = choose_profile(profile)
    defaults = profile_defaults(name)
    known = {"LAB_" + k.upper() for k in defaults} | {"LAB_PROFILE"}
    for key in sorted(env):
        if key.startswith("LAB_") and key not in known:
            raise LabError(f"unknown setting `{key}`", "remove it or use one of: " + ", ".join(sorted(known)))
    values = dict(defaults)
    for key, default in defaults.items():
        raw = env.get("LAB_" + key.upper())
        if raw is not None:
            values[key] = _convert(key, raw, default)
    for key, value in overrides.items():
        if key not in values:
            raise LabError(f"unknown setting {key!r}", "use one of: " + ", ".join(sorted(values)))
        values[key] = _check_type(key, value, defaults[key])
    return check_settings(Settings(profile=name, profile_reason=reason, **values))


def settings_table() -> str:
    """The README's table of settings, generated from `Settings` and `OFFLINE` (a test keeps the README in step)."""
    course, offline = profile_defaults("course"), profile_defaults("offline")
    meanings = {f.name: f.metadata.get("meaning", "") for f in dataclasses.fields(Settings)}

    def show(value: object) -> str:
        return "(empty)" if value == "" else f"`{str(value).lower() if isinstance(value, bool) else value}`"

    lines = ["| variable | course | offline | meaning |", "| --- | --- | --- | --- |"]
    lines.append(f"| `LAB_PROFILE` | | | {meanings['profile']} |")
    for name in setting_names():
        same = "same" if offline[name] == course[name] else show(offline[name])
        lines.append(f"| `LAB_{name.upper()}` | {show(course[name])} | {same} | {meanings[name]} |")
    return "\n".join(lines)


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
        print("  Offline stand-ins: local DialogSum CSVs, a tiny Flan-T5-architecture model trained by the project,")
        print("  and a local S3 server on 127.0.0.1. Numbers are the tiny model's, not Flan-T5's.")
    print(f"HARDWARE: {hardware_summary()}")
    if not on_sagemaker():
        print("  Note: not running on SageMaker (the lab targets ml.m5.2xlarge: 8 vCPU, 32 GB); continuing.")
    print(line)
