"""`ita_seqeval`: ITA's entity-level NER metric as an `evaluate` module (docs/method.md §4).

This file is the one implementation of the metric. `evaluate.load(<path of this file>)` copies it into the
modules cache and imports it from there, so it imports only `evaluate`, `datasets` and `seqeval`, and loads
offline; `ita_training.metrics.METRIC_PATH` is its path inside the installed package.
"""

import warnings

import datasets
import evaluate
from seqeval.metrics import classification_report
from seqeval.scheme import IOB2

_DESCRIPTION = """\
Entity-level precision, recall and F1 of BIO-tagged sequences, as ITA reports them. The headline numbers are
conlleval-compatible: seqeval's default mode, in which an `I-X` that follows `O` (or another type) starts an
entity, exactly as conlleval counts it. Strict IOB2 scores, in which such a tag starts nothing, are reported
beside them. Everything is computed locally with seqeval: no script is fetched from the Hub.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[str]]`): predicted BIO tags, one list per sentence.
    references (`list[list[str]]`): gold BIO tags, one list per sentence, each as long as its prediction.

Returns:
    A flat dict: `precision`, `recall`, `f1` (micro, seqeval default mode), `number` (gold entities),
    `strict_precision`, `strict_recall`, `strict_f1` (micro, strict IOB2), and `<TYPE>_precision`,
    `<TYPE>_recall`, `<TYPE>_f1`, `<TYPE>_number` for every type in the gold or predicted tags. Scores are
    fractions in [0, 1]; a system that predicts no entity scores 0, not NaN.

Example:

    >>> metric = evaluate.load("path/to/ita_training/ita_seqeval.py")
    >>> metric.compute(predictions=[["B-PER", "O", "B-LOC"]], references=[["B-PER", "O", "I-LOC"]])["f1"]
    1.0
"""

_CITATION = """\
@misc{seqeval,
    title = {{seqeval}: A Python framework for sequence labeling evaluation},
    url = {https://github.com/chakki-works/seqeval},
    author = {Hiroki Nakayama},
    year = {2018},
}
"""


def _report(references: list[list[str]], predictions: list[list[str]], **mode) -> dict:
    # zero_division=0: a system that predicts no entity has precision 0, not a warning and NaN. numpy warns
    # about the empty mean inside seqeval's weighted average when there is no entity at all; that average
    # is not reported.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return classification_report(references, predictions, output_dict=True, zero_division=0, **mode)


class ItaSeqeval(evaluate.Metric):
    """Micro precision/recall/F1 (conlleval-compatible), the same per entity type, and strict IOB2 micro scores."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("string")),
                    "references": datasets.List(datasets.Value("string")),
                }
            ),
            codebase_urls=["https://github.com/chakki-works/seqeval"],
            reference_urls=["https://www.clips.uantwerpen.be/conll2000/chunking/output.html"],
        )

    def _compute(self, predictions: list[list[str]], references: list[list[str]]) -> dict:
        for i, (gold, predicted) in enumerate(zip(references, predictions)):
            if len(gold) != len(predicted):
                raise ValueError(f"Sentence {i} has {len(gold)} gold tags but {len(predicted)} predicted tags.")
        references, predictions = [list(tags) for tags in references], [list(tags) for tags in predictions]
        default = _report(references, predictions)
        strict = _report(references, predictions, mode="strict", scheme=IOB2)
        micro, strict_micro = default["micro avg"], strict["micro avg"]
        metrics = {
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]),
            "number": int(micro["support"]),
            "strict_precision": float(strict_micro["precision"]),
            "strict_recall": float(strict_micro["recall"]),
            "strict_f1": float(strict_micro["f1-score"]),
        }
        for entity_type, scores in default.items():
            if entity_type.endswith(" avg"):
                continue
            metrics[f"{entity_type}_precision"] = float(scores["precision"])
            metrics[f"{entity_type}_recall"] = float(scores["recall"])
            metrics[f"{entity_type}_f1"] = float(scores["f1-score"])
            metrics[f"{entity_type}_number"] = int(scores["support"])
        return metrics
