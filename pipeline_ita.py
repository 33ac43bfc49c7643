"""The `"multimodal-ner"` pipeline: a tweet (and its image) in, named entities out.

This file is remote code: `modeling_ita.py` imports it, so every checkpoint carries it and records it in
`config.custom_pipelines`; `pipeline(model=<checkpoint>, trust_remote_code=True)` then returns
`MultimodalNERPipeline`. It imports only the standard library, numpy, torch and transformers at top level,
and its siblings through flat relative imports (with an absolute fallback for the checkout).
"""

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForTokenClassification
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import ChunkPipeline
from transformers.pipelines.pt_utils import PipelineChunkIterator, PipelineIterator, PipelinePackIterator
from transformers.utils import logging

try:
    from .aligners_ita import Aligner
    from .configuration_ita import PIPELINE_TASK, PIPELINE_TASK_ALIASES
    from .crf_ita import CRFDecoder
    from .encoding_ita import encode_windows, pad_batch
    from .images_ita import (
        DEFAULT_IMAGE_TIMEOUT,
        DEFAULT_MAX_IMAGE_BYTES,
        DEFAULT_MAX_PIXELS,
        check_image_limits,
        image_id_from_source,
        load_image,
    )

    # Imported here though only visual_context_ita uses them: from a local folder, transformers 4 copies only the
    # modules the pipeline file itself imports.
    from .knowledge_ita import ImageTextToTextAligner
    from .precomputed_ita import PrecomputedAligner
    from .pretokenizer_ita import TweetPreTokenizer
    from .visual_context_ita import (
        ContextCache,
        TweetImage,
        VisualContextBuilder,
        build_aligners,
        contexts_for_tweets,
    )
except ImportError:
    from aligners_ita import Aligner
    from configuration_ita import PIPELINE_TASK, PIPELINE_TASK_ALIASES
    from crf_ita import CRFDecoder
    from encoding_ita import encode_windows, pad_batch
    from images_ita import (
        DEFAULT_IMAGE_TIMEOUT,
        DEFAULT_MAX_IMAGE_BYTES,
        DEFAULT_MAX_PIXELS,
        check_image_limits,
        image_id_from_source,
        load_image,
    )
    from knowledge_ita import ImageTextToTextAligner  # noqa: F401
    from precomputed_ita import PrecomputedAligner  # noqa: F401
    from pretokenizer_ita import TweetPreTokenizer
    from visual_context_ita import ContextCache, TweetImage, VisualContextBuilder, build_aligners, contexts_for_tweets

logger = logging.get_logger(__name__)

AGGREGATION_STRATEGIES = ("none", "simple")
# Encoders whose position ids start after the padding index, so `padding_idx + 1` positions are unusable.
_OFFSET_POSITION_MODEL_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text")
_INPUT_KEYS = ("text", "tokens", "image", "image_id", "visual_context")
# The call arguments of the image → context step (`_with_contexts`); the others are `preprocess`'s.
_CONTEXT_PARAMS = ("visual_context", "timeout", "max_image_bytes", "max_image_pixels", "allow_private_urls")
# `context_sources` of a tweet whose visual context the caller gave.
GIVEN_CONTEXT_SOURCE = "visual_context:given"


@dataclass
class TweetInput:
    """One tweet on its way through the pipeline, shared by all its windows.

    A dataclass rather than a dict: `Pipeline.forward` walks dicts, lists and tuples of every model input and
    output to move tensors between devices, which would cost time per word for every window of a long text.
    """

    text: str  # the caller's text, or `" ".join(words)` for a word list
    words: list[str]
    offsets: list[tuple[int, int]]  # character span of each word in `text`
    visual_context: str
    context_sources: list[str]  # what `visual_context` holds, as "<segment>:<aligner type>"
    alignment_error: str  # why the image gave less than it could ("" when nothing went wrong)


@dataclass
class TweetWindow:
    """The encoded words `[start, end)` of a tweet: all of them, or one window of a long tweet.

    A dataclass for the same reason as `TweetInput`: its lists hold one int per sub-token.
    """

    span: tuple[int, int]
    features: dict[str, list[int]] | None  # `encoding_ita` fields; None for a tweet without words


