"""The pictures: each plot helper draws what it says and saves a PNG."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

from lab_utils.plots import (  # noqa: E402
    megabatch_means,
    plot_full_vs_lora,
    plot_loss_curves,
    plot_rouge,
    read_train_log,
    summaries_side_by_side,
)
from lab_utils.scoring import ROUGE_KEYS  # noqa: E402

PNG = b"\x89PNG"


def test_rouge_bars(tmp_path):
    scores = {m: dict.fromkeys(ROUGE_KEYS, v) for m, v in (("original", 0.1), ("instruct", 0.3), ("peft", 0.25))}
    fig = plot_rouge(scores, path=tmp_path / "r.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 12  # 4 metrics x 3 models
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["original", "instruct", "peft"]
    assert (tmp_path / "r.png").read_bytes()[:4] == PNG


def test_full_vs_lora_is_log_scale_and_states_the_ratios(tmp_path):
    fig = plot_full_vs_lora(
        {"full": 247_577_856, "LoRA": 3_538_944}, {"full": 990_000_000, "LoRA": 14_000_000}, path=tmp_path / "s.png"
    )
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert "70x fewer parameters" in fig._suptitle.get_text() and "71x smaller" in fig._suptitle.get_text()
    assert (tmp_path / "s.png").read_bytes()[:4] == PNG


def test_loss_curves_long_runs_as_means_short_runs_on_axes_of_their_own(tmp_path):
    long = [{"step": s, "loss": 2.0 - s / 100} for s in range(1, 101)] + [{"step": 50, "eval_loss": 1.6}]
    short = [{"loss": 5.0, "step": 1}, {"loss": 4.0, "step": 2}, {"train_runtime": 3.0, "step": 2}]
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "train_log.json").write_text(json.dumps(long))
    assert read_train_log(tmp_path / "ckpt") == long and read_train_log(tmp_path / "missing") == []
    logs = {"run": read_train_log(tmp_path / "ckpt"), "notebook": short, "none": []}
    fig = plot_loss_curves(logs, path=tmp_path / "l.png")
    labels = [[line.get_label() for line in ax.get_lines()] for ax in fig.axes]
    assert labels == [["run: training (mean of each 50 steps)", "run: validation"], ["notebook: training"]]
    assert (tmp_path / "l.png").read_bytes()[:4] == PNG


def test_side_by_side_has_one_row_per_dialogue():
    human = ["ref a1", "ref a2", "ref a3", "ref b1", "ref b2", "ref b3"]
    summaries = {"original": ["oa"] * 3 + ["ob"] * 3, "peft": ["pa"] * 3 + ["pb"] * 3}
    frame = summaries_side_by_side(human, summaries, n=5)
    assert frame.to_dict("records") == [
        {"human": "ref a1", "original": "oa", "peft": "pa"},
        {"human": "ref b1", "original": "ob", "peft": "pb"},
    ]


def test_megabatch_means_remove_the_length_sawtooth_and_keep_the_trend():
    # losses that fall from long to short examples inside every 50 steps, over a slow downward trend
    points = [(s, 3.0 - s / 500 + (1 - ((s - 1) % 50) / 50)) for s in range(1, 201)]
    means = megabatch_means(points)
    assert [s for s, _ in means] == [50, 100, 150, 200]
    drops = [a - b for (_, a), (_, b) in zip(means, means[1:])]
    assert all(abs(d - 0.1) < 1e-9 for d in drops)  # the trend (0.1 per 50 steps) and nothing of the sawtooth
