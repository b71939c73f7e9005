"""One settings object for the lab: the course's values, the offline profile's differences, `LAB_*` overrides."""

# Two profiles run the same notebook: `course` (Flan-T5 and DialogSum from the Hugging Face Hub, checkpoints on S3) and
# `offline` (DialogSum CSVs from a local folder, a tiny Flan-T5-architecture stand-in the project trained, a local S3
# server on 127.0.0.1). Every setting is written once, in `Settings`: its default is the course's value, `OFFLINE` lists
# what the offline profile changes, and each field says what it means and which values it takes. Settings are checked
# when they load, so a bad value stops every command before any work, with one message naming the variable.

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LabError
from .files import PROJECT_ROOT, lab_source

RELEASE_DIR = PROJECT_ROOT / "lab_utils" / "backstage" / "release"  # the offline profile's trained artifacts
PROFILES = ("course", "offline")
SPLITS = ("train", "validation", "test")  # DialogSum's, each a CSV in a local copy (`data_dir`)
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are unsigned 32-bit numbers
# Flan-T5 was trained on 512-token inputs; attention's memory grows with the square of the length (4,096 tokens:
# batch 16 x 12 heads x 4096^2 floats = 12.9 GB a layer), so longer ones end in a failed allocation
MAX_TOKENS = 4096


def dialogsum_problem(folder: Path) -> str | None:
    """Why `folder` does not hold DialogSum's CSVs (train.csv, validation.csv, test.csv), or None."""
    names = [f"{split}.csv" for split in SPLITS]
    if not folder.is_dir():
        return f"is not a folder (one with DialogSum's {', '.join(names)})"
    return f"has no {', '.join(missing)}" if (missing := [n for n in names if not (folder / n).is_file()]) else None


def _is_s3_uri(value: str) -> str | None:
    try:
        parse_s3_uri(value)
    except LabError as exc:
        return f"is not a valid S3 URI: {exc.what}"
    return None


# the form each kind of setting must have: a function of the value giving the problem, or None when it is fine
CHECKS = {
    "seed": lambda v: None if 0 <= v <= MAX_SEED else f"must be a whole number from 0 to {MAX_SEED:,}",
    "tokens": lambda v: None if 1 <= v <= MAX_TOKENS else f"must be a number of tokens from 1 to {MAX_TOKENS}",
    ">=1": lambda v: None if v >= 1 else "must be a whole number of at least 1",
    ">=0": lambda v: None if v >= 0 else "must be a whole number of at least 0",
    ">0": lambda v: None if math.isfinite(v) and v > 0 else "must be a finite number above 0 (e.g. 1e-5)",
    "[0,1)": lambda v: None if math.isfinite(v) and 0 <= v < 1 else "must be at least 0 and below 1",
    "text": lambda v: None if str(v).strip() else "must not be empty",
    "precision": lambda v: None if v in ("auto", "fp32", "bf16", "fp16") else "must be one of auto, fp32, bf16, fp16",
    "s3": _is_s3_uri,
}


def _setting(default, meaning: str, check: str = "", learner: bool = False):
    """A settings field: its course default, its meaning, its form (a key of CHECKS), shown to learners or not."""
    return field(default=default, metadata={"meaning": meaning, "check": check, "learner": learner})


