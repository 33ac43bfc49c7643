"""Aligners, image loading and the visual-context builder of alignment_ita, on real engines and real images."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

import alignment_ita
from alignment_ita import (
    CaptionAligner,
    Florence2Aligner,
    ObjectTagAligner,
    PrecomputedAligner,
    RapidOCRAligner,
    TesseractAligner,
    VisualContextBuilder,
    aligner_from_dict,
    find_image_file,
    load_image,
    spec_is_precomputed,
)
from configuration_ita import ITAConfig
from helpers import noise_image, save_tiny_captioner


def render_text(text: str, size: tuple[int, int] = (640, 160), font_size: int = 48) -> Image.Image:
    """Black text on white, drawn with Pillow's bundled scalable font."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((20, 50), text, fill="black", font=ImageFont.load_default(size=font_size))
    return image


@pytest.fixture(scope="module")
def rapidocr() -> RapidOCRAligner:
    return RapidOCRAligner()


@pytest.fixture(scope="module")
def tesseract() -> TesseractAligner:
    try:
        return TesseractAligner()
    except RuntimeError as err:
        pytest.skip(str(err))


# --- visual-context builder ------------------------------------------------------------------------


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


# --- precomputed contexts --------------------------------------------------------------------------


def test_blip2_captions_are_looked_up_by_image_id(shared_data):
    aligner = PrecomputedAligner(shared_data / "captions" / "blip2" / "BLIP2_15.txt")
    found = aligner.align([None, None, None], ["108911", "71406", "no-such-image"])
    assert found[0]["caption"] == ["the chicago bears and green bay packers are playing in the nfl"]
    assert found[1]["caption"] == []  # one of the two known empty captions
    assert found[2] == {"caption": [], "objects": [], "ocr": []}
    assert aligner("713.jpg", image_id="713.jpg")["caption"] == ["chicago white sox quotes"]


