"""Generating summaries and scoring them with ROUGE; the results file over the full test set."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import LabError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import evaluate
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from .config import Settings

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
RESULTS_COLUMNS = (
    "human_baseline_summaries",
    "original_model_summaries",
    "instruct_model_summaries",
    "peft_model_summaries",
)


def generation_kwargs(settings: Settings) -> dict:
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
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dialogues: str | Sequence[str],
    gen_kwargs: dict,
    batch_size: int = 8,
    max_source_length: int = 512,
    progress: bool = True,
    desc: str = "Summarizing",
    cache: str | Path | None = None,
) -> list[str]:
    """Summarize dialogues with the instruction prompt: each distinct dialogue once, in length-sorted batches, each
    batch encoded in chunks of similar length (`encoder_chunks`) under `torch.inference_mode()`.

    With `cache` (a .jsonl file), every finished batch is appended to it; run again after a crash, the finished
    batches are read back and only the rest is generated. Batches are the same as in an uninterrupted run, so the
    summaries are identical too.
    """
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
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    done: dict[int, list[str]] = {}
    if cache is not None:
        from .models import fingerprint

        # the cache is valid only for the same prompts, model weights and generation settings
        # (and the same way of encoding: chunks of similar length, whose last bits may differ from one batch pass)
        settings = [batch_size, max_source_length, sorted(gen_kwargs.items()), "encoder-chunks"]
        key = json.dumps([prompts, *settings, fingerprint(model)])
        key = hashlib.sha256(key.encode()).hexdigest()[:16]
        done = _open_generation_cache(Path(cache), key, [len(b) for b in batches])
        if done:
            print(f"{desc}: resuming, {len(done)} of {len(batches)} batches already in {cache}")
        sink = open(cache, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally below
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        _generate_batches(
            model,
            tokenizer,
            prompts,
            batches,
            done,
            summaries,
            gen_kwargs,
            max_source_length,
            device,
            tqdm(total=len(batches), desc=desc, disable=not progress, unit="batch"),
            (lambda b, texts: _append_batch(sink, key, b, texts)) if cache is not None else None,
        )
    finally:
        if cache is not None:
            sink.close()
        model.train(was_training)
    by_dialogue = dict(zip(distinct, summaries))
    return [by_dialogue[d] for d in dialogues]


def _generate_batches(
    model, tokenizer, prompts, batches, done, summaries, gen_kwargs, max_source_length, device, bar, on_batch
) -> None:
    with torch.inference_mode(), bar:
        for b, idx in enumerate(batches):
            if b in done:
                texts = done[b]
            else:
                enc = tokenizer(
                    [prompts[i] for i in idx],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=max_source_length,
                ).to(device)
                out = model.generate(**_encoded_inputs(model, tokenizer, enc), **gen_kwargs)
                texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
                if on_batch is not None:
                    on_batch(b, texts)
            for i, text in zip(idx, texts):
                summaries[i] = text
            bar.update(1)


ENCODE_MAX_CHUNK = 8  # prompts per encoder pass at most
ENCODE_MAX_PADDING = 0.1  # a chunk grows while its padding stays under this share of its tokens


def encoder_chunks(lengths: Sequence[int]) -> list[range]:
    """Split a batch sorted by decreasing prompt length into chunks whose padding stays under ENCODE_MAX_PADDING.

    A batch is padded to its longest prompt, and a test set's dialogues differ a lot in length (the first 16 of
    DialogSum's test split: 125 to 489 tokens), so encoding a batch at once spends about half of the encoder's work on
    padding (and more of its attention); encoding it in chunks of similar length spends almost none.
    """
    chunks, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and end - start < ENCODE_MAX_CHUNK:
            longest, total = lengths[start], sum(lengths[start : end + 1])
            if longest * (end + 1 - start) > (1 + ENCODE_MAX_PADDING) * total:
                break
            end += 1
        chunks.append(range(start, end))
        start = end
    return chunks


def _encoded_inputs(model, tokenizer, enc) -> dict:
    """`generate`'s inputs with the encoder already run chunk by chunk (see `encoder_chunks`): each chunk is padded to
    its own longest prompt, then the outputs are laid out at the batch's length; the padding stays masked."""
    from transformers.modeling_outputs import BaseModelOutput

    lengths = enc["attention_mask"].sum(dim=1).tolist()
    if (
        not hasattr(model, "get_encoder")
        or tokenizer.padding_side != "right"
        or lengths != sorted(lengths, reverse=True)
    ):
        return dict(enc)  # not an encoder-decoder, or not the layout assumed here: generate encodes the batch
    encoder = model.get_encoder()
    hidden = None
    for chunk in encoder_chunks(lengths):
        width = lengths[chunk.start]
        rows = slice(chunk.start, chunk.stop)
        out = encoder(input_ids=enc["input_ids"][rows, :width], attention_mask=enc["attention_mask"][rows, :width])
        states = out.last_hidden_state
        if hidden is None:
            hidden = states.new_zeros((len(lengths), enc["input_ids"].shape[1], states.shape[-1]))
        hidden[rows, :width] = states
    return {"encoder_outputs": BaseModelOutput(last_hidden_state=hidden), "attention_mask": enc["attention_mask"]}


