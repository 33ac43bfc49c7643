"""Image → visual context (visual_context_ita): the context builder, aligner specs, the live aligners that stand in for
precomputed contexts, and `align_images`, the one step the pipeline and preprocessing share, checked to give an
image the same context both ways."""

import logging

import pytest

from aligners_ita import SEGMENTS, Aligner, RapidOCRAligner
from configuration_ita import ITAConfig
from helpers import noise_image, render_text, tiny_ita_model
from images_ita import find_image_file
from pipeline_ita import MultimodalNERPipeline
from precomputed_ita import PrecomputedAligner
from preprocess import preprocess
from visual_context_ita import (
    VisualContextBuilder,
    align_images,
    aligner_from_dict,
    aligners_for_image,
    build_aligners,
    normalize_spec,
)


class SizeCaptioner(Aligner):
    """Captions an image with its size, and remembers the batches it was given."""

    type = "test-size-captioner"
    segments = ("caption",)

    def __init__(self):
        self.batches = []

    def settings(self):
        return {}

    def align(self, images, image_ids=None):
        self.batches.append(list(images))
        return [{"caption": [f"{image.width} by {image.height}", f"{image.width} wide"]} for image in images]


class PickyTags(Aligner):
    """Looks tags up by image id, like a precomputed aligner, and fails on any batch holding the id 'bad'."""

    type = "test-picky-tags"
    segments = ("objects",)
    precomputed = True

    def __init__(self):
        self.batches = []

    def settings(self):
        return {}

    def align(self, images, image_ids=None):
        self.batches.append(list(image_ids))
        if "bad" in image_ids:
            raise RuntimeError("cannot handle this one")
        return [{"objects": [f"tag of {image_id}"]} for image_id in image_ids]


# --- the context builder and aligner specs ------------------------------------------------------


def test_builder_joins_segments_in_configured_order_and_records_sources():
    segments = {"ocr": ["CHRIS PAUL BE LIKE"], "objects": ["man", "ball"], "caption": "a man  playing\nbasketball"}
    text, sources = VisualContextBuilder().build(segments)
    assert text == "a man playing basketball | man, ball | CHRIS PAUL BE LIKE"
    assert sources == ["caption", "objects", "ocr"]
    text, sources = VisualContextBuilder(order=["ocr", "caption"], separator=" [SEP] ").build(segments)
    assert text == "CHRIS PAUL BE LIKE [SEP] a man playing basketball"
    assert sources == ["ocr", "caption"]


def test_builder_caps_words_and_skips_empty_segments():
    segments = {"caption": ["one two three four"], "objects": [], "ocr": ["five six seven"]}
    builder = VisualContextBuilder(max_words_per_segment=2)
    assert builder.build(segments) == ("one two | five six", ["caption", "ocr"])
    builder = VisualContextBuilder(max_words=5)
    assert builder.build(segments) == ("one two three four | five", ["caption", "ocr"])
    assert VisualContextBuilder(max_words=4).build(segments) == ("one two three four", ["caption"])
    assert VisualContextBuilder().build({}) == ("", [])
    with pytest.raises(ValueError, match="twice"):
        VisualContextBuilder(order=["ocr", "ocr"])


def test_builder_from_config_is_the_training_builder_and_its_settings_are_checked():
    config = ITAConfig(
        context_order=["ocr", "caption"],
        context_separator=" ; ",
        context_max_words_per_segment=2,
        context_max_words=3,
        context_piece_separators={"ocr": " / "},
    )
    builder = VisualContextBuilder.from_config(config)
    assert builder.to_dict() == {
        "order": ["ocr", "caption"],
        "separator": " ; ",
        "max_words_per_segment": 2,
        "max_words": 3,
        "piece_separators": {"ocr": " / "},
    }
    # "SALE / NOW ON" → 2 words per segment → "SALE /"; 3 words in all leave the caption one: "a".
    assert builder.build({"ocr": ["SALE", "NOW ON"], "caption": "a man running"}) == ("SALE / ; a", ["ocr", "caption"])
    assert VisualContextBuilder.from_config(ITAConfig()).to_dict() == VisualContextBuilder().to_dict()
    for settings, message in [
        ({"max_words": -1}, "max_words"),
        ({"max_words_per_segment": True}, "max_words_per_segment"),
        ({"piece_separators": {"objects": 1}}, "piece separators"),
        ({"order": "caption"}, "list"),
    ]:
        with pytest.raises(ValueError, match=message):
            VisualContextBuilder(**settings)


