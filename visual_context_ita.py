"""Image → visual context, one path shared by the pipeline (one tweet's image) and preprocessing (a dataset's).

`build_aligners` builds the aligners a checkpoint records (specs rebuilt by `aligner_from_dict`) or those a caller
gives; `aligners_for_image` lets the live aligners stand in for precomputed contexts an image has none of;
`align_images` runs the aligners on images read by `images_ita.load_image` and joins each image's segments with a
`VisualContextBuilder` into a `VisualContext` (text, segments, sources, errors). Importing this module imports every
aligner module, so its `ALIGNER_TYPES` knows every aligner type.

Remote code: imports only the standard library, transformers and its sibling modules.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.utils import logging

try:
    from .aligners_ita import ALIGNER_TYPES, SEGMENTS, Aligner, PartialAlignment, Segments, normalize_text
    from .configuration_ita import (
        CONTEXT_BUILDER_FIELDS,
        DEFAULT_CONTEXT_ORDER,
        DEFAULT_CONTEXT_SEPARATOR,
        DEFAULT_PIECE_SEPARATORS,
        validate_context_builder,
    )

    # Imported for their aligner types: they register `image-text-to-text`, `chat-completions` and `precomputed`.
    from .knowledge_ita import ChatCompletionsAligner, ImageTextToTextAligner
    from .precomputed_ita import PrecomputedAligner
except ImportError:
    from aligners_ita import ALIGNER_TYPES, SEGMENTS, Aligner, PartialAlignment, Segments, normalize_text
    from configuration_ita import (
        CONTEXT_BUILDER_FIELDS,
        DEFAULT_CONTEXT_ORDER,
        DEFAULT_CONTEXT_SEPARATOR,
        DEFAULT_PIECE_SEPARATORS,
        validate_context_builder,
    )
    from knowledge_ita import ChatCompletionsAligner, ImageTextToTextAligner  # noqa: F401
    from precomputed_ita import PrecomputedAligner  # noqa: F401

logger = logging.get_logger(__name__)


def _spec_class(spec: dict[str, Any]) -> tuple[type[Aligner], dict[str, Any]]:
    """The aligner class of a spec and its settings (the spec without `type` and `precomputed`)."""
    if not isinstance(spec, dict):
        raise ValueError(f"an aligner spec is a dict {{'type': <name>, ...settings}}, got {spec!r}")
    settings = dict(spec)
    name = settings.pop("type", None)
    settings.pop("precomputed", None)
    if name not in ALIGNER_TYPES:
        raise ValueError(f"unknown aligner type {name!r} in {spec}; known types: {sorted(ALIGNER_TYPES)}")
    return ALIGNER_TYPES[name], settings


def normalize_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Complete an aligner spec with its defaults and check it, without building the aligner.

    Precomputed contexts given by `paths` are turned into file records (name, sha256, source), so the result
    holds no path, and one file spelled two ways (relative, through a symlink) gives one spec.

    Args:
        spec: `{"type": <name>, ...settings}`; the `precomputed` flag is recomputed from the type.

    Returns:
        The spec in the form `Aligner.to_dict` writes, every constructor argument present.

    Raises:
        ValueError: The type is unknown or a setting is not accepted by that aligner.
        FileNotFoundError: A precomputed file given by path does not exist.
    """
    cls, settings = _spec_class(spec)
    return {"type": cls.type, "precomputed": cls.precomputed, **cls.normalize_settings(settings)}


def aligner_from_dict(spec: dict[str, Any], context_dirs: Sequence[str | Path] = ()) -> Aligner:
    """Rebuild an aligner from the spec written by `Aligner.to_dict` (or a hand-written one).

    Args:
        spec: `{"type": <name>, ...settings}`; the `precomputed` flag is informational.
        context_dirs: Where precomputed files recorded by name are looked up, in order: local folders or Hub model
            ids (see `locate_context_file`). A spec giving `paths` reads those paths instead.

    Returns:
        The aligner.

    Raises:
        ValueError: The type is unknown, a setting is not accepted by that aligner, or a precomputed file found
            by name has another checksum than the recorded one.
        FileNotFoundError: A precomputed aligner's files are absent (e.g. rebuilding a checkpoint's
            aligners on another machine); check `spec_is_precomputed` first to report that.
    """
    cls, settings = _spec_class(spec)
    return cls.from_settings(settings, context_dirs)


