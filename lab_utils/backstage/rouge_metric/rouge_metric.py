"""ROUGE as an `evaluate` metric that loads without the Hub: the offline profile's `evaluate.load(...)` target."""

# The course calls evaluate.load("rouge"), whose script lives on the Hugging Face Hub. Offline,
# evaluate.load("lab_utils/backstage/rouge_metric") loads this file: the same computation (Google's rouge_score, the
# same inputs and options), so the notebook's cells are the same in both profiles (tests/test_evaluation.py checks
# it against rouge_score).

from functools import cache

import datasets
import evaluate
from rouge_score import rouge_scorer, scoring, tokenizers

_DESCRIPTION = "ROUGE-1/2/L/Lsum F-measures of predictions against references (Google's rouge_score)."
_KWARGS = """
predictions: list of strings; references: list of strings, or list of lists of strings (several references: the
best-scoring one counts); rouge_types (default rouge1, rouge2, rougeL, rougeLsum); use_aggregator (default True:
bootstrap aggregate, its middle F-measure; False: one F-measure per prediction); use_stemmer (default False).
"""


class CachedTokenizer(tokenizers.Tokenizer):
    """rouge_score's tokenizer, remembering each text's tokens (stemming is most of the work)."""

    # the same references are scored again and again: the best constant summary scores ~14 candidates against 1,500

    def __init__(self, use_stemmer: bool):
        self._tokenize = cache(tokenizers.DefaultTokenizer(use_stemmer=use_stemmer).tokenize)

    def tokenize(self, text):
        return self._tokenize(text)


_TOKENIZERS = {stem: CachedTokenizer(stem) for stem in (False, True)}


class RougeMetric(evaluate.Metric):
    """ROUGE F-measures, as the Hub's `rouge` metric computes them."""

    def _info(self):
        text = datasets.Value("string", id="sequence")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries (2004)",
            inputs_description=_KWARGS,
            features=[
                datasets.Features({"predictions": text, "references": datasets.Sequence(text)}),
                datasets.Features({"predictions": text, "references": text}),
            ],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False):
        rouge_types = list(rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"])
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, tokenizer=_TOKENIZERS[bool(use_stemmer)])
        multi = bool(references) and isinstance(references[0], list)
        score_one = scorer.score_multi if multi else scorer.score
        scores = [score_one(ref, pred) for ref, pred in zip(references, predictions)]
        if use_aggregator:
            aggregator = scoring.BootstrapAggregator()
            for score in scores:
                aggregator.add_scores(score)
            return {key: value.mid.fmeasure for key, value in aggregator.aggregate().items()}
        return {key: [score[key].fmeasure for score in scores] for key in rouge_types}
