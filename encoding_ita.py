"""Turning a tweet's words and its visual context into ITA model inputs, and padding those into batches.

This file is remote code (the pipeline imports it), so it imports only torch and transformers.

An encoded example holds two views of the tweet (docs/method.md §2–§3):
    cross-modal view x': `input_ids`, `attention_mask`, `token_type_ids`, `word_index`
        = tweet words, the tokenizer's separator, then the visual context;
    text-only view x: the same fields prefixed with `text_`.
`word_index[i]` is the position of the first sub-token of tweet word i. The tweet is never cut: the context
is truncated to fit (as `truncation="only_second"` would), and a tweet that alone exceeds the encoder's limit is
an error for training (`encode_example`) and split into overlapping windows for inference (`encode_windows`),
both cut from one tokenisation of the tweet and its context. Encoding never changes the tokenizer's settings,
so one tokenizer can serve many threads; special-token strings in the text are read as text.
"""

import re
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

VIEW_FIELDS = ("input_ids", "attention_mask", "token_type_ids", "word_index")
TEXT_PREFIX = "text_"
# Padding value of each field in a batch; `labels` are word-level and padded like the word index.
PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "word_index": -1, "labels": -100}
_SURROGATES = re.compile("[\ud800-\udfff]")
# Tokenizers whose backend encodes pre-split words exactly as `tokenizer(...)` does, checked on their first call.
_BACKEND_READERS: "weakref.WeakSet[PreTrainedTokenizerBase]" = weakref.WeakSet()


class TweetTooLongError(ValueError):
    """A tweet whose words alone do not fit the encoder; the pipeline splits such tweets into chunks."""


def _encode(tokenizer: PreTrainedTokenizerBase, words: list[str], context_words: list[str] | None) -> Any:
    """The `tokenizers.Encoding` of `words` followed by `context_words` (if any), special tokens included.

    Through the backend (Rust) tokenizer directly when that reads the words exactly as `tokenizer(...)` does: the
    Python call costs more than the tokenisation of a tweet. Otherwise, and on a tokenizer's first call, through
    `tokenizer(...)`, whose checks (e.g. `add_prefix_space` for pre-split words) then hold for every later call.
    """
    backend = tokenizer.backend_tokenizer
    if (
        tokenizer in _BACKEND_READERS
        and backend.truncation is None
        and backend.padding is None
        and backend.encode_special_tokens == tokenizer.split_special_tokens
    ):
        return backend.encode(words, context_words, is_pretokenized=True, add_special_tokens=True)
    # Never with truncation or padding arguments: those are settings of the one Rust tokenizer shared by every
    # thread, and changing them while another thread encodes fails ("Already borrowed"). The context is cut by
    # `_TokenisedTweet.features` instead; `verbose=False`: a pair longer than the encoder is cut right after.
    encoding = tokenizer(words, context_words, is_split_into_words=True, add_special_tokens=True, verbose=False)
    [reference] = encoding.encodings
    direct = backend.encode(words, context_words, is_pretokenized=True, add_special_tokens=True)
    if direct.ids == reference.ids and direct.type_ids == reference.type_ids and direct.word_ids == reference.word_ids:
        _BACKEND_READERS.add(tokenizer)
    return reference


def _as_text(words: list[str], specials: list[str]) -> list[str]:
    """`words` with lone surrogates replaced and the strings of `specials` broken up, so both are read as text.

    A tweet or context that contains `[SEP]`, `</s>` or `[PAD]` must not become that special token (a `[PAD]`
    would even be attended as padding): a space after its first character makes the tokenizer read the pieces as
    ordinary text, within the same word. Lone surrogates (`"\udcff"`), which no encoder can read, become U+FFFD.
    """
    # Checked on the whole text first: almost no tweet has either, and one search costs less than one per word.
    joined = "\n".join(words)
    if not _SURROGATES.search(joined) and not any(token in joined for token in specials):
        return words
    cleaned = []
    for word in words:
        word = _SURROGATES.sub("\ufffd", word)
        for token in specials:
            if token in word:
                word = word.replace(token, f"{token[0]} {token[1:]}")
        cleaned.append(word)
    return cleaned


