"""The offline profile's release: the stand-in and one instructor run, trained once and committed to git.

Training a stand-in that really summarizes takes longer than CI or a first notebook run should wait, so the project
keeps the result of its own commands in `lab_utils/backstage/release/` (fp16 safetensors, a few MB each), with a
`MANIFEST.json` of checksums, the commands that made it and how long they took. The offline notebook publishes this
folder to its local S3 server; `python -m lab_utils release` replaces it with a new finished run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from ..config import PROJECT_ROOT, RELEASE_DIR, Settings
from ..errors import LabError
from .instructor import PUBLISHED, Stages, publish, run_dir, write_json_atomic

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


def make_release(
    settings: Settings, command: str, build_seconds: float | None = None, dest: Path = RELEASE_DIR
) -> Path:
    """Copy the stand-in and the finished offline instructor run into the release folder, with a manifest."""
    run = run_dir(settings)
    stages = Stages(run)
    unfinished = [s for s in ("full", "lora", "topic", "results") if stages.identity(s) is None]
    if unfinished or not all((run / name).exists() for name in PUBLISHED):
        raise LabError(
            f"the instructor run in {run} is not finished ({', '.join(unfinished)})",
            "run `python -m lab_utils --profile offline instructor` first",
        )
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
    seconds = {
        name: json.loads((run / name / "train_facts.json").read_text())["seconds"]
        for name in PUBLISHED
        if (run / name / "train_facts.json").is_file()
    }
    if build_seconds is not None:
        seconds[STANDIN] = build_seconds
    manifest = {
        "made": time.strftime("%Y-%m-%d"),
        "command": command,
        "training_seconds": seconds,
        "stages": {s: stages.identity(s) for s in ("full", "lora", "topic", "results")},
        "sha256": {p.relative_to(tmp).as_posix(): sha256(p) for p in release_files(tmp)},
    }
    write_json_atomic(tmp / MANIFEST, manifest)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"Wrote the offline release to {dest} ({len(manifest['sha256'])} files)")
    return dest


def publish_release(settings: Settings) -> None:
    """Offline notebook: check the committed release and publish it to the local S3 server."""
    from .instructor import local_s3_for

    manifest = verify_release()
    if settings.path(settings.model_id) != RELEASE_DIR / STANDIN:
        print(
            f"Warning: `LAB_MODEL_ID` is {settings.model_id}, but the release was trained on its own stand-in "
            f"({RELEASE_DIR / STANDIN}); the pulled checkpoints belong to that one."
        )
    local_s3_for(settings)
    print(f"Offline profile: publishing the project's trained release (made {manifest['made']}) to {settings.s3_uri}")
    publish(settings, RELEASE_DIR)