def test_jsonl_contexts_and_format_errors(tmp_path):
    path = tmp_path / "contexts.jsonl"
    rows = [
        {"image_id": "7.jpg", "caption": "a dog", "objects": ["dog", "ball"]},
        {"image_id": "7", "caption": ["on grass"], "ocr": "GOAL"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    aligner = PrecomputedAligner(path)
    assert aligner.align([None], ["7"]) == [
        {"caption": ["a dog", "on grass"], "objects": ["dog", "ball"], "ocr": ["GOAL"]}
    ]
    path.write_text('{"image_id": "1", "caption": "ok"}\n{"caption": "no id"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}:2: .*image_id"):
        PrecomputedAligner(path)
    captions = tmp_path / "captions.txt"
    captions.write_text("1.jpg :fine\nbroken line\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{captions}:2: expected"):
        PrecomputedAligner(captions)


def test_precomputed_spec_records_name_checksum_and_source_and_round_trips(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("5.jpg :a cat\n", encoding="utf-8")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = PrecomputedAligner(path).to_dict()
    assert spec == {
        "type": "precomputed",
        "precomputed": True,
        "format": "auto",
        "files": [{"name": "c.txt", "sha256": digest, "source": "precomputed file c.txt"}],
    }
    stated = PrecomputedAligner(str(path), source="BLIP-2 captions, PGIM release").to_dict()
    assert stated["files"][0]["source"] == "BLIP-2 captions, PGIM release"
    assert spec_is_precomputed(spec) and not spec_is_precomputed({"type": "rapidocr"})
    # A spec names no path: it is rebuilt only from a folder that holds a file of that name and checksum.
    rebuilt = aligner_from_dict(json.loads(json.dumps(spec)), context_dirs=[tmp_path])
    assert rebuilt.to_dict() == spec and rebuilt("5.jpg", image_id="5") == {
        "caption": ["a cat"],
        "objects": [],
        "ocr": [],
    }
    assert rebuilt.knows("5.jpg") and not rebuilt.knows("6")
    with pytest.raises(FileNotFoundError, match="'c.txt'.* is not in any folder"):
        aligner_from_dict(spec)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="looked up by image id"):
        PrecomputedAligner(path)
    with pytest.raises(ValueError, match="unknown aligner type 'nope'"):
        aligner_from_dict({"type": "nope"})
    with pytest.raises(ValueError, match="invalid settings for aligner 'rapidocr'"):
        aligner_from_dict({"type": "rapidocr", "colour": "red"})


# --- OCR -------------------------------------------------------------------------------------------


def test_rapidocr_reads_rendered_text_exactly_and_drops_single_characters(rapidocr):
    assert rapidocr(render_text("HELLO WORLD 2015")) == {"ocr": ["HELLO WORLD 2015"]}
    assert rapidocr(render_text("Z", size=(200, 160), font_size=64)) == {"ocr": []}
    assert rapidocr.align([None]) == [{"ocr": []}]
    assert aligner_from_dict(rapidocr.to_dict()).to_dict() == rapidocr.to_dict()


def test_tesseract_reads_rendered_text_exactly(tesseract):
    assert tesseract(render_text("HELLO WORLD 2015")) == {"ocr": ["HELLO WORLD 2015"]}
    assert tesseract(render_text("Z", size=(200, 160), font_size=64)) == {"ocr": []}
    assert aligner_from_dict(tesseract.to_dict()).to_dict() == tesseract.to_dict()


def test_ocr_on_real_tweet_images(shared_data, rapidocr, tesseract):
    images = shared_data / "images" / "twitter2015"
    assert rapidocr(load_image(images / "27.jpg")) == {"ocr": ["The more people you love,", "the weaker you are."]}
    assert rapidocr(load_image(images / "102.jpg")) == {"ocr": ["ATHLETICO"]}
    # 33.jpg is PNG data behind a .jpg name; its lone digit "6" badges are one-character junk.
    endorsements = rapidocr(load_image(images / "33.jpg"))["ocr"]
    assert endorsements[:3] == ["Most endorsed for...", "23", "Mobile Applications"]
    assert "6" not in endorsements and "Extreme Ironing" in endorsements
    assert tesseract(load_image(images / "27.jpg"))["ocr"] == ["you love,"]
    assert tesseract(load_image(images / "33.jpg"))["ocr"][0] == "Most endorsed for..."


# --- image loading ---------------------------------------------------------------------------------


def test_load_image_handles_png_behind_jpg_name_and_transparency(shared_data):
    with Image.open(shared_data / "images" / "twitter2015" / "113.jpg") as raw:
        assert raw.format == "PNG" and raw.mode == "RGBA"
    image = load_image(shared_data / "images" / "twitter2015" / "113.jpg")
    assert image.mode == "RGB" and image.size == (600, 211)


def test_load_image_applies_exif_orientation(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[:5].mean(), np.asarray(image)[-5:].mean()
    assert top > 200 and bottom < 50


def test_load_image_refuses_missing_corrupt_truncated_and_bomb_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "junk.jpg")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[:2000])
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "truncated.jpg")
    # 81 megapixels of 1-bit zeros (under Pillow's own warning limit): a few kB on disk, refused before decoding.
    Image.new("1", (9_000, 9_000)).save(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="81000000 pixels, more than max_pixels=64000000: refused before decoding"):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="more than max_pixels=1000"):
        load_image(tmp_path / "truncated.jpg", max_pixels=1000)


def test_find_image_file_by_id_or_name(tmp_path):
    (tmp_path / "12.png").write_bytes(b"")
    assert find_image_file(tmp_path, "12.jpg") == tmp_path / "12.png"
    assert find_image_file(tmp_path, "12") == tmp_path / "12.png"
    assert find_image_file(tmp_path, "13.jpg") is None


# --- object tags and captions through real transformers pipelines on tiny random models --------------

LABELS = ["dog", "black shirt", "N/A", "white_dog", "car"]


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> Path:
    """A tiny random YOLOS detector saved with its image processor, so pipelines load it from a folder."""
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(0)
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=[64, 64],
        patch_size=16,
        num_detection_tokens=12,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    model = YolosForObjectDetection(config).eval()
    with torch.no_grad():
        # Zero-initialised detection tokens would make all 12 detections identical; spread them out.
        model.vit.embeddings.detection_tokens.normal_()
        model.vit.embeddings.position_embeddings.normal_()
    folder = tmp_path_factory.mktemp("yolos")
    model.save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(folder)
    return folder


def test_object_tag_rules_threshold_order_dedup_top_k():
    aligner = ObjectTagAligner.__new__(ObjectTagAligner)
    aligner.threshold, aligner.top_k, aligner.deduplicate = 0.3, 3, True
    detections = [
        {"score": 0.2, "label": "cat"},
        {"score": 0.9, "label": "white_dog"},
        {"score": 0.5, "label": "N/A"},
        {"score": 0.6, "label": "car"},
        {"score": 0.6, "label": "bus"},
        {"score": 0.7, "label": "white_dog"},
        {"score": 0.4, "label": "tree"},
    ]
    assert aligner.tags(detections) == ["white dog", "bus", "car"]
    aligner.deduplicate, aligner.top_k = False, 10
    assert aligner.tags(detections) == ["white dog", "white dog", "bus", "car", "tree"]


