"""encode_example / pad_batch: both views, first sub-tokens, context-only truncation, no silent word loss."""

import pytest
import torch

from encoding_ita import TweetTooLongError, encode_example, pad_batch

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
