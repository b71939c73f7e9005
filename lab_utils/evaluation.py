"""Generating summaries and scoring them with ROUGE; the results file over the full test set."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .errors import LabError

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
RESULTS_COLUMNS = (
    "human_baseline_summaries",
    "original_model_summaries",
    "instruct_model_summaries",
    "peft_model_summaries",
)


def generation_kwargs(settings) -> dict:
    """Greedy decoding settings for this profile (the course: greedy, up to 200 new tokens)."""
    kwargs = {"max_new_tokens": settings.max_new_tokens, "num_beams": 1, "do_sample": False}
    if settings.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = settings.no_repeat_ngram_size
    return kwargs


def _check_dialogues(dialogues) -> list[str]:
    if isinstance(dialogues, str):
        dialogues = [dialogues]
    dialogues = list(dialogues)
    for i, d in enumerate(dialogues):
        if not isinstance(d, str):
            raise LabError(f"dialogue #{i} is a {type(d).__name__}, not a string", "pass dialogue text (str)")
        if not d.strip():
            raise LabError(f"dialogue #{i} is empty", "pass a non-empty dialogue")
    return dialogues


def summarize(
    model,
    tokenizer,
    dialogues,
    gen_kwargs: dict,
    batch_size: int = 8,
    max_source_length: int = 512,
    progress: bool = True,
    desc: str = "Summarizing",
) -> list[str]:
    """Summarize dialogues with the instruction prompt: each distinct dialogue once, in length-sorted batches."""
    from tqdm.auto import tqdm

    from .data import build_prompt

    dialogues = _check_dialogues(dialogues)
    distinct = list(dict.fromkeys(dialogues))  # the test split repeats every dialogue 3 times
    prompts = [build_prompt(d) for d in distinct]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True).input_ids]
    too_long = sum(n > max_source_length for n in lengths)
    if too_long:
        warnings.warn(
            f"{too_long} of {len(prompts)} prompts exceed {max_source_length} tokens and were truncated "
            "(the model cannot read past its input limit)",
            stacklevel=2,
        )
    # sorted by length, so each batch pads little; outputs are put back in the original order
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    summaries: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [prompts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_source_length,
            ).to(device)
            out = model.generate(**enc, **gen_kwargs)
            for i, text in zip(idx, tokenizer.batch_decode(out, skip_special_tokens=True)):
                summaries[i] = text.strip()
    model.train(was_training)
    by_dialogue = dict(zip(distinct, summaries))
    return [by_dialogue[d] for d in dialogues]


class OfflineRouge:
    """`evaluate`'s rouge computed locally with `rouge_score` (the same package `evaluate` wraps)."""

    def compute(
        self, predictions, references, use_stemmer: bool = True, use_aggregator: bool = False, rouge_types=ROUGE_KEYS
    ):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
        scores = [scorer.score(ref, pred) for ref, pred in zip(references, predictions)]
        return {k: [s[k].fmeasure for s in scores] for k in rouge_types}


def load_rouge(hub: bool | None = None):
    """`evaluate.load("rouge")` when the Hub answers, else the same metric computed offline."""
    from .config import hub_reachable

    if hub is None:
        hub = hub_reachable()
    if hub:
        try:
            import evaluate

            return evaluate.load("rouge")
        except Exception as exc:  # evaluate raises many types when the Hub misbehaves
            print(f"evaluate.load('rouge') failed ({exc}); using the offline rouge_score path")
    return OfflineRouge()


def compute_rouge(predictions, references, rouge=None) -> dict[str, float]:
    """Mean ROUGE F-measure per metric (stemming on), as the course reported it."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise LabError(
            f"{len(predictions)} predictions but {len(references)} references", "pass one prediction per reference"
        )
    if not predictions:
        raise LabError("no predictions to score", "pass at least one prediction")
    rouge = rouge or OfflineRouge()
    # use_aggregator=False + our mean: evaluate's aggregator bootstraps, which is not exactly the mean
    per_row = rouge.compute(
        predictions=predictions,
        references=references,
        use_stemmer=True,
        use_aggregator=False,
        rouge_types=list(ROUGE_KEYS),
    )
    return {k: float(sum(per_row[k]) / len(per_row[k])) for k in ROUGE_KEYS}


def improvement(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
    """Absolute improvement per metric in percentage points (the course's `new - old`, times 100)."""
    return {k: 100.0 * (new[k] - old[k]) for k in ROUGE_KEYS}


def show_improvement(new: dict[str, float], old: dict[str, float], label: str) -> None:
    """Print the course's improvement lines, e.g. `rouge1: 18.82%`."""
    print(f"Absolute percentage improvement of {label}:")
    for k, v in improvement(new, old).items():
        print(f"  {k}: {v:.2f}%")


def rouge_table(scores: dict[str, dict[str, float]]):
    """A DataFrame: one row per model, one column per ROUGE metric."""
    import pandas as pd

    return pd.DataFrame.from_dict(scores, orient="index")[list(ROUGE_KEYS)].round(4)


def read_results_file(path: str | Path, columns=RESULTS_COLUMNS):
    """Read a results CSV and check it has the course's columns and no missing summaries."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise LabError(f"results file {path} does not exist", "pull it from S3 or run the instructor command")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise LabError(
            f"results file {path} lacks column(s) {', '.join(missing)}",
            f"a results file needs the columns {', '.join(columns)}",
        )
    for c in columns:
        if (frame[c].str.len() == 0).any():
            n = int((frame[c].str.len() == 0).sum())
            raise LabError(
                f"results file {path}: column {c} has {n} empty cell(s)",
                "columns must all have one summary per row; regenerate the file",
            )
    return frame


def write_results_file(path: str | Path, columns: dict[str, list[str]], extra: dict[str, list] | None = None) -> Path:
    """Write the results CSV atomically (a crash never leaves a half-written file under the final name)."""
    import pandas as pd

    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise LabError(f"results columns have different lengths: {lengths}", "pass one summary per test row")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({**(extra or {}), **columns})
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def score_results_file(frame, model_columns=RESULTS_COLUMNS[1:], rouge=None) -> dict[str, dict[str, float]]:
    """ROUGE of each model column of a results file against `human_baseline_summaries`."""
    refs = frame["human_baseline_summaries"].tolist()
    return {
        c.replace("_model_summaries", ""): compute_rouge(frame[c].tolist(), refs, rouge=rouge) for c in model_columns
    }
