"""The pipeline's image (+ tweet) → context step: aligners get the images and tweets of a whole batch in one call,
the live aligners only the images no precomputed context knows, and a repeated (image, tweet) pair is not aligned
again (visual_context_ita.contexts_for_tweets, ContextCache)."""

import json

import pytest

from aligners_ita import Aligner
from helpers import TWEETS, assert_same_entities, noise_image, tiny_ita_model
from pipeline_ita import MultimodalNERPipeline
from precomputed_ita import PrecomputedAligner
from visual_context_ita import ContextCache, VisualContext

IMAGES = [noise_image(seed, size=(30 + seed, 20)) for seed in range(7)]


class EchoKnowledge(Aligner):
    """Writes the tweet and the picture's width it was given, and keeps every call's batch."""

    type = "test-echo-knowledge"
    segments = ("knowledge",)
    needs_text = True

    def __init__(self):
        self.calls = []

    def settings(self):
        return {}

    def align(self, images, image_ids=None, texts=None, segments=None):
        self.calls.append(list(texts))
        return [{"knowledge": [f"{text} seen {image.width} wide"]} for image, text in zip(images, texts)]


class Widths(Aligner):
    """Captions each picture with its width; does not read the tweet."""

    type = "test-widths"
    segments = ("caption",)

    def __init__(self, fail_on: int | None = None):
        self.calls = []
        self.fail_on = fail_on

    def settings(self):
        return {}

    def align(self, images, image_ids=None):
        self.calls.append([image.width for image in images])
        if any(image.width == self.fail_on for image in images):
            raise RuntimeError("cannot read this width")
        return [{"caption": [f"{image.width} wide"]} for image in images]


def pipe(tokenizer, aligners, **kwargs) -> MultimodalNERPipeline:
    return MultimodalNERPipeline(
        model=tiny_ita_model(tokenizer, seed=0), tokenizer=tokenizer, aligners=aligners, **kwargs
    )


def test_each_aligner_gets_a_whole_batch_of_images_and_tweets_in_one_call(minilm_tokenizer):
    echo = EchoKnowledge()
    ner = pipe(minilm_tokenizer, [echo], context_cache_size=0)
    texts = [f"{TWEETS[i % 4]} number {i}" for i in range(7)]
    inputs = [{"text": text, "image": image} for text, image in zip(texts, IMAGES)]
    batched = ner(inputs, batch_size=3, return_visual_context=True)
    assert echo.calls == [texts[:3], texts[3:6], texts[6:]]
    assert [r["visual_context"] for r in batched] == [f"{t} seen {i.width} wide" for t, i in zip(texts, IMAGES)]
    assert all(r["context_sources"] == ["knowledge:test-echo-knowledge"] for r in batched)
    echo.calls.clear()
    one = ner(inputs, batch_size=1, return_visual_context=True)
    assert echo.calls == [[text] for text in texts]
    assert [{**r, "entities": None} for r in one] == [{**r, "entities": None} for r in batched]
    assert_same_entities([r["entities"] for r in one], [r["entities"] for r in batched])
    # A word list reaches the aligner as its words joined by spaces.
    echo.calls.clear()
    ner(["Kawhi", "Leonard", "wins"], image=IMAGES[0], is_split_into_words=True)
    assert echo.calls == [["Kawhi Leonard wins"]]


def test_live_aligners_get_only_the_images_no_precomputed_context_knows(minilm_tokenizer, tmp_path):
    path = tmp_path / "known.jsonl"
    path.write_text(json.dumps({"image_id": "known", "caption": "a known picture"}) + "\n", encoding="utf-8")
    spec = PrecomputedAligner(path).to_dict()
    live = Widths()
    model = tiny_ita_model(minilm_tokenizer, seed=0, aligners=[spec])
    ner = MultimodalNERPipeline(model=model, tokenizer=minilm_tokenizer, context_dir=str(tmp_path))
    ner.live_aligners = [live]
    inputs = [
        {"text": TWEETS[0], "image": IMAGES[0], "image_id": "known"},
        {"text": TWEETS[1], "image": IMAGES[1]},
        {"text": TWEETS[2], "image_id": "known"},
        {"text": TWEETS[3], "image": IMAGES[2]},
    ]
    results = ner(inputs, batch_size=4, return_visual_context=True)
    assert live.calls == [[IMAGES[1].width, IMAGES[2].width]]
    assert [r["visual_context"] for r in results] == ["a known picture", "31 wide", "a known picture", "32 wide"]
    assert [r["context_sources"] for r in results] == [
        ["caption:precomputed"],
        ["caption:test-widths"],
        ["caption:precomputed"],
        ["caption:test-widths"],
    ]