@dataclass(frozen=True)
class Settings:
    """All knobs of one lab run; build it with `load_settings`. Environment variable = `LAB_` + name in capitals."""

    profile: str = field(default="course", metadata={"meaning": "`course`, `offline`, or unset (automatic)"})
    model_id: str = _setting("google/flan-t5-base", "the original model: Hub id or folder", "text", True)
    dataset: str = _setting("knkarthick/dialogsum", "Hub id of DialogSum (used when `data_dir` is empty)", "text")
    data_dir: str = _setting("", "folder with `train.csv`, `validation.csv`, `test.csv` (empty: the Hub)", "", True)
    s3_uri: str = _setting("s3://dlai-generative-ai/models/", "where checkpoints and the results file are published",
                           "s3", True)  # fmt: skip
    s3_anonymous: bool = _setting(False, "`true` to read a public bucket without AWS credentials")
    rouge_metric: str = _setting("rouge", "what `evaluate.load` loads: the Hub's `rouge`, or a local metric", "text")
    work_dir: str = _setting("data", "where checkpoints are pulled and runs are written", "text", True)
    seed: int = _setting(42, "seed of training and data order", "seed")
    max_source_length: int = _setting(512, "tokens kept of the prompt, in training and in generation", "tokens")
    max_target_length: int = _setting(128, "tokens kept of the summary (labels)", "tokens")
    max_new_tokens: int = _setting(200, "generation length (greedy)", "tokens")
    no_repeat_ngram_size: int = _setting(0, "forbid repeated n-grams in generation (0 = off)", ">=0")
    notebook_full_steps: int = _setting(2, "steps of the notebook's short full fine-tune", ">=1", True)
    notebook_lora_steps: int = _setting(2, "steps of the notebook's short LoRA training", ">=1", True)
    train_batch_size: int = _setting(8, "training batch size", ">=1", True)
    eval_batch_size: int = _setting(16, "generation batch size", ">=1")
    eval_dialogues: int = _setting(10, "test dialogues scored live in the notebook", ">=1", True)
    full_lr: float = _setting(1e-5, "learning rate of full fine-tuning (the course's)", ">0")
    lora_lr: float = _setting(1e-3, "learning rate of LoRA (the course's)", ">0")
    warmup_ratio: float = _setting(0.0, "share of training steps with a rising learning rate", "[0,1)")
    gradient_checkpointing: bool = _setting(True, "`true`: recompute activations in backward (the same weights, "
                                            "less memory, a little slower)")  # fmt: skip
    precision: str = _setting("auto", "`auto` (bf16 on a GPU that has it, else fp32), `fp32`, `bf16` or `fp16`: "
                              "training and generation", "precision", True)  # fmt: skip
    save_steps: int = _setting(50, "the instructor saves a checkpoint to resume from every this many steps", ">=1")
    eval_steps: int = _setting(50, "the instructor's validation loss every this many steps (divides `save_steps`)",
                               ">=1")  # fmt: skip
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
        typed = {key: _typed(key, value, defaults) for key, value in changes.items()}
        return check_settings(dataclasses.replace(self, **typed))

    def show(self, everything: bool = False) -> None:
        """Print the profile and why, then the settings a learner needs (`everything`: all, with their meaning)."""
        defaults = profile_defaults(self.profile)
        print(f"Profile: {self.profile}  ({self.profile_reason})")
        for f in dataclasses.fields(self):
            if f.name in defaults and (everything or f.metadata.get("learner")):
                value = getattr(self, f.name)
                mark = "  <- changed (LAB_" + f.name.upper() + " or a parameter)" if value != defaults[f.name] else ""
                meaning = f"\n{'':<29}{f.metadata['meaning']}" if everything else ""
                print(f"  {f.name:<24} {value!r}{mark}{meaning}")
        if not everything:
            print("  (every setting, and what it means: settings.show(everything=True))")


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
    "notebook_full_steps": 5,  # seconds each on 2 cores: a loss that visibly falls
    "notebook_lora_steps": 5,
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


def profile_defaults(profile: str) -> dict[str, object]:
    """Every setting's default in `profile` (every field but the profile itself)."""
    fields = dataclasses.fields(Settings)
    course = {f.name: f.default for f in fields if f.name != "profile" and not f.metadata.get("internal")}
    return {**course, **OFFLINE} if profile == "offline" else course


def looks_like_hub_id(value: str) -> bool:
    """True for `org/name` (or `name`) that is no local path: the Hub's form, which the lab never creates on disk."""
    text = str(value)
    if text.startswith((".", "/", "~")) or (PROJECT_ROOT / text).exists():
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


def _problem(settings: Settings, name: str, value) -> tuple[str | None, object]:
    """Why `value` is not acceptable for the setting `name`, and a valid example (None when it is fine)."""
    example = profile_defaults(settings.profile)[name]
    check = CHECKS.get(Settings.__dataclass_fields__[name].metadata.get("check", ""))
    if check and (problem := check(value)):
        return problem, example
    path = settings.path(value) if name in ("model_id", "work_dir", "data_dir") else None
    hub = name == "model_id" and looks_like_hub_id(value)
    if hub and settings.offline:
        return "is a Hugging Face Hub id: the offline profile cannot reach the Hub (give a local folder)", example
    if name == "model_id" and not hub and not (path / "config.json").is_file():
        return "is neither a model folder (with a config.json) nor a Hugging Face Hub id", example
    # the offline profile's own folder is checked where DialogSum is read: `summarize` and the tests run without it
    if name == "data_dir" and value and value != example and (problem := dialogsum_problem(path)):
        return problem, example
    if name == "work_dir":
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or lab_source(path):
            return "is a file (or lies in one), or lies in the lab's own files", example
    eval_steps = settings.eval_steps
    if name == "save_steps" and eval_steps >= 1 and value % eval_steps:  # eval_steps < 1 is its own problem
        multiple = eval_steps * max(1, round(value / eval_steps))
        return f"must be a multiple of `LAB_EVAL_STEPS`={eval_steps} (the best checkpoint is a saved one)", multiple
    if name == "precision" and value not in ("auto", "fp32"):
        from .devices import resolve_precision  # torch, only when a precision is asked for

        resolve_precision(value)  # refused here when this machine cannot run it
    return None, example