def test_object_tags_through_the_object_detection_pipeline(tiny_detector):
    from transformers import pipeline

    images = [noise_image(0), None, noise_image(1)]
    raw = pipeline("object-detection", model=str(tiny_detector))([images[0], images[2]], threshold=0.0)
    assert [len(r) for r in raw] == [12, 12]
    aligner = ObjectTagAligner(str(tiny_detector), threshold=0.0, top_k=10)
    results = aligner.align(images)
    assert results[1] == {"objects": []}
    for result, detections in zip([results[0], results[2]], raw):
        expected = []
        for det in sorted(detections, key=lambda d: (-d["score"], d["label"])):
            label = det["label"].replace("_", " ")
            if label != "N/A" and label not in expected:
                expected.append(label)
        assert result["objects"] == expected and len(expected) >= 2
    middle = sorted(d["score"] for d in raw[0])[6]
    strict = ObjectTagAligner(str(tiny_detector), threshold=middle, top_k=1).align(images[:1])[0]["objects"]
    assert strict == results[0]["objects"][:1]
    assert ObjectTagAligner(str(tiny_detector), threshold=1.01).align(images[:1]) == [{"objects": []}]
    spec = aligner.to_dict()
    assert spec["type"] == "object-detection" and spec["precomputed"] is False
    assert aligner_from_dict(spec).align(images) == results


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory, minilm_dir) -> Path:
    """A tiny random ViT→GPT-2 captioner with the offline MiniLM tokenizer, saved as a folder."""
    return save_tiny_captioner(tmp_path_factory.mktemp("captioner"), minilm_dir)


