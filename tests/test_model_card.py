"""The README model card: rendered offline from model_card.md, with metadata and numbers from the run."""

import socket
from unittest import mock

import pytest
import yaml
from huggingface_hub import ModelCard

from configuration_ita import ITAConfig
from ita_training.model_card import write_model_card

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
CAPTIONS = {"type": "precomputed", "precomputed": True, "paths": ["/data/captions/blip2/BLIP2_17.txt"], "format": "auto"}


def metrics(prefix: str, with_context: float, text_only: float) -> dict:
    result = {}
    for mode, f1 in (("with_context", with_context), ("text_only", text_only)):
        key = f"{prefix}_{mode}_"
        result.update({key + "precision": f1 + 0.01, key + "recall": f1 - 0.01, key + "f1": f1,
                       key + "strict_f1": f1 - 0.02, key + "number": 1351})
        for i, entity in enumerate(("LOC", "MISC", "ORG", "PER")):
            result.update({f"{key}{entity}_precision": 0.5, f"{key}{entity}_recall": 0.5,
                           f"{key}{entity}_f1": 0.6 + i / 10, f"{key}{entity}_number": 100})
    result[f"{prefix}_mean_f1"] = (with_context + text_only) / 2
    return result


@pytest.fixture
def card(tmp_path):
    config = ITAConfig(labels=LABELS, cva_temperature=2.0, cva_weight=0.5, max_context_tokens=64, aligners=[CAPTIONS])

    def no_network(*args, **kwargs):
        raise AssertionError("rendering the model card tried to open a network connection")

    with mock.patch.object(socket.socket, "connect", no_network):
        path = write_model_card(
            tmp_path, config=config, encoder="xlm-roberta-large", dataset_name="twitter2017-blip2",
            dataset_sizes={"train": 3373, "validation": 723, "test": 723}, context_columns=["caption"],
            hyperparameters={"learning_rate": 5e-6, "crf_learning_rate": 0.05, "cva": True, "seed": 42},
            eval_metrics=metrics("eval", 0.8812, 0.8733), test_metrics=metrics("test", 0.8975, 0.8911),
            model_id="me/ita-t17",
        )
    return path.read_text(encoding="utf-8")


def test_metadata_has_a_model_index_for_both_inference_modes(card):
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == "xlm-roberta-large" and metadata["library_name"] == "transformers"
    assert "multimodal-ner" in metadata["tags"]
    (entry,) = metadata["model-index"]
    found = {(r["dataset"]["name"], m["type"]): m["value"] for r in entry["results"] for m in r["metrics"]}
    assert found[("twitter2017-blip2 (with visual context)", "f1")] == pytest.approx(0.8975)
    assert found[("twitter2017-blip2 (text only)", "f1")] == pytest.approx(0.8911)
    assert found[("twitter2017-blip2 (text only)", "precision")] == pytest.approx(0.9011)
    assert [(r["dataset"]["config"], r["dataset"]["split"]) for r in entry["results"]] == [("with_context", "test"), ("text_only", "test")]
    # huggingface_hub reads it back as the same card data.
    assert ModelCard(card).data.eval_results[0].metric_value == pytest.approx(0.8975)


def test_body_lists_labels_context_sources_and_hyperparameters(card):
    assert "# ITA on twitter2017-blip2" in card
    assert "`B-PER`" in card and "`I-MISC`" in card and "LOC, MISC, ORG, PER" in card
    assert "caption, in the order caption → objects → ocr, joined with ` | `" in card
    assert "`precomputed` (precomputed, looked up by image id)" in card and "BLIP2_17.txt" in card
    assert "on, T = 2.0, λ = 0.5" in card
    assert "| crf_learning_rate | `0.05` |" in card
    assert "train 3373, validation 723, test 723 tweets" in card


def test_metric_tables_show_both_modes_in_percent(card):
    assert "| with visual context | 90.75 | 88.75 | 89.75 | 87.75 | 60.00 | 70.00 | 80.00 | 90.00 |" in card
    assert "| text only | 90.11 | 88.11 | 89.11 | 87.11 | 60.00 | 70.00 | 80.00 | 90.00 |" in card
    assert "| Inference mode | Precision | Recall | F1 | Strict IOB2 F1 | LOC F1 | MISC F1 | ORG F1 | PER F1 |" in card
    assert "| with visual context | 89.12 | 87.12 | 88.12 | 86.12 |" in card  # validation


def test_usage_snippets_limitations_and_citation(card):
    assert 'pipeline(model="me/ita-t17", trust_remote_code=True)' in card
    assert "python -m ita_onnx export me/ita-t17 onnx-model/" in card
    assert "## Limitations" in card and "@inproceedings{wang-etal-2022-ita" in card
    assert "{{" not in card and "{%" not in card
