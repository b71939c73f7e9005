"""Serving what was trained: one base with several adapters against one full model per task."""

# `serving_table` compares what each way costs; `topic_scores` says how well the second adapter names a dialogue's
# topic.

from __future__ import annotations

import gc
import math
from pathlib import Path

from .isolated import rss_mb, run_isolated


def loaded_rss_mb(kind: str, base: str, adapters: list[str], full: list[str]) -> dict:
    """Resident memory (MB) of this process holding `kind`: "adapters" (one base + `adapters`), "full" or "nothing"."""

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    models = []
    if kind == "adapters":
        model = AutoModelForSeq2SeqLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0", is_trainable=False)
        for i, adapter in enumerate(adapters[1:], 1):
            model.load_adapter(adapter, adapter_name=f"a{i}", is_trainable=False)
        models.append(model)
    elif kind == "full":
        models = [AutoModelForSeq2SeqLM.from_pretrained(f, dtype=torch.float32) for f in full]
    # weights may still be memory-mapped from their file (shared between models loaded from the same file): give every
    # tensor its own memory, as two differently fine-tuned models would have
    for model in models:
        for param in model.parameters():
            param.data = param.data.clone()
    gc.collect()
    return {"rss_mb": rss_mb()}


def serving_memory(base: str, adapters: list[str], full: list[str]) -> dict[str, float]:
    """Resident memory (MB) of fresh processes serving one base + `adapters`, the `full` models, or nothing."""

    paths = {"base": str(base), "adapters": [str(a) for a in adapters], "full": [str(f) for f in full]}
    return {kind: run_isolated(loaded_rss_mb, kind=kind, **paths)["rss_mb"] for kind in ("nothing", "adapters", "full")}


def adapter_parameters(folder: str | Path) -> int:
    """How many parameters an adapter adds to its base: the elements of its weights file."""
    from .models import ADAPTER_WEIGHTS, read_weights

    shapes = read_weights(Path(folder), ADAPTER_WEIGHTS, "adapter folder", "pull or train the adapter again")
    return sum(math.prod(shape) for shape in shapes.values())


def serving_table(original_model, base_id: str, adapters: dict[str, Path], full_dir: Path):
    """One base + the adapters vs one full fine-tuned model per task: parameters, MB on disk, MB resident."""
    # the base's bytes on disk are the full checkpoint's (the same architecture and dtype); resident memory is each
    # process's once its models are loaded, above a process that only imported torch, transformers and peft
    import pandas as pd

    from .files import size_on_disk
    from .models import count_parameters

    n, base_params = len(adapters), count_parameters(original_model)[1]
    memory = serving_memory(base_id, list(adapters.values()), [full_dir] * n)
    floor, disk = memory["nothing"], size_on_disk(full_dir)
    adapter_params, adapter_disk = (sum(f(a) for a in adapters.values()) for f in (adapter_parameters, size_on_disk))
    columns = {
        "parameters (millions)": [(base_params + adapter_params) / 1e6, n * base_params / 1e6],
        "MB on disk": [(disk + adapter_disk) / 1e6, n * disk / 1e6],
        "MB resident (above torch)": [memory["adapters"] - floor, memory["full"] - floor],
    }
    table = pd.DataFrame(columns, index=[f"one base + {n} adapters", f"{n} full fine-tuned models"])
    table.loc["ratio"] = table.iloc[0] / table.iloc[1]
    return table.round(3)


def topic_scores(frame, rouge=None) -> dict[str, float]:
    """How well the topic adapter names the test dialogues' topics: exact match (any case) and ROUGE-1, averaged."""
    from .scoring import compute_rouge

    human, predicted = frame["human_baseline_topics"].tolist(), frame["peft_model_topics"].tolist()
    exact = sum(h.strip().lower() == p.strip().lower() for h, p in zip(human, predicted)) / len(human)
    return {"exact match": exact, "rouge1": compute_rouge(predicted, human, rouge)["rouge1"]}
