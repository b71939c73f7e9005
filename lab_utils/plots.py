"""Pictures for the lab: ROUGE per model, what LoRA saves, training loss curves, summaries side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .scoring import ROUGE_KEYS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

MODEL_COLORS = {"original": "#9e9e9e", "instruct": "#1f77b4", "peft": "#ff7f0e"}


def _save(fig, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_rouge(
    scores: Mapping[str, Mapping[str, float]], title: str = "ROUGE", path: str | Path | None = None
) -> Figure:
    """Grouped bars: one group per ROUGE metric, one bar per model."""
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(scores)
    x = np.arange(len(ROUGE_KEYS))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, model in enumerate(models):
        values = [scores[model][k] for k in ROUGE_KEYS]
        bars = ax.bar(
            x + (i - (len(models) - 1) / 2) * width, values, width, label=model, color=MODEL_COLORS.get(model)
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks(x, ROUGE_KEYS)
    ax.set_ylabel("F-measure (higher is better)")
    ax.set_ylim(0, max(0.05, 1.2 * max(v for s in scores.values() for v in s.values())))
    ax.set_title(title)
    ax.legend()
    _save(fig, path)
    return fig


def plot_full_vs_lora(
    trainable: Mapping[str, int], size_bytes: Mapping[str, int], path: str | Path | None = None
) -> Figure:
    """Two log-scale bar charts: trainable parameters and checkpoint size on disk, full fine-tuning vs LoRA."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, data, label, fmt in (
        (left, trainable, "trainable parameters", "{:,.0f}"),
        (right, {k: v / 1e6 for k, v in size_bytes.items()}, "checkpoint size on disk (MB)", "{:,.1f} MB"),
    ):
        names = list(data)
        bars = ax.bar(names, [data[n] for n in names], color=["#1f77b4", "#ff7f0e"][: len(names)])
        ax.bar_label(bars, labels=[fmt.format(data[n]) for n in names], fontsize=8, padding=2)
        ax.set_yscale("log")
        ax.set_title(label)
        ax.margins(y=0.3)
    ratio_p = trainable[list(trainable)[0]] / max(1, trainable[list(trainable)[-1]])
    ratio_s = size_bytes[list(size_bytes)[0]] / max(1, size_bytes[list(size_bytes)[-1]])
    fig.suptitle(f"LoRA trains {ratio_p:,.0f}x fewer parameters; its checkpoint is {ratio_s:,.0f}x smaller")
    fig.tight_layout()
    _save(fig, path)
    return fig


def read_train_log(checkpoint_dir: str | Path) -> list[dict]:
    """The trainer's `log_history` the instructor saves beside a checkpoint (`train_log.json`; empty if absent)."""
    path = Path(checkpoint_dir) / "train_log.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())


MEGABATCH = 50  # batches the Trainer's `group_by_length` sorts together, longest first: its losses follow the lengths


def megabatch_means(points: Sequence[tuple[int, float]], steps_per_window: int = MEGABATCH):
    """(last step, mean loss) over each window of `steps_per_window` steps: within a window `group_by_length` runs
    from long examples to short ones, so single losses trace the lengths (a sawtooth); their mean traces learning."""
    windows: dict[int, list[tuple[int, float]]] = {}
    for step, loss in points:
        windows.setdefault((step - 1) // steps_per_window, []).append((step, loss))
    return [(max(s for s, _ in w), sum(v for _, v in w) / len(w)) for _, w in sorted(windows.items())]


def plot_loss_curves(
    logs: Mapping[str, Sequence[dict]], title: str = "Training and validation loss", path: str | Path | None = None
) -> Figure:
    """Training loss (solid) and validation loss (dashed, where measured) against step, one colour per run, from each
    trainer's `log_history`. Runs longer than a megabatch show the training loss as its mean over each megabatch
    (`megabatch_means`); short runs show every logged step. Empty logs are left out."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for name, log in logs.items():
        points = [(e["step"], e["loss"]) for e in log if "loss" in e]
        if not points:
            continue
        smoothed = points[-1][0] > MEGABATCH
        shown = megabatch_means(points) if smoothed else points
        steps, losses = zip(*shown)
        label = f"{name}: training" + (f" (mean of each {MEGABATCH} steps)" if smoothed else "")
        (line,) = ax.plot(steps, losses, marker="o" if len(shown) < 30 else None, markersize=3, label=label)
        evals = [(e["step"], e["eval_loss"]) for e in log if "eval_loss" in e]
        if evals:
            steps, losses = zip(*evals)
            ax.plot(steps, losses, "--", color=line.get_color(), marker="x", label=f"{name}: validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return fig


def summaries_side_by_side(human: Sequence[str], summaries: Mapping[str, Sequence[str]], n: int = 3) -> pd.DataFrame:
    """A table of the first `n` distinct dialogues: the human summary next to each model's."""
    import pandas as pd

    rows, seen = [], set()
    for i, ref in enumerate(human):
        key = tuple(s[i] for s in summaries.values())
        if key in seen:  # the same dialogue again (another reference): one row per dialogue is enough
            continue
        seen.add(key)
        rows.append({"human": ref, **{name: s[i] for name, s in summaries.items()}})
        if len(rows) == n:
            break
    return pd.DataFrame(rows)