def test_spec_settings_are_checked_strictly(tmp_path):
    (tmp_path / "c.txt").write_text("1.jpg :a dog\n")
    for bad, message in [
        (
            {"type": "precomputed", "path": str(tmp_path / "c.txt")},
            r"invalid settings for aligner 'precomputed': \['path'\]",
        ),
        ({"type": "precomputed", "paths": [str(tmp_path / "c.txt")], "colour": "red"}, "invalid settings"),
        ({"type": "precomputed", "paths": [str(tmp_path / "c.txt")], "format": "csv"}, "format"),
        ({"type": "precomputed", "files": [{"name": "c.txt"}]}, "is recorded as"),
        ({"type": "rapidocr", "min_scor": 0.5}, "invalid settings for aligner 'rapidocr'"),
        ({"type": "nope"}, "unknown aligner type 'nope'"),
    ]:
        with pytest.raises(ValueError, match=message):
            normalize_spec(bad)
        with pytest.raises(ValueError, match=message):
            aligner_from_dict(bad, context_dirs=[tmp_path])


# --- align_images: the step the pipeline and preprocessing share --------------------------------------


def test_each_aligner_runs_once_on_what_it_can_read_and_a_failing_batch_is_retried_image_by_image():
    captioner, tags = SizeCaptioner(), PickyTags()
    images = [noise_image(0, (30, 20)), None, noise_image(1, (40, 10)), noise_image(2, (10, 10))]
    image_ids = ["a", "bad", None, "d"]
    contexts = align_images(
        images, image_ids, [captioner, tags], VisualContextBuilder(), [None, "cannot read image 2.jpg", None, ""]
    )
    # The captioner saw the three pictures in one batch; the tag lookup the three ids, then each one alone.
    assert captioner.batches == [[images[0], images[2], images[3]]]
    assert tags.batches == [["a", "bad", "d"], ["a"], ["bad"], ["d"]]
    assert [context.text for context in contexts] == [
        "30 by 20 30 wide | tag of a",
        "",
        "40 by 10 40 wide",
        "10 by 10 10 wide | tag of d",
    ]
    # An aligner that gave a segment two pieces is named once; a load error comes before the aligners' errors.
    assert contexts[0].sources == ["caption:test-size-captioner", "objects:test-picky-tags"]
    assert [context.errors for context in contexts] == [
        [],
        ["cannot read image 2.jpg", "test-picky-tags: RuntimeError: cannot handle this one"],
        [],
        [],
    ]
    assert contexts[1].segments == {name: [] for name in SEGMENTS}
    assert contexts[3].segments == {
        "caption": ["10 by 10", "10 wide"],
        "objects": ["tag of d"],
        "ocr": [],
        "knowledge": [],
    }
    with pytest.raises(ValueError, match="got 4 images, 3 image ids"):
        align_images(images, image_ids[:3], [captioner], VisualContextBuilder())


def test_one_image_an_aligner_fails_on_is_not_run_twice():
    tags = PickyTags()
    [context] = align_images([None], ["bad"], [tags, SizeCaptioner()], VisualContextBuilder(max_words=2))
    assert tags.batches == [["bad"]]
    assert (context.text, context.sources) == ("", [])
    assert context.errors == ["test-picky-tags: RuntimeError: cannot handle this one"]


