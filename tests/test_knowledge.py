"""Aligners that write knowledge (knowledge_ita): the one prompt both fill, answers cleaned and capped, and the
image-text-to-text aligner on tiny random LLaVA and Idefics3 models built here, against `generate` called directly."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from helpers import TWEETS, noise_image, save_tiny_vlm
from knowledge_ita import (
    DEFAULT_PROMPT,
    PGIM_PROMPT,
    ImageTextToTextAligner,
    KnowledgePrompt,
    clean_answer,
)
from visual_context_ita import aligner_from_dict, normalize_spec

IMAGES = [noise_image(seed, size=(40 + 7 * seed, 30 + 5 * seed)) for seed in range(5)]
SHORT = {"max_new_tokens": 8, "generate_kwargs": {"min_new_tokens": 8}}


# --- the prompt ---------------------------------------------------------------------------------------------------


def test_the_prompt_reads_the_tweet_and_earlier_segments_joined_as_in_the_context():
    prompt = KnowledgePrompt("Post: {text} | caption: {caption} | tags: {objects} | ocr: {ocr} | {{literal}}")
    segments = {"caption": ["a man", "on a court"], "objects": ["ball", "hoop"], "ocr": ["NBA"]}
    assert prompt.fill("Kawhi   Leonard\nwins", segments) == (
        "Post: Kawhi Leonard wins | caption: a man on a court | tags: ball, hoop | ocr: NBA | {literal}"
    )
    # A segment no earlier aligner produced reads as nothing.
    assert prompt.fill("x", {}) == "Post: x | caption:  | tags:  | ocr:  | {literal}"
    assert "{caption}" in PGIM_PROMPT and "{text}" in DEFAULT_PROMPT and "{caption}" not in DEFAULT_PROMPT


def test_few_shot_examples_come_first_as_user_and_assistant_turns():
    examples = [{"text": "Obama in Paris", "caption": "a man", "answer": "Named entities: 1. Obama (person)"}]
    prompt = KnowledgePrompt("{text} / {caption}", examples)
    assert prompt.turns("Kawhi wins", {"caption": ["a court"]}) == [
        ("user", "Obama in Paris / a man"),
        ("assistant", "Named entities: 1. Obama (person)"),
        ("user", "Kawhi wins / a court"),
    ]


@pytest.mark.parametrize(
    "template, message",
    [
        ("Post: {tweet}", r"placeholder \{tweet\} is unknown: a prompt reads \{text\}, \{caption\}"),
        ("{text:>10}", r"placeholder \{text:>10\} is unknown"),
        ("{text!r}", r"placeholder \{text!r\} is unknown"),
        ("{text.upper}", r"placeholder \{text.upper\} is unknown"),
        ("Image: {caption}", r"never reads the tweet: put \{text\}"),
        ("{text} {", "not a valid template"),
    ],
)
def test_a_prompt_with_an_unknown_placeholder_is_refused_naming_it(template, message):
    with pytest.raises(ValueError, match=message):
        KnowledgePrompt(template)


@pytest.mark.parametrize(
    "example, message",
    [
        ({"text": "x"}, "needs an 'answer'"),
        ({"text": "x", "answer": "y", "image": "z"}, r"may give \['text', 'caption', 'objects', 'ocr'\]"),
        ({"text": 1, "answer": "y"}, "a dict of strings"),
        ("x", "a dict of strings"),
    ],
)
def test_a_malformed_few_shot_example_is_refused(example, message):
    with pytest.raises(ValueError, match=message):
        KnowledgePrompt("{text}", [example])


def test_answers_are_printable_whitespace_collapsed_and_capped():
    assert clean_answer("Named entities:\n1. Kawhi Leonard (person)\x00\x1b[31m  ", 10) == [
        "Named entities: 1. Kawhi Leonard (person) [31m"
    ]
    assert clean_answer(" ".join(f"w{i}" for i in range(5000)), 200) == [" ".join(f"w{i}" for i in range(200))]
    assert clean_answer("", 10) == [] and clean_answer(" \n\t\u200b", 10) == [] and clean_answer(None, 10) == []


# --- the image-text-to-text aligner -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["llava", "idefics3", "paligemma"])
def tiny_vlm(request, tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp(request.param), request.param)


def direct_generation(folder, texts, segments, images, aligner) -> list[str]:
    """What the model answers when called by hand, one image at a time, with greedy decoding."""
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    answers = []
    for text, image_segments, image in zip(texts, segments, images):
        prompt = aligner.prompt.fill(text, image_segments)
        if processor.chat_template:  # PaliGemma's processor has none: it reads the prompt as it is
            chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            prompt = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
        inputs.pop("labels", None)
        with torch.inference_mode():
            generated = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, num_beams=1)
        answer = processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        answers.append(clean_answer(answer, 200)[0])
    return answers


def test_a_batch_gives_each_image_the_answer_generate_gives_it_alone(tiny_vlm):
    aligner = ImageTextToTextAligner(str(tiny_vlm), prompt="{text} seen with {caption}", batch_size=5, **SHORT)
    texts = [*TWEETS, "x"]
    segments = [{"caption": [f"caption {i}" * (i + 1)]} for i in range(5)]
    batched = aligner.align(IMAGES, None, texts=texts, segments=segments)
    answers = [result["knowledge"][0] for result in batched]
    # The tiny model's answers depend on the tweet and the image, so equality below says something.
    assert len(set(answers)) >= 3, answers
    assert answers == direct_generation(tiny_vlm, texts, segments, IMAGES, aligner)
    aligner.batch_size = 2  # batches of unequal prompts, left-padded
    assert aligner.align(IMAGES, None, texts=texts, segments=segments) == batched
    # An absent image gets no knowledge and leaves the others as they were.
    mixed = aligner.align([IMAGES[0], None, IMAGES[2]], None, texts=texts[:3], segments=segments[:3])
    assert mixed == [batched[0], {"knowledge": []}, batched[2]]


def test_decoding_is_greedy_whatever_the_checkpoints_generation_config_says(tiny_vlm, tmp_path):
    sampling = tmp_path / "sampling"
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm)
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=5.0, top_k=0, num_beams=1, max_new_tokens=1000, **_special_tokens(model)
    )
    model.save_pretrained(sampling)
    AutoProcessor.from_pretrained(tiny_vlm).save_pretrained(sampling)
    greedy = ImageTextToTextAligner(str(tiny_vlm), **SHORT).align(IMAGES, None, texts=TWEETS + ["x"])
    for _ in range(2):
        torch.manual_seed(len(_ * "seed"))  # sampling would follow the seed
        assert ImageTextToTextAligner(str(sampling), **SHORT).align(IMAGES, None, texts=TWEETS + ["x"]) == greedy
    with pytest.raises(ValueError, match=r"generate_kwargs \['do_sample', 'temperature'\]: .* always decodes greedily"):
        ImageTextToTextAligner(str(tiny_vlm), generate_kwargs={"do_sample": True, "temperature": 0.7})


def _special_tokens(model) -> dict:
    config = model.generation_config
    return {
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
    }


def test_the_spec_round_trips_and_rebuilds_the_same_aligner(tiny_vlm):
    # Few-shot examples are turns of a conversation: only for a processor with a chat template (not PaliGemma's).
    chat = bool(AutoProcessor.from_pretrained(tiny_vlm).chat_template)
    examples = [{"text": "Obama in Paris", "answer": "Named entities: 1. Obama (person)"}] if chat else None
    aligner = ImageTextToTextAligner(str(tiny_vlm), prompt="{text}!", examples=examples, dtype="float32", **SHORT)
    spec = json.loads(json.dumps(aligner.to_dict()))
    assert spec == normalize_spec(spec) and spec["type"] == "image-text-to-text" and spec["examples"] == examples
    rebuilt = aligner_from_dict(spec)
    assert rebuilt.to_dict() == aligner.to_dict()
    texts = TWEETS[:2]
    assert rebuilt.align(IMAGES[:2], None, texts=texts) == aligner.align(IMAGES[:2], None, texts=texts)
    if chat:  # the examples are turns before the tweet's, so they change the answer
        plain = ImageTextToTextAligner(str(tiny_vlm), prompt="{text}!", **SHORT)
        assert plain.align(IMAGES[:2], None, texts=texts) != aligner.align(IMAGES[:2], None, texts=texts)


def test_an_aligner_called_on_one_image_reads_its_text(tiny_vlm):
    aligner = ImageTextToTextAligner(str(tiny_vlm), **SHORT)
    assert aligner(IMAGES[0], text=TWEETS[0]) == aligner.align(IMAGES[:1], None, texts=TWEETS[:1])[0]
    assert aligner(IMAGES[0], text=TWEETS[0]) != aligner(IMAGES[0], text=TWEETS[3])


def test_processor_settings_are_set_on_the_processor_that_owns_them(tmp_path):
    folder = save_tiny_vlm(tmp_path / "splitting", "idefics3", image_splitting=True)
    split = ImageTextToTextAligner(str(folder), **SHORT)
    whole = ImageTextToTextAligner(str(folder), processor_kwargs={"do_image_splitting": False}, **SHORT)
    assert split.processor.image_processor.do_image_splitting and not whole.processor.image_processor.do_image_splitting

    def prompt_tokens(aligner) -> int:
        chat = aligner.conversation("x", {})
        prompt = aligner.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = aligner.processor(text=[prompt], images=[[noise_image(0, (64, 64))]], return_tensors="pt")
        return inputs["input_ids"].shape[1]

    assert prompt_tokens(whole) < prompt_tokens(split)
    with pytest.raises(ValueError, match="processor_kwargs 'no_such_setting': neither Idefics3Processor"):
        ImageTextToTextAligner(str(folder), processor_kwargs={"no_such_setting": 1})


def test_a_model_that_is_not_a_vision_language_model_is_refused_when_built(tmp_path, minilm_dir):
    with pytest.raises(ValueError, match="is a 'bert' model, not an image-text-to-text model: give a vision-language"):
        ImageTextToTextAligner(str(minilm_dir))


def test_a_processor_without_a_chat_template_takes_the_prompt_but_no_examples(tmp_path):
    folder = save_tiny_vlm(tmp_path / "paligemma", "paligemma")
    plain = ImageTextToTextAligner(str(folder), prompt="{text}", **SHORT)
    assert not plain.chat and plain.prompt_text("Kawhi wins", {}) == "Kawhi wins"
    with pytest.raises(ValueError, match="has no chat template, so few-shot examples"):
        ImageTextToTextAligner(str(folder), examples=[{"text": "x", "answer": "y"}])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"max_new_tokens": 0}, "`max_new_tokens` must be a positive int"),
        ({"batch_size": True}, "`batch_size` must be a positive int"),
        ({"dtype": "float33"}, "dtype 'float33' is not a torch dtype"),
        ({"prompt": "{caption}"}, "never reads the tweet"),
    ],
)
def test_bad_settings_are_errors_when_built(tmp_path_factory, settings, message):
    folder = tmp_path_factory.getbasetemp() / "bad-settings-llava"
    if not folder.exists():
        save_tiny_vlm(folder, "llava")
    with pytest.raises(ValueError, match=message):
        ImageTextToTextAligner(str(folder), **settings)


def test_a_model_that_answers_nothing_gives_no_knowledge(tmp_path):
    folder = save_tiny_vlm(tmp_path / "mute", "llava")
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    # Every answer ends at once: the end-of-utterance token outscores all others.
    with torch.no_grad():
        head = model.get_output_embeddings()
        head.weight.zero_()
        bias = torch.full((head.weight.shape[0],), -1e4)
        bias[processor.tokenizer.eos_token_id] = 1e4
        head.bias = torch.nn.Parameter(bias)
    aligner = ImageTextToTextAligner((copy.deepcopy(model), processor), max_new_tokens=8)
    assert aligner.align(IMAGES[:2], None, texts=TWEETS[:2]) == [{"knowledge": []}, {"knowledge": []}]
