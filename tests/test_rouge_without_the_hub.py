"""ROUGE without the Hub: when `evaluate.load("rouge")` cannot reach the Hub (its script lives there), the notebook's
cell says so in one line and loads the lab's copy, which scores the course's results file exactly as the Hub's
metric does (rouge_score's RougeScorer with stemming, one F-measure per row: the Hub script's computation)."""

from __future__ import annotations

import pytest
from notebook import run_cells

from lab_utils.config import RELEASE_DIR, load_settings


def test_the_rouge_cell_falls_back_to_the_lab_s_metric_without_the_hub(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine that cannot reach the Hub
    settings = load_settings("course", environ={"LAB_MODEL_ID": str(RELEASE_DIR / "flan-t5-tiny")})
    assert settings.rouge_metric == "rouge"
    ns = run_cells(["rouge-load"], {"settings": settings})
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["evaluate.load('rouge') failed (FileNotFoundError): using the lab's local copy"]
    scores = ns["rouge"].compute(predictions=["the cat sat down"], references=["the cat sat up"], use_stemmer=True)
    assert scores["rouge1"] == pytest.approx(0.75)
