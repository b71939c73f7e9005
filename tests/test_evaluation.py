"""Generation (batched and deduplicated = one at a time), ROUGE, and the results file."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
from conftest import SETTINGS
from rouge_score import rouge_scorer

from lab_utils.errors import LabError
from lab_utils.generation import summarize
from lab_utils.results_file import RESULTS_COLUMNS, read_results_file, write_results_file
from lab_utils.scoring import compute_rouge, improvement, score_results_file

GEN = {"max_new_tokens": 8, "num_beams": 1, "do_sample": False}


def test_batched_deduplicated_generation_equals_one_at_a_time(tiny_model, tokenizer, data_dir):
    from lab_utils.data import load_dialogsum_csv

    rows = load_dialogsum_csv(data_dir)["test"]["dialogue"][:9]  # 3 dialogues x 3 references
    # A random model may end at once on one CPU and not on another (CI's first summary was empty): special tokens
    # are suppressed, so every summary has words and the equality below compares text, whatever the CPU.
    gen = dict(GEN, suppress_tokens=tokenizer.all_special_ids)
    batched = summarize(tiny_model, tokenizer, rows, SETTINGS, gen, batch_size=4, progress=False)
    single = [summarize(tiny_model, tokenizer, [d], SETTINGS, gen, batch_size=1, progress=False)[0] for d in rows]
    assert batched == single
    assert batched[0] == batched[1] == batched[2]  # fanned out to every reference row
    assert all(s for s in batched)


def test_encoder_chunks_pad_little_and_cover_the_batch():
    from lab_utils.generation import ENCODE_MAX_CHUNK, ENCODE_MAX_PADDING, encoder_chunks

    # the first 16 test dialogues' prompt lengths (stand-in tokenizer), sorted as summarize sorts them
    lengths = [489, 428, 328, 245, 238, 237, 235, 211, 196, 194, 193, 188, 188, 187, 180, 125]
    chunks = encoder_chunks(lengths)
    assert [i for c in chunks for i in c] == list(range(len(lengths)))  # every prompt once, in order
    for c in chunks:
        longest, total = lengths[c.start], sum(lengths[i] for i in c)
        assert len(c) <= ENCODE_MAX_CHUNK and longest * len(c) <= (1 + ENCODE_MAX_PADDING) * total
    padded = sum(lengths[c.start] * len(c) for c in chunks)
    assert padded < 1.1 * sum(lengths) < 0.6 * lengths[0] * len(lengths)  # vs ~2x work padding the batch at once
    # by hand: 489+428 pad 6.6%; 328 alone (3 x 489 > 1.1 x 1245); 245..196 pad 7.9%; 194..125 pad 8.2%
    assert [len(c) for c in chunks] == [2, 1, 6, 7]
    assert encoder_chunks([100] * 20) == [range(0, 8), range(8, 16), range(16, 20)]
    assert encoder_chunks([]) == []


@pytest.mark.parametrize("wrap", ["plain", "lora", "bf16"])
def test_chunked_encoding_gives_the_summaries_of_one_batch_pass(wrap, tiny_model, tokenizer, data_dir, monkeypatch):
    """Encoding a batch in chunks of similar length changes the work, not the summaries."""
    from lab_utils import generation
    from lab_utils.data import load_dialogsum_csv

    model = tiny_model
    if wrap == "lora":
        import torch
        from peft import get_peft_model

        from lab_utils.backstage.instructor import lora_config

        model = get_peft_model(copy.deepcopy(tiny_model), lora_config(r=4))
        with torch.no_grad():  # a LoRA update that changes the outputs, so the adapter is part of the check
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.5)
    elif wrap == "bf16":
        from lab_utils.engines import prepare_for_inference

        monkeypatch.setattr("lab_utils.engines.cpu_supports_bf16", lambda: True)
        model = prepare_for_inference(tiny_model, "bf16")
    test = list(dict.fromkeys(load_dialogsum_csv(data_dir)["test"]["dialogue"]))
    lines = [line for d in test for line in d.splitlines()]
    dialogues = ["\n".join(lines[i : i + 2 * i + 1]) for i in range(6)]  # 1 to 11 turns: very different lengths
    gen = dict(GEN, max_new_tokens=12, min_new_tokens=12)
    calls = []
    real = generation.encoder_chunks
    monkeypatch.setattr(generation, "encoder_chunks", lambda lengths: calls.append(lengths) or real(lengths))
    chunked = summarize(model, tokenizer, dialogues, SETTINGS, gen, batch_size=6, progress=False)
    assert len(calls) == 1 and len(real(calls[0])) > 1  # the batch was really encoded in several chunks
    monkeypatch.setattr(generation, "encoded_inputs", lambda model, tokenizer, enc: dict(enc))
    whole = summarize(model, tokenizer, dialogues, SETTINGS, gen, batch_size=6, progress=False)
    assert chunked == whole


@pytest.mark.parametrize(("bad", "message"), [(["ok", 3], "dialogue #1 is a int"), (["  "], "dialogue #0 is empty")])
def test_summarize_rejects_bad_dialogues(bad, message, tiny_model, tokenizer):
    with pytest.raises(LabError, match=message):
        summarize(tiny_model, tokenizer, bad, SETTINGS, GEN, progress=False)


def test_too_long_dialogue_is_truncated_with_a_warning(tiny_model, tokenizer):
    with pytest.warns(UserWarning, match="1 of 1 prompts exceed 16 tokens and were truncated"):
        out = summarize(
            tiny_model,
            tokenizer,
            ["#Person1#: hello " * 50],
            SETTINGS.replace(max_source_length=16),
            GEN,
            progress=False,
        )
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


def test_local_rouge_metric_equals_rouge_score():
    """The offline profile's `evaluate.load(...)` target computes what rouge_score computes (per row and aggregated)."""
    from lab_utils.scoring import local_rouge

    preds, refs = ["the cat sat down", "a dog ran in the park"], ["the cat sat up", "the dog ran"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = [scorer.score(r, p) for r, p in zip(refs, preds)]
    per_row = local_rouge().compute(predictions=preds, references=refs, use_aggregator=False, use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert per_row[key] == pytest.approx([e[key].fmeasure for e in expected], abs=1e-12)
    single = local_rouge().compute(predictions=preds[:1], references=refs[:1], use_stemmer=True)
    assert single["rouge1"] == pytest.approx(0.75)  # the aggregate of one row is that row
    multi = local_rouge().compute(predictions=["the cat"], references=[["a dog", "the cat"]], use_aggregator=False)
    assert multi["rouge1"] == [1.0]  # several references: the best one counts


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([], "no dialogues to summarize"),
        ({"batch_size": 0}, "batch_size=0 must be a whole number of at least 1"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"gen_kwargs": {"max_new_tokens": 0}}, "max_new_tokens=0 must be at least 1"),
    ],
)
def test_summarize_refuses_what_would_give_empty_or_no_summaries(bad, message, tiny_model, tokenizer):
    dialogues, kwargs = (bad, {}) if isinstance(bad, list) else (["#Person1#: hi"], bad)
    with pytest.raises(LabError, match=message):
        summarize(tiny_model, tokenizer, dialogues, SETTINGS, progress=False, **kwargs)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p, f: f.to_csv(p, index=False, sep=";"), "it looks ';'-separated"),
        (lambda p, f: p.write_bytes(f.to_csv(index=False).replace("the", "th\xe9").encode("latin-1")), "not UTF-8"),
        (lambda p, f: f.iloc[:0].to_csv(p, index=False), "a header but no rows"),
    ],
)
def test_unreadable_results_files_are_explained(write, message, tmp_path):
    write(tmp_path / "r.csv", _results_frame())
    with pytest.raises(LabError, match=message):
        read_results_file(tmp_path / "r.csv")


