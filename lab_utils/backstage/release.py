"""The offline profile's release: the stand-in and one instructor run, trained once and committed to git.

Training a stand-in that really summarizes takes longer than CI or a first notebook run should wait, so the project
keeps the result of its own commands in `lab_utils/backstage/release/` (fp16 safetensors, a few MB each), with a
`MANIFEST.json` of checksums, the commands that made it and how long they took. The offline notebook publishes this
folder to its local S3 server; `python -m lab_utils release` replaces it with a new finished run.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

from ..checkpoints import FULL_CHECKPOINT, RESULTS_FILE, TOPIC_RESULTS_FILE
from ..config import PROJECT_ROOT, RELEASE_DIR, Settings
from ..errors import LabError
from ..s3 import upload_folder
from .instructor import PUBLISHED, STAGE_NAMES, TRAINED, Stages, run_dir, write_json_atomic
from .local_s3 import local_s3_for

STANDIN = "flan-t5-tiny"
MANIFEST = "MANIFEST.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def release_files(folder: Path) -> list[Path]:
    """Every file of a release folder but its manifest, in a fixed order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def verify_release(folder: Path = RELEASE_DIR) -> dict:
    """The release's manifest, after checking every file against its checksum."""
    manifest_path = folder / MANIFEST
    fix = "restore the folder from git (`git checkout -- lab_utils/backstage/release`), or make it again"
    if not manifest_path.is_file():
        raise LabError(f"the offline release {folder} has no {MANIFEST}", fix)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    listed = manifest["sha256"]
    present = {p.relative_to(folder).as_posix() for p in release_files(folder)}
    if present != set(listed):
        raise LabError(f"the offline release {folder} differs from its manifest: {sorted(present ^ set(listed))}", fix)
    for name, digest in listed.items():
        if sha256(folder / name) != digest:
            raise LabError(f"{folder / name} does not match its checksum in {MANIFEST}", fix)
    return manifest


def name_the_release_base(folder: Path, base: str) -> None:
    """Name the release's own stand-in as the base model of its adapters (`base_model_name_or_path` in
    `adapter_config.json`, and the model card), instead of the folder on the machine that trained them."""
    for adapter in sorted(folder.glob("*/adapter_config.json")):
        config = json.loads(adapter.read_text(encoding="utf-8"))
        trained_on = config.get("base_model_name_or_path")
        if not trained_on or trained_on == base:
            continue
        for path in (adapter, adapter.with_name("README.md")):  # peft's model card names the base too
            if path.is_file():
                path.write_text(path.read_text(encoding="utf-8").replace(trained_on, base), encoding="utf-8")