def _open_generation_cache(path: Path, key: str, sizes: list[int]) -> dict[int, list[str]]:
    """Finished batches from a generation cache; a cache of other inputs, or a torn last line, is discarded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        path.write_text("")
        return {}
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]  # a kill mid-write leaves a partial last line: drop it
    done: dict[int, list[str]] = {}
    for line in complete.decode("utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("key") != key:
            path.write_text("")  # written for other prompts, model or settings: start over
            return {}
        b, texts = entry["batch"], entry["summaries"]
        if b < len(sizes) and len(texts) == sizes[b]:
            done[b] = texts
    if len(complete) != len(raw):
        path.write_bytes(complete)
    return done


def _append_batch(sink, key: str, batch: int, texts: list[str]) -> None:
    sink.write(json.dumps({"key": key, "batch": batch, "summaries": texts}) + "\n")
    sink.flush()
    os.fsync(sink.fileno())  # on disk before the next batch starts: a kill loses at most the batch in progress


class OfflineRouge:
    """`evaluate`'s rouge computed locally with `rouge_score` (the same package `evaluate` wraps)."""

    def compute(
        self, predictions, references, use_stemmer: bool = True, use_aggregator: bool = False, rouge_types=ROUGE_KEYS
    ):
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
        scores = [scorer.score(ref, pred) for ref, pred in zip(references, predictions)]
        return {k: [s[k].fmeasure for s in scores] for k in rouge_types}


def load_rouge(hub: bool | None = None) -> OfflineRouge | evaluate.EvaluationModule:
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


def compute_rouge(
    predictions: Sequence[str], references: Sequence[str], rouge: OfflineRouge | None = None
) -> dict[str, float]:
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


def rouge_table(scores: dict[str, dict[str, float]]) -> pd.DataFrame:
    """A DataFrame: one row per model, one column per ROUGE metric."""
    import pandas as pd

    return pd.DataFrame.from_dict(scores, orient="index")[list(ROUGE_KEYS)].round(4)


def read_results_file(path: str | Path, columns: tuple[str, ...] = RESULTS_COLUMNS) -> pd.DataFrame:
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


def score_results_file(
    frame: pd.DataFrame, model_columns: Sequence[str] = RESULTS_COLUMNS[1:], rouge: OfflineRouge | None = None
) -> dict[str, dict[str, float]]:
    """ROUGE of each model column of a results file against `human_baseline_summaries`."""
    refs = frame["human_baseline_summaries"].tolist()
    return {
        c.replace("_model_summaries", ""): compute_rouge(frame[c].tolist(), refs, rouge=rouge) for c in model_columns
    }


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
    predictions: Sequence[str], references: Sequence[str], rouge: OfflineRouge | None = None
) -> dict[str, float]:
    """The course's numbers: per row, stemming, no sentence splitting, mean F-measure (same as `compute_rouge`)."""
    return compute_rouge(predictions, references, rouge=rouge)


def rouge_sentence_split(
    predictions: Sequence[str], references: Sequence[str], rouge: OfflineRouge | None = None
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
