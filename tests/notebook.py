"""The notebook's cells by id: their source, their outputs, and running a few of them in a namespace of our own."""

from __future__ import annotations

import json
from pathlib import Path

from lab_utils.__main__ import NOTEBOOK


def code_cells(path: Path = NOTEBOOK) -> dict[str, dict]:
    """Code cells by cell id (papermill's injected-parameters cell has a generated id)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    return {c["id"]: c for c in cells if c["cell_type"] == "code"}


def source(cell_id: str, path: Path = NOTEBOOK) -> str:
    return "".join(code_cells(path)[cell_id]["source"])


def run_cells(cell_ids: list[str], namespace: dict, path: Path = NOTEBOOK) -> dict:
    """Execute the cells in `namespace` (as a kernel would, one after the other) and return it."""
    for cell_id in cell_ids:
        exec(compile(source(cell_id, path), f"<notebook cell {cell_id}>", "exec"), namespace)
    return namespace


def output_text(cell: dict) -> str:
    """What a cell printed or displayed, as text."""
    parts = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            parts.append("".join(o["text"]))
        elif "data" in o:
            parts.append("".join(o["data"].get("text/plain", "")))
    return "\n".join(parts)


def notebook_trainer(model, tokenizer, train_dataset, out, settings, lora: bool = False, rank: int = 4):
    """The trainer the notebook's cells build (3.1 collator, 3.2 or 4.1 + 4.2) for `model` on `train_dataset`."""
    import copy

    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from lab_utils.models import fingerprint

    namespace = {
        "settings": settings, "tokenizer": tokenizer, "original_model": model, "runs": Path(out), "device": "cpu",
        "precision": "fp32", "LORA_RANK": rank, "copy": copy, "torch": torch, "fingerprint": fingerprint,
        "original_fingerprint": fingerprint(model),
        "tokenized_datasets": {"train": train_dataset, "validation": train_dataset},
        "Seq2SeqTrainer": Seq2SeqTrainer, "Seq2SeqTrainingArguments": Seq2SeqTrainingArguments,
    }  # fmt: skip
    cells = ["collator", "lora-config", "lora-training-args"] if lora else ["collator", "full-training-args"]
    return run_cells(cells, namespace)["peft_trainer" if lora else "trainer"]