def spec_is_precomputed(spec: dict[str, Any]) -> bool:
    """Whether an aligner spec describes contexts looked up by image id (unavailable for new images)."""
    cls = ALIGNER_TYPES.get(spec.get("type", ""))
    return bool(spec.get("precomputed", cls.precomputed if cls else False))


def build_aligners(
    config: Any,
    aligners: Aligner | dict | Sequence[Aligner | dict] | None = None,
    context_dir: str | os.PathLike | None = None,
) -> tuple[list[Aligner], list[Aligner]]:
    """The aligners a pipeline runs: those given, or those a checkpoint records; warns once of unusable ones.

    A recorded aligner that cannot be built here (its context file is absent or has another checksum, its package or
    model is missing) is left out with one warning that names it and what to do, so the pipeline still tags tweets,
    with the context of the others or text-only.

    Args:
        config: The model's `ITAConfig`: its `aligners` and `live_aligners` specs, and its `name_or_path` (the
            checkpoint's folder or Hub id), where recorded context files are looked up after `context_dir`.
        aligners: Aligner objects or `to_dict()` specs to run instead of the recorded ones (`[]`: text only).
        context_dir: A folder holding the precomputed-context files the checkpoint records. Context files are looked
            up only there and in the checkpoint's own folder (or Hub repository), never at a path read from
            `config.json`.

    Returns:
        `(aligners, live_aligners)`: the aligners run for every image, and the checkpoint's live aligners, run
        instead of its precomputed aligners for an image none of those holds a context for (`aligners_for_image`).

    Raises:
        ValueError: `context_dir` is not a folder, or a given spec is not valid.
        TypeError: A given aligner is neither an aligner nor a spec.
    """
    if context_dir is not None and not os.path.isdir(context_dir):
        raise ValueError(
            f"`context_dir` must be a folder holding precomputed-context files; {str(context_dir)!r} is not one."
        )
    folders = [str(folder) for folder in (context_dir, config.name_or_path) if folder]
    if aligners is not None:
        given = aligners if isinstance(aligners, (list, tuple)) else [aligners]
        return [_as_aligner(aligner, folders) for aligner in given], []
    built: dict[str, list[Aligner]] = {"aligners": [], "live_aligners": []}
    unavailable = []
    for field, aligner_list in built.items():
        for spec in getattr(config, field):
            try:
                aligner_list.append(aligner_from_dict(spec, context_dirs=folders))
            except Exception as err:  # noqa: BLE001 - any failure (missing file, package, model) is reported below.
                kind = (
                    "live aligner"
                    if field == "live_aligners"
                    else "precomputed contexts"
                    if spec_is_precomputed(spec)
                    else "aligner"
                )
                unavailable.append(f"{spec.get('type')!r} {kind} ({type(err).__name__}: {err})")
    recorded, live = built["aligners"], built["live_aligners"]
    if unavailable:
        usable = [a.type for a in recorded] + [f"{a.type} (live, for images without precomputed context)" for a in live]
        outcome = (
            "Images are ignored and tweets are tagged text-only"
            if not usable
            else f"Only {usable} will turn images into context"
        )
        logger.warning(
            f"This checkpoint was trained with visual context from {len(config.aligners)} aligner(s) and names "
            f"{len(config.live_aligners)} live aligner(s), of which these cannot be rebuilt here: "
            f"{'; '.join(unavailable)}. {outcome}. Pass `context_dir=` (the folder of the recorded context files), "
            "`aligners=` (e.g. aligners_ita.RapidOCRAligner()) to the pipeline, or `visual_context=` with each call."
        )
    return recorded, live


def _as_aligner(aligner: Aligner | dict, folders: list[str]) -> Aligner:
    """A spec dict built into an aligner (its recorded context files looked up in `folders`), or an aligner object.

    Objects are recognised by their interface, not by class: the checkout's `aligners_ita.Aligner` and the copy a
    checkpoint loads as remote code are different classes with the same methods.
    """
    if isinstance(aligner, dict):
        return aligner_from_dict(aligner, context_dirs=folders)
    if not (callable(getattr(aligner, "align", None)) and hasattr(aligner, "needs_images")):
        raise TypeError(f"{aligner!r} is not an aligner: pass aligners_ita aligner objects or their to_dict() specs.")
    return aligner


