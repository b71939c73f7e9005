"""Pictures for the lab: ROUGE per model, what LoRA saves, training loss curves, summaries side by side."""

from __future__ import annotations

import json
from pathlib import Path

from .files import write_file
from .scoring import ROUGE_KEYS

MODEL_COLORS = {"original": "#9e9e9e", "instruct": "#1f77b4", "peft": "#ff7f0e"}
MEGABATCH = 50  # batches the Trainer's `group_by_length` sorts together, longest first: its losses follow the lengths


def _save(fig, path) -> None:
    if path is not None:
        with write_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_rouge(scores: dict, title: str = "ROUGE", path=None):
    """Grouped bars: one group per ROUGE metric, one bar per model."""
    import matplotlib.pyplot as plt
    import numpy as np

    x, width = np.arange(len(ROUGE_KEYS)), 0.8 / max(1, len(scores))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (model, values) in enumerate(scores.items()):
        offset = (i - (len(scores) - 1) / 2) * width
        bars = ax.bar(x + offset, [values[k] for k in ROUGE_KEYS], width, label=model, color=MODEL_COLORS.get(model))
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks(x, ROUGE_KEYS)
    ax.set(ylabel="F-measure (higher is better)", title=title)
    ax.set_ylim(0, max(0.05, 1.2 * max(v for s in scores.values() for v in s.values())))
    ax.legend()
    _save(fig, path)
    return fig


def plot_full_vs_lora(trainable: dict, size_bytes: dict, path=None):
    """Two log-scale bar charts: trainable parameters and checkpoint size on disk, full fine-tuning vs LoRA."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    megabytes = {k: v / 1e6 for k, v in size_bytes.items()}
    titles = ("trainable parameters", "checkpoint size on disk (MB)")
    for ax, data, label, fmt in zip(axes, (trainable, megabytes), titles, ("{:,.0f}", "{:,.1f} MB")):
        bars = ax.bar(list(data), list(data.values()), color=["#1f77b4", "#ff7f0e"][: len(data)])
        ax.bar_label(bars, labels=[fmt.format(v) for v in data.values()], fontsize=8, padding=2)
        ax.set_yscale("log")
        ax.set_title(label)
        ax.margins(y=0.3)
    (p_full, p_lora), (s_full, s_lora) = trainable.values(), size_bytes.values()
    fig.suptitle(f"LoRA trains {p_full / max(1, p_lora):,.0f}x fewer parameters; "
                 f"its checkpoint is {s_full / max(1, s_lora):,.0f}x smaller")  # fmt: skip
    fig.tight_layout()
    _save(fig, path)
    return fig


def read_train_log(checkpoint_dir) -> list[dict]:
    """The trainer's `log_history` the instructor saves beside a checkpoint (`train_log.json`; empty if absent)."""
    path = Path(checkpoint_dir) / "train_log.json"
    return json.loads(path.read_text()) if path.is_file() else []


def megabatch_means(points, steps_per_window: int = MEGABATCH):
    """(last step, mean loss) over each window of steps: the mean traces learning, single losses the lengths."""
    windows: dict[int, list] = {}
    for step, loss in points:
        windows.setdefault((step - 1) // steps_per_window, []).append((step, loss))
    return [(max(s for s, _ in w), sum(v for _, v in w) / len(w)) for _, w in sorted(windows.items())]


def plot_loss_curves(logs: dict, title: str = "Training and validation loss", path=None):
    """Training (solid) and validation (dashed) loss per step from each trainer's `log_history`."""
    # long runs, as megabatch means, on the left; short runs, every step, on axes of their own
    import matplotlib.pyplot as plt

    runs = {name: [(e["step"], e["loss"]) for e in log if "loss" in e] for name, log in logs.items()}
    runs = {name: points for name, points in runs.items() if points}
    long = {name for name, points in runs.items() if points[-1][0] > MEGABATCH}
    panels = [group for group in (long, set(runs) - long) if group]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.8), squeeze=False)
    for ax, group in zip(axes[0], panels):
        for name in [n for n in runs if n in group]:
            shown = megabatch_means(runs[name]) if name in long else runs[name]
            label = f"{name}: training" + (f" (mean of each {MEGABATCH} steps)" if name in long else "")
            (line,) = ax.plot(*zip(*shown), marker="o" if len(shown) < 30 else None, markersize=3, label=label)
            if evals := [(e["step"], e["eval_loss"]) for e in logs[name] if "eval_loss" in e]:
                ax.plot(*zip(*evals), "--", color=line.get_color(), marker="x", label=f"{name}: validation")
        ax.set(xlabel="step", ylabel="loss (cross-entropy)", title=title if group is long else "this notebook's runs")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return fig


def summaries_side_by_side(human, summaries: dict, n: int = 3):
    """A table of the first `n` distinct dialogues: the human summary next to each model's."""
    import pandas as pd

    rows, seen = [], set()
    for i, ref in enumerate(human):
        key = tuple(s[i] for s in summaries.values())
        if key not in seen:  # the same dialogue again (another reference): one row per dialogue is enough
            seen.add(key)
            rows.append({"human": ref, **{name: s[i] for name, s in summaries.items()}})
    return pd.DataFrame(rows[:n])
