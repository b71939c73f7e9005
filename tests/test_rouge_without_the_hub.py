"""ROUGE without the Hub: when `evaluate.load("rouge")` cannot reach the Hub (its script lives there), the notebook's
cell says so in one line and loads the lab's copy, which scores the course's results file exactly as the Hub's
metric does (rouge_score's RougeScorer with stemming, one F-measure per row: the Hub script's computation)."""

from __future__ import annotations

import pytest
from notebook import run_cells
from rouge_score import rouge_scorer

from lab_utils.config import RELEASE_DIR, load_settings
from lab_utils.scoring import ROUGE_KEYS


def test_the_rouge_cell_falls_back_to_the_lab_s_metric_without_the_hub(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine that cannot reach the Hub
    settings = load_settings("course", environ={"LAB_MODEL_ID": str(RELEASE_DIR / "flan-t5-tiny")})
    assert settings.rouge_metric == "rouge"
    ns = run_cells(["rouge-load"], {"settings": settings})
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["evaluate.load('rouge') failed (FileNotFoundError): using the lab's local copy"]
    scores = ns["rouge"].compute(predictions=["the cat sat down"], references=["the cat sat up"], use_stemmer=True)
    assert scores["rouge1"] == pytest.approx(0.75)


@pytest.mark.slow
def test_the_lab_s_metric_scores_the_course_s_results_file_as_the_hub_s_does(tmp_path):
    from course_world import write_course_results_file

    from lab_utils.checkpoints import RESULTS_FILE
    from lab_utils.results_file import read_results_file
    from lab_utils.scoring import local_rouge

    frame = read_results_file(write_course_results_file(RELEASE_DIR / RESULTS_FILE, tmp_path / RESULTS_FILE))
    refs = frame["human_baseline_summaries"].tolist()
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)  # what the Hub's rouge.py runs
    for column in ("original_model_summaries", "instruct_model_summaries", "peft_model_summaries"):
        preds = frame[column].tolist()
        ours = local_rouge().compute(predictions=preds, references=refs, use_aggregator=False, use_stemmer=True)
        hub = [scorer.score(r, p) for r, p in zip(refs, preds)]
        for key in ROUGE_KEYS:
            assert ours[key] == [h[key].fmeasure for h in hub], (column, key)  # identical, row by row
