"""Three views of ROUGE on the same predictions: course-comparable, sentence-split rougeLsum, multi-reference."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from rouge_score import rouge_scorer

from lab_utils.errors import LabError
from lab_utils.results_file import RESULTS_COLUMNS
from lab_utils.scoring import (
    ROUGE_KEYS,
    ROUGE_VIEWS,
    ROUGE_VIEWS_EXPLAINED,
    compute_rouge,
    dialogue_groups,
    rouge_course_comparable,
    rouge_multi_reference,
    rouge_sentence_split,
    rouge_views,
    split_sentences,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The cat sat. The dog ran.", ["The cat sat.", "The dog ran."]),
        (
            "#Person1# asks Mr. Smith why. #Person2# says Dr. Lee is ill!",
            ["#Person1# asks Mr. Smith why.", "#Person2# says Dr. Lee is ill!"],
        ),
        (
            "Mrs. Brown and Ms. Green live on Oak St. near the park.",
            ["Mrs. Brown and Ms. Green live on Oak St. near the park."],
        ),
        ("They buy fruit, e.g. Apples. I.e. Pears too.", ["They buy fruit, e.g. Apples.", "I.e. Pears too."]),
        (
            "Why not? #Person2# agrees. 3 tickets cost $4.50 each.",
            ["Why not?", "#Person2# agrees.", "3 tickets cost $4.50 each."],
        ),
        ('He asks "Where is it?" She does not know...', ['He asks "Where is it?"', "She does not know..."]),
        ("it is fine. and then lower case goes on", ["it is fine. and then lower case goes on"]),
        ("  One line only  ", ["One line only"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_sentence_split_changes_only_rougelsum():
    pred, ref = "The cat sat. The dog ran.", "The dog ran. The cat sat."
    # Tokens (lower-cased, punctuation dropped; no word is long enough to be stemmed):
    #   pred = the cat sat the dog ran, ref = the dog ran the cat sat (6 tokens each).
    # rouge1: all 6 unigrams match -> 1.0. rouge2: pred bigrams the-cat, cat-sat, sat-the, the-dog, dog-ran; ref
    #   has the-dog, dog-ran, ran-the, the-cat, cat-sat -> 4 of 5 match -> P = R = F = 0.8.
    # rougeL: longest common subsequence is "the cat sat" (or "the dog ran") = 3 tokens -> P = R = F = 3/6 = 0.5.
    # rougeLsum without newlines: one "sentence" each, so it is rougeL = 0.5.
    # rougeLsum split: for ref sentence "the dog ran" the union of its LCS with "the cat sat" (the) and with
    #   "the dog ran" (the dog ran) is 3 tokens; likewise 3 for "the cat sat" -> 6 hits of 6 -> P = R = F = 1.0.
    course = rouge_course_comparable([pred], [ref])
    split = rouge_sentence_split([pred], [ref])
    assert course == pytest.approx({"rouge1": 1.0, "rouge2": 0.8, "rougeL": 0.5, "rougeLsum": 0.5})
    assert split == pytest.approx({"rouge1": 1.0, "rouge2": 0.8, "rougeL": 0.5, "rougeLsum": 1.0})
    for key in ("rouge1", "rouge2", "rougeL"):
        assert split[key] == course[key]


def test_multi_reference_is_the_best_reference_per_metric():
    pred = "the cat sat on the mat"  # 6 tokens, bigrams the-cat cat-sat sat-on on-the the-mat
    refs = ["the cat sat on", "on the mat sat the cat", "a dog ran in the park"]
    # ref A "the cat sat on": rouge1 P=4/6 R=4/4 F=0.8; rouge2 P=3/5 R=3/3 F=0.75; LCS "the cat sat on"=4 -> F=0.8.
    # ref B "on the mat sat the cat": rouge1 6/6 -> F=1.0; rouge2 on-the, the-mat, the-cat = 3/5 -> F=0.6;
    #   LCS "on the mat" = 3 -> P=R=0.5 -> F=0.5.
    # ref C "a dog ran in the park": rouge1 "the" 1/6 -> F=1/6; rouge2 0; rougeL 1/6.
    # Best per metric: rouge1 1.0 (B), rouge2 0.75 (A), rougeL 0.8 (A), rougeLsum = rougeL 0.8 (A).
    expected = {"rouge1": 1.0, "rouge2": 0.75, "rougeL": 0.8, "rougeLsum": 0.8}
    assert rouge_multi_reference([pred], [refs]) == pytest.approx(expected)
    singles = [compute_rouge([pred], [r]) for r in refs]
    for key in ROUGE_KEYS:
        assert expected[key] == pytest.approx(max(s[key] for s in singles))
    # the course averages the three rows instead: rouge1 (0.8 + 1.0 + 1/6) / 3
    assert compute_rouge([pred] * 3, refs)["rouge1"] == pytest.approx((0.8 + 1.0 + 1 / 6) / 3)


def test_multi_reference_averages_over_dialogues_and_checks_input():
    scores = rouge_multi_reference(["the cat sat", "a dog"], [["the cat sat", "x"], ["no match", "nothing"]])
    assert scores == pytest.approx(dict.fromkeys(ROUGE_KEYS, 0.5))
    with pytest.raises(LabError, match="2 predictions but references for 1 dialogues"):
        rouge_multi_reference(["a", "b"], [["a"]])
    with pytest.raises(LabError, match="dialogue #0 has no references"):
        rouge_multi_reference(["a"], [[]])


def _results_frame(n_dialogues=4, with_ids=True):
    rng = random.Random(3)
    words = "the cat dog sat ran up down on a mat park".split()

    def sentence():
        return " ".join(rng.choices(words, k=rng.randint(3, 7))).capitalize() + "."

    rows = []
    for n in range(n_dialogues):
        models = {c: f"{sentence()} {sentence()}" for c in RESULTS_COLUMNS[1:]}
        for j in range(1, 4):
            row = {"id": f"test_{n}_{j}"} if with_ids else {}
            rows.append({**row, RESULTS_COLUMNS[0]: f"#Person1# {sentence()} {sentence()}", **models})
    return pd.DataFrame(rows)


def test_dialogue_groups_from_ids_and_fallback():
    frame = _results_frame(3)
    assert dialogue_groups(frame) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    shuffled = frame.iloc[[0, 3, 1, 4, 2, 5]].reset_index(drop=True)  # grouped by id, not by position
    assert dialogue_groups(shuffled) == [[0, 2, 4], [1, 3, 5]]
    no_ids = frame.drop(columns="id")
    assert dialogue_groups(no_ids) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_dialogue_groups_errors():
    frame = _results_frame(2)
    with pytest.raises(LabError, match="no `id` column and 5 rows"):
        dialogue_groups(frame.drop(columns="id").iloc[:5])
    bad = frame.copy()
    bad.loc[2, "id"] = "test7"
    with pytest.raises(LabError, match="row 2 has id 'test7'"):
        dialogue_groups(bad)
    with pytest.raises(LabError, match="no rows"):
        dialogue_groups(frame.iloc[:0])


def test_course_comparable_view_equals_rouge_score_mean():
    frame = _results_frame()
    table = rouge_views(frame)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    refs = frame["human_baseline_summaries"]
    for model in ("original", "instruct", "peft"):
        per_row = [scorer.score(r, p) for r, p in zip(refs, frame[f"{model}_model_summaries"])]
        for key in ROUGE_KEYS:
            expected = sum(s[key].fmeasure for s in per_row) / len(per_row)
            assert table.loc[model, ("course-comparable", key)] == pytest.approx(expected, abs=5e-5)  # rounded to 4


def test_rouge_views_table_shape_and_labels():
    frame = _results_frame()
    table = rouge_views(frame)
    assert list(table.index) == ["original", "instruct", "peft"]
    assert table.index.name == "model"
    assert table.columns.names == ["view", "metric"]
    assert list(table.columns) == [(v, k) for v in ROUGE_VIEWS for k in ROUGE_KEYS]
    # splitting leaves rouge1/2/L alone; the best reference is never worse than the average one
    for key in ("rouge1", "rouge2", "rougeL"):
        assert (table[("sentence-split", key)] == table[("course-comparable", key)]).all()
    assert (table["multi-reference"] >= table["course-comparable"]).all().all()
    # same numbers with ids or with the consecutive-threes fallback
    pd.testing.assert_frame_equal(rouge_views(_results_frame(with_ids=False)), table)
    assert rouge_views(frame, model_columns=["peft_model_summaries"]).shape == (1, 12)
    assert ROUGE_VIEWS_EXPLAINED.count(". ") >= 1 and "rougeLsum" in ROUGE_VIEWS_EXPLAINED


def test_rouge_views_warns_when_a_dialogue_has_different_summaries():
    frame = _results_frame(2)
    frame.loc[1, "peft_model_summaries"] = "Something else."
    with pytest.warns(UserWarning, match="peft_model_summaries: 1 of 2 dialogues"):
        rouge_views(frame)
