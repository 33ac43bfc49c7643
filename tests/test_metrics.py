"""The `ita_seqeval` evaluate module: hand-computed cases and a conlleval re-implementation on many tags."""

import random

import pytest

from ita_training.metrics import load_ner_metric
from preprocess.readers import read_umt


@pytest.fixture(scope="module")
def metric():
    return load_ner_metric()


def test_i_after_o_starts_an_entity_in_default_mode_and_nothing_in_strict_mode(metric):
    gold = [["O", "I-MISC", "O", "B-PER"]]
    predicted = [["O", "B-MISC", "O", "B-PER"]]
    metrics = metric.compute(predictions=predicted, references=gold)
    # conlleval: the gold I-MISC after O is an entity at (1, 1), the same span as the predicted B-MISC.
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["number"]) == (1.0, 1.0, 1.0, 2)
    # strict IOB2: the gold I-MISC starts nothing, so the gold has only PER; the prediction has MISC and PER.
    assert metrics["strict_precision"] == pytest.approx(0.5)
    assert metrics["strict_recall"] == pytest.approx(1.0)
    assert metrics["strict_f1"] == pytest.approx(2 / 3)


def test_partial_span_and_wrong_start_count_as_errors_per_type(metric):
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["O", "I-ORG"]]
    metrics = metric.compute(predictions=predicted, references=gold)
    # Gold: PER(0-1), LOC(3), ORG(0-1). Predicted: PER(0), LOC(3), ORG(1). Only LOC matches.
    assert metrics["precision"] == pytest.approx(1 / 3)
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(1 / 3)
    assert (metrics["LOC_f1"], metrics["PER_f1"], metrics["ORG_f1"]) == (1.0, 0.0, 0.0)
    assert (metrics["LOC_number"], metrics["PER_number"], metrics["ORG_number"]) == (1, 1, 1)


def test_empty_predictions_score_zero_not_nan(metric):
    metrics = metric.compute(
        predictions=[["O", "O", "O"], ["O", "O"]], references=[["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
    )
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["strict_f1"]) == (0.0, 0.0, 0.0, 0.0)
    assert metrics["number"] == 2
    nothing = metric.compute(predictions=[["O", "O"]], references=[["O", "O"]])
    assert (nothing["precision"], nothing["recall"], nothing["f1"], nothing["number"]) == (0.0, 0.0, 0.0, 0)


def test_mismatched_lengths_are_an_error(metric):
    with pytest.raises(ValueError, match="Sentence 0 has 2 gold tags but 1 predicted"):
        metric.compute(predictions=[["O"]], references=[["O", "B-PER"]])
    # evaluate's own check, before the metric runs.
    with pytest.raises(ValueError, match=r"number of predictions \(2\) and references \(1\)"):
        metric.compute(predictions=[["O"], ["O"]], references=[["O"]])


def conlleval_chunks(tags: list[str]) -> set[tuple[str, int, int]]:
    """Chunks as conlleval.pl finds them (its startOfChunk/endOfChunk rules for IOB tags)."""
    chunks, start, current = set(), None, None
    for i, tag in enumerate(tags + ["O"]):
        prefix, kind = (tag.split("-", 1) + [""])[:2] if tag != "O" else ("O", "")
        starts = prefix == "B" or (prefix == "I" and kind != current)
        if current is not None and (prefix == "O" or starts):
            chunks.add((current, start, i - 1))
            current = None
        if starts:
            start, current = i, kind
    return chunks


def synthetic_gold(count: int = 1000) -> list[list[str]]:
    """Seeded BIO sequences of 3 to 30 tags with Twitter-2015's types, about 5% of spans starting with I-."""
    rng = random.Random(1)
    gold = []
    for _ in range(count):
        tags: list[str] = []
        while len(tags) < rng.randint(3, 30):
            if rng.random() < 0.7:
                tags.append("O")
                continue
            kind = rng.choice(["PER", "LOC", "ORG", "OTHER"])
            first = "I" if rng.random() < 0.05 else "B"
            tags += [f"{first}-{kind}"] + [f"I-{kind}"] * rng.choice([0, 0, 1, 2])
        gold.append(tags)
    return gold


@pytest.fixture(params=["synthetic", "twitter2015"])
def gold(request) -> list[list[str]]:
    """1000 gold tag sequences: seeded synthetic ones (always), and Twitter-2015 dev when the shared data is here."""
    if request.param == "synthetic":
        return synthetic_gold()
    shared_data = request.getfixturevalue("shared_data")
    return [tweet.tags for tweet in read_umt(shared_data / "twitter2015" / "valid.txt")]


def test_matches_a_conlleval_reimplementation(metric, gold):
    """Both tag sets have spans that start with I- (Twitter-2015 dev has 374); random corruptions exercise every
    chunk rule."""
    assert len(gold) == 1000
    assert any(tags[0].startswith("I-") or "O I-" in " ".join(tags) for tags in gold)
    types = sorted({tag[2:] for tags in gold for tag in tags if tag != "O"})
    rng = random.Random(0)
    predicted = [
        [
            rng.choice(["O", f"B-{rng.choice(types)}", f"I-{rng.choice(types)}"]) if rng.random() < 0.15 else tag
            for tag in tags
        ]
        for tags in gold
    ]
    true_chunks = {(s, *c) for s, tags in enumerate(gold) for c in conlleval_chunks(tags)}
    predicted_chunks = {(s, *c) for s, tags in enumerate(predicted) for c in conlleval_chunks(tags)}
    correct = len(true_chunks & predicted_chunks)
    precision, recall = correct / len(predicted_chunks), correct / len(true_chunks)
    metrics = metric.compute(predictions=predicted, references=gold)
    assert metrics["number"] == len(true_chunks) and 0.3 < recall < 0.95
    assert metrics["precision"] == pytest.approx(precision)
    assert metrics["recall"] == pytest.approx(recall)
    assert metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    for entity_type in types:
        typed = {c for c in true_chunks if c[1] == entity_type}
        assert metrics[f"{entity_type}_number"] == len(typed)
