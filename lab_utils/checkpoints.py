"""What the notebook pulls from `LAB_S3_URI`: the instructor's checkpoints and results files, checked after the pull."""

from __future__ import annotations

from pathlib import Path

from .config import Settings
from .errors import LabError
from .files import format_size, size_on_disk  # noqa: F401 (the notebook imports them from here)
from .s3 import NotFoundOnS3, pull

FULL_CHECKPOINT = "flan-dialogue-summary-checkpoint"  # the fully fine-tuned ("instruct") model
PEFT_CHECKPOINT = "peft-dialogue-summary-checkpoint"  # the LoRA adapter for summaries
TOPIC_CHECKPOINT = "peft-dialogue-topic-checkpoint"  # a second LoRA adapter: the dialogue's topic
RESULTS_FILE = "dialogue-summary-training-results.csv"  # every test row summarized by the three models
TOPIC_RESULTS_FILE = "dialogue-topic-results.csv"  # every test row's topic named by the topic adapter


def _pull(settings: Settings, name: str, missing_ok: bool = False, note: str = "") -> Path | None:
    """Pull `name` (a folder when it ends with "/") from `LAB_S3_URI`; with `missing_ok`, None and `note` if absent."""
    local = settings.work_path / settings.profile / "pulled" / name.rstrip("/")  # where the notebook keeps it
    try:
        return pull(settings.s3(name), local, anonymous=settings.s3_anonymous)
    except NotFoundOnS3:
        if not missing_ok:
            raise
        print(f"{settings.s3(name)} is not published{note}")
        return None


def pull_full_checkpoint(settings: Settings) -> Path:
    """Pull the instructor's fully fine-tuned checkpoint and check that it will load (config, whole weights)."""
    from .models import check_model_dir

    folder = _pull(settings, FULL_CHECKPOINT + "/")
    return check_model_dir(folder, fix=f"the published {FULL_CHECKPOINT} is incomplete: publish it again")


def pull_adapter(settings: Settings, name: str = PEFT_CHECKPOINT, missing_ok: bool = False) -> Path | None:
    """Pull a published LoRA adapter, checked against the original model before peft loads it."""
    # `missing_ok`: None, and a note, when it was never published
    from .models import check_adapter_dir, shape_model

    folder = _pull(settings, name + "/", missing_ok, " (the instructor command publishes it beside the others).")
    if folder is not None:
        fix = f"the published {name} is incomplete or damaged: publish it again (the instructor command)"
        check_adapter_dir(folder, shape_model(settings.model_path_or_id), settings.model_id, fix=fix)
    return folder


def find_topic_results_file(settings: Settings, missing_ok: bool = False) -> Path | None:
    """The topic adapter's results file; with `missing_ok`, None (and a note) where none was published."""
    return _pull(settings, TOPIC_RESULTS_FILE, missing_ok, ": no topic scores over the test set.")


def find_results_file(settings: Settings) -> Path:
    """The results file: the lab folder's copy when present (not offline), else the one under `LAB_S3_URI`."""
    # the course shipped its copy as `data/` + RESULTS_FILE; the function says which it used
    local, uri = settings.work_path / RESULTS_FILE, settings.s3(RESULTS_FILE)
    if not settings.offline and local.is_file():
        print(f"Results file: {local} (the lab folder's copy)")
        return local
    try:
        path = _pull(settings, RESULTS_FILE)
    except NotFoundOnS3 as exc:
        where = f"not at {uri}" if settings.offline else f"neither at {local} (the course's lab folder) nor at {uri}"
        fix = f"copy the course's {RESULTS_FILE} to {local}, or publish one to `LAB_S3_URI` (the instructor command)"
        raise LabError(f"no results file: it is {where}", fix) from exc
    print(f"Results file: {path} (pulled from {uri})")
    return path
