"""Scoring summaries with ROUGE through `evaluate`, and the checks a model that ignores its input cannot pass."""

# Every score is rouge.compute(..., use_aggregator=False, use_stemmer=True) averaged over rows: the course's numbers,
# the same on every run (the default aggregator bootstraps a confidence interval, whose middle moves a little). Where
# no `rouge` is passed, the lab's local copy of the metric is loaded with `evaluate.load` (the Hub's needs the Hub).

from __future__ import annotations

import re
from collections import Counter
from functools import cache

from .config import PROJECT_ROOT, profile_defaults
from .errors import LabError
from .results_file import RESULTS_COLUMNS

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# the lab's copy of the Hub's `rouge` metric (the same rouge_score computation), for `evaluate.load` without the Hub
LOCAL_ROUGE_METRIC = str(PROJECT_ROOT / profile_defaults("offline")["rouge_metric"])


@cache
def local_rouge():
    """The lab's ROUGE metric, loaded once with `evaluate.load`."""
    import evaluate

    return evaluate.load(LOCAL_ROUGE_METRIC)


def mean_scores(per_row: dict) -> dict[str, float]:
    """The mean of per-row F-measures for each ROUGE metric (per-row lists as `use_aggregator=False` returns them)."""
    fix = "pass what `compute_rouge` (or `rouge.compute`) returned"
    if not isinstance(per_row, dict):
        raise LabError(f"the scores {str(per_row)[:80]} are a {type(per_row).__name__}, not a dict of metrics", fix)
    if missing := [k for k in ROUGE_KEYS if k not in per_row]:
        raise LabError(f"the scores {str(per_row)[:80]} lack {', '.join(missing)}", fix)
    values = {k: per_row[k] if isinstance(per_row[k], list | tuple) else [per_row[k]] for k in ROUGE_KEYS}
    if any(not v for v in values.values()):
        raise LabError("the per-row scores are empty", "score at least one prediction")
    return {k: float(sum(v) / len(v)) for k, v in values.items()}