def aligners_for_image(
    aligners: Sequence[Aligner], live_aligners: Sequence[Aligner], image_id: str | None
) -> list[Aligner]:
    """The aligners to run on one image: `aligners`, or the live aligners in place of the precomputed ones.

    The live aligners stand in when none of the precomputed aligners knows the image: a new image, one without an id,
    or a checkpoint whose precomputed contexts could not be rebuilt here.

    Args:
        aligners: The aligners run for every image (see `build_aligners`).
        live_aligners: Aligners that compute from the pixels what the precomputed ones hold for known images.
        image_id: The image's id, `None` when it has none.
    """
    precomputed = [aligner for aligner in aligners if not aligner.needs_images]
    if live_aligners and (image_id is None or not any(aligner.knows(image_id) for aligner in precomputed)):
        return [aligner for aligner in aligners if aligner.needs_images] + list(live_aligners)
    return list(aligners)


@dataclass
class TweetImage:
    """One tweet's image, on its way to a visual context (`contexts_for_tweets`).

    Args:
        image: The image in any form `images_ita.load_image` reads (a PIL image, a path, a URL, base64, bytes), or
            `None` when the tweet has no image (an `image_id` alone still finds precomputed contexts).
        image_id: The image's id, by which precomputed contexts are looked up; `None` when it has none.
        text: The tweet, read by aligners with `needs_text`.
    """

    image: Any
    image_id: str | None
    text: str


class ContextCache:
    """A bounded, thread-safe memory of visual contexts: an (image, tweet) pair seen again is not aligned again.

    Retweets and memes repeat; a vision-language model's answer costs seconds. Keys name the aligners that made the
    context, the image's pixels and id, and the tweet when an aligner read it; the least recently used entry is
    dropped beyond `max_size`. Contexts with errors are not kept, so a failure (an endpoint that was down) is retried.

    Args:
        max_size: Contexts kept at most (0 keeps none).
    """

    def __init__(self, max_size: int) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
            raise ValueError(f"the context cache size must be an int >= 0, got {max_size!r}")
        self.max_size = max_size
        self._entries: OrderedDict[tuple, VisualContext] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> VisualContext | None:
        with self._lock:
            context = self._entries.get(key)
            if context is not None:
                self._entries.move_to_end(key)
            return context

    def put(self, key: tuple, context: VisualContext) -> None:
        if self.max_size == 0 or context.errors:
            return
        with self._lock:
            self._entries[key] = context
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)


