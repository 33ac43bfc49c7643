"""ITAConfig: label validation, encoder sub-config, settings validation and save/load round trips."""

import json

import pytest

from configuration_ita import DEFAULT_LABELS, ITAConfig
from helpers import T15_LABELS, tiny_encoder_config


@pytest.mark.parametrize(
    "labels,message",
    [
        (["B-PER", "I-PER"], "no 'O' tag"),
        (["O", "B_PER", "I-PER"], "Malformed BIO"),
        (["O", "PER"], "Malformed BIO"),
        (["O", "S-PER", "B-PER"], "Malformed BIO"),
        (["O", "B-PER", "B-PER"], "more than once"),
        (["O", "B-"], "Malformed BIO"),
    ],
)
def test_bad_label_sets_are_clear_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        ITAConfig(labels=labels)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cva_temperature": 0}, "cva_temperature"),
        ({"cva_weight": 1.5}, "cva_weight"),
        ({"cva_kl_on": "js"}, "cva_kl_on"),
        ({"word_dropout": 1.0}, "word_dropout"),
        ({"max_context_tokens": -1}, "max_context_tokens"),
        ({"encoder_config": {"hidden_size": 8}}, "model_type"),
        ({"labels": ["O"], "id2label": {0: "O"}}, "either"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ITAConfig(**kwargs)


def test_defaults_and_label_maps():
    config = ITAConfig()
    assert config.model_type == "ita"
    assert config.labels == DEFAULT_LABELS and config.num_labels == 9
    assert config.encoder_config.model_type == "bert"
    config = ITAConfig(labels=T15_LABELS)
    assert config.id2label[7] == "B-OTHER" and config.label2id["I-OTHER"] == 8


@pytest.mark.parametrize("kind", ["bert", "xlm-roberta", "deberta-v2"])
def test_save_load_round_trip_is_unchanged(tmp_path, kind):
    encoder = tiny_encoder_config(kind, vocab_size=99)
    config = ITAConfig(
        encoder_config=encoder,
        labels=T15_LABELS,
        cva_temperature=4.0,
        cva_weight=0.3,
        cva_kl_on="emission_softmax",
        word_dropout=0.2,
        crf_bio_constraints=False,
        context_order=["ocr", "caption"],
        context_separator=" ; ",
        max_context_tokens=32,
        context_max_words=20,
        context_piece_separators={"objects": " ; "},
        aligners=[{"type": "precomputed", "files": [{"name": "BLIP2_15.txt", "sha256": "0" * 64, "source": "BLIP-2"}]}],
    )
    assert (config.hidden_size, config.vocab_size, config.max_position_embeddings) == (32, 99, 128)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["encoder_config"]["model_type"] == kind and saved["model_type"] == "ita"
    reloaded = ITAConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert type(reloaded.encoder_config) is type(encoder)
    assert reloaded.labels == T15_LABELS and reloaded.id2label[1] == "B-PER"


def test_size_setters_reach_the_encoder():
    config = ITAConfig(encoder_config=tiny_encoder_config("bert", vocab_size=50))
    config.vocab_size = 60
    assert config.encoder_config.vocab_size == 60
