"""Turning a tweet's words and its visual context into ITA model inputs, and padding those into batches.

This file is remote code (the pipeline imports it), so it imports only torch and transformers.

An encoded example holds two views of the tweet (docs/method.md §2–§3):
    cross-modal view x': `input_ids`, `attention_mask`, `token_type_ids`, `word_index`
        = tweet words, the tokenizer's separator, then the visual context;
    text-only view x: the same fields prefixed with `text_`.
`word_index[i]` is the position of the first sub-token of tweet word i. The tweet is never cut: the context
is truncated to fit (as `truncation="only_second"` would), and a tweet that alone exceeds the encoder's limit is
an error rather than a silent loss of words. Encoding never changes the tokenizer's settings, so one tokenizer can
serve many threads; special-token strings in the text are read as text.
"""

import re
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

VIEW_FIELDS = ("input_ids", "attention_mask", "token_type_ids", "word_index")
TEXT_PREFIX = "text_"
# Padding value of each field in a batch; `labels` are word-level and padded like the word index.
PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "word_index": -1, "labels": -100}
_SURROGATES = re.compile("[\ud800-\udfff]")


class TweetTooLongError(ValueError):
    """A tweet whose words alone do not fit the encoder; the pipeline splits such tweets into chunks."""


def _encode(tokenizer: PreTrainedTokenizerBase, words: list[str], context_words: list[str] | None):
    # Never with truncation or padding arguments: those are settings of the one Rust tokenizer shared by every
    # thread, and changing them while another thread encodes fails ("Already borrowed"). The context is cut by
    # `_truncate_context` instead. `verbose=False`: a pair longer than the encoder is cut right after.
    return tokenizer(words, context_words, is_split_into_words=True, add_special_tokens=True, verbose=False)