def contexts_for_tweets(
    tweets: Sequence[TweetImage],
    aligners: Sequence[Aligner],
    live_aligners: Sequence[Aligner],
    builder: VisualContextBuilder,
    load: Callable[[Any], Any],
    cache: ContextCache | None = None,
    no_aligners: str = "no aligner was given to read images",
) -> list[VisualContext]:
    """The pipeline's image (+ tweet) → context step, for a batch of tweets: each aligner runs once per batch.

    Tweets are grouped by the aligners their image needs (`aligners_for_image`: the live aligners stand in for
    precomputed contexts an image has none of), each group's images are read by `load` and aligned together with
    `align_images`, and contexts already in `cache` are taken from it. A tweet whose image gives no context says why:
    in its `errors` when the image could not be read or an aligner failed, in its `unread` when no aligner can read
    it.

    Args:
        tweets: The tweets' images, ids and texts.
        aligners: The aligners run for every image (see `build_aligners`).
        live_aligners: The aligners run instead of the precomputed ones for images those do not know.
        builder: Joins each image's segments into its context.
        load: Reads an image source into an RGB `PIL.Image` (the pipeline's `load_image` with its limits); its
            exception's message is the tweet's error.
        cache: Contexts already made by this pipeline (`None`: none kept).
        no_aligners: Why there are no aligners at all, said for each image that then gives no context.

    Returns:
        One `VisualContext` per tweet; an empty one, without errors, for a tweet with no image or id.
    """
    contexts: list[VisualContext | None] = [None] * len(tweets)
    groups: dict[tuple[Aligner, ...], list[int]] = {}
    for index, tweet in enumerate(tweets):
        if tweet.image is None and tweet.image_id is None:
            contexts[index] = _empty_context()
            continue
        group = aligners_for_image(aligners, live_aligners, tweet.image_id)
        readers = [a for a in group if a.needs_images or not a.precomputed or a.knows(tweet.image_id or "")]
        if not readers or (tweet.image is None and all(a.needs_images for a in readers)):
            contexts[index] = _empty_context(_why_unread(tweet, group, live_aligners, no_aligners))
            continue
        # The aligner objects themselves (hashed by identity): a cache entry holds them, so a new aligner can never
        # take over the id of one whose contexts are still kept.
        key = tuple(group)
        groups.setdefault(key, []).append(index)
    for key, indices in groups.items():
        group = list(key)
        needs_pixels, needs_text = any(a.needs_images for a in group), any(a.needs_text for a in group)
        # An image id matters only to precomputed aligners: without them, one picture is one picture however named.
        needs_id = any(a.precomputed for a in group)
        pictures, problems, cache_keys, missing = {}, {}, {}, []
        for index in indices:
            tweet = tweets[index]
            pictures[index] = problems[index] = None
            if needs_pixels and tweet.image is not None:
                try:
                    pictures[index] = load(tweet.image)
                except Exception as err:  # noqa: BLE001 - a bad image must never cost the tweet its tags.
                    problems[index] = f"cannot read the image ({type(err).__name__}: {err})"
            # Precomputed lookups cost nothing: only contexts a model or an engine computed are kept.
            cacheable = cache is not None and problems[index] is None and (needs_pixels or needs_text)
            if cacheable:
                pixels = pictures[index]
                digest = None if pixels is None else _pixels_digest(pixels)
                cache_keys[index] = (
                    key,
                    digest,
                    tweet.image_id if needs_id else None,
                    tweet.text if needs_text else None,
                )
                contexts[index] = cache.get(cache_keys[index])
            if contexts[index] is None:
                missing.append(index)
        if not missing:
            continue
        made = align_images(
            [pictures[i] for i in missing],
            [tweets[i].image_id for i in missing],
            group,
            builder,
            [problems[i] for i in missing],
            [tweets[i].text for i in missing],
        )
        for index, context in zip(missing, made):
            contexts[index] = context
            if index in cache_keys:
                cache.put(cache_keys[index], context)
    return contexts


def _empty_context(unread: str = "") -> VisualContext:
    return VisualContext("", {name: [] for name in SEGMENTS}, [], [], unread)


def _why_unread(tweet: TweetImage, group: Sequence[Aligner], live_aligners: Sequence[Aligner], no_aligners: str) -> str:
    """Why no aligner can read a tweet's image, and what would (the same words for every image, so said once)."""
    if not group:
        return no_aligners
    if tweet.image is None:
        return "no precomputed context for this image id, and no image given to the aligners that read pixels"
    if not live_aligners:
        return (
            "no precomputed context for this image id, and no live aligner reads new images (train with "
            "--live_aligner, or pass aligners= to the pipeline)"
        )
    return "no aligner can read this image"