def check_settings(settings: Settings) -> Settings:
    """Raise one `LabError` naming the first setting whose value is out of its range or form."""
    for f in dataclasses.fields(settings):
        if f.name in ("profile", "profile_reason"):
            continue
        problem, example = _problem(settings, f.name, value := getattr(settings, f.name))
        if problem:
            env = "LAB_" + f.name.upper()
            fix = f"set `{env}` (or the matching notebook parameter) to a valid value, e.g. {example!r}"
            raise LabError(f"`{env}`={value!r} {problem}", fix)
    return settings


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face Hub answers within `timeout` seconds (never with HF_HUB_OFFLINE=1)."""
    import requests

    try:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return os.environ.get("HF_HUB_OFFLINE") != "1" and requests.head(endpoint, timeout=timeout) is not None
    except requests.RequestException:
        return False


KINDS = {bool: "true/false", int: "whole number", float: "number", str: "string"}
BOOLS = dict.fromkeys(("1", "true", "yes", "on"), True) | dict.fromkeys(("0", "false", "no", "off", ""), False)


def _parsed(name: str, raw: str, default: object) -> object:
    """An environment variable's text as the setting's type."""
    kind, env = type(default), f"LAB_{name.upper()}"
    try:
        return BOOLS[raw.strip().lower()] if kind is bool else kind(raw)
    except (KeyError, ValueError) as exc:
        fix = f"set `{env}` to a {KINDS[kind]}, e.g. {default!r}"
        raise LabError(f"`{env}`={raw!r} is not a {KINDS[kind]}", fix) from exc


def _typed(name: str, value: object, defaults: dict) -> object:
    """A keyword override (a notebook parameter) of the default's type: whole numbers stay whole."""
    if name not in defaults:
        raise LabError(f"unknown setting {name!r}", "use one of: " + ", ".join(sorted(defaults)))
    kind = type(defaults[name])
    if type(value) is not kind and not (kind is float and type(value) is int):
        raise LabError(f"setting {name}={value!r} is not a {KINDS[kind]}", f"pass one, e.g. {defaults[name]!r}")
    return kind(value)


def choose_profile(requested: str | None = None) -> tuple[str, str]:
    """Pick the profile: `requested`, else `LAB_PROFILE`, else `course` when the Hub answers, else `offline`."""
    name = (requested if requested is not None else os.environ.get("LAB_PROFILE", "")).strip().lower()
    if name in ("", "auto"):
        if hub_reachable():
            return "course", "LAB_PROFILE unset and the Hugging Face Hub answers"
        return "offline", "LAB_PROFILE unset and the Hugging Face Hub cannot be reached"
    if name not in PROFILES:
        fix = f"set `LAB_PROFILE` to one of {', '.join(PROFILES)} (or leave it unset to choose automatically)"
        raise LabError(f"unknown profile `LAB_PROFILE`={name!r}", fix)
    return name, "chosen by LAB_PROFILE" if requested is None else "chosen by the caller"


def load_settings(profile: str | None = None, environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Build and check the settings: profile defaults, then `LAB_*` environment variables, then keyword overrides."""
    env = os.environ if environ is None else environ
    name, reason = choose_profile(env.get("LAB_PROFILE", "") if profile is None and environ is not None else profile)
    defaults = profile_defaults(name)
    known = {"LAB_" + k.upper() for k in defaults} | {"LAB_PROFILE"}
    if unknown := sorted(k for k in env if k.startswith("LAB_") and k not in known):
        raise LabError(f"unknown setting `{unknown[0]}`", "remove it or use one of: " + ", ".join(sorted(known)))
    values = {k: _parsed(k, env[e], d) if (e := f"LAB_{k.upper()}") in env else d for k, d in defaults.items()}
    return Settings(profile=name, profile_reason=reason, **values).replace(**overrides)  # typed and checked there


def show_banner(settings: Settings) -> None:
    """Say loudly which profile runs, on what hardware; note (not fail) outside SageMaker."""
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 if hasattr(os, "sysconf") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print("=" * 78, f"PROFILE: {settings.profile.upper()}   ({settings.profile_reason})", sep="\n")
    if settings.offline:
        print("  Offline stand-ins: local DialogSum CSVs, a tiny Flan-T5-architecture model trained by the project,\n"
              "  and a local S3 server on 127.0.0.1. Numbers are the tiny model's, not Flan-T5's.")  # fmt: skip
    print(f"HARDWARE: {platform.node()}: {os.cpu_count()} CPUs, {memory:.0f} GB RAM, {gpu}, torch {torch.__version__}")
    if not (os.environ.get("SAGEMAKER_INTERNAL_IMAGE_URI") or Path("/opt/ml/metadata/resource-metadata.json").exists()):
        print("  Note: not running on SageMaker (the lab targets ml.m5.2xlarge: 8 vCPU, 32 GB); continuing.")
    print("=" * 78)
