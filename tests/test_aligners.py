"""The aligners of aligners_ita on real engines: OCR (RapidOCR, Tesseract) on rendered and real tweet images, object
tags and captions through real transformers pipelines on tiny random models, and Florence-2."""

from pathlib import Path
from unittest import mock

import pytest
import torch

from aligners_ita import CaptionAligner, Florence2Aligner, ObjectTagAligner, RapidOCRAligner, TesseractAligner
from helpers import ROBERTA_STYLE_SPECIALS, noise_image, render_text, roberta_style_post_processor, save_tiny_captioner
from images_ita import load_image
from visual_context_ita import aligner_from_dict


@pytest.fixture(scope="module")
def rapidocr() -> RapidOCRAligner:
    return RapidOCRAligner()


@pytest.fixture(scope="module")
def tesseract() -> TesseractAligner:
    try:
        return TesseractAligner()
    except RuntimeError as err:
        pytest.skip(str(err))


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


# --- object tags and captions through real transformers pipelines on tiny random models --------------

DETECTOR_LABELS = ["dog", "black shirt", "N/A", "white_dog", "car"]


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
        id2label=dict(enumerate(DETECTOR_LABELS)),
        label2id={label: i for i, label in enumerate(DETECTOR_LABELS)},
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


def test_object_tags_load_the_model_at_the_revision_the_spec_records(tiny_detector):
    commit = "0123456789abcdef0123456789abcdef01234567"
    with mock.patch("transformers.pipeline") as pipeline:
        aligner = ObjectTagAligner("hustvl/yolos-tiny", threshold=0.9, revision=commit)
    pipeline.assert_called_once_with("object-detection", model="hustvl/yolos-tiny", revision=commit, device=-1)
    spec = aligner.to_dict()
    assert spec["revision"] == commit
    with mock.patch("transformers.pipeline") as pipeline:
        aligner_from_dict(spec)
    assert pipeline.call_args.kwargs["revision"] == commit
    # Without one, the pipeline loads the default branch, as before; a spec from before `revision` existed still loads.
    assert ObjectTagAligner(str(tiny_detector)).to_dict()["revision"] is None
    old_spec = {key: value for key, value in spec.items() if key != "revision"}
    with mock.patch("transformers.pipeline") as pipeline:
        aligner_from_dict(old_spec)
    assert pipeline.call_args.kwargs["revision"] is None


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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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
    backend.post_processor = roberta_style_post_processor()
    tokenizer = BartTokenizerFast(
        tokenizer_object=backend,
        **ROBERTA_STYLE_SPECIALS,
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