class MultimodalNERPipeline(ChunkPipeline):
    r"""Multimodal named entity recognition with ITA: tags the words of a tweet, reading its image as text.

    The image is turned into a visual context by the aligners the checkpoint was trained with (object tags,
    captions, OCR; recorded in `config.aligners`), or by the `aligners` you pass; the encoder reads the tweet
    followed by that context, and a CRF tags the tweet's words (docs/method.md §2). Without an image, or when the image
    cannot be read, the tweet is tagged alone, which a cross-view-aligned checkpoint is trained for (docs/method.md §3).

    Example:
    ```python
    >>> from transformers import pipeline
    >>> ner = pipeline(model="path/to/ita-checkpoint", trust_remote_code=True)
    >>> ner("Kawhi Leonard wins the fan vote 🏀 https://t.co/x", image="photo.jpg")
    [{'entity_group': 'PER', 'score': 0.98, 'word': 'Kawhi Leonard', 'start': 0, 'end': 13}]
    ```

    Inputs (see `__call__`): a raw string (split into words by the tweet-aware `TweetPreTokenizer`) or a list
    of words, with an optional image (PIL image, path, URL or base64), image id, or ready `visual_context`; one input,
    a list, or any iterable / generator of inputs. A `datasets.Dataset` row (e.g. of `python -m preprocess`
    output: `tokens`, `image_id`, `visual_context`) is an input as it is, and a whole `Dataset` is read as a
    generator of its rows, so results come back as an iterator.

    Model contract. The pipeline needs from `model` only:
        - `model.config`: an `ITAConfig` (labels, `crf_bio_constraints`, context order and separator,
          `max_context_tokens`, `aligners`, encoder sizes);
        - `model.crf`: a `ConditionalRandomField` (read once, into a `crf_ita.CRFDecoder`);
        - `model(input_ids=..., attention_mask=..., [token_type_ids=...,] word_index=...)` returning the
          emissions `logits` of shape `(batch_size, num_words, num_labels)` (attribute, key or first element).
    Decoding runs outside the model, in float64 numpy (`CRFDecoder`: constrained Viterbi when
    `config.crf_bio_constraints`, forward–backward marginals for the scores), once per tweet: for the whole batch
    in `_forward`, and in `postprocess` for a long tweet once its windows are stitched. So any model object with that
    interface, e.g. an ONNX Runtime wrapper or a half-precision model, runs through this pipeline unchanged.

    Long tweets. A tweet whose words do not fit the encoder is split into windows of whole words that overlap
    by `stride` words; every window is read with the visual context, each word takes its emissions from the
    window where it is farthest from an edge, and one Viterbi pass decodes the whole tweet, so every word is
    tagged and the tags are valid BIO across window seams.

    Args:
        aligners (`Aligner`, `dict` or a list of them, *optional*):
            Aligners (objects of `aligners_ita`, or their `to_dict()` specs) that turn an image into visual
            context, used instead of the checkpoint's `config.aligners` and `config.live_aligners`. `[]` tags text
            only. Built once, when the pipeline is created.
        context_cache_size (`int`, *optional*, defaults to 1024):
            Visual contexts kept, so that an (image, tweet) pair seen again (a retweet, a meme) is not aligned again;
            0 keeps none. Contexts whose making failed are not kept.
        context_dir (`str` or `os.PathLike`, *optional*):
            A folder holding the precomputed-context files the checkpoint records (by name and sha256 in
            `config.aligners`), searched before the checkpoint's own folder. These files are looked up nowhere else,
            and one whose checksum differs is not used (a warning names it). For an image they hold no context for,
            the checkpoint's `config.live_aligners` (e.g. a captioner) compute it from the pixels.
        pre_tokenizer (*optional*):
            What splits a raw string into words: anything with `pre_tokenize_str(text) -> [(word, (start, end))]`,
            e.g. `tokenizers.pre_tokenizers.WhitespaceSplit()` to keep the words of space-joined data as they are
            (as `evaluate`'s token-classification evaluator needs). Defaults to the tweet-aware `TweetPreTokenizer`.
        **kwargs: the usual `Pipeline` arguments (`model`, `tokenizer`, `device`, `batch_size`, ...) and any
            call argument of `__call__` as a default.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(
        self,
        *args,
        aligners: None | Aligner | dict | list = None,
        context_dir: str | os.PathLike | None = None,
        pre_tokenizer: Any = None,
        context_cache_size: int = 1024,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if pre_tokenizer is not None and not callable(getattr(pre_tokenizer, "pre_tokenize_str", None)):
            raise TypeError(
                f"`pre_tokenizer` needs a `pre_tokenize_str(text)` method, got {type(pre_tokenizer).__name__}."
            )
        if self.tokenizer is None or not self.tokenizer.is_fast:
            raise ValueError(
                "The multimodal-ner pipeline needs the encoder's fast tokenizer (word ids locate each word's first "
                "sub-token): save it into the checkpoint or pass tokenizer=AutoTokenizer.from_pretrained(..., use_fast=True)."
            )
        config = self.model.config
        self.pre_tokenizer = pre_tokenizer if pre_tokenizer is not None else TweetPreTokenizer()
        self.context_builder = VisualContextBuilder.from_config(config)
        self.aligners, self.live_aligners = build_aligners(config, aligners, context_dir)
        self.context_cache = ContextCache(context_cache_size)
        self._no_aligners = (
            "the pipeline was given no aligner (aligners=[]), so images are not read"
            if aligners is not None
            else "this checkpoint records no aligner that can be built here (see the warning when the pipeline was "
            "created), so images are not read: pass aligners= to the pipeline"
        )
        self.max_length = self._encoder_limit()
        # One encoding now resets any truncation or padding another user of this tokenizer set: the pipeline's
        # own calls never change those settings, so threads can then share the tokenizer (see `encoding_ita`).
        encode_windows(self.tokenizer, ["a"], "a")
        # Read once, like the CRF scores below: config attributes and `pad_token_id` are computed on every access.
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.max_context_tokens, self.pad_token_id = config.max_context_tokens, self.tokenizer.pad_token_id
        # Built once: the pipeline decodes with the CRF scores the model has when the pipeline is created.
        self.decoder = CRFDecoder.from_crf(self.model.crf, constrained=config.crf_bio_constraints)

    def _encoder_limit(self) -> int:
        """Sub-tokens the encoder reads at most: the tokenizer's limit, capped by the position embeddings."""
        encoder_config = self.model.config.encoder_config
        positions = encoder_config.max_position_embeddings
        if encoder_config.model_type in _OFFSET_POSITION_MODEL_TYPES:
            positions -= (encoder_config.pad_token_id or 0) + 1
        return min(self.tokenizer.model_max_length, positions)

    def _sanitize_parameters(
        self,
        visual_context: str | None = None,
        stride: int | None = None,
        timeout: float | None = None,
        max_image_bytes: int | None = None,
        max_image_pixels: int | None = None,
        allow_private_urls: bool | None = None,
        aggregation_strategy: str | None = None,
        return_visual_context: bool | None = None,
        ignore_labels: list[str] | None = None,
    ):
        preprocess_params: dict[str, Any] = {}
        if visual_context is not None:
            if not isinstance(visual_context, str):
                raise TypeError(f"`visual_context` must be a str, got {type(visual_context).__name__}.")
            preprocess_params["visual_context"] = visual_context
        if stride is not None:
            if stride < 0:
                raise ValueError(
                    f"`stride` (words shared by consecutive windows of a long tweet) must be >= 0, got {stride}."
                )
            preprocess_params["stride"] = stride
        limits = {"timeout": timeout, "max_image_bytes": max_image_bytes, "max_image_pixels": max_image_pixels}
        limits = {name: value for name, value in limits.items() if value is not None}
        # Checked now: inside `preprocess` a bad limit would only make every image fail, each with a warning.
        check_image_limits(**limits)
        preprocess_params.update(limits)
        if allow_private_urls is not None:
            if not isinstance(allow_private_urls, bool):
                raise TypeError(f"`allow_private_urls` must be True or False, got {allow_private_urls!r}.")
            preprocess_params["allow_private_urls"] = allow_private_urls
        postprocess_params: dict[str, Any] = {}
        if ignore_labels is not None:
            if isinstance(ignore_labels, str) or not all(isinstance(label, str) for label in ignore_labels):
                raise TypeError(f"`ignore_labels` must be a list of labels (e.g. ['O']), got {ignore_labels!r}.")
            postprocess_params["ignore_labels"] = list(ignore_labels)
        if aggregation_strategy is not None:
            strategy = getattr(aggregation_strategy, "value", aggregation_strategy)
            if strategy not in AGGREGATION_STRATEGIES:
                raise ValueError(
                    f"`aggregation_strategy` must be one of {AGGREGATION_STRATEGIES}, got {aggregation_strategy!r}. "
                    "ITA tags whole words, so the sub-token strategies 'first', 'average' and 'max' do not apply."
                )
            postprocess_params["aggregation_strategy"] = strategy
        if return_visual_context is not None:
            postprocess_params["return_visual_context"] = return_visual_context
        return preprocess_params, {}, postprocess_params

    def __call__(self, text: Any = None, image: Any = None, is_split_into_words: bool = False, **kwargs):
        r"""Finds the named entities of one or several tweets.

        Accepted forms:
            - `pipe(text, image=...)` / `pipe(text=..., image=...)`: one tweet;
            - `pipe({"text": ..., "image": ..., "image_id": ..., "visual_context": ...})`: one tweet (other keys,
              e.g. of a dataset row, are ignored; `tokens` stands for `text` as a word list);
            - `pipe([...])` of strings, word lists or dicts: a batch; `image` is then one image for all, or a
              list of the same length;
            - a generator or other iterable of those, or a `datasets.Dataset` (read row by row): an iterator of
              results, processed lazily in batches of `batch_size`.

        Args:
            text (`str`, `list[str]`, `dict`, list or iterable of those):
                A raw tweet, split by the tweet-aware pre-tokenizer, or a list of words (then offsets refer to
                `" ".join(words)`).
            image (`PIL.Image.Image`, `str` or `None`):
                The tweet's image: a PIL image, a local path, an http(s) URL, base64 or a `data:image/...;base64,`
                URI, all read the same way by `images_ita.load_image` (EXIF orientation, 16-bit grey scaled,
                transparency on white, RGB). An image that cannot be read within the limits below gives one warning
                and the text-only result.
            is_split_into_words (`bool`, *optional*, defaults to `False`):
                Read a list of strings as the words of one tweet rather than as a batch of tweets.
            visual_context (`str`, *optional*):
                The text the image became, overriding the aligners ("" tags text only).
            aggregation_strategy (`str`, *optional*):
                `"simple"`: one dict per entity span (`entity_group`, `score` = mean word score, `word`, `start`,
                `end`); `"none"`: one dict per word (`entity`, `score`, `index` = word index, `word`, `start`,
                `end`). Defaults to `"simple"`, or to `"none"` when the pipeline was opened as
                `"token-classification"`, as `TokenClassificationPipeline` does.
            ignore_labels (`list[str]`, *optional*, defaults to `["O"]`):
                Words (`entity`) and spans (`entity_group`) with these labels are left out, as in
                `TokenClassificationPipeline`; `[]` returns every word (`aggregation_strategy="none"`).
            return_visual_context (`bool`, *optional*, defaults to `False`):
                Return `{"entities": [...], "visual_context": str, "context_sources": [...], "alignment_error": str}`
                instead of the list of entities: the text the image became, what it holds (`"<segment>:<aligner
                type>"`, or `"visual_context:given"`), and why the image gave no context or less than it could (it
                could not be read, an aligner failed, no aligner reads new images; "" when nothing went wrong).
            stride (`int`, *optional*, defaults to 16):
                Words shared by consecutive windows when a tweet is longer than the encoder's limit.
            timeout (`float`, *optional*, defaults to 10):
                Seconds an image URL may take in all (connection, redirects and every byte), however slowly its
                server sends.
            max_image_bytes (`int`, *optional*, defaults to 20 MiB):
                Images of more bytes (file, download or decoded base64) are refused, without reading more.
            max_image_pixels (`int`, *optional*, defaults to 64,000,000):
                Images of more pixels are refused before they are decoded (a small file can declare huge dimensions).
            allow_private_urls (`bool`, *optional*, defaults to `False`):
                Let image URLs (and their redirects) reach loopback, private, link-local and other non-public
                addresses. Off, a URL whose host is or resolves to one is refused before any connection (one warning,
                the text-only result), so that a service tagging its callers' tweets cannot be made to fetch from
                inside its own network; turn it on only when every URL is trusted.

        Returns:
            A list of entity dicts per tweet (a list of such lists for a batch). `score` is the CRF posterior
            marginal probability of the decoded tag; `start`/`end` are character offsets into the caller's text.
        """
        if text is None:
            raise ValueError(
                "Give the tweet's text: pipe(text, image=...), pipe({'text': ..., 'image': ...}) or a list."
            )
        return super().__call__(_normalized_inputs(text, image, is_split_into_words), **kwargs)

    def preprocess(self, inputs: dict[str, Any], stride: int = 16) -> Iterator[dict[str, Any]]:
        text, words, offsets = _split_words(inputs["text"], self.pre_tokenizer)
        context = inputs["visual_context"]
        item = TweetInput(text, words, offsets, context, inputs["context_sources"], inputs["alignment_error"])
        if not words:
            yield {"window": TweetWindow((0, 0), None), "item": item, "is_last": True}
            return
        windows = encode_windows(self.tokenizer, words, context, self.max_context_tokens, self.max_length, stride)
        for index, (span, features) in enumerate(windows):
            yield {"window": TweetWindow(span, features), "item": item, "is_last": index == len(windows) - 1}

    def _with_contexts(
        self,
        inputs: Iterable[dict[str, Any]],
        batch_size: int,
        visual_context: str | None = None,
        timeout: float = DEFAULT_IMAGE_TIMEOUT,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        allow_private_urls: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Image (+ tweet) → context, the pipeline's first step, `batch_size` tweets at a time.

        Each aligner runs once per batch (a captioner or vision-language model on a GPU then runs batched). Each
        input comes out with its `visual_context`, `context_sources` and `alignment_error`. The image, whatever its
        form, is read by `images_ita.load_image` within the call's limits; a context the caller gave is used as it
        is; everything else is `visual_context_ita.contexts_for_tweets`'s.
        """
        load = functools.partial(
            load_image,
            max_pixels=max_image_pixels,
            max_bytes=max_image_bytes,
            timeout=timeout,
            allow_private_urls=allow_private_urls,
        )
        batch: list[dict[str, Any]] = []
        for element in inputs:
            batch.append(element)
            if len(batch) >= batch_size:
                yield from self._contexts(batch, visual_context, load)
                batch = []
        yield from self._contexts(batch, visual_context, load)

    def _contexts(
        self, batch: list[dict[str, Any]], visual_context: str | None, load: Callable[[Any], Any]
    ) -> list[dict[str, Any]]:
        """The inputs of a batch with their visual contexts (see `_with_contexts`)."""
        given = [
            element["visual_context"] if element["visual_context"] is not None else visual_context for element in batch
        ]
        # A tweet without a word is tagged without reading its image.
        pending = [i for i, element in enumerate(batch) if given[i] is None and _has_text(element["text"])]
        tweets = [_tweet_image(batch[i]) for i in pending]
        contexts = contexts_for_tweets(
            tweets, self.aligners, self.live_aligners, self.context_builder, load, self.context_cache, self._no_aligners
        )
        made = dict(zip(pending, contexts))
        out = []
        for index, element in enumerate(batch):
            context = made.get(index)
            if context is None:
                text, sources, error = given[index] or "", [GIVEN_CONTEXT_SOURCE] if given[index] else [], ""
            else:
                text, sources = context.text, context.sources
                error = "; ".join([*context.errors, *filter(None, [context.unread])])
                # Why no aligner read an image is the caller's to see (`return_visual_context`); the server log said
                # once, when the pipeline was built, which recorded aligners cannot be built here.
                if context.errors:
                    fallback = "tagging it text-only" if not text else "using the context of the other aligners"
                    logger.warning(f"{'; '.join(context.errors)}: {fallback}.")
            out.append({**element, "visual_context": text, "context_sources": sources, "alignment_error": error})
        return out

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        context_params = {name: value for name, value in preprocess_params.items() if name in _CONTEXT_PARAMS}
        preprocess_params = {name: value for name, value in preprocess_params.items() if name not in _CONTEXT_PARAMS}
        inputs = self._with_contexts(inputs, batch_size, **context_params)
        if num_workers or batch_size != 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        # One tweet at a time in this process: transformers' DataLoader would only hand each window on as it is
        # (`no_collate_fn`), at a cost per tweet that counts at this batch size.
        windows = PipelineChunkIterator(inputs, self.preprocess, preprocess_params)
        model_outputs = PipelinePackIterator(windows, self.forward, forward_params, loader_batch_size=1)
        return PipelineIterator(model_outputs, self.postprocess, postprocess_params)

    def get_inference_context(self):
        # No autograd bookkeeping at all (transformers' default is `no_grad`): tensors never leave the pipeline.
        return torch.inference_mode

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        # With batch_size 1 the inputs come one by one; batched, every field is a list (see `pad_collate_fn`:
        # the encoded features are plain lists so that `pad_batch` pads `word_index` with -1, not 0).
        batched = isinstance(model_inputs["is_last"], list)
        windows, items = ((model_inputs[key] if batched else [model_inputs[key]]) for key in ("window", "item"))
        features, spans = [window.features for window in windows], [window.span for window in windows]
        present = [i for i, feature in enumerate(features) if feature is not None]
        if len(present) == len(features):
            logits = self._emissions(features)
        else:  # a batch with tweets that have no words
            num_words = max((len(features[i]["word_index"]) for i in present), default=0)
            logits = np.zeros((len(features), num_words, len(self.labels)))
            if present:
                logits[present] = self._emissions([features[i] for i in present])
        # Whole tweets are decoded here, the batch at once (which costs about as much as one tweet), outside the
        # model and any ONNX graph; a long tweet's windows are decoded once, stitched together, in `postprocess`.
        whole = np.zeros(logits.shape[:2], dtype=bool)
        for i in present:
            if spans[i] == (0, len(items[i].words)):
                whole[i, : len(features[i]["word_index"])] = True
        tags, tag_scores = self.decoder(logits, whole)
        # numpy arrays, which `Pipeline.forward` passes through as they are (it moves every tensor to the CPU).
        return {
            "logits": logits,
            "tags": tags,
            "tag_scores": tag_scores,
            "window": model_inputs["window"],
            "item": model_inputs["item"],
            "is_last": model_inputs["is_last"],
        }

    def _emissions(self, features: list[dict[str, list[int]]]) -> np.ndarray:
        """The model's emissions for encoded windows, `(len(features), max words, num_labels)` float64.

        In the decoder's float64 already: torch's cast, right after the forward, costs less than numpy's there.
        """
        batch = pad_batch(features, self.pad_token_id)
        outputs = self.model(**{name: tensor.to(self.device) for name, tensor in batch.items()})
        emissions = outputs["logits"] if isinstance(outputs, dict) else getattr(outputs, "logits", outputs[0])
        return torch.as_tensor(emissions).double().cpu().numpy()

    def postprocess(
        self,
        all_outputs: list[dict[str, Any]],
        aggregation_strategy: str | None = None,
        return_visual_context: bool = False,
        ignore_labels: list[str] | None = None,
    ) -> list[dict[str, Any]] | dict[str, Any]:
        if aggregation_strategy is None:
            # Opened as "token-classification" (the Hub's snippet, `evaluate`'s evaluator), the pipeline answers
            # as TokenClassificationPipeline does by default: one dict per word.
            aggregation_strategy = "none" if self.task in PIPELINE_TASK_ALIASES else "simple"
        ignore_labels = ["O"] if ignore_labels is None else ignore_labels
        item = all_outputs[0]["item"]
        entities: list[dict[str, Any]] = []
        if item.words:
            if len(all_outputs) == 1:
                tags = all_outputs[0]["tags"][0, : len(item.words)]
                scores = all_outputs[0]["tag_scores"][0, : len(item.words)].tolist()
            else:
                # A long tweet's windows are stitched and decoded as one sequence, so tags stay valid across seams.
                emissions = _stitch(all_outputs, len(item.words))[None]
                tags, scores = self.decoder(emissions, np.ones(emissions.shape[:2], dtype=bool))
                tags, scores = tags[0], scores[0].tolist()
            labels = [self.labels[tag] for tag in tags.tolist()]
            entities = (_word_entities if aggregation_strategy == "none" else _grouped_entities)(item, labels, scores)
            # As in TokenClassificationPipeline: a word's `entity` (B-/I- tag) or a span's `entity_group`.
            entities = [
                entity
                for entity in entities
                if entity.get("entity") not in ignore_labels and entity.get("entity_group") not in ignore_labels
            ]
        if return_visual_context:
            return {
                "entities": entities,
                "visual_context": item.visual_context,
                "context_sources": item.context_sources,
                "alignment_error": item.alignment_error,
            }
        return entities


def _split_words(text: str | list[str], pre_tokenizer: Any) -> tuple[str, list[str], list[tuple[int, int]]]:
    """`(text, words, offsets)` of a raw string (split by `pre_tokenizer`) or a word list (offsets into its join)."""
    if isinstance(text, str):
        pieces = pre_tokenizer.pre_tokenize_str(text)
        return text, [word for word, _ in pieces], [offset for _, offset in pieces]
    offsets, position = [], 0
    for word in text:
        offsets.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(text), list(text), offsets


def _stitch(window_outputs: list[dict[str, Any]], num_words: int) -> np.ndarray:
    """A long tweet's emissions `(num_words, num_labels)` from its windows' logits.

    Each word takes its emissions from the window where it is farthest from an edge: overlaps are split in the middle.
    """
    spans = [output["window"].span for output in window_outputs]
    pieces = []
    for index, (output, (start, end)) in enumerate(zip(window_outputs, spans)):
        keep_start = 0 if index == 0 else (start + spans[index - 1][1]) // 2
        keep_end = num_words if index == len(spans) - 1 else (spans[index + 1][0] + end) // 2
        pieces.append(output["logits"][0, keep_start - start : keep_end - start])
    return np.concatenate(pieces)


def _normalized_inputs(text: Any, image: Any, is_split_into_words: bool) -> Any:
    """Maps every accepted input form to one input dict, a list of them or a generator of them."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise TypeError("A tweet must be a str, got bytes: decode it first, e.g. `text.decode('utf-8')`.")
    if isinstance(text, (str, dict)) or (is_split_into_words and _is_word_list(text)):
        return _input_dict(text, image)
    if isinstance(text, list):
        images = image if isinstance(image, list) else [image] * len(text)
        if len(images) != len(text):
            raise ValueError(
                f"Got {len(text)} texts but {len(images)} images; give one image per text, or a single image."
            )
        return [_input_dict(element, element_image) for element, element_image in zip(text, images)]
    if isinstance(text, Iterable):
        if image is not None:
            raise ValueError(
                "With a generator or dataset of inputs, give each input's image inside it ({'text', 'image'})."
            )
        # A `datasets.Dataset` is not a generator; the base pipeline only streams generators (and torch
        # datasets), so rows are read through one.
        return (_input_dict(element, None) for element in text)
    raise TypeError(f"Unsupported input of type {type(text).__name__}: give a str, a list of words, a dict or a list.")


def _tweet_image(element: dict[str, Any]) -> TweetImage:
    """An input's image on its way to a context: its id is the one given, else the one its path or URL names."""
    image_id = element["image_id"] if element["image_id"] is not None else image_id_from_source(element["image"])
    text = element["text"] if isinstance(element["text"], str) else " ".join(element["text"])
    return TweetImage(image=element["image"], image_id=image_id, text=text)


def _has_text(text: str | list[str]) -> bool:
    return bool(text.strip()) if isinstance(text, str) else bool(text)


def _is_word_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(word, str) for word in value)