def _pixels_digest(image: Any) -> str:
    """A digest of an image's pixels: the same picture however it was given (path, URL, bytes) gives the same one."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    return digest.hexdigest()


class VisualContextBuilder:
    """Join aligned segments into the visual-context string the encoder reads after the tweet.

    Segments are taken in `order`, each segment's pieces are joined (object tags with `", "`, other
    segments with `" "`, configurable), capped at `max_words_per_segment` words, and non-empty
    segments are joined with `separator`; the whole context is then capped at `max_words` words.
    The model's own encoding additionally caps the context in sub-tokens.

    The defaults are ITAConfig's; a checkpoint records the settings its training contexts were built with
    (its `context_*` fields), and `from_config` rebuilds that builder.

    Args:
        order: Segment names in context order (ITAConfig `context_order`).
        separator: Text between segments (ITAConfig `context_separator`).
        max_words_per_segment: Word cap per segment (`None` = no cap; `context_max_words_per_segment`).
        max_words: Word cap for the whole context (`None` = no cap; `context_max_words`).
        piece_separators: Joiner of pieces inside a segment, by segment name; default `{"objects": ", "}`
            and `" "` for segments not listed (`context_piece_separators`).
    """

    def __init__(
        self,
        order: Sequence[str] = DEFAULT_CONTEXT_ORDER,
        separator: str = DEFAULT_CONTEXT_SEPARATOR,
        max_words_per_segment: int | None = None,
        max_words: int | None = None,
        piece_separators: dict[str, str] | None = None,
    ) -> None:
        piece_separators = DEFAULT_PIECE_SEPARATORS if piece_separators is None else piece_separators
        validate_context_builder(order, separator, max_words_per_segment, max_words, piece_separators)
        self.order = list(order)
        self.separator = separator
        self.max_words_per_segment = max_words_per_segment
        self.max_words = max_words
        self.piece_separators = dict(piece_separators)

    @classmethod
    def from_config(cls, config: Any) -> VisualContextBuilder:
        """The builder a model's `ITAConfig` records (its `context_*` fields): the one its training contexts used."""
        return cls(**{argument: getattr(config, field) for argument, field in CONTEXT_BUILDER_FIELDS.items()})

    def to_dict(self) -> dict[str, Any]:
        """The builder's settings, as accepted by the constructor."""
        return {
            "order": self.order,
            "separator": self.separator,
            "max_words_per_segment": self.max_words_per_segment,
            "max_words": self.max_words,
            "piece_separators": self.piece_separators,
        }

    @staticmethod
    def _cap(text: str, limit: int | None) -> str:
        if limit is None:
            return text
        return " ".join(text.split(" ")[:limit]) if limit > 0 else ""

    def build(self, segments: dict[str, str | list[str]]) -> tuple[str, list[str]]:
        """Build the context.

        Args:
            segments: Segment name → text or list of text pieces. Names not in `order` are ignored.

        Returns:
            `(text, sources)`: the context ("" when nothing was aligned) and the names of the segments
            that contributed to it, in context order.
        """
        parts: list[str] = []
        sources: list[str] = []
        budget = self.max_words
        for name in self.order:
            value = segments.get(name) or []
            pieces = [normalize_text(p) for p in ([value] if isinstance(value, str) else value)]
            text = self.piece_separators.get(name, " ").join(p for p in pieces if p).strip()
            text = self._cap(text, self.max_words_per_segment)
            if budget is not None:
                text = self._cap(text, budget)
                budget -= len(text.split()) if text else 0
            if text:
                parts.append(text)
                sources.append(name)
        return self.separator.join(parts), sources


@dataclass
class VisualContext:
    """The visual context of one image, and what it was made of.

    Args:
        text: The context the encoder reads after the tweet; "" when the image gave nothing.
        segments: Each segment's pieces from all aligners, in aligner order: every name of `SEGMENTS` (possibly
            empty), then any other name an aligner gave.
        sources: What `text` holds, as `"<segment>:<aligner type>"` in context order (e.g. `"caption:precomputed"`).
        errors: What went wrong for this image (it could not be read, an aligner failed on it); empty when nothing did.
        unread: Why no aligner could read the image at all (e.g. a checkpoint trained on precomputed contexts has no
            live aligner for a new image); "" when one could.
    """

    text: str
    segments: Segments
    sources: list[str]
    errors: list[str]
    unread: str = ""


