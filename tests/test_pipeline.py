"""The multimodal-ner pipeline: input forms, CRF decoding and scores, offsets, chunking, batching, images,
aligners and the checkpoint round trip through a fresh process."""

import json
import logging

import numpy as np
import pytest
import torch

from aligners_ita import Aligner, RapidOCRAligner
from encoding_ita import encode_example, pad_batch
from fresh_process import run_fresh_python
from helpers import PIPELINE_LABELS as LABELS
from helpers import all_entity_model, assert_same_entities, tiny_ita_model
from images_ita import load_image
from pipeline_ita import MultimodalNERPipeline
from pretokenizer_ita import TweetPreTokenizer
from visual_context_ita import VisualContextBuilder

TWEETS = [
    "RT @NBA: Kawhi Leonard's #Raptors beat Boston 🏀🔥 https://t.co/Z3neVBQ7vF",
    "Chris Paul in Los Angeles w/ Blake Griffin",
    "New Post : Blackburn Festival of Voice 2017",
    "Paris Paris Paris ... Paris !",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny models run fastest on one thread, and the cores are shared: two threads contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(minilm_tokenizer):
    return MultimodalNERPipeline(model=tiny_ita_model(minilm_tokenizer, seed=0), tokenizer=minilm_tokenizer)


@pytest.fixture(scope="module")
def tag_all(minilm_tokenizer):
    """Tags every word; a 64-position encoder so that long texts are split into many windows."""
    return MultimodalNERPipeline(model=all_entity_model(minilm_tokenizer, max_positions=64), tokenizer=minilm_tokenizer)


def test_every_input_form_gives_the_same_entities(pipe):
    text = TWEETS[0]
    words = [word for word, _ in TweetPreTokenizer().pre_tokenize_str(text)]
    expected = pipe(text)
    assert expected, "the random model should find some entity in this tweet"
    assert pipe(text=text) == expected
    assert pipe(text, image=None) == expected
    assert pipe({"text": text}) == expected
    assert pipe([text, TWEETS[1]])[0] == expected
    assert list(pipe(t for t in [text, TWEETS[1]]))[0] == expected
    assert pipe(TWEETS, aggregation_strategy="none") == [pipe(t, aggregation_strategy="none") for t in TWEETS]

    # Words: the same tags, offsets into " ".join(words).
    joined = " ".join(words)
    by_words = pipe(words, is_split_into_words=True, aggregation_strategy="none")
    assert (
        by_words
        == pipe({"tokens": words}, aggregation_strategy="none")
        == pipe([words], aggregation_strategy="none")[0]
    )
    by_text = pipe(text, aggregation_strategy="none")
    assert [(e["entity"], e["index"], e["word"], e["score"]) for e in by_words] == [
        (e["entity"], e["index"], e["word"], e["score"]) for e in by_text
    ]
    assert all(joined[e["start"] : e["end"]] == e["word"] for e in by_words)


def test_a_datasets_dataset_is_read_row_by_row(pipe):
    from datasets import Dataset

    rows = Dataset.from_dict(
        {
            "id": ["a", "b"],
            "tokens": [TWEETS[1].split(), TWEETS[2].split()],
            "image_id": ["1", "2"],
            "visual_context": ["a man with a ball", ""],
            "ner_tags": [[0] * 8, [0] * 7],
        }
    )
    results = list(pipe(rows, batch_size=2))
    assert_same_entities(
        results,
        [
            pipe(TWEETS[1].split(), is_split_into_words=True, visual_context="a man with a ball"),
            pipe(TWEETS[2].split(), is_split_into_words=True),
        ],
    )


def test_tags_are_constrained_viterbi_and_scores_crf_marginals(pipe, minilm_tokenizer):
    """Against the model's own torch CRF (`forward(return_tags=True)`) on the same encoding."""
    model = pipe.model
    for text, context in [(TWEETS[0], ""), (TWEETS[1], "a man holding a basketball | NBA")]:
        words = [word for word, _ in TweetPreTokenizer().pre_tokenize_str(text)]
        batch = pad_batch(
            [encode_example(minilm_tokenizer, words, context, text_view=False)], minilm_tokenizer.pad_token_id
        )
        with torch.no_grad():
            out = model(**batch, return_tags=True)
        expected_tags = [LABELS[t] for t in out.tags[0].tolist()]
        result = pipe(text, visual_context=context, aggregation_strategy="none")
        tags = ["O"] * len(words)
        for entity in result:
            tags[entity["index"]] = entity["entity"]
            assert entity["score"] == pytest.approx(out.tag_scores[0, entity["index"]].item(), abs=1e-5)
        assert tags == expected_tags
        assert any(tag != "O" for tag in tags)
        for previous, tag in zip(["O"] + tags, tags):  # valid BIO
            assert not tag.startswith("I-") or previous[2:] == tag[2:]
        # The emissions alone would often decode differently: the scores are not a softmax over them.
        softmax_best = torch.softmax(out.logits[0], dim=-1).max(dim=-1).values
        assert not torch.allclose(softmax_best, out.tag_scores[0], atol=1e-3)


def test_simple_aggregation_groups_spans_with_mean_scores(tag_all):
    text = "Chris Paul , in LA"
    words = tag_all(text, aggregation_strategy="none")
    assert [e["entity"] for e in words] == ["B-PER"] + ["I-PER"] * 4
    groups = tag_all(text)
    assert groups == [
        {
            "entity_group": "PER",
            "score": pytest.approx(np.mean([e["score"] for e in words])),
            "word": text,
            "start": 0,
            "end": len(text),
        }
    ]


@pytest.mark.parametrize(
    "text",
    [
        "RT @user: 😍😍 Paris\u200b Paris\u00a0Paris https://t.co/x?a=1. co\u00adop 👩‍👩‍👧 Paris!",
        "\u200b  Paris 🇫🇷 Paris\u200d Paris (www.x.com) Paris's don't",
    ],
)
def test_offsets_index_the_original_text(tag_all, text):
    words = TweetPreTokenizer().pre_tokenize_str(text)
    per_word = tag_all(text, aggregation_strategy="none")
    assert [(e["word"], (e["start"], e["end"])) for e in per_word] == words
    assert all(text[e["start"] : e["end"]] == e["word"] for e in per_word)
    paris = [e["start"] for e in per_word if e["word"] == "Paris"]
    assert len(paris) >= 4 and len(set(paris)) == len(paris)
    (group,) = tag_all(text)
    assert group["word"] == text[group["start"] : group["end"]] and group["word"].endswith(words[-1][0])


def test_a_2000_word_text_is_chunked_and_every_word_tagged(tag_all, caplog):
    text = " ".join(f"word{i} Paris😍" if i % 7 == 0 else f"w{i}" for i in range(2000))
    words = TweetPreTokenizer().pre_tokenize_str(text)
    assert len(words) > 2000
    per_word = tag_all(text, aggregation_strategy="none", visual_context="a crowd in a stadium", stride=8)
    # Every word, in order, with its own offsets; one Viterbi over the stitched windows keeps one span.
    assert [e["index"] for e in per_word] == list(range(len(words)))
    assert [(e["word"], (e["start"], e["end"])) for e in per_word] == words
    assert [e["entity"] for e in per_word] == ["B-PER"] + ["I-PER"] * (len(words) - 1)
    item = {"text": text, "visual_context": "a crowd in a stadium", "context_sources": [], "alignment_error": ""}
    windows = tag_all.preprocess(item, stride=8)
    features = list(windows)
    assert len(features) > 30  # the 64-position encoder really needed many windows
    assert all(
        f["window"].features["input_ids"].count(tag_all.tokenizer.sep_token_id) == 2 for f in features
    )  # context in each


def test_batching_gives_exactly_the_results_of_batch_size_one(pipe):
    inputs = TWEETS + ["", "Paris", " ".join(["Chris Paul"] * 300), {"text": TWEETS[1], "visual_context": "a man"}]
    one = pipe(inputs, batch_size=1, aggregation_strategy="none")
    for batch_size in (3, 8):
        assert_same_entities(pipe(inputs, batch_size=batch_size, aggregation_strategy="none"), one)
    # At batch size 1 the pipeline skips transformers' DataLoader, which a worker process brings back.
    assert_same_entities(pipe(inputs, batch_size=1, num_workers=1, aggregation_strategy="none"), one)
    assert len(one[6]) > 0 and one[4] == []


@pytest.mark.parametrize("text", ["", "   ", "\u200b \u00a0", []])
def test_empty_text_returns_an_empty_list(pipe, text):
    assert pipe(text, is_split_into_words=True) == []
    assert pipe(text, is_split_into_words=True, return_visual_context=True, visual_context="a dog") == {
        "entities": [],
        "visual_context": "a dog",
        "context_sources": ["visual_context:given"],
        "alignment_error": "",
    }


def test_device_argument(minilm_tokenizer, pipe):
    for device in ("cpu", -1, torch.device("cpu")):
        on_device = MultimodalNERPipeline(model=pipe.model, tokenizer=minilm_tokenizer, device=device)
        assert on_device.device == torch.device("cpu")
        assert on_device(TWEETS[0]) == pipe(TWEETS[0])


class ConstantCaptionAligner(Aligner):
    """A test aligner: the same caption for every image it is given."""

    type = "test-constant-caption"
    segments = ("caption",)

    def __init__(self, caption: str = "a man holding a basketball"):
        self.caption = caption

    def settings(self):
        return {"caption": self.caption}

    def align(self, images, image_ids=None):
        return [{"caption": [] if image is None else [self.caption]} for image in images]


@pytest.fixture
def picture(shared_data):
    return shared_data / "images" / "twitter2015" / "654.jpg"


def test_aligners_from_the_config_turn_images_into_context(minilm_tokenizer, picture):
    model = tiny_ita_model(minilm_tokenizer, seed=0, aligners=[ConstantCaptionAligner().to_dict()])
    ner = MultimodalNERPipeline(model=model, tokenizer=minilm_tokenizer)
    with_image = ner(TWEETS[1], image=str(picture), return_visual_context=True)
    assert with_image["visual_context"] == "a man holding a basketball"
    given = ner(TWEETS[1], visual_context="a man holding a basketball", return_visual_context=True)
    assert with_image == {**given, "context_sources": ["caption:test-constant-caption"]}
    assert given["context_sources"] == ["visual_context:given"] and with_image["alignment_error"] == ""
    assert ner(TWEETS[1], image=load_image(picture)) == with_image["entities"]
    assert ner(TWEETS[1], return_visual_context=True)["visual_context"] == ""
    assert ner(TWEETS[1], image=str(picture), visual_context="", return_visual_context=True)["visual_context"] == ""
    override = MultimodalNERPipeline(
        model=model, tokenizer=minilm_tokenizer, aligners=[ConstantCaptionAligner("a dog")]
    )
    assert override(TWEETS[1], image=str(picture), return_visual_context=True)["visual_context"] == "a dog"


def test_unreadable_images_warn_once_and_tag_text_only(minilm_tokenizer, tmp_path, caplog):
    model = tiny_ita_model(minilm_tokenizer, seed=0, aligners=[ConstantCaptionAligner().to_dict()])
    ner = MultimodalNERPipeline(model=model, tokenizer=minilm_tokenizer)
    text_only = ner(TWEETS[0], visual_context="")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    for image in (str(tmp_path / "missing.jpg"), str(tmp_path / "broken.jpg"), "http://127.0.0.1:9/offline.jpg"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = ner(TWEETS[0], image=image, return_visual_context=True, timeout=2)
        assert result == {**result, "entities": text_only, "visual_context": "", "context_sources": []}
        assert result["alignment_error"].startswith("cannot read the image (")
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "cannot read the image" in warnings[0].getMessage(), warnings


def test_precomputed_contexts_unavailable_say_so_once_and_run_text_only(minilm_tokenizer, tmp_path, caplog, picture):
    spec = {"type": "precomputed", "files": [{"name": "BLIP2_15.txt", "sha256": "0" * 64, "source": "BLIP-2"}]}
    model = tiny_ita_model(minilm_tokenizer, seed=0, aligners=[spec])
    with caplog.at_level(logging.WARNING):
        ner = MultimodalNERPipeline(model=model, tokenizer=minilm_tokenizer)
        results = [ner(TWEETS[1], image=str(picture), return_visual_context=True) for _ in range(3)]
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "visual_context_ita"
    ]
    assert len(warnings) == 1 and "'precomputed' precomputed contexts" in warnings[0] and "text-only" in warnings[0]
    assert ner.aligners == []
    # Each answer says why the image gave nothing; the server log said it once, when the pipeline was built.
    why = (
        "this checkpoint records no aligner that can be built here (see the warning when the pipeline was created), "
        "so images are not read: pass aligners= to the pipeline"
    )
    text_only = {"entities": ner(TWEETS[1], visual_context=""), "visual_context": "", "context_sources": []}
    assert results == [{**text_only, "alignment_error": why}] * 3


def test_real_ocr_context_from_a_real_tweet_image(minilm_tokenizer, picture):
    ocr = RapidOCRAligner(threads=1)
    ner = MultimodalNERPipeline(
        model=tiny_ita_model(minilm_tokenizer, seed=0), tokenizer=minilm_tokenizer, aligners=ocr
    )
    tweet = "@NBA _ Skits : Will Chris Paul ever catch a break ? http://t.co/1brhzuuGVl"
    result = ner(tweet, image=str(picture), return_visual_context=True)
    expected_context, sources = VisualContextBuilder().build(ocr(load_image(picture)))
    assert sources == ["ocr"] and "CHRIS PAUL" in expected_context
    assert result["visual_context"] == expected_context
    assert result["entities"] == ner(tweet, visual_context=expected_context)
    assert ner(tweet, image=str(picture), aggregation_strategy="none") != ner(tweet, aggregation_strategy="none")


def test_invalid_arguments_are_explained(pipe):
    with pytest.raises(ValueError, match="one image per text"):
        pipe(["a", "b"], image=["x.jpg"])
    with pytest.raises(TypeError, match="PIL image, a path, a URL"):
        pipe("a", image=3)
    with pytest.raises(ValueError, match="'first', 'average' and 'max' do not apply"):
        pipe("a", aggregation_strategy="first")
    with pytest.raises(ValueError, match="Give the tweet's text"):
        pipe(image="x.jpg")


ROUND_TRIP = """
import json, sys
from transformers import AutoModelForTokenClassification, pipeline
ner = pipeline(model="ckpt", trust_remote_code=True)
tweets = json.load(open("tweets.json"))
results = [ner(t, aggregation_strategy="none") for t in tweets]
ner.model.save_pretrained("resaved_from_pipeline")
AutoModelForTokenClassification.from_pretrained("ckpt", trust_remote_code=True).save_pretrained("resaved_from_model")
again = pipeline(model="resaved_from_pipeline", tokenizer="ckpt", trust_remote_code=True)
print(json.dumps({
    "pipeline_class": type(ner).__module__ + "." + type(ner).__name__,
    "model_class": type(ner.model).__module__ + "." + type(ner.model).__name__,
    "checkout_modules": sorted(m for m in ("pipeline_ita", "modeling_ita", "pretokenizer_ita") if m in sys.modules),
    "results": results,
    "again": [again(t, aggregation_strategy="none") for t in tweets],
}))
"""


def test_checkpoint_round_trip_in_a_fresh_process(pipe, minilm_tokenizer, tmp_path):
    pipe.model.save_pretrained(tmp_path / "ckpt")
    minilm_tokenizer.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "multimodal-ner": {
            "impl": "pipeline_ita.MultimodalNERPipeline",
            "pt": ["AutoModelForTokenClassification"],
            "type": "multimodal",
        }
    }
    (tmp_path / "tweets.json").write_text(json.dumps(TWEETS))
    result = run_fresh_python(ROUND_TRIP, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pipeline_class"].startswith("transformers_modules.")
    assert report["pipeline_class"].endswith("pipeline_ita.MultimodalNERPipeline")
    assert report["model_class"].startswith("transformers_modules.")
    assert report["checkout_modules"] == []
    expected = [pipe(t, aggregation_strategy="none") for t in TWEETS]
    assert_same_entities(report["results"], expected)
    assert_same_entities(report["again"], expected)
    for folder in ("resaved_from_pipeline", "resaved_from_model"):
        saved = {path.name for path in (tmp_path / folder).iterdir()}
        assert {
            "pipeline_ita.py",
            "pretokenizer_ita.py",
            "images_ita.py",
            "aligners_ita.py",
            "precomputed_ita.py",
            "visual_context_ita.py",
            "encoding_ita.py",
            "crf_ita.py",
        } <= saved
        assert (
            json.loads((tmp_path / folder / "config.json").read_text())["custom_pipelines"]
            == config["custom_pipelines"]
        )

    refused = run_fresh_python("from transformers import pipeline\npipeline(model='ckpt')\n", tmp_path)
    assert refused.returncode != 0 and "trust_remote_code=True" in refused.stderr


def test_checkout_aligners_work_with_a_remote_code_pipeline(pipe, minilm_tokenizer, tmp_path, picture):
    # The checkout's Aligner and the checkpoint's remote-code copy are different classes: objects of either work.
    from transformers import pipeline

    pipe.model.save_pretrained(tmp_path / "ckpt")
    minilm_tokenizer.save_pretrained(tmp_path / "ckpt")
    ner = pipeline(model=str(tmp_path / "ckpt"), trust_remote_code=True, aligners=[ConstantCaptionAligner("a dog")])
    assert type(ner).__module__.startswith("transformers_modules.")
    assert ner(TWEETS[1], image=str(picture), return_visual_context=True)["visual_context"] == "a dog"
    with pytest.raises(TypeError, match="is not an aligner"):
        pipeline(model=str(tmp_path / "ckpt"), trust_remote_code=True, aligners=["rapidocr"])