def test_results_file_in_the_course_s_format_is_read(tmp_path):
    """The course shipped its results file with a leading unnamed index column and no `id` column."""
    frame = _results_frame()
    frame.to_csv(tmp_path / "course.csv")  # pandas' default: the index as the first, unnamed column
    assert open(tmp_path / "course.csv").readline().startswith(",human_baseline_summaries")
    read = read_results_file(tmp_path / "course.csv")
    assert read[list(RESULTS_COLUMNS)].equals(frame)


def test_constant_baseline_is_the_best_single_sentence():
    from lab_utils.scoring import constant_baseline, constant_candidates

    frame = _results_frame(n=9)
    frame["peft_model_summaries"] = "the cat sat"  # a model that ignores its input
    train = {"summary": ["a dog ran", "a dog ran", "the mat", "up on a mat"]}
    assert constant_candidates(frame, train["summary"], n=1)[0] == "a dog ran"  # the most frequent first
    candidates = constant_candidates(frame, train["summary"])
    assert candidates[:3] == ["a dog ran", "the mat", "up on a mat"] and "the cat sat" in candidates
    refs = frame["human_baseline_summaries"].tolist()
    by_hand = [compute_rouge([c] * len(refs), refs) for c in candidates]
    best = constant_baseline(frame, train)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert best[key] == pytest.approx(max(s[key] for s in by_hand), abs=1e-12)


@pytest.mark.parametrize(
    ("summary", "text"),
    [
        ("#Person1# asks #Person2# about the new job.", True),
        (". #Person1#:: I's. #:. #", False),
        (":. #Person1#:. #.. #. #Person2#:", False),
        ("", False),
    ],
)
def test_looks_like_text(summary, text):
    from lab_utils.scoring import looks_like_text

    assert looks_like_text(summary) is text
