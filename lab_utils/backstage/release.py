"""The offline profile's release: the stand-in and one instructor run, trained once and committed to git."""

# Training a stand-in that really summarizes takes longer than CI or a first notebook run should wait, so the project
# keeps the result of its own commands in `lab_utils/backstage/release/` (fp16 safetensors, a few MB each), with a
# `MANIFEST.json` of checksums, the commands that made it and how long they took. The offline notebook publishes this
# folder to its local S3 server; `python -m lab_utils release` replaces it with a new finished run.

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

from ..checkpoints import FULL_CHECKPOINT, RESULTS_FILE, TOPIC_RESULTS_FILE
from ..config import PROJECT_ROOT, RELEASE_DIR, Settings
from ..data import load_dialogsum
from ..errors import LabError
from ..files import MARK, digest, write_folder, write_json
from ..models import check_adapter_dir, check_model_dir, fingerprint, read_json
from ..results_file import TOPIC_COLUMNS, read_results_file
from ..s3 import upload_folder
from ..scoring import story_checks
from .instructor import PUBLISHED, STAGES, run_dir
from .local_s3 import local_s3_for

STANDIN = "flan-t5-tiny"
MANIFEST = "MANIFEST.json"


def verify_release(folder: Path = RELEASE_DIR) -> dict:
    """The release's manifest, after checking every file against its checksum."""
    fix = "restore the folder from git (`git checkout -- lab_utils/backstage/release`), or make it again"
    manifest = read_json(folder / MANIFEST, "offline release", fix)
    listed = manifest.get("sha256", {})
    present = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*")
               if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}  # fmt: skip
    if changed := sorted(n for n in {*present, *listed} if n not in present or digest(present[n]) != listed.get(n)):
        raise LabError(f"the offline release {folder} does not match {MANIFEST} (missing, added or changed: {changed})",
                       fix)  # fmt: skip
    return manifest


def name_the_release_base(folder: Path, base: str) -> None:
    """Name the release's own stand-in as its adapters' base (`adapter_config.json` and peft's model card)."""
    # instead of the folder on the machine that trained them
    for adapter in sorted(folder.glob("*/adapter_config.json")):
        if (trained_on := read_json(adapter, "adapter", "").get("base_model_name_or_path")) and trained_on != base:
            for path in filter(Path.is_file, (adapter, adapter.with_name("README.md"))):
                path.write_text(path.read_text(encoding="utf-8").replace(trained_on, base), encoding="utf-8")


def check_run(settings: Settings, run: Path) -> dict[str, dict]:
    """Each stage's `train_facts.json`, after checking on the run what a release promises, before writing anything."""
    # the checkpoint and adapters load, they were trained on `LAB_MODEL_ID` (its fingerprint), and the results file
    # passes `scoring.story_checks`
    from transformers import AutoModelForSeq2SeqLM

    fix = "run `python -m lab_utils --profile offline instructor` again: it retrains what is damaged"
    if missing := [name for name in PUBLISHED if not (run / name).exists()]:
        raise LabError(f"the instructor run in {run} is not finished (no {', '.join(missing)})", fix)
    check_model_dir(run / FULL_CHECKPOINT, finite=True, fix=fix)
    base = AutoModelForSeq2SeqLM.from_pretrained(check_model_dir(settings.model_path_or_id), dtype="float32")
    facts = {stage.folder: read_json(run / stage.folder / "train_facts.json", "stage", fix) for stage in STAGES}
    base_fingerprint = fingerprint(base)  # a hash of every weight: computed once
    if other := {name: f.get("original") for name, f in facts.items() if f.get("original") != base_fingerprint}:
        raise LabError(
            f"the run's {', '.join(other)} were trained on another original model (fingerprints {other}) than "
            f"`LAB_MODEL_ID`={settings.model_id} ({base_fingerprint}); nothing was written",
            "set `LAB_MODEL_ID` to the model the instructor trained on (e.g. data/offline/flan-t5-tiny)",
        )
    for stage in STAGES[1:]:
        check_adapter_dir(run / stage.folder, base, settings.model_id, fix=fix)
    read_results_file(run / TOPIC_RESULTS_FILE, TOPIC_COLUMNS)
    checks = story_checks(read_results_file(run / RESULTS_FILE), load_dialogsum(settings)["train"]["summary"])
    if failed := [f"{name}: {numbers}" for name, (ok, numbers) in checks.items() if not ok]:
        raise LabError(
            f"the run's results file fails {len(failed)} of {len(checks)} story checks, so it is not released "
            "(nothing was written):\n    " + "\n    ".join(failed),
            "train with the offline defaults (`python -m lab_utils --profile offline instructor`), then release",
        )
    return facts


def make_release(settings: Settings, made_by: str, build_seconds: float | None = None, dest: Path = RELEASE_DIR):
    """Check the finished offline run, then write it with the stand-in and a manifest to `dest`."""
    # `dest` was checked by the caller (`files.check_output`)
    facts = check_run(settings, run := run_dir(settings))
    seconds = {name: f.get("seconds") for name, f in facts.items()}
    seconds.update({STANDIN: build_seconds} if build_seconds is not None else {})
    for name, value in seconds.items():
        if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0):
            raise LabError(
                f"the training time of {name} is {value!r}, not a number of seconds >= 0; nothing was written",
                "give --build-seconds as a number such as 744, or run the instructor again",
            )
    base = Path(dest).resolve() / STANDIN
    with write_folder(dest) as tmp:
        shutil.copytree(settings.model_path_or_id, tmp / STANDIN, ignore=shutil.ignore_patterns(".*"))  # no marks
        for name in PUBLISHED:
            (shutil.copytree if (run / name).is_dir() else shutil.copy2)(run / name, tmp / name)
        for mark in tmp.glob(f"*/{MARK}"):  # the stages' marks: the release carries one, its own
            mark.unlink()
        name_the_release_base(tmp, base.relative_to(PROJECT_ROOT).as_posix() if base.is_relative_to(PROJECT_ROOT)
                              else str(base))  # fmt: skip
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and not p.name.startswith("."))
        write_json(tmp / MANIFEST, {
            "made": time.strftime("%Y-%m-%d"), "command": made_by, "training_seconds": seconds,
            "stages": {name: {k: f.get(k) for k in ("identity", "original")} for name, f in facts.items()},
            "sha256": {p.relative_to(tmp).as_posix(): digest(p) for p in files},
        })  # fmt: skip
    print(f"Wrote the offline release to {dest} ({len(files)} files)")
    return Path(dest)


def start_offline_world(settings: Settings) -> None:
    """The offline notebook's world: the committed release, checked and published to a local S3 server."""
    # the server listens on 127.0.0.1; the notebook pulls what the project's instructor command trained (a few seconds)
    manifest = verify_release()
    if settings.path(settings.model_id) != RELEASE_DIR / STANDIN:
        print(f"Warning: `LAB_MODEL_ID` is {settings.model_id}, but the release was trained on its own stand-in "
              f"({RELEASE_DIR / STANDIN}); the pulled checkpoints belong to that one.")  # fmt: skip
    local_s3_for(settings)
    print(f"Offline profile: publishing the project's trained release (made {manifest['made']}) to {settings.s3_uri}")
    upload_folder(settings, RELEASE_DIR, PUBLISHED)
