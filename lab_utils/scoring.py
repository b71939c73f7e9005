"""Scoring summaries with ROUGE, and the checks a model that ignores its input cannot pass.

ROUGE as the course reports it (`compute_rouge`, `rouge_table`, `show_improvement`); the results file's scores; the
best constant summary and the story checks (`story_checks`); and three views of the same predictions (`rouge_views`).
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import TYPE_CHECKING

from .config import PROJECT_ROOT, profile_defaults
from .errors import LabError
from .results_file import RESULTS_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Sequence

    import evaluate
    import pandas as pd

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")


# the lab's copy of the Hub's `rouge` metric (the same rouge_score computation), for `evaluate.load` without the Hub
LOCAL_ROUGE_METRIC = str(PROJECT_ROOT / profile_defaults("offline")["rouge_metric"])
_LOCAL_ROUGE = None


def local_rouge() -> evaluate.EvaluationModule:
    """The lab's ROUGE metric (`lab_utils/backstage/rouge_metric`), loaded once with `evaluate.load`."""
    global _LOCAL_ROUGE
    if _LOCAL_ROUGE is None:
        import evaluate

        _LOCAL_ROUGE = evaluate.load(LOCAL_ROUGE_METRIC)
    return _LOCAL_ROUGE


def mean_scores(per_row: dict[str, Sequence[float]]) -> dict[str, float]:
    """The mean of per-row F-measures for each ROUGE metric: the course's numbers, the same on every run.

    (`rouge.compute`'s default aggregator bootstraps a confidence interval and reports its middle, which moves a little
    from run to run.)
    """
    return {k: float(sum(per_row[k]) / len(per_row[k])) for k in ROUGE_KEYS}


