"""encode_example / encode_windows / pad_batch: both views, first sub-tokens, context-only truncation, no silent word loss."""

import pytest
import torch

from encoding_ita import TweetTooLongError, encode_example, encode_windows, pad_batch, plan_windows

WORDS = ["Kawhi", "Leonard", "wins", "\u200b", "#NBAAwards", "\u00ad"]
CONTEXT = "a man playing basketball on a court with a crowd watching the game"


@pytest.fixture(params=["bert", "xlm-roberta"])
def tokenizer(request, minilm_tokenizer, tiny_xlmr_tokenizer):
    return minilm_tokenizer if request.param == "bert" else tiny_xlmr_tokenizer


def test_word_index_points_at_each_words_first_subtoken(tokenizer):
    example = encode_example(tokenizer, WORDS, CONTEXT)
    for prefix in ("", "text_"):
        encoding = tokenizer.convert_ids_to_tokens(example[prefix + "input_ids"])
        assert len(example[prefix + "word_index"]) == len(WORDS)
        positions = example[prefix + "word_index"]
        assert positions == sorted(positions) and len(set(positions)) == len(WORDS)
        assert all(encoding[p] not in (tokenizer.cls_token, tokenizer.sep_token) for p in positions)
    # The tweet part is identical in both views: same ids up to the first separator.
    n = len(example["text_input_ids"]) - 1
    assert example["input_ids"][:n] == example["text_input_ids"][:n]
    assert len(example["input_ids"]) > len(example["text_input_ids"])


def test_invisible_words_keep_a_position(minilm_tokenizer):
    # BERT's normaliser deletes U+200B and U+00AD entirely; they must still get a sub-token (and a tag).
    example = encode_example(minilm_tokenizer, WORDS, "")
    tokens = minilm_tokenizer.convert_ids_to_tokens(example["input_ids"])
    assert tokens[example["word_index"][3]] == minilm_tokenizer.unk_token
    assert tokens[example["word_index"][5]] == minilm_tokenizer.unk_token


def test_context_is_truncated_never_the_tweet(tokenizer):
    long_context = " ".join(["basketball court crowd"] * 100)
    example = encode_example(tokenizer, WORDS, long_context, max_context_tokens=10)
    extra = tokenizer.num_special_tokens_to_add(pair=True) - tokenizer.num_special_tokens_to_add(pair=False)
    assert len(example["input_ids"]) == len(example["text_input_ids"]) + extra + 10
    # Limited by the encoder rather than by the budget: the context shrinks, the words all stay.
    text_length = len(example["text_input_ids"])
    example = encode_example(
        tokenizer, WORDS, long_context, max_context_tokens=1000, max_length=text_length + extra + 3
    )
    assert len(example["input_ids"]) == text_length + extra + 3
    assert len(example["word_index"]) == len(WORDS)


def test_no_room_or_no_context_gives_identical_views(tokenizer):
    for example in (
        encode_example(tokenizer, WORDS, ""),
        encode_example(tokenizer, WORDS, CONTEXT, max_context_tokens=0),
    ):
        assert example["input_ids"] == example["text_input_ids"]
        assert example["word_index"] == example["text_word_index"]


def test_a_tweet_longer_than_the_encoder_is_an_error(tokenizer):
    words = ["basketball"] * 40
    with pytest.raises(TweetTooLongError, match="40 words need .* sub-tokens, more than the encoder's limit of 20"):
        encode_example(tokenizer, words, CONTEXT, max_length=20)


@pytest.mark.parametrize("words", [[], ["ok", ""], ["ok", None]])
def test_bad_words_are_errors(minilm_tokenizer, words):
    with pytest.raises(ValueError):
        encode_example(minilm_tokenizer, words, "")


def test_text_view_can_be_left_out(minilm_tokenizer):
    example = encode_example(minilm_tokenizer, WORDS, CONTEXT, text_view=False)
    assert not any(key.startswith("text_") for key in example)


def test_pad_batch_pads_each_field_with_its_own_value(minilm_tokenizer):
    a = encode_example(minilm_tokenizer, WORDS, CONTEXT)
    b = encode_example(minilm_tokenizer, ["NBA"], "")
    a["labels"], b["labels"] = [1, 2, 0, 0, 7, 0], [5]
    batch = pad_batch([a, b], minilm_tokenizer.pad_token_id)
    width = len(a["input_ids"])
    assert batch["input_ids"].shape == (2, width)
    assert batch["input_ids"][1, len(b["input_ids"]) :].eq(minilm_tokenizer.pad_token_id).all()
    assert batch["attention_mask"][1].sum() == len(b["input_ids"])
    assert batch["word_index"][1].tolist() == [b["word_index"][0]] + [-1] * 5
    assert batch["text_word_index"][1].tolist() == [b["text_word_index"][0]] + [-1] * 5
    assert batch["labels"].tolist() == [[1, 2, 0, 0, 7, 0], [5] + [-100] * 5]
    assert batch["input_ids"].dtype == torch.long