def _as_text(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> list[str]:
    """`words` with lone surrogates replaced and special-token strings broken up, so both are read as text.

    A tweet or context that contains `[SEP]`, `</s>` or `[PAD]` must not become that special token (a `[PAD]`
    would even be attended as padding): a space after its first character makes the tokenizer read the pieces as
    ordinary text, within the same word. Lone surrogates (`"\udcff"`), which no encoder can read, become U+FFFD.
    """
    specials = [token for token in tokenizer.all_special_tokens if len(token) > 1]
    cleaned = []
    for word in words:
        word = _SURROGATES.sub("\ufffd", word)
        for token in specials:
            if token in word:
                word = word.replace(token, f"{token[0]} {token[1:]}")
        cleaned.append(word)
    return cleaned


def _truncate_context(encoding, room: int) -> dict[str, list[int]]:
    """The fields of a pair encoding with the context (sequence 1) cut to its first `room` sub-tokens.

    The same cut as `truncation="only_second"`: context sub-tokens are removed from its end, the tweet and the
    special tokens stay.
    """
    sequence_ids = encoding.sequence_ids()
    context_positions = [i for i, sequence in enumerate(sequence_ids) if sequence == 1]
    drop = set(context_positions[room:])
    return {
        field: [v for i, v in enumerate(encoding[field]) if i not in drop]
        for field in VIEW_FIELDS[:3]
        if field in encoding
    }


def _first_subtokens(encoding, num_words: int) -> list[int]:
    """Position of the first sub-token of every tweet word (sequence 0) in a fast-tokenizer encoding."""
    first: list[int | None] = [None] * num_words
    for position, (word, sequence) in enumerate(zip(encoding.word_ids(), encoding.sequence_ids())):
        if sequence == 0 and word is not None and first[word] is None:
            first[word] = position
    return first  # type: ignore[return-value]


def _encode_tweet(tokenizer: PreTrainedTokenizerBase, words: list[str]) -> tuple[list[str], Any]:
    """The tweet alone, encoded, with every word that yields no sub-token replaced by the unknown token.

    Tweets contain invisible tokens (U+200B, U+00AD, ...) that many tokenizers normalise away entirely; such a
    word would have no first sub-token, and so no tag. The unknown token keeps its position. The tweet is
    tokenised once, and again only when it has such a word.

    Returns:
        The words as encoded and their encoding.
    """
    encoding = _encode(tokenizer, words, None)
    first = _first_subtokens(encoding, len(words))
    if all(position is not None for position in first):
        return words, encoding
    if tokenizer.unk_token is None:
        raise ValueError(
            f"Words {[w for w, p in zip(words, first) if p is None]!r} produce no sub-token and the "
            "tokenizer has no unknown token to stand in for them."
        )
    words = [word if position is not None else tokenizer.unk_token for word, position in zip(words, first)]
    return words, _encode(tokenizer, words, None)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    words: Sequence[str],
    visual_context: str = "",
    max_context_tokens: int = 128,
    max_length: int | None = None,
    text_view: bool = True,
) -> dict[str, list[int]]:
    """Encodes one tweet and its visual context into ITA inputs.

    Args:
        tokenizer: a fast tokenizer of the encoder (word ids are needed to find first sub-tokens).
        words: the tweet's words; not empty.
        visual_context: the text the image became; "" for none (x' is then the tweet alone).
        max_context_tokens: sub-token budget of the context; the context is truncated to it.
        max_length: the encoder's length limit; defaults to `tokenizer.model_max_length`.
        text_view: also encode the text-only view (the `text_*` fields), as cross-view alignment needs.

    Returns:
        Lists per field (see the module docstring); `word_index` has one entry per word.

    Raises:
        TweetTooLongError: if the words alone need more sub-tokens than `max_length`.
        ValueError: if `words` is empty or the tokenizer is not a fast tokenizer.
    """
    if not tokenizer.is_fast:
        raise ValueError(
            "ITA needs a fast tokenizer (word ids locate each word's first sub-token): "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    words = list(words)
    if not words:
        raise ValueError("Cannot encode an empty tweet: `words` is empty.")
    if any(not isinstance(word, str) or not word for word in words):
        raise ValueError(f"Every word must be a non-empty string, got {words!r}.")
    limit = max_length if max_length is not None else tokenizer.model_max_length
    words, text = _encode_tweet(tokenizer, _as_text(tokenizer, words))
    text_length = len(text["input_ids"])
    if text_length > limit:
        raise TweetTooLongError(
            f"The tweet's {len(words)} words need {text_length} sub-tokens, more than the encoder's limit of "
            f"{limit}. Split it into shorter pieces, or use the multimodal-ner pipeline, which chunks long texts."
        )
    context_words = _as_text(tokenizer, visual_context.split())
    extra_specials = tokenizer.num_special_tokens_to_add(pair=True) - tokenizer.num_special_tokens_to_add(pair=False)
    room = min(limit - text_length - extra_specials, max_context_tokens)
    views: list[tuple[str, Any]] = [("", text)]
    if context_words and room > 0:
        cross = _encode(tokenizer, words, context_words)
        views = [("", cross)]
    # else: no context, or no room for a single context sub-token: x' is the tweet alone, and CVA skips it.
    if text_view:
        views.append((TEXT_PREFIX, text))
    example: dict[str, Any] = {}
    for prefix, encoding in views:
        fields = (
            _truncate_context(encoding, room)
            if encoding is not text
            else {field: list(encoding[field]) for field in VIEW_FIELDS[:3] if field in encoding}
        )
        example.update({prefix + field: values for field, values in fields.items()})
        # Tweet positions come before any context position, so cutting the context leaves them as they are.
        example[prefix + "word_index"] = _first_subtokens(encoding, len(words))
    return example


def pad_batch(features: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pads encoded examples (and optional word-level `labels`) into a batch of tensors.

    Args:
        features: outputs of `encode_example`, possibly with `labels` added; all with the same fields.
        pad_token_id: the tokenizer's padding id.

    Returns:
        `(batch, max_length)` long tensors per field; word-level fields are `(batch, max_words)`.
    """
    if not features:
        raise ValueError("Cannot pad an empty list of examples.")
    fields = list(features[0])
    batch: dict[str, torch.Tensor] = {}
    for field in fields:
        values = [feature[field] for feature in features]
        width = max(len(value) for value in values)
        base = field[len(TEXT_PREFIX) :] if field.startswith(TEXT_PREFIX) else field
        pad = pad_token_id if base == "input_ids" else PAD_VALUES.get(base, 0)
        batch[field] = torch.tensor([list(value) + [pad] * (width - len(value)) for value in values], dtype=torch.long)
    return batch