def _input_dict(element: Any, image: Any) -> dict[str, Any]:
    """One input as `{"text", "image", "image_id", "visual_context"}`; checks types so that errors name the input."""
    if isinstance(element, dict):
        values = {key: element.get(key) for key in _INPUT_KEYS}
        if values["text"] is None:
            values["text"] = values["tokens"]
        if values["image"] is None:
            values["image"] = image
    else:
        values = {"text": element, "image": image, "image_id": None, "visual_context": None}
    text = values["text"]
    if not isinstance(text, str) and not _is_word_list(text):
        raise TypeError(
            f"A tweet must be a str or a list of words (str), got {type(text).__name__}: {str(text)[:80]!r}."
        )
    if isinstance(text, list) and any(not word for word in text):
        raise ValueError(f"Words must be non-empty strings; got an empty word in {text[:20]!r}.")
    picture = values["image"]
    if picture is not None and not isinstance(picture, (str, os.PathLike)) and not hasattr(picture, "convert"):
        raise TypeError(f"An image must be a PIL image, a path, a URL or None, got {type(picture).__name__}.")
    context = values["visual_context"]
    if context is not None and not isinstance(context, str):
        raise TypeError(
            f"`visual_context` must be a str (or None), got {type(context).__name__}: {str(context)[:80]!r}."
        )
    image_id = values["image_id"]
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        image_id = str(image_id)  # numeric ids, as a CSV or JSON file gives them
    elif image_id is not None and not isinstance(image_id, str):
        raise TypeError(f"`image_id` must be a str or an int, got {type(image_id).__name__}: {str(image_id)[:80]!r}.")
    return {"text": text, "image": picture, "image_id": image_id, "visual_context": context}