def _fields(tokenizer: PreTrainedTokenizerBase, encoding: Any) -> dict[str, list[int]]:
    """The model inputs of an encoding: those of `VIEW_FIELDS[:3]` that the tokenizer returns (`model_input_names`)."""
    values = {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask, "token_type_ids": encoding.type_ids}
    return {
        field: values[field]
        for field in VIEW_FIELDS[:3]
        if field == "input_ids" or field in tokenizer.model_input_names
    }


class _TokenisedTweet:
    """One tokenisation of a tweet's words followed by its visual context, which every view and window is cut from.

    Words are tokenised one by one (`is_split_into_words`), so the sub-tokens of words `[start, end)` and of the
    context are the same inside the whole text as in a window of it: cutting positions out of the one encoding
    gives exactly what encoding the window would, special tokens and token types included.

    Tweets contain invisible tokens (U+200B, U+00AD, ...) that many tokenizers normalise away entirely; such a
    word would have no first sub-token, and so no tag. Such words are replaced by the unknown token, which keeps
    their position: the text is tokenised again only when it has one.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, words: list[str], context_words: list[str]):
        self.tokenizer, self.words, self.context_words = tokenizer, words, context_words or None
        encoding = self._read(_encode(tokenizer, words, self.context_words))
        if None in self.first:
            if tokenizer.unk_token is None:
                raise ValueError(
                    f"Words {[w for w, p in zip(words, self.first) if p is None]!r} produce no sub-token and the "
                    "tokenizer has no unknown token to stand in for them."
                )
            self.words = [word if p is not None else tokenizer.unk_token for word, p in zip(words, self.first)]
            encoding = self._read(_encode(tokenizer, self.words, self.context_words))
        self.fields = _fields(tokenizer, encoding)
        self.single_specials = tokenizer.num_special_tokens_to_add(pair=False)
        self.pair_specials = tokenizer.num_special_tokens_to_add(pair=True)

    def _read(self, encoding: Any) -> Any:
        """Reads the layout of `encoding` (returned as it is) in one pass.

        Sets each word's first sub-token position (None for a word without one) and sub-token count, and the
        number of context sub-tokens.
        """
        self.word_ids, self.sequence_ids = encoding.word_ids, encoding.sequence_ids
        self.first: list[int | None] = [None] * len(self.words)
        self.word_lengths = [0] * len(self.words)
        self.context_length = 0
        for position, (word, sequence) in enumerate(zip(self.word_ids, self.sequence_ids)):
            if sequence == 0:
                if not self.word_lengths[word]:
                    self.first[word] = position
                self.word_lengths[word] += 1
            elif sequence == 1:
                self.context_length += 1
        return encoding

    def text_length(self, start: int, end: int) -> int:
        """Sub-tokens of words `[start, end)` encoded alone, special tokens included."""
        return sum(self.word_lengths[start:end]) + self.single_specials

    def context_room(self, start: int, end: int, limit: int, max_context_tokens: int) -> int:
        """Context sub-tokens that fit after words `[start, end)` within `limit` (0: none, or no room for one)."""
        if not self.context_length:
            return 0
        return max(min(limit - sum(self.word_lengths[start:end]) - self.pair_specials, max_context_tokens), 0)

    def features(self, start: int, end: int, room: int) -> dict[str, list[int]]:
        """The fields of words `[start, end)` followed by the first `room` context sub-tokens (the tweet alone if 0).

        The same cut as `truncation="only_second"`: context sub-tokens are removed from its end, the words and the
        special tokens stay.
        """
        if self.context_length and not room:
            # The tweet alone has the special tokens of one sequence, not of a pair without its second part.
            alone = _TokenisedTweet(self.tokenizer, self.words[start:end], [])
            return alone.features(0, end - start, 0)
        if start == 0 and end == len(self.words) and room >= self.context_length:
            # The whole encoding (a tweet that fits, the common case): nothing to cut.
            return {**{field: list(values) for field, values in self.fields.items()}, "word_index": list(self.first)}
        keep, first, context_seen, previous = [], [], 0, None
        for position, (word, sequence) in enumerate(zip(self.word_ids, self.sequence_ids)):
            if sequence == 0:
                if not start <= word < end:
                    continue
                if word != previous:
                    first.append(len(keep))
                    previous = word
            elif sequence == 1:
                context_seen += 1
                if context_seen > room:
                    continue
            keep.append(position)
        fields = {field: [values[i] for i in keep] for field, values in self.fields.items()}
        fields["word_index"] = first
        return fields


def _tokenised(tokenizer: PreTrainedTokenizerBase, words: Sequence[str], visual_context: str) -> _TokenisedTweet:
    """The one tokenisation of a tweet's words and its context, both read as literal text (`_as_text`).

    Raises:
        ValueError: for a slow tokenizer, no words, or an empty word.
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
    specials = [token for token in tokenizer.all_special_tokens if len(token) > 1]
    return _TokenisedTweet(tokenizer, _as_text(words, specials), _as_text(visual_context.split(), specials))


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
        TweetTooLongError: if the words alone need more sub-tokens than `max_length` (`encode_windows` splits them).
        ValueError: if `words` is empty or the tokenizer is not a fast tokenizer.
    """
    tweet = _tokenised(tokenizer, words, visual_context)
    limit = max_length if max_length is not None else tokenizer.model_max_length
    text_length = tweet.text_length(0, len(tweet.words))
    if text_length > limit:
        raise TweetTooLongError(
            f"The tweet's {len(tweet.words)} words need {text_length} sub-tokens, more than the encoder's limit of "
            f"{limit}. Split it into shorter pieces, or use the multimodal-ner pipeline, which chunks long texts."
        )
    # No context, or no room for a single context sub-token: x' is the tweet alone, and CVA skips it.
    room = tweet.context_room(0, len(tweet.words), limit, max_context_tokens)
    example = tweet.features(0, len(tweet.words), room)
    if text_view:
        alone = example if not room else tweet.features(0, len(tweet.words), 0)
        example.update({TEXT_PREFIX + field: list(values) for field, values in alone.items()})
    return example


def plan_windows(word_lengths: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Overlapping windows `[start, end)` of whole words, each of at most `budget` sub-tokens.

    Consecutive windows share `stride` words, but a window always starts at least half a window after the
    previous one, so the plan ends.

    Args:
        word_lengths: sub-tokens of each word.
        budget: sub-tokens a window may hold.
        stride: words shared by consecutive windows.

    Raises:
        ValueError: if a single word needs more than `budget` sub-tokens.
    """
    windows, start = [], 0
    while True:
        end, used = start, 0
        while end < len(word_lengths) and used + word_lengths[end] <= budget:
            used += word_lengths[end]
            end += 1
        if end == start:
            raise ValueError(
                f"Word {start} alone needs {word_lengths[start]} sub-tokens, more than the {budget} a window of "
                "this encoder holds; split it or remove it from the text."
            )
        windows.append((start, end))
        if end == len(word_lengths):
            return windows
        start = max(end - stride, start + (end - start + 1) // 2)


def encode_windows(
    tokenizer: PreTrainedTokenizerBase,
    words: Sequence[str],
    visual_context: str = "",
    max_context_tokens: int = 128,
    max_length: int | None = None,
    stride: int = 16,
) -> list[tuple[tuple[int, int], dict[str, list[int]]]]:
    """Encodes a tweet of any length for inference: one window when it fits, overlapping windows of words if not.

    The tweet and its context are tokenised once; the windows are planned from that tokenisation
    (`plan_windows`) and cut from it. Each window is read with the visual context, for which it leaves room for
    `max_context_tokens` sub-tokens (or as many as the context has), but never more than half of the encoder.

    Args:
        tokenizer, words, visual_context, max_context_tokens, max_length: as for `encode_example`.
        stride: words shared by consecutive windows.

    Returns:
        `[((start, end), features), ...]`: each window's words and its cross-modal view (no `text_*` fields).
    """
    tweet = _tokenised(tokenizer, words, visual_context)
    limit = max_length if max_length is not None else tokenizer.model_max_length
    if tweet.text_length(0, len(tweet.words)) <= limit:
        windows = [(0, len(tweet.words))]
    else:
        context_share = min(tweet.context_length, max_context_tokens, limit // 2)
        budget = limit - tokenizer.num_special_tokens_to_add(pair=bool(context_share)) - context_share
        try:
            windows = plan_windows(tweet.word_lengths, budget, stride)
        except ValueError as err:
            word = next(word for word, length in zip(tweet.words, tweet.word_lengths) if length > budget)
            raise ValueError(f"{err} (the word is {word[:50]!r}...)") from err
    return [
        ((start, end), tweet.features(start, end, tweet.context_room(start, end, limit, max_context_tokens)))
        for start, end in windows
    ]


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
