"""The results file: every test row summarized by the three models (the course's CSV), read and written with checks.

The instructor writes it over DialogSum's full test set; the notebook reads it (the course's copy, or the one the
instructor published) and scores it (`scoring`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LabError

if TYPE_CHECKING:
    import pandas as pd

RESULTS_COLUMNS = (
    "human_baseline_summaries",
    "original_model_summaries",
    "instruct_model_summaries",
    "peft_model_summaries",
)
TOPIC_COLUMNS = ("human_baseline_topics", "peft_model_topics")


def read_results_file(path: str | Path, columns: tuple[str, ...] = RESULTS_COLUMNS) -> pd.DataFrame:
    """Read a results CSV (the lab's, with `id`, or the course's, with an unnamed index column) and check it."""
    import pandas as pd

    path = Path(path)
    fix = "use the results file the instructor published (comma-separated UTF-8 CSV), or regenerate it"
    if not path.is_file():
        raise LabError(f"results file {path} does not exist", "pull it from S3 or run the instructor command")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LabError(f"results file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})", fix) from None
    except (ValueError, OSError) as exc:  # pandas' ParserError is a ValueError
        raise LabError(f"results file {path} cannot be read as CSV: {exc}", fix) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        header = ",".join(frame.columns)
        hint = " (its header holds ';': it looks ';'-separated)" if len(frame.columns) == 1 and ";" in header else ""
        raise LabError(f"results file {path} lacks column(s) {', '.join(missing)}{hint}", fix)
    if frame.empty:
        raise LabError(f"results file {path} has a header but no rows", fix)
    for c in columns:
        if (frame[c].str.strip() == "").any():
            n = int((frame[c].str.strip() == "").sum())
            raise LabError(
                f"results file {path}: column {c} has {n} empty cell(s)",
                "columns must all have one summary per row; regenerate the file",
            )
    return frame


def write_results_file(path: str | Path, columns: dict[str, list[str]], extra: dict[str, list] | None = None) -> Path:
    """Write the results CSV atomically (a crash never leaves a half-written file under the final name)."""
    import pandas as pd

    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise LabError(f"results columns have different lengths: {lengths}", "pass one summary per test row")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({**(extra or {}), **columns})
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