def _word_entities(item: TweetInput, labels: list[str], scores: list[float]) -> list[dict[str, Any]]:
    """`aggregation_strategy="none"`: one dict per word, TokenClassificationPipeline's schema."""
    return [
        {"entity": label, "score": score, "index": index, "word": item.words[index], "start": start, "end": end}
        for index, (label, score, (start, end)) in enumerate(zip(labels, scores, item.offsets))
    ]


def _grouped_entities(item: TweetInput, labels: list[str], scores: list[float]) -> list[dict[str, Any]]:
    """`aggregation_strategy="simple"`: one dict per BIO span; an `I-X` not continuing an `X` span starts one.

    Consecutive `O` words form one `O` group, as in TokenClassificationPipeline (dropped unless `ignore_labels`
    lets `O` through).
    """
    spans: list[tuple[str, list[int]]] = []
    for index, label in enumerate(labels):
        prefix, entity_type = label.split("-", 1) if label != "O" else ("I", "O")
        if prefix == "I" and spans and spans[-1][0] == entity_type and spans[-1][1][-1] == index - 1:
            spans[-1][1].append(index)
        else:
            spans.append((entity_type, [index]))
    entities = []
    for entity_type, indices in spans:
        start, end = item.offsets[indices[0]][0], item.offsets[indices[-1]][1]
        entities.append(
            {
                "entity_group": entity_type,
                "score": sum(scores[i] for i in indices) / len(indices),
                "word": item.text[start:end],
                "start": start,
                "end": end,
            }
        )
    return entities


# A checkpoint's remote code can be imported more than once in a process (transformers 5 loads each entry module
# into its own package): the first registration stands, without transformers' "Overwriting" warning each time.
if PIPELINE_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=MultimodalNERPipeline, pt_model=AutoModelForTokenClassification, type="multimodal"
    )
