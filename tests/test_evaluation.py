"""Generation (batched and deduplicated = one at a time), ROUGE through `evaluate`, the results file, and the checks
that a model which ignores its input cannot pass."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from conftest import SETTINGS
from notebook import run_cells
from rouge_score import rouge_scorer

from lab_utils.config import RELEASE_DIR, load_settings
from lab_utils.data import load_dialogsum_csv
from lab_utils.errors import LabError
from lab_utils.generation import summarize
from lab_utils.results_file import RESULTS_COLUMNS, read_results_file, write_results_file
from lab_utils.scoring import ROUGE_KEYS, compute_rouge, improvement, rouge_table, rouge_views, split_sentences

GEN = {"max_new_tokens": 8, "num_beams": 1, "do_sample": False}


def test_batched_deduplicated_generation_equals_one_at_a_time(tiny_model, tokenizer, data_dir):
    rows = load_dialogsum_csv(data_dir)["test"]["dialogue"][:9]  # 3 dialogues x 3 references
    # special tokens suppressed: every summary has words on every CPU, so the equality compares text
    gen = dict(GEN, suppress_tokens=tokenizer.all_special_ids)
    calls = []
    original_generate = tiny_model.generate
    tiny_model.generate = lambda **kw: calls.append(len(kw["input_ids"])) or original_generate(**kw)
    batched = summarize(tiny_model, tokenizer, rows, SETTINGS, gen, batch_size=2, progress=False)
    assert calls == [2, 1]  # 3 distinct dialogues, each generated once
    single = [summarize(tiny_model, tokenizer, [d], SETTINGS, gen, batch_size=1, progress=False)[0] for d in rows]
    assert batched == single and all(batched)
    assert batched[0] == batched[1] == batched[2]  # fanned out to every reference row


def test_truncation_is_one_plain_line_not_a_warning(tiny_model, tokenizer, capsys):
    settings = SETTINGS.replace(max_source_length=8, max_new_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):  # a second model's summaries of the same dialogues: said once
            summarize(tiny_model, tokenizer, ["#Person1#: hello there, how are you?"] * 2, settings, progress=False)
    assert capsys.readouterr().out.count("1 of 1 prompts") == 1


@pytest.mark.parametrize(
    ("dialogues", "extra", "match"),
    [([], {}, ""), ([""], {}, ""), (["ok", 3], {}, ""), (["#Person1#: Hi."], {"batch_size": True}, "batch_size=True")],
)
def test_bad_dialogues_or_batch_sizes_are_named(dialogues, extra, match, tiny_model, tokenizer):
    with pytest.raises(LabError, match=match):
        summarize(tiny_model, tokenizer, dialogues, SETTINGS, progress=False, **extra)


def test_rouge_is_rouge_score_per_row_averaged_and_tables_take_per_row_scores():
    preds, refs = ["the cat sat down", "a dog ran home", "nothing alike"], ["the cat sat up", "the dog ran", "zebra"]
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    by_hand = {k: sum(scorer.score(r, p)[k].fmeasure for p, r in zip(preds, refs)) / 3 for k in ROUGE_KEYS}
    assert compute_rouge(preds, refs) == pytest.approx(by_hand)
    assert compute_rouge(["the cat sat down"], ["the cat sat up"])["rouge1"] == pytest.approx(0.75)
    with pytest.raises(LabError):
        compute_rouge(preds, refs[:2])
    per_row = {k: [0.2, 0.4] for k in ROUGE_KEYS}  # the notebook's tables and improvements take per-row scores
    assert rouge_table({"m": per_row}).loc["m", "rouge1"] == pytest.approx(0.3)
    assert improvement({k: 0.5 for k in ROUGE_KEYS}, per_row)["rouge2"] == pytest.approx(20.0)


def test_the_rouge_cell_falls_back_to_the_lab_s_metric_without_the_hub(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine that cannot reach the Hub
    settings = load_settings("course", environ={"LAB_MODEL_ID": str(RELEASE_DIR / "flan-t5-tiny")})
    assert settings.rouge_metric == "rouge"
    ns = run_cells(["rouge-load"], {"settings": settings})
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["evaluate.load('rouge') failed (FileNotFoundError): using the lab's local copy"]
    scores = ns["rouge"].compute(predictions=["the cat sat down"], references=["the cat sat up"], use_stemmer=True)
    assert scores["rouge1"] == pytest.approx(0.75)


def test_results_file_round_trip_and_refusals(tmp_path):
    columns = {c: [f"{c} {i}" for i in range(3)] for c in RESULTS_COLUMNS}
    path = write_results_file(tmp_path / "r.csv", columns, extra={"id": ["test_0_1", "test_0_2", "test_0_3"]})
    assert read_results_file(path)[RESULTS_COLUMNS[1]].tolist() == columns[RESULTS_COLUMNS[1]]
    pd.DataFrame({"id": ["a"], RESULTS_COLUMNS[0]: ["x"]}).to_csv(tmp_path / "short.csv", index=False)
    frame = pd.DataFrame({c: ["x", ""] for c in RESULTS_COLUMNS})
    frame.to_csv(tmp_path / "empty.csv", index=False)
    for name in ("short.csv", "empty.csv", "missing.csv"):
        with pytest.raises(LabError):
            read_results_file(tmp_path / name)
    with pytest.raises(LabError):
        write_results_file(tmp_path / "bad.csv", {"a": ["1"], "b": []})


def test_sentences_split_offline():
    assert split_sentences("Mr. Smith is here. #Person2# leaves! Is it 5? Yes") == [
        "Mr. Smith is here.", "#Person2# leaves!", "Is it 5?", "Yes"]  # fmt: skip


@pytest.mark.slow
def test_three_views_of_rouge():
    views = rouge_views(read_results_file(RELEASE_DIR / "dialogue-summary-training-results.csv").head(60))
    course, split, multi = (views[v] for v in ("course-comparable", "sentence-split", "multi-reference"))
    assert (course["rougeL"] == course["rougeLsum"]).all()  # no newlines: Lsum is L
    assert (split[["rouge1", "rouge2", "rougeL"]] == course[["rouge1", "rouge2", "rougeL"]]).all().all()
    assert (multi >= course).all().all()  # the best of three references is at least their mean
