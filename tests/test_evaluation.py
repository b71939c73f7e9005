"""Generation (batched and deduplicated = one at a time), ROUGE, and the results file."""

from __future__ import annotations

import pandas as pd
import pytest
from rouge_score import rouge_scorer

from lab_utils.errors import LabError
from lab_utils.evaluation import (
    RESULTS_COLUMNS,
    OfflineRouge,
    compute_rouge,
    improvement,
    read_results_file,
    score_results_file,
    summarize,
    write_results_file,
)

GEN = {"max_new_tokens": 8, "num_beams": 1, "do_sample": False}


def test_batched_deduplicated_generation_equals_one_at_a_time(tiny_model, tokenizer, data_dir):
    from lab_utils.data import load_dialogsum_csv

    rows = load_dialogsum_csv(data_dir)["test"]["dialogue"][:9]  # 3 dialogues x 3 references
    batched = summarize(tiny_model, tokenizer, rows, GEN, batch_size=4, progress=False)
    single = [summarize(tiny_model, tokenizer, [d], GEN, batch_size=1, progress=False)[0] for d in rows]
    assert batched == single
    assert batched[0] == batched[1] == batched[2]  # fanned out to every reference row
    assert all(s for s in batched)


@pytest.mark.parametrize(("bad", "message"), [(["ok", 3], "dialogue #1 is a int"), (["  "], "dialogue #0 is empty")])
def test_summarize_rejects_bad_dialogues(bad, message, tiny_model, tokenizer):
    with pytest.raises(LabError, match=message):
        summarize(tiny_model, tokenizer, bad, GEN, progress=False)


def test_too_long_dialogue_is_truncated_with_a_warning(tiny_model, tokenizer):
    with pytest.warns(UserWarning, match="1 of 1 prompts exceed 16 tokens and were truncated"):
        out = summarize(tiny_model, tokenizer, ["#Person1#: hello " * 50], GEN, max_source_length=16, progress=False)
    assert len(out) == 1


def test_rouge_on_a_known_pair():
    scores = compute_rouge(["the cat sat down"], ["the cat sat up"])
    assert scores["rouge1"] == pytest.approx(0.75)
    assert scores["rouge2"] == pytest.approx(2 / 3)


def _results_frame(n=12):
    import random

    rng = random.Random(1)
    words = "the cat dog sat ran up down on a mat park".split()
    cols = {c: [" ".join(rng.choices(words, k=rng.randint(3, 9))) for _ in range(n)] for c in RESULTS_COLUMNS}
    return pd.DataFrame(cols)


def test_results_file_rouge_equals_rouge_score_mean(tmp_path):
    frame = _results_frame()
    path = write_results_file(tmp_path / "results.csv", {c: frame[c].tolist() for c in RESULTS_COLUMNS})
    scores = score_results_file(read_results_file(path))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for model in ("original", "instruct", "peft"):
        per_row = [
            scorer.score(r, p) for r, p in zip(frame["human_baseline_summaries"], frame[f"{model}_model_summaries"])
        ]
        for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
            expected = sum(s[key].fmeasure for s in per_row) / len(per_row)
            assert scores[model][key] == pytest.approx(expected, abs=1e-12)


def test_improvement_is_absolute_percentage_points():
    old = dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"), 0.2)
    new = dict.fromkeys(("rouge1", "rouge2", "rougeL", "rougeLsum"), 0.35)
    assert improvement(new, old) == pytest.approx(dict.fromkeys(old, 15.0))


def test_results_file_missing_column_is_named(tmp_path):
    frame = _results_frame().drop(columns=["peft_model_summaries"])
    frame.to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(LabError, match=r"lacks column\(s\) peft_model_summaries"):
        read_results_file(tmp_path / "r.csv")


def test_results_columns_of_different_lengths_are_refused(tmp_path):
    with pytest.raises(LabError, match="different lengths"):
        write_results_file(tmp_path / "r.csv", {"a": ["x", "y"], "b": ["x"]})
    assert not (tmp_path / "r.csv").exists()


def test_offline_rouge_matches_evaluate_interface():
    out = OfflineRouge().compute(predictions=["a b"], references=["a b"], use_stemmer=True, use_aggregator=False)
    assert out["rouge1"] == [1.0] and set(out) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
