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
    from collections.abc import Callable, Sequence

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
TOPIC_COLUMNS = ("human_baseline_topics", "peft_model_topics")


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
    if not dialogues:
        raise LabError("no dialogues to summarize", "pass at least one dialogue")
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
    settings: Settings,
    gen_kwargs: dict | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "Summarizing",
    cache: str | Path | None = None,
    prompt: Callable[[str], str] | None = None,
) -> list[str]:
    """Summarize dialogues with the instruction prompt, as the notebook and the instructor both do.

    Prompts are truncated at `settings.max_source_length` (as in training) and decoded with
    `generation_kwargs(settings)` unless `gen_kwargs` is given; each distinct dialogue is generated once, in
    length-sorted batches of `settings.eval_batch_size`, each batch encoded in chunks of similar length
    (`encoder_chunks`) under `torch.inference_mode()`.

    With `cache` (a .jsonl file), every finished batch is appended to it; run again after a crash, the finished
    batches are read back and only the rest is generated. Batches are the same as in an uninterrupted run, so the
    summaries are identical too. `prompt` replaces the summary prompt (the topic adapter's task).
    """
    from tqdm.auto import tqdm

    from .data import build_prompt

    prompt = prompt or build_prompt
    dialogues = _check_dialogues(dialogues)
    gen_kwargs = generation_kwargs(settings) if gen_kwargs is None else gen_kwargs
    batch_size = settings.eval_batch_size if batch_size is None else batch_size
    max_source_length = settings.max_source_length
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise LabError(f"batch_size={batch_size!r} must be a whole number of at least 1", "use e.g. batch_size=16")
    if gen_kwargs.get("max_new_tokens", 1) < 1:
        raise LabError(
            f"max_new_tokens={gen_kwargs['max_new_tokens']!r} must be at least 1", "set `LAB_MAX_NEW_TOKENS`"
        )
    distinct = list(dict.fromkeys(dialogues))  # the test split repeats every dialogue 3 times
    prompts = [prompt(d) for d in distinct]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True).input_ids]
    too_long = sum(n > max_source_length for n in lengths)
    if too_long:
        warnings.warn(
            f"{too_long} of {len(prompts)} prompts exceed {max_source_length} tokens and were truncated "
            "(the model cannot read past its input limit)",
            stacklevel=1,  # a fixed location: shown once per session, the same in every run of the notebook
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
        key_parts = [batch_size, max_source_length, sorted(gen_kwargs.items()), "encoder-chunks"]
        key = json.dumps([prompts, *key_parts, fingerprint(model)])
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
    for line in complete.decode("utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            b, texts, entry_key = entry["batch"], entry["summaries"], entry["key"]
            valid = isinstance(b, int) and isinstance(texts, list) and all(isinstance(t, str) for t in texts)
        except (ValueError, TypeError, KeyError):
            valid = False
        if not valid:  # damaged (not a torn last line: something else wrote here): keep it aside, start over
            aside = path.with_name(path.name + ".damaged")
            path.replace(aside)
            warnings.warn(
                f"the generation cache {path} had a damaged line; moved it to {aside}, generating again", stacklevel=3
            )
            path.write_text("")
            return {}
        if entry_key != key:
            path.write_text("")  # written for other prompts, model or settings: start over
            return {}
        if 0 <= b < len(sizes) and len(texts) == sizes[b]:
            done[b] = texts
    if len(complete) != len(raw):
        path.write_bytes(complete)
    return done


def _append_batch(sink, key: str, batch: int, texts: list[str]) -> None:
    sink.write(json.dumps({"key": key, "batch": batch, "summaries": texts}) + "\n")
    sink.flush()
    os.fsync(sink.fileno())  # on disk before the next batch starts: a kill loses at most the batch in progress


_LOCAL_ROUGE = None


def local_rouge() -> evaluate.EvaluationModule:
    """The offline profile's ROUGE metric (`lab_utils/backstage/rouge_metric`), loaded once with `evaluate.load`."""
    global _LOCAL_ROUGE
    if _LOCAL_ROUGE is None:
        import evaluate

        from .config import PROJECT_ROOT, profile_defaults

        _LOCAL_ROUGE = evaluate.load(str(PROJECT_ROOT / profile_defaults("offline")["rouge_metric"]))
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


def read_results_file(path: str | Path, columns: tuple[str, ...] = RESULTS_COLUMNS) -> pd.DataFrame:
    """Read a results CSV (the lab's, with `id`, or the course's, with an unnamed index column) and check it."""
    import pandas as pd

    path = Path(path)
    fix = "use the results file the instructor published (comma-separated UTF-8 CSV), or regenerate it"
    if not path.is_file():
        raise LabError(f"results file {path} does not exist", "pull it from S3 or run the instructor command")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LabError(f"results file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})", fix) from None
    except (ValueError, OSError) as exc:  # pandas' ParserError is a ValueError
        raise LabError(f"results file {path} cannot be read as CSV: {exc}", fix) from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        header = ",".join(frame.columns)
        hint = " (its header holds ';': it looks ';'-separated)" if len(frame.columns) == 1 and ";" in header else ""
        raise LabError(f"results file {path} lacks column(s) {', '.join(missing)}{hint}", fix)
    if frame.empty:
        raise LabError(f"results file {path} has a header but no rows", fix)
    for c in columns:
        if (frame[c].str.strip() == "").any():
            n = int((frame[c].str.strip() == "").sum())
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
    from collections import Counter

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
