"""`python -m lab_utils summarize [--adapter DIR | --merged DIR] [FILE|-]`: summaries from the command line.

Dialogues come from a text file (separated by a blank line), a CSV column, or standard input; they are summarized in
batches with the lab's prompt and generation settings by the original model, the original model with a LoRA adapter,
or a full model folder (a merged adapter, the instruct model).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from ..config import Settings
from ..errors import LabError


def read_dialogues(source: str, column: str = "dialogue") -> list[str]:
    """Dialogues from a CSV (its `column`), a text file (dialogues separated by a blank line), or '-' (stdin)."""
    if source == "-":
        text, name = sys.stdin.read(), "standard input"
    else:
        path = Path(source)
        if not path.is_file():
            raise LabError(f"{source} is not a file", "give a text or CSV file of dialogues, or - for standard input")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise LabError(
                f"{source} is not UTF-8 text ({exc.reason} at byte {exc.start})", "save it as UTF-8"
            ) from None
        name = source
    if "\0" in text:
        raise LabError(f"{name} is not text (it holds NUL bytes)", "give a text or CSV file of dialogues")
    if source.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or column not in rows[0]:
            found = ", ".join(rows[0]) if rows else "no rows"
            raise LabError(f"{name} has no column {column!r} ({found})", "choose the dialogue column with --column")
        dialogues = [row[column] for row in rows]
    else:
        dialogues = [block.strip() for block in text.replace("\r\n", "\n").split("\n\n")]
    dialogues = [d for d in dialogues if d.strip()]
    if not dialogues:
        raise LabError(f"{name} holds no dialogue", "give dialogues separated by a blank line (or a CSV column)")
    return dialogues


def load_for_serving(settings: Settings, adapter: str | None = None, merged: str | None = None):
    """(model, tokenizer): a merged/full model folder, the original model with an adapter, or the original model."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ..models import check_adapter_dir, check_model_dir

    if merged:
        folder = check_model_dir(merged, fix="give a folder saved with save_pretrained (a merged or full model)")
        tokenizer_source = folder if (Path(folder) / "tokenizer_config.json").is_file() else settings.model_path_or_id
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(tokenizer_source)
    model = AutoModelForSeq2SeqLM.from_pretrained(settings.model_path_or_id, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_path_or_id)
    if adapter:
        from peft import PeftModel

        check_adapter_dir(adapter, model, settings.model_id, fix="give the folder of a LoRA adapter for this model")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    return model, tokenizer


def summarize_command(settings: Settings, args) -> None:
    """`python -m lab_utils summarize`: read dialogues, summarize them in batches, print or write a CSV."""
    from ..evaluation import summarize

    dialogues = read_dialogues(args.input, args.column)
    model, tokenizer = load_for_serving(settings, args.adapter, args.merged)
    summaries = summarize(model, tokenizer, dialogues, settings, progress=sys.stderr.isatty())
    if args.output:
        with open(args.output, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["dialogue", "summary"])
            writer.writerows(zip(dialogues, summaries))
        print(f"Wrote {len(summaries)} summaries to {args.output}")
    else:
        for summary in summaries:
            print(summary)