def not_in_release(folder: Path) -> list[str]:
    """The files of `folder` that no release wrote: those its MANIFEST.json does not list (all, without one)."""
    present = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if not p.is_dir()]
    try:
        listed = set(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return present
    return [name for name in present if name not in listed and name != MANIFEST]


def check_seconds(seconds: dict[str, object]) -> None:
    """Every time the manifest records is a finite, non-negative number of seconds (MANIFEST.json stays JSON)."""
    for name, value in seconds.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        if not ok:
            raise LabError(
                f"the training time of {name} is {value!r}, not a finite number of seconds >= 0; nothing was written",
                "give --build-seconds as a number such as 744, or run the instructor again",
            )


def check_run(settings: Settings, run: Path, stages: Stages) -> None:
    """What a release promises, checked on the run before anything is written: the checkpoint and adapters load as
    the notebook's pulls check them, they were trained on `LAB_MODEL_ID` (the fingerprint each stage recorded),
    and the results file passes the lab's story checks (`scoring.story_checks`)."""
    from transformers import AutoModelForSeq2SeqLM

    from ..data import load_dialogsum
    from ..models import check_adapter_dir, check_model_dir, fingerprint
    from ..results_file import TOPIC_COLUMNS, read_results_file
    from ..scoring import story_checks

    fix = "run `python -m lab_utils --profile offline instructor` again: it retrains what is damaged"
    check_model_dir(run / FULL_CHECKPOINT, finite=True, fix=fix)
    base_dir = check_model_dir(settings.model_path_or_id, fix="check `LAB_MODEL_ID`")
    base = AutoModelForSeq2SeqLM.from_pretrained(base_dir, dtype="float32")
    base_fingerprint = fingerprint(base)
    for stage in TRAINED:
        trained_on = stages.identity(stage.name)["original"]
        if trained_on != base_fingerprint:
            raise LabError(
                f"the run's {stage.name} stage was trained on another original model (fingerprint {trained_on}) "
                f"than `LAB_MODEL_ID`={settings.model_id} ({base_fingerprint}); nothing was written",
                "set `LAB_MODEL_ID` to the model the instructor trained on (e.g. data/offline/flan-t5-tiny)",
            )
    for stage in TRAINED:
        if stage.lora:
            check_adapter_dir(run / stage.folder, base, settings.model_id, fix=fix)
    frame = read_results_file(run / RESULTS_FILE)
    read_results_file(run / TOPIC_RESULTS_FILE, TOPIC_COLUMNS)
    print("Checking the results file against the lab's story (distinct summaries, the best constant, ROUGE order)")
    checks = story_checks(frame, load_dialogsum(settings)["train"]["summary"])
    failed = [f"{name}: {numbers}" for name, (ok, numbers) in checks.items() if not ok]
    if failed:
        raise LabError(
            f"the run's results file fails {len(failed)} of {len(checks)} story checks, so it is not released "
            "(nothing was written):\n    " + "\n    ".join(failed),
            "train with the offline defaults (`python -m lab_utils --profile offline instructor`), then release",
        )


def make_release(
    settings: Settings, command: str, build_seconds: float | None = None, dest: Path = RELEASE_DIR
) -> Path:
    """Copy the stand-in and the finished offline instructor run into the release folder, with a manifest.

    Everything is checked first (`check_run`, `check_seconds`); then the release is written under a temporary name
    and renamed into place (the caller checked that `dest` holds nothing but an earlier release: `not_in_release`).
    """
    run = run_dir(settings)
    stages = Stages(run)
    unfinished = [s for s in STAGE_NAMES if stages.identity(s) is None]
    if unfinished or not all((run / name).exists() for name in PUBLISHED):
        raise LabError(
            f"the instructor run in {run} is not finished ({', '.join(unfinished)})",
            "run `python -m lab_utils --profile offline instructor` first",
        )
    seconds = {
        name: json.loads((run / name / "train_facts.json").read_text())["seconds"]
        for name in PUBLISHED
        if (run / name / "train_facts.json").is_file()
    }
    if build_seconds is not None:
        seconds[STANDIN] = build_seconds
    check_seconds(seconds)
    check_run(settings, run, stages)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(settings.model_path_or_id, tmp / STANDIN)
    for name in PUBLISHED:
        source = run / name
        if source.is_dir():
            shutil.copytree(source, tmp / name, ignore=shutil.ignore_patterns("*.previous", "*.partial"))
        else:
            shutil.copy2(source, tmp / name)
    base = dest.resolve() / STANDIN  # the stand-in copied beside the adapters (a trial release: outside the project)
    name_the_release_base(
        tmp, base.relative_to(PROJECT_ROOT).as_posix() if base.is_relative_to(PROJECT_ROOT) else str(base)
    )
    manifest = {
        "made": time.strftime("%Y-%m-%d"),
        "command": command,
        "training_seconds": seconds,
        "stages": {s: stages.identity(s) for s in STAGE_NAMES},
        "sha256": {p.relative_to(tmp).as_posix(): sha256(p) for p in release_files(tmp)},
    }
    write_json_atomic(tmp / MANIFEST, manifest)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)  # an empty folder, or a release this command wrote (checked by the caller)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"Wrote the offline release to {dest} ({len(manifest['sha256'])} files)")
    return dest


def start_offline_world(settings: Settings) -> None:
    """The offline notebook's world: check the committed release, start the local S3 server on 127.0.0.1 and publish
    the release to it, so that the notebook pulls what the project's instructor command trained (a few seconds)."""
    manifest = verify_release()
    if settings.path(settings.model_id) != RELEASE_DIR / STANDIN:
        print(
            f"Warning: `LAB_MODEL_ID` is {settings.model_id}, but the release was trained on its own stand-in "
            f"({RELEASE_DIR / STANDIN}); the pulled checkpoints belong to that one."
        )
    local_s3_for(settings)
    print(f"Offline profile: publishing the project's trained release (made {manifest['made']}) to {settings.s3_uri}")
    upload_folder(settings, RELEASE_DIR, PUBLISHED)
