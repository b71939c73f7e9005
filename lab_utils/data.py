"""DialogSum: loading (Hub or local CSVs), checked; the instruction prompt; the test split's distinct dialogues."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from .config import SPLITS, Settings, dialogsum_problem
from .errors import LabError

COLUMNS = ("id", "dialogue", "summary", "topic")

START_PROMPT = "Summarize the following conversation.\n\n"
END_PROMPT = "\n\nSummary: "


def build_prompt(dialogue: str) -> str:
    """The course's instruction prompt around one dialogue."""
    return START_PROMPT + dialogue + END_PROMPT


def build_topic_prompt(dialogue: str) -> str:
    """The second adapter's task, in the same instruction style: name the dialogue's topic."""
    return "What is the topic of the following conversation?\n\n" + dialogue + "\n\nTopic: "


def read_split_csv(path: Path, setting: str = "LAB_DATA_DIR") -> Dataset:
    """Read one DialogSum CSV (Hub layout) and check it has the columns and no empty dialogue or summary."""
    import pandas as pd

    try:
        # keep_default_na=False: an empty cell stays "" (reported below) instead of becoming NaN
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {path}: {exc}", f"check the CSV files in `{setting}`") from exc
    fix = f"point `{setting}` at a complete copy of DialogSum (columns {', '.join(COLUMNS)}), or fix those rows"
    if missing := [c for c in COLUMNS if c not in frame.columns]:
        raise LabError(f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(frame.columns)})", fix)
    if frame.empty:
        raise LabError(f"{path} has a header but no rows", fix)
    for column in ("dialogue", "summary"):  # the input, and the target (or the reference): neither may be empty
        if rows := frame.index[frame[column].str.strip() == ""].tolist():  # +2: the header line, lines counted from 1
            lines = ", ".join(str(i + 2) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise LabError(f"{path} has {len(rows)} empty {column}(s) (CSV line {lines})", fix)
    return Dataset.from_pandas(frame[list(COLUMNS)], preserve_index=False)


def load_dialogsum_csv(data_dir: str | Path, setting: str = "LAB_DATA_DIR") -> DatasetDict:
    """Load DialogSum from a folder with train.csv, validation.csv and test.csv."""
    folder = Path(data_dir)
    if what := dialogsum_problem(folder):
        fix = f"point `{setting}` at a folder with train.csv, validation.csv and test.csv (DialogSum's Hub layout)"
        raise LabError(f"`{setting}`={str(data_dir)!r} {what}", fix)
    return DatasetDict({s: read_split_csv(folder / f"{s}.csv", setting) for s in SPLITS})


def load_dialogsum(settings: Settings) -> DatasetDict:
    """DialogSum for this profile: local CSVs when `data_dir` is set, else the Hub dataset."""
    if settings.data_dir:
        return load_dialogsum_csv(settings.path(settings.data_dir))

    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        return load_dataset(settings.dataset)
    except (OSError, ConnectionError, HfHubHTTPError, OfflineModeIsEnabled, FileNotFoundError) as exc:
        fix = "check the network and the dataset id, or set `LAB_DATA_DIR` to a local copy (or `LAB_PROFILE=offline`)"
        raise LabError(f"cannot load dataset `LAB_DATASET`={settings.dataset!r} from the Hugging Face Hub "
                       f"({type(exc).__name__}: {exc})", fix) from exc  # fmt: skip


def split_sizes(dataset: DatasetDict) -> dict[str, int]:
    """Rows per split, e.g. {'train': 12460, 'validation': 500, 'test': 1500}."""
    return {name: len(split) for name, split in dataset.items()}


def first_dialogue_rows(split: Dataset, n_dialogues: int) -> Dataset:
    """The rows (all references) of the first `n_dialogues` distinct dialogues of a split."""
    first = set(list(dict.fromkeys(split["dialogue"]))[:n_dialogues])
    return split.select([i for i, dialogue in enumerate(split["dialogue"]) if dialogue in first])
