"""Serving what was trained: one base model with several adapters, against one full model per task.

`serving_table` puts side by side what each way costs (parameters, bytes on disk, resident memory measured in fresh
processes), and `topic_scores` says how well the second adapter names a dialogue's topic.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

from .errors import LabError

_MEASURE = r"""
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM
spec = json.loads(sys.argv[1])
models = []
if spec["kind"] == "adapters":
    model = PeftModel.from_pretrained(
        AutoModelForSeq2SeqLM.from_pretrained(spec["base"], dtype=torch.float32),
        spec["adapters"][0], adapter_name="a0", is_trainable=False)
    for i, adapter in enumerate(spec["adapters"][1:], 1):
        model.load_adapter(adapter, adapter_name=f"a{i}", is_trainable=False)
    models.append(model)
elif spec["kind"] == "full":
    models = [AutoModelForSeq2SeqLM.from_pretrained(f, dtype=torch.float32) for f in spec["full"]]
# weights may still be memory-mapped from their file (shared between models loaded from the same file): give every
# tensor its own memory, as two differently fine-tuned models would have
for model in models:
    for p in model.parameters():
        p.data = p.data.clone()
import gc; gc.collect()
rss = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")][0]
print(json.dumps({"rss_mb": rss / 1024}))
"""


def serving_memory(base: str, adapters: list[str], full: list[str]) -> dict[str, float]:
    """Resident memory (MB, once loaded) of a process serving one base + `adapters`, one serving the `full` models,
    and one that only imported torch, transformers and peft (the floor all share), each measured in a fresh process."""
    result = {}
    for kind in ("nothing", "adapters", "full"):
        spec = json.dumps(
            {"kind": kind, "base": str(base), "adapters": [str(a) for a in adapters], "full": [str(f) for f in full]}
        )
        proc = subprocess.run([sys.executable, "-c", _MEASURE, spec], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise LabError(f"measuring the memory of {kind} failed: {proc.stderr[-500:]}", "see the error above")
        result[kind] = json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]
    return result


def serving_table(original_model, base_id: str, adapters: dict[str, Path], full_dir: Path):
    """One base + the adapters vs one full fine-tuned model per task: parameters, bytes on disk, resident memory.

    The base's bytes on disk are the full checkpoint's (the same architecture and dtype); resident memory is each
    process's, once its models are loaded, above a process that only imported torch, transformers and peft.
    """
    import pandas as pd

    from .checkpoints import size_on_disk
    from .models import count_parameters

    n = len(adapters)
    base_params = count_parameters(original_model)[1]
    from peft import PeftModel

    multi = PeftModel.from_pretrained(copy.deepcopy(original_model), next(iter(adapters.values())), is_trainable=False)
    adapter_params = count_parameters(multi)[1] - base_params
    memory = serving_memory(base_id, list(adapters.values()), [full_dir] * n)
    floor = memory["nothing"]
    rows = {
        f"one base + {n} adapters": {
            "parameters (millions)": (base_params + n * adapter_params) / 1e6,
            "MB on disk": (size_on_disk(full_dir) + sum(size_on_disk(a) for a in adapters.values())) / 1e6,
            "MB resident (above torch)": memory["adapters"] - floor,
        },
        f"{n} full fine-tuned models": {
            "parameters (millions)": n * base_params / 1e6,
            "MB on disk": n * size_on_disk(full_dir) / 1e6,
            "MB resident (above torch)": memory["full"] - floor,
        },
    }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.loc["ratio"] = table.iloc[0] / table.iloc[1]
    return table.round(3)


def topic_scores(frame, rouge=None) -> dict[str, float]:
    """How well the topic adapter names each test dialogue's topic: exact match (ignoring case and spaces at the
    ends) and ROUGE-1 against the reference topic, both averaged over the test rows."""
    from .evaluation import compute_rouge

    human, predicted = frame["human_baseline_topics"].tolist(), frame["peft_model_topics"].tolist()
    exact = sum(h.strip().lower() == p.strip().lower() for h, p in zip(human, predicted)) / len(human)
    return {"exact match": exact, "rouge1": compute_rouge(predicted, human, rouge)["rouge1"]}