def test_a_repeated_image_and_tweet_is_aligned_once(minilm_tokenizer, tmp_path):
    echo, widths = EchoKnowledge(), Widths()
    ner = pipe(minilm_tokenizer, [widths, echo])
    IMAGES[0].save(tmp_path / "meme.png")
    first = ner(TWEETS[0], image=str(tmp_path / "meme.png"), return_visual_context=True)
    # The same picture given another way, with the same tweet: taken from the cache.
    again = ner(TWEETS[0], image=IMAGES[0].copy(), return_visual_context=True)
    assert again == first and echo.calls == [[TWEETS[0]]] and widths.calls == [[IMAGES[0].width]]
    # Another tweet with the same picture: the aligner that reads tweets runs again (the group is cached as one).
    ner(TWEETS[1], image=IMAGES[0], return_visual_context=True)
    assert echo.calls == [[TWEETS[0]], [TWEETS[1]]]
    # A retweet in the same batch as its original is aligned once in each batch, then cached.
    echo.calls.clear()
    ner([{"text": TWEETS[2], "image": IMAGES[3]}] * 2, batch_size=2)
    ner([{"text": TWEETS[2], "image": IMAGES[3]}] * 2, batch_size=2)
    assert echo.calls == [[TWEETS[2], TWEETS[2]]]


def test_a_context_whose_making_failed_is_not_kept(minilm_tokenizer):
    failing = Widths(fail_on=IMAGES[4].width)
    ner = pipe(minilm_tokenizer, [failing])
    for _ in range(2):
        result = ner(TWEETS[0], image=IMAGES[4], return_visual_context=True)
        assert result["alignment_error"] == "test-widths: RuntimeError: cannot read this width"
    assert failing.calls == [[IMAGES[4].width]] * 2


def test_the_cache_is_bounded_and_drops_the_least_recently_used():
    cache = ContextCache(2)
    contexts = {key: VisualContext(key, {}, [], []) for key in "abc"}
    cache.put(("a",), contexts["a"])
    cache.put(("b",), contexts["b"])
    assert cache.get(("a",)) is contexts["a"]  # a is now the most recently used
    cache.put(("c",), contexts["c"])
    assert len(cache) == 2 and cache.get(("b",)) is None and cache.get(("a",)) is contexts["a"]
    failed = VisualContext("", {}, [], ["ocr: failed"])
    cache.put(("d",), failed)
    assert cache.get(("d",)) is None
    off = ContextCache(0)
    off.put(("a",), contexts["a"])
    assert len(off) == 0
    with pytest.raises(ValueError, match="cache size must be an int >= 0"):
        ContextCache(-1)
    with pytest.raises(ValueError, match="cache size must be an int >= 0"):
        ContextCache(True)


def test_a_cached_context_is_never_handed_to_a_new_aligner_that_took_an_old_ones_place():
    """Contexts are kept by the aligners that made them: a new aligner, even one built in a freed one's memory (the
    same `id` in CPython), aligns the image itself."""
    from visual_context_ita import TweetImage, VisualContextBuilder, contexts_for_tweets

    class Constant(Widths):
        def __init__(self, word):
            super().__init__()
            self.word = word

        def align(self, images, image_ids=None):
            self.calls.append(len(images))
            return [{"caption": [self.word]} for _ in images]

    cache, builder = ContextCache(8), VisualContextBuilder()
    tweet = [TweetImage(IMAGES[0], None, "a tweet")]
    for word in ("first", "second", "third"):
        aligner = Constant(word)
        [context] = contexts_for_tweets(tweet, [aligner], [], builder, lambda image: image, cache)
        assert context.text == word and aligner.calls == [1]
        del aligner  # frees its memory for the next one, unless the cache still holds it
    assert len(cache) == 3