@pytest.mark.parametrize("context", ["", CONTEXT])
def test_windows_cut_from_one_tokenisation_equal_encoding_each_window(tokenizer, context):
    # 60 words (some invisible, some split into several sub-tokens) through an encoder of 48 sub-tokens: each window
    # cut from the one tokenisation is exactly what encoding its words alone with the context gives.
    words = (WORDS + ["Toronto", "Raptors", "championship", "parade", "🏀", "#WeTheNorth"]) * 5
    windows = encode_windows(tokenizer, words, context, max_context_tokens=12, max_length=48, stride=4)
    assert len(windows) > 2 and windows[0][0][0] == 0 and windows[-1][0][1] == len(words)
    for ((start, end), _), ((next_start, _), _) in zip(windows, windows[1:]):
        assert start < next_start < end  # consecutive windows overlap
    for (start, end), features in windows:
        expected = encode_example(
            tokenizer, words[start:end], context, max_context_tokens=12, max_length=48, text_view=False
        )
        assert features == expected
        assert len(features["input_ids"]) <= 48
    # A tweet that fits is one window, equal to its training encoding's cross-modal view.
    ((span, features),) = encode_windows(tokenizer, WORDS, context, max_context_tokens=12, max_length=48)
    assert span == (0, len(WORDS))
    assert features == encode_example(tokenizer, WORDS, context, max_context_tokens=12, max_length=48, text_view=False)


def test_plan_windows_covers_every_word_within_the_budget(minilm_tokenizer):
    lengths = [1, 3, 2, 2, 1, 4, 1, 1, 2, 3, 1, 1]
    windows = plan_windows(lengths, budget=6, stride=2)
    # Each window starts `stride` words before the previous end, or half a window after its start if that is later.
    assert windows == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 12)]
    assert all(sum(lengths[start:end]) <= 6 for start, end in windows)
    # Without overlap the windows tile the words; a huge stride still advances by half a window.
    assert plan_windows(lengths, budget=6, stride=0) == [(0, 3), (3, 5), (5, 8), (8, 11), (11, 12)]
    assert plan_windows([1] * 8, budget=4, stride=10) == [(0, 4), (2, 6), (4, 8)]
    assert plan_windows([2, 2], budget=6, stride=3) == [(0, 2)]
    with pytest.raises(ValueError, match="Word 1 alone needs 7 sub-tokens, more than the 6"):
        plan_windows([1, 7, 1], budget=6, stride=1)
    # Through `encode_windows`, the message names the word (BERT splits it at every dot: 39 sub-tokens).
    word = ".".join("abcdefghijklmnopqrst")
    with pytest.raises(ValueError, match=r"more than the 18 a window of this encoder holds.*'a\.b\.c"):
        encode_windows(minilm_tokenizer, ["the", word, "end"], "", max_length=20)


def test_encodings_equal_the_tokenizers_own_call_even_after_its_settings_change(tokenizer):
    # Encoding reads the backend (Rust) tokenizer directly once a first call through `tokenizer(...)` showed they
    # agree; someone else's truncation or padding setting on the shared tokenizer must not leak into it.
    context_words = CONTEXT.split()
    reference = tokenizer(WORDS[:3], context_words, is_split_into_words=True)
    example = encode_example(tokenizer, WORDS[:3], CONTEXT, max_context_tokens=100, text_view=False)
    assert example["input_ids"] == reference["input_ids"]
    assert example["attention_mask"] == reference["attention_mask"]
    assert example.get("token_type_ids") == reference.get("token_type_ids")
    tokenizer(WORDS[:3], context_words, is_split_into_words=True, truncation=True, max_length=6, padding="max_length")
    truncated = tokenizer.backend_tokenizer.truncation
    assert truncated is not None and tokenizer.backend_tokenizer.padding is not None
    again = encode_example(tokenizer, WORDS[:3], CONTEXT, max_context_tokens=100, text_view=False)
    assert again == example
    # The same for a word list the tokenizer has not seen before, read directly now that the settings are reset.
    assert tokenizer.backend_tokenizer.truncation is None
    words = ["Toronto", "Raptors", "#WeTheNorth", "🏀"]
    assert (
        encode_example(tokenizer, words, CONTEXT, text_view=False)["input_ids"]
        == (tokenizer(words, context_words, is_split_into_words=True)["input_ids"])
    )


def test_a_tokenizer_that_refuses_pre_split_words_still_refuses():
    # RoBERTa's byte-level BPE without `add_prefix_space` refuses word lists on transformers 4 (5 reads them): encoding
    # does what the tokenizer's own call does, every time, and never bypasses that check by reading the backend.
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import RobertaTokenizerFast

    backend = Tokenizer(models.BPE(vocab={"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "Ġa": 5}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    roberta = RobertaTokenizerFast(tokenizer_object=backend, add_prefix_space=False)
    try:
        expected = roberta(["a", "a"], is_split_into_words=True)["input_ids"]
    except Exception as err:  # noqa: BLE001 - whatever the tokenizer raises, encoding must raise it too.
        for _ in range(2):
            with pytest.raises(type(err), match="add_prefix_space"):
                encode_example(roberta, ["a", "a"], "", text_view=False)
    else:
        for _ in range(2):
            assert encode_example(roberta, ["a", "a"], "", text_view=False)["input_ids"] == expected
