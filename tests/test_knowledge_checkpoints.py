"""Checkpoints and knowledge end to end: tweets + PGIM-style knowledge (JSONL) → shards with a `knowledge` column →
`train.py --context_columns knowledge` in a fresh process → a checkpoint whose pipeline reads new images through the
live knowledge aligner it names (a chat endpoint on 127.0.0.1, or a tiny vision-language model), or says why not."""

import json
import shutil

import pytest
from transformers import pipeline

from helpers import (
    TWEETS,
    noise_image,
    prompt_text,
    run_python,
    save_tiny_encoder,
    save_tiny_vlm,
    tiny_train_argv,
)
from knowledge_ita import ImageTextToTextAligner
from preprocess import preprocess

KEY_ENV = "ITA_TEST_ENDPOINT_KEY"
KEY = "sk-checkpoint-test-SECRET-0042"
ROWS = [
    ("1001", "Obama visits Paris", "B-PER O B-LOC"),
    ("1002", "Merkel in Berlin today", "B-PER O B-LOC O"),
    ("1003", "Apple opens in London", "B-ORG O O B-LOC"),
    ("1004", "Kawhi Leonard wins", "B-PER I-PER O"),
]
KNOWLEDGE = {
    "1001": "Named entities: 1. Obama (person) 2. Paris (location) Reasoning: a president visiting a city.",
    "1002": "Named entities: 1. Merkel (person) 2. Berlin (location) Reasoning: a chancellor at home.",
    "1003": "Named entities: 1. Apple (organization) 2. London (location) Reasoning: a company opens a shop.",
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Shards of 8 tweets whose knowledge comes from a JSONL file as PGIM released it (image 1004 has none)."""
    root = tmp_path_factory.mktemp("knowledge-data")
    data = root / "data"
    data.mkdir()
    umt = "\n".join(
        f"IMGID:{image}\n" + "".join(f"{word}\t{tag}\n" for word, tag in zip(text.split(), tags.split()))
        for image, text, tags in ROWS * 2
    )
    for split in ("train", "valid", "test"):
        (data / f"{split}.txt").write_text(umt, encoding="utf-8")
    knowledge = root / "PGIM_knowledge_tiny.jsonl"
    knowledge.write_text("".join(json.dumps({"image_id": k, "knowledge": v}) + "\n" for k, v in KNOWLEDGE.items()))
    out = root / "shards"
    preprocess(data=[data], out=out, aligners=[{"type": "precomputed", "paths": [str(knowledge)], "source": "PGIM"}])
    return out


def test_knowledge_is_a_shard_column_and_becomes_the_context(shards):
    from datasets import load_from_disk

    train = load_from_disk(str(shards))["train"]
    assert train["knowledge"][:4] == [[KNOWLEDGE["1001"]], [KNOWLEDGE["1002"]], [KNOWLEDGE["1003"]], []]
    assert train["visual_context"][:4] == [KNOWLEDGE["1001"], KNOWLEDGE["1002"], KNOWLEDGE["1003"], ""]
    assert train["context_sources"][0] == ["knowledge:precomputed"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, minilm_dir):
    return save_tiny_encoder(tmp_path_factory.mktemp("encoder") / "bert", minilm_dir)


def train(shards, encoder, output_dir, *extra: str):
    argv = tiny_train_argv(shards, encoder, output_dir, "--context_columns", "knowledge", "--max_context_tokens", "64")
    result = run_python(["train.py", *argv, *extra], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_checkpoint_on_precomputed_knowledge_reads_new_images_through_a_live_chat_endpoint(
    shards, encoder, tmp_path, endpoint, hub_client_online, monkeypatch
):
    port = endpoint.server_address[1]
    spec = {"type": "chat-completions", "base_url": endpoint.url, "model": "tiny", "prompt": "{text}"}
    spec["api_key_env"] = KEY_ENV
    monkeypatch.setenv(KEY_ENV, KEY)
    trained = train(shards, encoder, tmp_path / "model", "--live_aligner", json.dumps(spec))
    assert "reads no new image" not in trained.stderr
    checkpoint = tmp_path / "moved"
    shutil.copytree(tmp_path / "model", checkpoint, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((checkpoint / "config.json").read_text())
    [live] = config["live_aligners"]
    assert live["type"] == "chat-completions" and live["api_key_env"] == KEY_ENV and live["base_url"] == endpoint.url
    for path in checkpoint.rglob("*"):  # the key never enters the checkpoint
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
    card = (checkpoint / "README.md").read_text()
    assert "**Live aligners for new images**" in card and "`chat-completions`" in card
    assert "reads no new image" not in card

    ner = pipeline(model=str(checkpoint), trust_remote_code=True, context_dir=str(shards.parent))
    image = tmp_path / "new.png"
    noise_image(3).save(image)
    inputs = [{"text": TWEETS[0], "image": str(image)}, {"text": "Obama visits Paris", "image_id": "1001"}]
    new, known = ner(inputs, return_visual_context=True, batch_size=2)
    assert new["visual_context"] == f"Named entities: 1. {TWEETS[0]}" and new["alignment_error"] == ""
    assert new["context_sources"] == ["knowledge:chat-completions"]
    assert [prompt_text(request) for request in endpoint.requests] == [TWEETS[0]]
    assert endpoint.requests[0]["authorization"] == f"Bearer {KEY}"
    # A known image keeps the knowledge it was trained with, from the file beside the shards.
    assert known["visual_context"] == KNOWLEDGE["1001"] and known["context_sources"] == ["knowledge:precomputed"]
    # The endpoint down: the tweet is tagged, and the answer says which aligner, host and status.
    endpoint.script.extend([(503, {}, b"down")] * 4)
    down = ner(TWEETS[1], image=str(image), return_visual_context=True)
    assert down["visual_context"] == "" and down["entities"] == ner(TWEETS[1], visual_context="")
    assert f"model 'tiny' at 127.0.0.1:{port}: HTTP 503 after 4 attempt(s)" in down["alignment_error"]
    assert KEY not in down["alignment_error"]


def test_a_checkpoint_names_a_live_vision_language_model(shards, encoder, tmp_path):
    vlm = save_tiny_vlm(tmp_path / "vlm", "idefics3")
    spec = {
        "type": "image-text-to-text",
        "model": str(vlm),
        "max_new_tokens": 6,
        "generate_kwargs": {"min_new_tokens": 6},
    }
    trained = train(shards, encoder, tmp_path / "model", "--live_aligner", json.dumps(spec))
    assert "names the local path(s)" in trained.stderr  # a folder exists only on this machine
    ner = pipeline(model=str(tmp_path / "model"), trust_remote_code=True)
    picture = noise_image(5, size=(48, 40))
    result = ner(TWEETS[2], image=picture, return_visual_context=True)
    expected = ImageTextToTextAligner(str(vlm), max_new_tokens=6, generate_kwargs={"min_new_tokens": 6})
    assert result["visual_context"] == expected(picture, text=TWEETS[2])["knowledge"][0]
    assert result["context_sources"] == ["knowledge:image-text-to-text"]


def test_a_checkpoint_that_cannot_read_new_images_says_so_and_how_to_fix_it(shards, encoder, tmp_path):
    trained = train(shards, encoder, tmp_path / "model")
    assert "reads no new image" in trained.stderr and "--live_aligner" in trained.stderr
    card = (tmp_path / "model" / "README.md").read_text()
    assert "reads no new image" in card and "--live_aligner" in card
    ner = pipeline(model=str(tmp_path / "model"), trust_remote_code=True, context_dir=str(shards.parent))
    image = tmp_path / "new.png"
    noise_image(4).save(image)
    result = ner(TWEETS[0], image=str(image), return_visual_context=True)
    assert result["visual_context"] == "" and result["context_sources"] == []
    assert "no live aligner reads new images" in result["alignment_error"]
    known = ner({"text": "Obama visits Paris", "image_id": "1001"}, return_visual_context=True)
    assert known["visual_context"] == KNOWLEDGE["1001"] and known["alignment_error"] == ""


def test_a_live_aligner_whose_segment_the_context_order_leaves_out_is_refused_before_training():
    import train

    train.check_live_aligners([{"type": "rapidocr"}], ["caption", "knowledge", "ocr"])
    with pytest.raises(ValueError, match=r"'rapidocr' fills \['ocr'\], which the context order \['knowledge'\]"):
        train.check_live_aligners([{"type": "rapidocr"}], ["knowledge"])
