"""Entity-level NER metrics, computed offline with seqeval (SPEC §4).

The headline numbers are conlleval-compatible: seqeval's default mode, in which an `I-X` that follows `O`
(or a different type) starts an entity, exactly as conlleval counts it. Strict IOB2 scores, in which such a
tag starts nothing, are reported beside them.
"""

import warnings
from typing import Sequence

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2


def _report(true_tags: list[list[str]], predicted_tags: list[list[str]], **mode) -> dict:
    # zero_division=0: a system that predicts no entity has precision 0, not a warning and NaN. numpy warns
    # about the empty mean inside seqeval's weighted average when there is no entity at all; that average
    # is not reported.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return classification_report(true_tags, predicted_tags, output_dict=True, zero_division=0, **mode)


def ner_metrics(true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision/recall/F1, the same per entity type, and strict IOB2 micro F1.

    Args:
        true_tags: gold BIO tags, one list per sentence.
        predicted_tags: predicted BIO tags, one list per sentence, each as long as its gold list.

    Returns:
        A flat dict: `precision`, `recall`, `f1`, `number` (gold entities), `strict_precision`,
        `strict_recall`, `strict_f1`, and `<TYPE>_precision`, `<TYPE>_recall`, `<TYPE>_f1`, `<TYPE>_number`
        for every type that occurs in the gold or predicted tags. Scores are fractions in [0, 1].

    Raises:
        ValueError: if the two lists, or any pair of sentences, differ in length.
    """
    true_tags = [list(sentence) for sentence in true_tags]
    predicted_tags = [list(sentence) for sentence in predicted_tags]
    if len(true_tags) != len(predicted_tags):
        raise ValueError(f"{len(true_tags)} gold sentences but {len(predicted_tags)} predicted ones.")
    for i, (gold, predicted) in enumerate(zip(true_tags, predicted_tags)):
        if len(gold) != len(predicted):
            raise ValueError(f"Sentence {i} has {len(gold)} gold tags but {len(predicted)} predicted tags.")

    default = _report(true_tags, predicted_tags)
    strict = _report(true_tags, predicted_tags, mode="strict", scheme=IOB2)
    micro, strict_micro = default["micro avg"], strict["micro avg"]
    metrics = {
        "precision": micro["precision"],
        "recall": micro["recall"],
        "f1": micro["f1-score"],
        "number": int(micro["support"]),
        "strict_precision": strict_micro["precision"],
        "strict_recall": strict_micro["recall"],
        "strict_f1": strict_micro["f1-score"],
    }
    for entity_type, scores in default.items():
        if entity_type.endswith(" avg"):
            continue
        metrics[f"{entity_type}_precision"] = scores["precision"]
        metrics[f"{entity_type}_recall"] = scores["recall"]
        metrics[f"{entity_type}_f1"] = scores["f1-score"]
        metrics[f"{entity_type}_number"] = int(scores["support"])
    return {key: float(value) if not key.endswith("number") else value for key, value in metrics.items()}