def compute_rouge(
    predictions: Sequence[str], references: Sequence[str], rouge: evaluate.EvaluationModule | None = None
) -> dict[str, float]:
    """Mean ROUGE F-measure per metric (stemming on), as the course reported it."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise LabError(
            f"{len(predictions)} predictions but {len(references)} references", "pass one prediction per reference"
        )
    if not predictions:
        raise LabError("no predictions to score", "pass at least one prediction")
    rouge = rouge or local_rouge()
    per_row = rouge.compute(predictions=predictions, references=references, use_aggregator=False, use_stemmer=True)
    return mean_scores(per_row)


def checked_scores(scores: object, name: str) -> dict[str, float]:
    """One model's ROUGE scores as `compute_rouge` returns them (per-row lists are averaged), or a `LabError`
    saying what a notebook helper was given instead."""
    fix = "pass what `compute_rouge` (or `rouge.compute`) returned for that model"
    if not isinstance(scores, dict):
        raise LabError(f"the scores of {name} are a {type(scores).__name__}, not a dict of ROUGE metrics", fix)
    missing = [k for k in ROUGE_KEYS if k not in scores]
    if missing:
        raise LabError(f"the scores of {name} lack {', '.join(missing)} (it has: {', '.join(map(str, scores))})", fix)
    if any(isinstance(scores[k], list | tuple) for k in ROUGE_KEYS):
        if any(not len(scores[k]) for k in ROUGE_KEYS):
            raise LabError(f"the per-row scores of {name} are empty", "score at least one prediction")
        return mean_scores(scores)
    return {k: float(scores[k]) for k in ROUGE_KEYS}


def improvement(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
    """Absolute improvement per metric in percentage points (the course's `new - old`, times 100)."""
    new, old = checked_scores(new, "the new model"), checked_scores(old, "the old model")
    return {k: 100.0 * (new[k] - old[k]) for k in ROUGE_KEYS}


def show_improvement(new: dict[str, float], old: dict[str, float], label: str) -> None:
    """Print the course's improvement lines, e.g. `rouge1: 18.82%`."""
    print(f"Absolute percentage improvement of {label}:")
    for k, v in improvement(new, old).items():
        print(f"  {k}: {v:.2f}%")


def rouge_table(scores: dict[str, dict]) -> pd.DataFrame:
    """A DataFrame: one row per model, one column per ROUGE metric; per-row scores (lists) are averaged."""
    import pandas as pd

    if not isinstance(scores, dict) or not scores:
        raise LabError("no scores to show", "pass {'model name': compute_rouge(...), ...}")
    means = {m: checked_scores(s, repr(m)) for m, s in scores.items()}
    return pd.DataFrame.from_dict(means, orient="index")[list(ROUGE_KEYS)].round(4)


def score_results_file(
    frame: pd.DataFrame,
    rouge: evaluate.EvaluationModule | None = None,
    model_columns: Sequence[str] = RESULTS_COLUMNS[1:],
) -> dict[str, dict[str, float]]:
    """ROUGE of each model column of a results file against `human_baseline_summaries`."""
    refs = frame["human_baseline_summaries"].tolist()
    return {
        c.replace("_model_summaries", ""): compute_rouge(frame[c].tolist(), refs, rouge=rouge) for c in model_columns
    }


# --- Checks that a model which ignores its input cannot pass -------------------------------------------------------


def distinct_summaries(frame: pd.DataFrame, model_columns: Sequence[str] = RESULTS_COLUMNS[1:]) -> str:
    """How many different summaries each model wrote for the distinct test dialogues (one line)."""
    groups = dialogue_groups(frame)
    counts = {c.replace("_model_summaries", ""): len({frame[c].iloc[g[0]] for g in groups}) for c in model_columns}
    return f"distinct summaries of {len(groups)} test dialogues: " + ", ".join(f"{m} {n}" for m, n in counts.items())


def constant_candidates(frame: pd.DataFrame, train_summaries: Sequence[str], n: int = 10) -> list[str]:
    """The 10 most frequent training summaries, and each model's own most frequent output."""

    candidates = [s for s, _ in Counter(train_summaries).most_common(n)]
    for column in RESULTS_COLUMNS[1:]:
        candidates.append(Counter(frame[column]).most_common(1)[0][0])
    return list(dict.fromkeys(candidates))


class _CachedTokenizer:
    """rouge_score's tokenizer (with stemming), remembering each text's tokens: a constant candidate is scored against
    the same 1,500 references as every other candidate, and stemming them again each time is most of the work."""

    def __init__(self):
        from rouge_score import tokenizers

        self._inner = tokenizers.DefaultTokenizer(use_stemmer=True)
        self._cache: dict[str, list[str]] = {}

    def tokenize(self, text: str) -> list[str]:
        if text not in self._cache:
            self._cache[text] = self._inner.tokenize(text)
        return self._cache[text]


def constant_baseline(frame: pd.DataFrame, train, rouge=None) -> dict[str, float]:
    """Per metric, the best ROUGE that one sentence earns when it is the summary of every test row (the bar a
    model that ignores its input cannot pass); candidates from `constant_candidates`.

    Scored as `compute_rouge` scores (rouge_score's F-measures with stemming, the mean over rows), with the
    references' tokens computed once. (`rouge` is accepted for symmetry with the other scoring helpers.)
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), tokenizer=_CachedTokenizer())
    refs = frame["human_baseline_summaries"].tolist()
    best = dict.fromkeys(ROUGE_KEYS, 0.0)
    for candidate in constant_candidates(frame, train["summary"]):
        rows = [scorer.score(ref, candidate) for ref in refs]
        for k in ROUGE_KEYS:
            best[k] = max(best[k], sum(r[k].fmeasure for r in rows) / len(rows))
    return best


def looks_like_text(summary: str) -> bool:
    """At least three words of letters, and more letters than punctuation: not a run of '#', ':' and '.'."""
    words = re.findall(r"[A-Za-z]{2,}", summary.replace("#Person1#", " ").replace("#Person2#", " "))
    letters = sum(c.isalpha() for c in summary)
    return len(words) >= 3 and letters > sum(not c.isalnum() and not c.isspace() for c in summary)


def story_checks(frame: pd.DataFrame, train_summaries: Sequence[str], rouge=None) -> dict[str, tuple[bool, str]]:
    """What a results file must show for the lab's story to be true, each check with its measured numbers.

    The fine-tuned models summarize their input (>= 90% distinct summaries over the distinct test dialogues, and each
    beats the best constant summary on ROUGE-1, ROUGE-2 and ROUGE-L); the original model writes text (>= 90% of its
    outputs); ROUGE-1 ranks instruct > PEFT > original; PEFT recovers >= 80% of full fine-tuning's ROUGE-1 gain.
    """
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
    ranked = r1["instruct"] > r1["peft"] > r1["original"]
    checks["ROUGE-1: instruct > PEFT > original"] = (
        ranked,
        f"{r1['instruct']:.4f} > {r1['peft']:.4f} > {r1['original']:.4f}",
    )
    gain = r1["instruct"] - r1["original"]
    recovered = (r1["peft"] - r1["original"]) / gain if gain > 0 else float("nan")
    checks["PEFT recovers >= 80% of the full fine-tune's ROUGE-1 gain"] = (recovered >= 0.8, f"{recovered:.0%}")
    return checks


# --- Three views of the same predictions --------------------------------------------------------------------------

ROUGE_VIEWS = ("course-comparable", "sentence-split", "multi-reference")
ROUGE_VIEWS_EXPLAINED = (
    "**Course-comparable** scores every test row (each dialogue appears 3 times, once per human reference) with "
    "stemming and no sentence splitting, as the course did, so rougeLsum is just rougeL; **sentence-split** puts a "
    "newline between sentences (as the Hugging Face summarization example does), which lets rougeLsum match "
    "sentences in any order and changes nothing else. **Multi-reference** scores each dialogue once, against its "
    "best-matching reference per metric, so it is higher than the course's average over references: the three views "
    "measure the same summaries, so compare models within one view, never numbers across views."
)

# "Mr. Smith" is not the end of a sentence; compared in lower case, without the final period
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "prof", "jr", "sr", "vs", "mt", "e.g", "i.e"})
# end punctuation (and closing quotes/brackets), whitespace, then what can start a sentence: capital, #Person1#, digit
_SENTENCE_END = re.compile(r"([.!?]+[\"')\]]*)\s+(?=[\"'(\[]?[A-Z#0-9])")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences offline (a regex stand-in for nltk.sent_tokenize, which needs downloaded data)."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        punct = match.group(1)
        if punct.startswith(".") and not punct.startswith(".."):
            before = text[start : match.start(1)].split()
            if before and before[-1].lstrip("(\"'").lower() in _ABBREVIATIONS:
                continue
        sentence = text[start : match.end(1)].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def rouge_course_comparable(
    predictions: Sequence[str], references: Sequence[str], rouge: evaluate.EvaluationModule | None = None
) -> dict[str, float]:
    """The course's numbers: per row, stemming, no sentence splitting, mean F-measure (same as `compute_rouge`)."""
    return compute_rouge(predictions, references, rouge=rouge)


def rouge_sentence_split(
    predictions: Sequence[str], references: Sequence[str], rouge: evaluate.EvaluationModule | None = None
) -> dict[str, float]:
    """Mean ROUGE with a newline between sentences, as the HF summarization example does (only rougeLsum changes)."""

    def split(text: str) -> str:
        return "\n".join(split_sentences(text))

    return compute_rouge([split(p) for p in predictions], [split(r) for r in references], rouge=rouge)


def rouge_multi_reference(
    predictions_by_dialogue: list[str], references_by_dialogue: list[list[str]]
) -> dict[str, float]:
    """Per dialogue the best F-measure over its references (per metric), averaged over dialogues."""
    from rouge_score import rouge_scorer

    predictions, references = list(predictions_by_dialogue), [list(r) for r in references_by_dialogue]
    if len(predictions) != len(references):
        raise LabError(
            f"{len(predictions)} predictions but references for {len(references)} dialogues",
            "pass one prediction and one list of references per dialogue",
        )
    if not predictions:
        raise LabError("no predictions to score", "pass at least one dialogue")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise LabError(f"dialogue #{empty[0]} has no references", "pass at least one reference per dialogue")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    # score_multi: for each metric, the reference with the highest F-measure (what evaluate does for lists of refs)
    best = [scorer.score_multi(refs, pred) for pred, refs in zip(predictions, references)]
    return {k: float(sum(b[k].fmeasure for b in best) / len(best)) for k in ROUGE_KEYS}


_ID = re.compile(r"^(.+)_(\d+)$")


def dialogue_groups(frame: pd.DataFrame) -> list[list[int]]:
    """Row positions per dialogue, from ids like `test_<n>_<j>`; without `id`, consecutive rows in threes."""
    n = len(frame)
    if n == 0:
        raise LabError("the results frame has no rows", "read a results file with read_results_file first")
    if "id" not in frame.columns:
        if n % 3:
            raise LabError(
                f"the results frame has no `id` column and {n} rows (not a multiple of 3), so its rows cannot be "
                "grouped by dialogue",
                "multi-reference scoring needs an `id` column (test_<dialogue>_<reference>): regenerate the results "
                "file, or add the DialogSum test split's `id` column in the same row order",
            )
        return [list(range(i, i + 3)) for i in range(0, n, 3)]
    groups: dict[str, list[int]] = {}
    for pos, value in enumerate(frame["id"].astype(str)):
        match = _ID.match(value.strip())
        if not match:
            raise LabError(
                f"row {pos} has id {value!r}, not of the form <dialogue>_<reference> (e.g. test_0_1)",
                "use the DialogSum test split's ids",
            )
        groups.setdefault(match.group(1), []).append(pos)
    return list(groups.values())


def rouge_views(frame: pd.DataFrame, model_columns: tuple[str, ...] = RESULTS_COLUMNS[1:]) -> pd.DataFrame:
    """A table of ROUGE for each model (rows) under the three views (column level 0) and per metric (level 1)."""
    import pandas as pd

    refs = frame["human_baseline_summaries"].tolist()
    groups = dialogue_groups(frame)
    refs_by_dialogue = [[refs[i] for i in g] for g in groups]
    rows = {}
    for column in model_columns:
        preds = frame[column].tolist()
        disagree = sum(len({preds[i] for i in g}) > 1 for g in groups)
        if disagree:
            warnings.warn(
                f"{column}: {disagree} of {len(groups)} dialogues have different summaries on their rows; "
                "multi-reference scoring uses each dialogue's first row",
                stacklevel=2,
            )
        views = {
            "course-comparable": rouge_course_comparable(preds, refs),
            "sentence-split": rouge_sentence_split(preds, refs),
            "multi-reference": rouge_multi_reference([preds[g[0]] for g in groups], refs_by_dialogue),
        }
        rows[column.replace("_model_summaries", "")] = {(v, k): s[k] for v, s in views.items() for k in ROUGE_KEYS}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["view", "metric"])
    table.index.name = "model"
    return table.round(4)
