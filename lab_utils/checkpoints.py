"""What the notebook pulls from `LAB_S3_URI`: the instructor's checkpoints and results files, checked after the pull.

The transfers themselves (resume after an interruption, size and MD5 checks, retries, clear errors for credentials
and endpoints) are in `s3.py`; boto3's transfer manager moves the bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Settings
from .errors import LabError
from .s3 import NotFoundOnS3, format_size, pull

__all__ = [
    "format_size",
    "pull",
    "size_on_disk",
    "pull_full_checkpoint",
    "pull_adapter",
    "find_results_file",
]

FULL_CHECKPOINT = "flan-dialogue-summary-checkpoint"  # the fully fine-tuned ("instruct") model
PEFT_CHECKPOINT = "peft-dialogue-summary-checkpoint"  # the LoRA adapter for summaries
TOPIC_CHECKPOINT = "peft-dialogue-topic-checkpoint"  # a second LoRA adapter: the dialogue's topic
RESULTS_FILE = "dialogue-summary-training-results.csv"  # every test row summarized by the three models
TOPIC_RESULTS_FILE = "dialogue-topic-results.csv"  # every test row's topic named by the topic adapter


def size_on_disk(path: str | os.PathLike) -> int:
    """Total size in bytes of a file, or of all files under a folder."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if not p.exists():
        raise LabError(f"{p} does not exist.", "Check the path (did the previous step finish?).")
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def pulled_path(settings: Settings, name: str) -> Path:
    """Where the notebook keeps what it pulled from `LAB_S3_URI`."""
    return settings.work_path / settings.profile / "pulled" / name


def pull_full_checkpoint(settings: Settings) -> Path:
    """Pull the instructor's fully fine-tuned checkpoint and check that it will load (config, whole weights)."""
    from .models import check_model_dir

    folder = pull(
        settings.s3(FULL_CHECKPOINT + "/"), pulled_path(settings, FULL_CHECKPOINT), anonymous=settings.s3_anonymous
    )
    return check_model_dir(folder, fix=f"the published {FULL_CHECKPOINT} is incomplete: publish it again")


def pull_adapter(settings: Settings, name: str = PEFT_CHECKPOINT, missing_ok: bool = False) -> Path | None:
    """Pull a published LoRA adapter and check it against the original model before peft loads it.

    With `missing_ok`, an adapter that was never published gives None (and says so) instead of an error.
    """
    from .models import check_adapter_dir, shape_model

    try:
        folder = pull(settings.s3(name + "/"), pulled_path(settings, name), anonymous=settings.s3_anonymous)
    except NotFoundOnS3:
        if not missing_ok:
            raise
        print(f"{settings.s3(name)}/ is not published (the instructor command publishes it beside the others).")
        return None
    check_adapter_dir(
        folder,
        shape_model(settings.model_path_or_id),
        settings.model_id,
        fix=f"the published {name} is incomplete or damaged: publish it again (the instructor command)",
    )
    return folder


def find_topic_results_file(settings: Settings, missing_ok: bool = False) -> Path | None:
    """The topic adapter's results file published beside the checkpoints; with `missing_ok`, None (and a note) where
    none was published, instead of an error."""
    uri = settings.s3(TOPIC_RESULTS_FILE)
    try:
        return pull(uri, pulled_path(settings, TOPIC_RESULTS_FILE), anonymous=settings.s3_anonymous)
    except NotFoundOnS3:
        if not missing_ok:
            raise
        print(f"{uri} is not published: no topic scores over the test set.")
        return None


def find_results_file(settings: Settings) -> Path:
    """The results file: in the course profile the lab folder's copy (`data/` + RESULTS_FILE) when present, as the
    course shipped it, else the one published under `LAB_S3_URI`. Says which it used."""
    local = settings.work_path / RESULTS_FILE
    if not settings.offline and local.is_file():
        print(f"Results file: {local} (the lab folder's copy)")
        return local
    uri = settings.s3(RESULTS_FILE)
    try:
        path = pull(uri, pulled_path(settings, RESULTS_FILE), anonymous=settings.s3_anonymous)
    except NotFoundOnS3:
        places = f"{local} (the course's lab folder) nor at {uri}" if not settings.offline else uri
        raise LabError(
            f"no results file: it is neither at {places}" if not settings.offline else f"no results file at {uri}",
            f"copy the course's {RESULTS_FILE} to {local}, or publish one to `LAB_S3_URI` (the instructor command)",
        ) from None
    print(f"Results file: {path} (pulled from {uri})")
    return path