def test_live_aligners_stand_in_for_precomputed_contexts_an_image_has_none_of(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("1.jpg :a dog\n", encoding="utf-8")
    precomputed, ocr, live = PrecomputedAligner(captions), SizeCaptioner(), SizeCaptioner()
    assert aligners_for_image([precomputed, ocr], [live], "1") == [precomputed, ocr]
    for unknown in ("2", None):
        assert aligners_for_image([precomputed, ocr], [live], unknown) == [ocr, live]
    assert aligners_for_image([precomputed, ocr], [], "2") == [precomputed, ocr]


def test_unusable_recorded_aligners_are_left_out_with_one_warning_that_says_what_to_do(tmp_path, caplog):
    record = {"name": "BLIP2_15.txt", "sha256": "0" * 64, "source": "BLIP-2"}
    config = ITAConfig(
        aligners=[{"type": "precomputed", "files": [record]}, {"type": "test-size-captioner"}],
        live_aligners=[{"type": "test-size-captioner"}],
    )
    with caplog.at_level(logging.WARNING):
        aligners, live = build_aligners(config, context_dir=tmp_path)
    assert [a.type for a in aligners] == [a.type for a in live] == ["test-size-captioner"]
    [warning] = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert "'precomputed' precomputed contexts (FileNotFoundError: precomputed context file 'BLIP2_15.txt'" in warning
    assert str(tmp_path) in warning and "Pass `context_dir=`" in warning
    assert (
        "Only ['test-size-captioner', 'test-size-captioner (live, for images without precomputed context)']" in warning
    )
    given = SizeCaptioner()
    assert build_aligners(config, [given, {"type": "test-size-captioner"}])[0][0] is given
    assert build_aligners(config, given) == ([given], [])
    with pytest.raises(TypeError, match="'rapidocr' is not an aligner: pass aligners_ita aligner objects"):
        build_aligners(config, ["rapidocr"])
    with pytest.raises(ValueError, match="`context_dir` must be a folder"):
        build_aligners(config, context_dir=tmp_path / "nowhere")


def test_preprocessing_and_the_pipeline_give_each_image_the_same_context(tmp_path, minilm_tokenizer):
    # Real OCR on rendered signs and precomputed captions, through `python -m preprocess`'s function and the pipeline.
    images = tmp_path / "images"
    images.mkdir()
    render_text("HELLO WORLD 2015").save(images / "1.png")
    render_text("GOLDEN STATE").save(images / "2.png")
    (images / "3.jpg").write_bytes(b"not an image at all")
    render_text("NO CAPTION HERE").save(images / "5.png")
    captions = tmp_path / "captions.txt"
    captions.write_text(
        "1.jpg :a sign on a wall\n2.jpg :a  blue   banner\n3.jpg :a broken file\n4.jpg :a lost picture\n",
        encoding="utf-8",
    )
    tweets = [(str(image), ["Obama", "in", "Paris"], ["B-PER", "O", "B-LOC"]) for image in range(1, 6)]
    data = tmp_path / "train.txt"
    data.write_text(
        "\n".join(
            f"IMGID:{image}\n" + "".join(f"{t}\t{g}\n" for t, g in zip(tokens, tags)) for image, tokens, tags in tweets
        ),
        encoding="utf-8",
    )
    settings = {"max_words_per_segment": 4}
    rows = preprocess(
        data=[data],
        out=tmp_path / "shards",
        images_dir=images,
        builder_settings=settings,
        aligners=[{"type": "precomputed", "paths": [str(captions)]}, {"type": "rapidocr", "threads": 1}],
    )["train"].to_list()
    ner = MultimodalNERPipeline(
        model=tiny_ita_model(minilm_tokenizer, seed=0, context_max_words_per_segment=4),
        tokenizer=minilm_tokenizer,
        aligners=[PrecomputedAligner(captions), RapidOCRAligner(threads=1)],
    )
    for row in rows:
        path = find_image_file(images, row["image_id"])
        result = ner(
            {"tokens": row["tokens"], "image": None if path is None else str(path), "image_id": row["image_id"]},
            return_visual_context=True,
        )
        assert result["visual_context"] == row["visual_context"], row
    by_image = {row["image_id"]: row for row in rows}
    assert by_image["1"]["visual_context"] == "a sign on a | HELLO WORLD 2015"
    assert by_image["1"]["context_sources"] == ["caption:precomputed", "ocr:rapidocr"]
    assert by_image["3"]["visual_context"] == "a broken file" and by_image["3"]["alignment_error"].startswith(
        f"cannot read image {images / '3.jpg'}"
    )
    assert by_image["4"]["visual_context"] == "a lost picture"
    assert by_image["4"]["alignment_error"] == f"image not found: {images / '4.jpg'}"
    assert by_image["5"]["context_sources"] == ["ocr:rapidocr"]