def compute_rouge(predictions, references, rouge=None) -> dict[str, float]:
    """Mean ROUGE F-measure per metric (stemming on), as the course reported it; a reference may be a list."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references) or not predictions:
        raise LabError(f"{len(predictions)} predictions for {len(references)} references",
                       "pass one prediction per reference")  # fmt: skip
    rouge = rouge or local_rouge()
    return mean_scores(rouge.compute(predictions=predictions, references=references, use_aggregator=False,
                                     use_stemmer=True))  # fmt: skip


def improvement(new: dict, old: dict) -> dict[str, float]:
    """Absolute improvement per metric in percentage points (the course's `new - old`, times 100)."""
    new, old = mean_scores(new), mean_scores(old)
    return {k: 100.0 * (new[k] - old[k]) for k in ROUGE_KEYS}


def show_improvement(new: dict, old: dict, label: str) -> None:
    """Print the course's improvement lines, e.g. `rouge1: 18.82%`."""
    print(f"Absolute percentage improvement of {label}:")
    for k, v in improvement(new, old).items():
        print(f"  {k}: {v:.2f}%")


def rouge_table(scores: dict):
    """A DataFrame: one row per model, one column per ROUGE metric; per-row scores (lists) are averaged."""
    import pandas as pd

    if not isinstance(scores, dict) or not scores:
        raise LabError("no scores to show", "pass {'model name': compute_rouge(...), ...}")
    return pd.DataFrame.from_dict({m: mean_scores(s) for m, s in scores.items()}, orient="index").round(4)


def score_results_file(frame, rouge=None, columns=RESULTS_COLUMNS[1:]) -> dict[str, dict[str, float]]:
    """ROUGE of each model column of a results file against `human_baseline_summaries`."""
    refs = frame["human_baseline_summaries"].tolist()
    return {c.replace("_model_summaries", ""): compute_rouge(frame[c].tolist(), refs, rouge) for c in columns}


def dialogue_groups(frame) -> list[list[int]]:
    """Row positions per dialogue: from ids like `test_<n>_<j>`, or in threes (the course's file has no `id`)."""
    if "id" not in frame.columns:
        if len(frame) % 3:
            raise LabError(f"the results file has no `id` column and {len(frame)} rows, not a multiple of 3",
                           "regenerate it with the instructor command")  # fmt: skip
        return [list(range(i, i + 3)) for i in range(0, len(frame), 3)]
    groups: dict[str, list[int]] = {}
    for pos, value in enumerate(frame["id"].astype(str)):
        groups.setdefault(value.strip().rsplit("_", 1)[0], []).append(pos)
    return list(groups.values())


def distinct_summaries(frame, columns=RESULTS_COLUMNS[1:]) -> str:
    """How many different summaries each model wrote for the distinct test dialogues (one line)."""
    groups = dialogue_groups(frame)
    counts = {c.replace("_model_summaries", ""): len({frame[c].iloc[g[0]] for g in groups}) for c in columns}
    return f"distinct summaries of {len(groups)} test dialogues: " + ", ".join(f"{m} {n}" for m, n in counts.items())


def constant_baseline(frame, train, rouge=None) -> dict[str, float]:
    """Per metric, the best ROUGE one sentence earns as the summary of every test row."""
    # the bar a model that ignores its input cannot pass; candidates: the 10 most frequent training summaries and each
    # model's most frequent output
    candidates = [s for s, _ in Counter(train["summary"]).most_common(10)]
    candidates += [Counter(frame[c]).most_common(1)[0][0] for c in RESULTS_COLUMNS[1:]]
    refs = frame["human_baseline_summaries"].tolist()
    best = dict.fromkeys(ROUGE_KEYS, 0.0)
    for candidate in dict.fromkeys(candidates):
        scores = compute_rouge([candidate] * len(refs), refs, rouge)
        best = {k: max(best[k], scores[k]) for k in ROUGE_KEYS}
    return best


def looks_like_text(summary: str) -> bool:
    """At least three words of letters, and more letters than punctuation: not a run of '#', ':' and '.'."""
    words = re.findall(r"[A-Za-z]{2,}", summary.replace("#Person1#", " ").replace("#Person2#", " "))
    letters = sum(c.isalpha() for c in summary)
    return len(words) >= 3 and letters > sum(not c.isalnum() and not c.isspace() for c in summary)


def story_checks(frame, train_summaries, rouge=None) -> dict[str, tuple[bool, str]]:
    """What a results file must show for the lab's story to be true: {check: (passed, the measured numbers)}."""
    # the fine-tuned models summarize their input (>= 90% distinct summaries over the distinct test dialogues, and
    # each beats the best constant summary on ROUGE-1/2/L); the original model writes text (>= 90% of its outputs);
    # ROUGE-1 ranks instruct > PEFT > original; PEFT recovers >= 80% of full fine-tuning's ROUGE-1 gain
    groups = dialogue_groups(frame)
    first = {c: [frame[c].iloc[g[0]] for g in groups] for c in RESULTS_COLUMNS[1:]}
    scores = score_results_file(frame, rouge)
    bar = constant_baseline(frame, {"summary": list(train_summaries)}, rouge)
    checks: dict[str, tuple[bool, str]] = {}
    for model in ("instruct", "peft"):
        distinct = len(set(first[f"{model}_model_summaries"]))
        checks[f"{model}: distinct summaries"] = (distinct >= 0.9 * len(groups), f"{distinct} of {len(groups)}")
        for k in ("rouge1", "rouge2", "rougeL"):
            ok = scores[model][k] > bar[k]
            checks[f"{model}: beats the best constant on {k}"] = (ok, f"{scores[model][k]:.4f} vs {bar[k]:.4f}")
    text = sum(looks_like_text(t) for t in first["original_model_summaries"])
    checks["original: writes text"] = (text >= 0.9 * len(groups), f"{text} of {len(groups)} outputs")
    r1 = {m: scores[m]["rouge1"] for m in scores}
    ranking = " > ".join(f"{r1[m]:.4f}" for m in ("instruct", "peft", "original"))
    checks["ROUGE-1: instruct > PEFT > original"] = (r1["instruct"] > r1["peft"] > r1["original"], ranking)
    gain = r1["instruct"] - r1["original"]
    recovered = (r1["peft"] - r1["original"]) / gain if gain > 0 else float("nan")
    checks["PEFT recovers >= 80% of the full fine-tune's ROUGE-1 gain"] = (recovered >= 0.8, f"{recovered:.0%}")
    return checks


# a sentence ends at . ! or ? (and closing quotes) before a capital, #Person1# or a digit; "Mr. Smith" does not end one
_SENTENCE_END = re.compile(r"(?<!\b[MD]r)(?<!\bMrs)(?<!\bMs)([.!?]+[\"')\]]*)\s+(?=[\"'(\[]?[A-Z#0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, offline (a regex stand-in for nltk.sent_tokenize, which needs downloaded data)."""
    return [s.strip() for s in _SENTENCE_END.sub(r"\1\n", text).split("\n") if s.strip()]


def rouge_views(frame, rouge=None, columns=RESULTS_COLUMNS[1:]):
    """ROUGE of each model (rows) under the three views (column level 0) and per metric (level 1)."""
    import pandas as pd

    refs, groups = frame["human_baseline_summaries"].tolist(), dialogue_groups(frame)
    split_refs, refs_by_dialogue = ["\n".join(split_sentences(t)) for t in refs], [[refs[i] for i in g] for g in groups]
    rows = {}
    for column in columns:
        preds = frame[column].tolist()
        views = {
            "course-comparable": compute_rouge(preds, refs, rouge),
            "sentence-split": compute_rouge(["\n".join(split_sentences(t)) for t in preds], split_refs, rouge),
            "multi-reference": compute_rouge([preds[g[0]] for g in groups], refs_by_dialogue, rouge),
        }
        rows[column.replace("_model_summaries", "")] = {(v, k): s[k] for v, s in views.items() for k in ROUGE_KEYS}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["view", "metric"])
    return table.rename_axis("model").round(4)