def align_images(
    images: Sequence[Any],
    image_ids: Sequence[str | None],
    aligners: Sequence[Aligner],
    builder: VisualContextBuilder,
    load_errors: Sequence[str | None] | None = None,
    texts: Sequence[str | None] | None = None,
) -> list[VisualContext]:
    """Image (+ tweet) → context: runs the aligners on a batch of images and joins each image's segments into its context.

    Each aligner runs once on the batch, in the given order, on the images it can read: the images given, for
    aligners that need the pixels; the image ids given, for precomputed ones; any image given by pixels or id, for
    aligners that read only the tweet and earlier segments (a text-only language model reading a caption).
    Aligners with `needs_text` also get each image's tweet and the segments the aligners before them produced.
    It never raises for a failing aligner: a batch it fails on is run again image by image, so that only the images
    it fails on lose its segments, and each failure is recorded in that image's `errors` (as
    `"<aligner type>: <exception type>: <message>"`).

    Args:
        images: RGB `PIL.Image` objects, `None` for an image that is absent or could not be read.
        image_ids: The images' ids (`None` when unknown), by which precomputed aligners look contexts up.
        aligners: Run in this order; the pieces of a segment from several aligners follow this order.
        builder: Joins each image's segments into its context.
        load_errors: Why each image could not be read (`None` or "" when it was), listed first in its `errors`.
        texts: Each image's tweet (`None` when unknown), read by aligners with `needs_text`.

    Returns:
        One `VisualContext` per image.
    """
    size = len(images)
    load_errors = [None] * size if load_errors is None else load_errors
    texts = [None] * size if texts is None else texts
    if not len(image_ids) == len(load_errors) == len(texts) == size:
        raise ValueError(
            f"give one image id, load error and text per image: got {size} images, {len(image_ids)} image ids, "
            f"{len(load_errors)} load errors and {len(texts)} texts"
        )
    errors = [[error] if error else [] for error in load_errors]
    segments: list[Segments] = [{name: [] for name in SEGMENTS} for _ in range(size)]
    producers: list[dict[str, list[str]]] = [{} for _ in range(size)]
    for aligner in aligners:
        chosen = [i for i in range(size) if _reads(aligner, images[i], image_ids[i])]
        batch = _Batch(
            [images[i] for i in chosen],
            [image_ids[i] for i in chosen],
            [texts[i] for i in chosen],
            [segments[i] for i in chosen],
            [errors[i] for i in chosen],
        )
        for i, result in zip(chosen, _run(aligner, batch)):
            for name, pieces in result.items():
                if pieces:
                    segments[i].setdefault(name, []).extend(pieces)
                    producers[i].setdefault(name, []).append(aligner.type)
    contexts = []
    for image_segments, image_producers, image_errors in zip(segments, producers, errors):
        text, names = builder.build(image_segments)
        # An aligner that gave several pieces of one segment is named once.
        sources = [f"{name}:{producer}" for name in names for producer in dict.fromkeys(image_producers[name])]
        contexts.append(VisualContext(text, image_segments, sources, image_errors))
    return contexts


def _reads(aligner: Aligner, image: Any, image_id: str | None) -> bool:
    """Whether `aligner` can align an image given by these pixels (None when absent) and this id."""
    if aligner.needs_images:
        return image is not None
    if aligner.precomputed:
        return image_id is not None
    return image is not None or image_id is not None


@dataclass
class _Batch:
    """What one aligner is run on: the images it reads, with their ids, tweets, segments so far and error lists."""

    images: list[Any]
    image_ids: list[str | None]
    texts: list[str | None]
    segments: list[Segments]
    errors: list[list[str]]

    def item(self, index: int) -> _Batch:
        return _Batch(
            *([field[index]] for field in (self.images, self.image_ids, self.texts, self.segments, self.errors))
        )


def _align(aligner: Aligner, batch: _Batch) -> list[Segments]:
    if aligner.needs_text:
        return aligner.align(batch.images, batch.image_ids, texts=batch.texts, segments=batch.segments)
    return aligner.align(batch.images, batch.image_ids)


def _run(aligner: Aligner, batch: _Batch) -> list[Segments]:
    """The aligner's segments of each image; a batch it fails on is run image by image, each failure in `errors`.

    An aligner that reports which images failed (`PartialAlignment`) is not run again.
    """
    if not batch.images:
        return []
    try:
        return _align(aligner, batch)
    except PartialAlignment as partial:
        for image_errors, error in zip(batch.errors, partial.errors):
            if error:
                image_errors.append(f"{aligner.type}: {error}")
        return partial.results
    except Exception as err:  # noqa: BLE001 - one bad image must not cost the batch: retried image by image below.
        if len(batch.images) == 1:
            batch.errors[0].append(_failure(aligner, err))
            return [{}]
    results = []
    for index in range(len(batch.images)):
        results.extend(_run(aligner, batch.item(index)))
    return results


def _failure(aligner: Aligner, err: Exception) -> str:
    return f"{aligner.type}: {type(err).__name__}: {err}"