def test_captions_from_a_captioner_folder_equal_its_own_generation(tiny_captioner):
    from transformers import AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessor

    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    aligner = CaptionAligner(str(tiny_captioner), generate_kwargs=settings, batch_size=2)
    images = [noise_image(0), None, noise_image(1)]
    results = aligner.align(images)
    assert results[1] == {"caption": []}
    model = VisionEncoderDecoderModel.from_pretrained(tiny_captioner).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_captioner)
    pixels = ViTImageProcessor.from_pretrained(tiny_captioner)([images[0], images[2]], return_tensors="pt")
    generated = model.generate(pixels.pixel_values, **settings)
    assert generated.shape[1] == 1 + 4  # the start token, then exactly the requested 4 new tokens
    expected = [" ".join(t.split()) for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    assert [results[0]["caption"], results[2]["caption"]] == [[e] if e else [] for e in expected]
    assert any(expected) and all(len(e.split()) <= 4 for e in expected)
    assert aligner_from_dict(aligner.to_dict()).align(images) == results


# --- Florence-2 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_florence2(tmp_path_factory) -> Path:
    """A tiny random Florence-2 (DaViT + BART) with an offline byte-level BPE tokenizer, saved as a folder.

    The last decoder layer norm is set to output a constant vector that the embedding of " dog" points
    along, so greedy decoding writes " dog" again and again: an exact, known answer for every task.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        BartConfig,
        BartTokenizerFast,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
    )

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [
        "What does the image describe?",
        "Locate the objects with category name in the image.",
        "What is the text in the image?",
        "a dog on the grass",
        "a man in a black shirt",
    ] * 5
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=500,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tokenizer = BartTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(1000)] + ["<od>", "</od>", "<ocr>", "</ocr>"])
    # 32x32 pixels → DaViT stages of stride 4 and 2 → 4x4 = 16 patch tokens + 1 pooled token.
    image_processor = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False, image_seq_length=17)
    processor = Florence2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        post_processor_config={"pure_text": {}, "description_with_bboxes": {}},
    )
    vision = Florence2VisionConfig(
        depths=(1, 1),
        patch_size=(7, 3),
        patch_stride=(4, 2),
        patch_padding=(3, 1),
        patch_prenorm=(False, True),
        embed_dim=(16, 32),
        num_heads=(2, 2),
        num_groups=(2, 2),
        window_size=2,
        projection_dim=32,
        max_position_embeddings=8,
    )
    text = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
    )
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(
        Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    ).eval()
    (dog,) = tokenizer(" dog", add_special_tokens=False).input_ids
    with torch.no_grad():
        norm = model.model.language_model.decoder.layers[-1].final_layer_norm
        direction = torch.randn(32)
        norm.weight.zero_()
        norm.bias.copy_(direction)
        model.get_input_embeddings().weight[dog] = direction * 5
    # Set on the generation config itself: transformers 5 no longer copies BART's forced tokens from the model config.
    model.generation_config.forced_bos_token_id = 0
    model.generation_config.forced_eos_token_id = 2
    folder = tmp_path_factory.mktemp("florence2")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_florence2_runs_each_task_into_its_segment(tiny_florence2):
    settings = {"max_new_tokens": 5, "do_sample": False, "num_beams": 1}
    aligner = Florence2Aligner(str(tiny_florence2), generate_kwargs=settings)
    results = aligner.align([noise_image(0), None, noise_image(1)])
    # <s> then " dog" x3 then the forced </s>; <OD> answers without <loc_*> boxes give no tags.
    expected = {"caption": ["dog dog dog"], "objects": [], "ocr": ["dog dog dog"]}
    assert results == [expected, {"caption": [], "objects": [], "ocr": []}, expected]
    only_ocr = Florence2Aligner(str(tiny_florence2), tasks=["<OCR>"], generate_kwargs=settings)
    assert only_ocr(noise_image(0)) == {"caption": [], "objects": [], "ocr": ["dog dog dog"]}
    assert aligner_from_dict(aligner.to_dict()).to_dict() == aligner.to_dict()
    with pytest.raises(ValueError, match="unsupported Florence-2 tasks"):
        Florence2Aligner(str(tiny_florence2), tasks=["<SEGMENT>"])


def test_florence2_object_answers_are_parsed_by_the_real_post_processor(tiny_florence2):
    aligner = Florence2Aligner(str(tiny_florence2), top_k=2)
    answer = "</s><s>black shirt<loc_10><loc_20><loc_30><loc_40>dog<loc_1><loc_2><loc_3><loc_4>black shirt<loc_5><loc_6><loc_7><loc_8>cat<loc_1><loc_2><loc_3><loc_4></s>"
    parsed = aligner.processor.post_process_generation(answer, task="<OD>", image_size=(80, 60))["<OD>"]
    assert parsed["labels"] == ["black shirt", "dog", "black shirt", "cat"]
    assert aligner.segment_from_parsed("<OD>", parsed) == ["black shirt", "dog"]
    assert aligner.segment_from_parsed("<OCR>", " Z ") == []
    assert aligner.segment_from_parsed("<CAPTION>", " a  dog\n") == ["a dog"]


def test_precomputed_paths_compare_equal_however_they_are_spelled(tmp_path, monkeypatch):
    # A rerun of `python -m preprocess` compares settings; a symlinked or relative spelling of the same file
    # must not count as different settings.
    captions = tmp_path / "real" / "captions.txt"
    captions.parent.mkdir()
    captions.write_text("1.jpg :a dog\n")
    (tmp_path / "link").symlink_to(captions.parent)
    monkeypatch.chdir(tmp_path)
    spellings = [str(captions), str(tmp_path / "link" / "captions.txt"), "real/captions.txt", captions]
    specs = [alignment_ita.normalize_spec({"type": "precomputed", "paths": [p]}) for p in spellings]
    assert all(spec == specs[0] for spec in specs)
    assert specs[0]["files"] == [
        {
            "name": "captions.txt",
            "sha256": hashlib.sha256(b"1.jpg :a dog\n").hexdigest(),
            "source": "precomputed file captions.txt",
        }
    ]
    assert PrecomputedAligner("link/captions.txt").to_dict() == specs[0]
    # The same bytes changed are another setting.
    captions.write_text("1.jpg :a cat\n")
    assert alignment_ita.normalize_spec({"type": "precomputed", "paths": [captions]}) != specs[0]


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
            alignment_ita.normalize_spec(bad)
        with pytest.raises(ValueError, match=message):
            aligner_from_dict(bad, context_dirs=[tmp_path])


@pytest.mark.parametrize("name", ["captions.txt", "contexts.jsonl"])
def test_a_context_file_that_is_not_utf8_is_named(tmp_path, name):
    path = tmp_path / name
    line = '{"image_id": "1", "caption": "café"}\n' if name.endswith(".jsonl") else "1.jpg :café\n"
    path.write_bytes(line.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{name}: not UTF-8 text after line 0 .*convert the file to UTF-8"):
        PrecomputedAligner(path)
