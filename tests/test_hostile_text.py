"""Text that cannot break the pipeline: threads sharing it, wrong types, lone surrogates, special-token strings,
and pathological strings for the pre-tokenizer."""

import threading
import time

import pytest

from encoding_ita import encode_example
from helpers import all_entity_model, tiny_ita_model
from pipeline_ita import MultimodalNERPipeline
from pretokenizer_ita import TweetPreTokenizer

CONTEXT = "a man in a suit waving at a crowd of people in front of a large building with flags " * 3
INPUTS = [
    {"text": "Obama meets Angela Merkel in Berlin", "visual_context": CONTEXT},
    {"text": "Kawhi Leonard wins the fan vote for Block of the Year", "visual_context": "a basketball player"},
    {"text": "RT @NBA : the Golden State Warriors visit the White House", "visual_context": ""},
    {"text": " ".join(["Paris"] * 700), "visual_context": CONTEXT},  # longer than the encoder: windows
]


@pytest.fixture(scope="module")
def pipe(minilm_tokenizer):
    return MultimodalNERPipeline(
        model=tiny_ita_model(minilm_tokenizer, seed=11, max_positions=512), tokenizer=minilm_tokenizer
    )


def test_threads_sharing_one_pipeline_get_the_sequential_results(pipe):
    expected = [pipe(item, aggregation_strategy="none") for item in INPUTS]
    results, errors = {}, []

    def work(worker: int) -> None:
        try:
            for round_ in range(3):
                for index, item in enumerate(INPUTS):
                    results[(worker, round_, index)] = pipe(item, aggregation_strategy="none")
        except Exception as error:  # noqa: BLE001 - any failure in a thread fails the test below
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert errors == []
    assert len(results) == 4 * 3 * len(INPUTS)
    for (_, _, index), result in results.items():
        assert [(e["word"], e["entity"], e["start"]) for e in result] == [
            (e["word"], e["entity"], e["start"]) for e in expected[index]
        ]
        assert [e["score"] for e in result] == pytest.approx([e["score"] for e in expected[index]], abs=1e-6)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"Obama in Paris", "bytes"),
        ({"text": "Obama in Paris", "visual_context": 5}, "visual_context"),
        ({"text": "Obama in Paris", "image_id": 1.5}, "image_id"),
        ({"text": 42}, "int"),
        ([["Obama", 3]], "list"),
    ],
)
def test_wrong_types_are_a_type_error_at_call_time(pipe, value, message):
    with pytest.raises(TypeError, match=message):
        pipe(value)


def test_numeric_image_ids_are_ids(pipe):
    assert pipe({"text": "Obama in Paris", "image_id": 12345}) == pipe({"text": "Obama in Paris", "image_id": "12345"})


def test_lone_surrogates_are_read_with_exact_offsets(pipe, minilm_tokenizer):
    text = "Obama \udcff meets Merkel \ud800in Paris"
    words = pipe(text, aggregation_strategy="none", ignore_labels=[])
    assert [e["word"] for e in words] == [w for w, _ in TweetPreTokenizer().pre_tokenize_str(text)]
    assert all(text[e["start"] : e["end"]] == e["word"] for e in words)
    assert pipe(text, visual_context="a \udcff man")  # the context too


def test_special_token_strings_are_read_as_text(minilm_tokenizer):
    pipe = MultimodalNERPipeline(model=all_entity_model(minilm_tokenizer), tokenizer=minilm_tokenizer)
    words = ["[SEP]", "Obama", "[PAD]", "Paris", "[CLS]"]
    # The all-entity model tags every word it reads: every word, specials included, must come back tagged.
    tagged = pipe(words, is_split_into_words=True, aggregation_strategy="none")
    assert [e["word"] for e in tagged] == words
    encoded = encode_example(minilm_tokenizer, words, "a [SEP] man [PAD] with </s> [MASK]", text_view=False)
    specials = {minilm_tokenizer.convert_tokens_to_ids(t) for t in ("[SEP]", "[PAD]", "[CLS]", "[MASK]")}
    ids = encoded["input_ids"]
    # Only the template's own [CLS] ... [SEP] ... [SEP]; no [PAD] or [MASK] inside the sequence.
    assert [i for i in ids if i in specials] == [minilm_tokenizer.cls_token_id] + [minilm_tokenizer.sep_token_id] * 2
    assert all(encoded["attention_mask"])


@pytest.mark.parametrize("piece", ["a%", "a.", "1.", "a@", "a'", "#a", "h…", "w/", ":", ";1", "_h"])
def test_the_pre_tokenizer_is_linear_on_long_strings_without_spaces(piece):
    text = piece * (40000 // len(piece))
    start = time.perf_counter()
    words = TweetPreTokenizer().pre_tokenize_str(text)
    seconds = time.perf_counter() - start
    assert "".join(word for word, _ in words) == text
    # A quadratic rule took 22 s on "a%" * 20000; linear is ~0.05 s here, so 2 s leaves room for a busy machine.
    assert seconds < 2.0
