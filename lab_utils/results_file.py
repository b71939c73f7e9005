"""The results file: every test row summarized by the three models (the course's CSV), read and written with checks."""

from __future__ import annotations

from pathlib import Path

from .errors import LabError
from .files import write_file

RESULTS_COLUMNS = ("human_baseline_summaries", "original_model_summaries", "instruct_model_summaries",
                   "peft_model_summaries")  # fmt: skip
TOPIC_COLUMNS = ("human_baseline_topics", "peft_model_topics")


def read_results_file(path: str | Path, columns: tuple[str, ...] = RESULTS_COLUMNS):
    """Read a results CSV (the lab's, with `id`, or the course's, with an unnamed index column) and check it."""
    import pandas as pd

    path = Path(path)
    fix = "use the results file the instructor published (comma-separated UTF-8 CSV), or regenerate it"
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, ValueError) as exc:  # missing, not UTF-8 (a ValueError), or not CSV (pandas' ParserError)
        raise LabError(f"results file {path} cannot be read: {exc}", fix) from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing or frame.empty:
        raise LabError(f"results file {path} " + (f"lacks column(s) {', '.join(missing)}" if missing else "is empty"),
                       fix)  # fmt: skip
    empty = {c: int((frame[c].str.strip() == "").sum()) for c in columns}
    if any(empty.values()):
        raise LabError(f"results file {path} has empty cells: {empty}", "every row needs one summary per column")
    return frame


def write_results_file(path: str | Path, columns: dict[str, list[str]], extra: dict | None = None) -> Path:
    """Write the results CSV whole (`files.write_file`: a crash never leaves half a file under the final name)."""
    import pandas as pd

    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise LabError(f"results columns have different lengths: {lengths}", "pass one summary per test row")
    with write_file(path) as tmp:
        pd.DataFrame({**(extra or {}), **columns}).to_csv(tmp, index=False)
    return Path(path)
