"""Every way a user opens a checkpoint gives the ITA pipeline, and `ignore_labels` behaves as in transformers."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForTokenClassification, TokenClassificationPipeline, pipeline

from helpers import TWEETS, tiny_ita_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_tokenizer):
    folder = tmp_path_factory.mktemp("tasks") / "ckpt"
    model = tiny_ita_model(minilm_tokenizer, seed=7)
    model.save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("task", [None, "multimodal-ner", "token-classification", "ner"])
def test_every_task_name_opens_the_ita_pipeline(checkpoint, task):
    args = (task,) if task else ()
    ner = pipeline(*args, model=str(checkpoint), trust_remote_code=True)
    assert type(ner).__name__ == "MultimodalNERPipeline"
    result = ner(TWEETS[0])
    if task in ("token-classification", "ner"):
        # The Hub's snippet gets TokenClassificationPipeline's default answer: one dict per word not tagged O.
        assert result and all({"entity", "index", "word", "start", "end", "score"} <= set(e) for e in result)
    else:
        assert all({"entity_group", "word", "start", "end", "score"} <= set(e) for e in result)


def test_ignore_labels_filters_words_and_groups_like_token_classification(checkpoint):
    ner = pipeline("multimodal-ner", model=str(checkpoint), trust_remote_code=True)
    words = [ner(text, aggregation_strategy="none", ignore_labels=[]) for text in TWEETS]
    assert all(len(tagged) == len(ner.pre_tokenizer.pre_tokenize_str(text)) for tagged, text in zip(words, TWEETS))
    labels = {e["entity"] for tagged in words for e in tagged}
    assert "O" in labels and len(labels) > 1
    for ignore in (["O"], ["O", "B-PER"], []):
        filtered = [ner(text, aggregation_strategy="none", ignore_labels=ignore) for text in TWEETS]
        assert filtered == [[e for e in tagged if e["entity"] not in ignore] for tagged in words]
    assert [ner(text, aggregation_strategy="none") for text in TWEETS] == [
        [e for e in tagged if e["entity"] != "O"] for tagged in words
    ]

    # Grouping: transformers' own `group_entities` on our per-word output gives our spans (O runs included).
    class Grouper:  # TokenClassificationPipeline's grouping methods, on our tokenizer
        get_tag = TokenClassificationPipeline.get_tag
        group_sub_entities = TokenClassificationPipeline.group_sub_entities
        group_entities = TokenClassificationPipeline.group_entities
        tokenizer = ner.tokenizer

    for text, tagged in zip(TWEETS, words):
        ours = ner(text, ignore_labels=[])
        theirs = Grouper().group_entities([dict(e) for e in tagged])
        assert [(g["entity_group"], g["start"], g["end"]) for g in ours] == [
            (g["entity_group"], g["start"], g["end"]) for g in theirs
        ]
        assert [g["score"] for g in ours] == pytest.approx([float(g["score"]) for g in theirs])
        assert [g["word"] for g in ours] == [text[g["start"] : g["end"]] for g in theirs]


def test_bad_ignore_labels_is_a_clear_error(checkpoint):
    ner = pipeline(model=str(checkpoint), trust_remote_code=True)
    with pytest.raises(TypeError, match="ignore_labels"):
        ner(TWEETS[0], ignore_labels="O")


def test_a_checkpoint_without_crf_scores_is_refused_naming_the_file(checkpoint, tmp_path):
    broken = tmp_path / "no-crf"
    broken.mkdir()
    for path in checkpoint.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    weights = load_file(broken / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("crf.")},
        broken / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(ValueError, match=r"no-crf/model\.safetensors does not hold the CRF.*crf\.transitions missing"):
        AutoModelForTokenClassification.from_pretrained(broken, trust_remote_code=True)


def test_a_checkpoint_with_malformed_crf_scores_is_refused(checkpoint, tmp_path):
    broken = tmp_path / "bad-crf"
    broken.mkdir()
    for path in checkpoint.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    weights = load_file(broken / "model.safetensors")
    weights["crf.transitions"] = torch.zeros(3, 3)
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.safetensors does not hold the CRF.*crf\.transitions \(3, 3\)"):
        AutoModelForTokenClassification.from_pretrained(broken, trust_remote_code=True)
