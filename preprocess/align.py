"""The batched `Dataset.map` function that turns the images of a batch of tweets into visual context.

It reads a batch's image files and hands them to `visual_context_ita.align_images`, the pipeline's image → context
step, so that training contexts and inference contexts are made the same way.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence as SequenceOf
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Features, Image, Sequence, Value

from aligners_ita import SEGMENTS, Aligner
from images_ita import DEFAULT_MAX_PIXELS, find_image_file, load_image
from visual_context_ita import ALIGNER_TYPES, VisualContextBuilder, align_images, aligner_from_dict, spec_is_precomputed

from .aligner_loading import load_failure

# How `BatchAligner` stores the images it read, and the `image` column's feature for each: the column as given (file
# names), the image files' absolute paths, or their bytes (a self-contained dataset). Paths are strings, as `datasets`
# says to store them: `save_to_disk` writes the bytes of every local file an `Image()` column names into the shards.
IMAGE_STORAGE: dict[str | None, Value | Image] = {None: Value("string"), "paths": Value("string"), "bytes": Image()}
# Aligners are built once per worker process and reused across batches and chunks: loading a detector
# or captioner per batch would dominate the run time. Keyed by the JSON of the spec and the size and modification
# time of the files it reads, so that a context file rewritten in place is read again.
_ALIGNER_CACHE: dict[str, Aligner] = {}


def cached_aligner(spec: dict[str, Any]) -> Aligner:
    """Build (once per process, and again when a file it reads changes) the aligner of a spec.

    Raises:
        AlignerLoadError: A model aligner (not precomputed contexts, whose errors name their file) cannot be built.
    """
    paths = spec.get("paths") or []
    paths = [paths] if isinstance(paths, (str, Path)) else paths
    stats = [(os.stat(path).st_size, os.stat(path).st_mtime_ns) if os.path.exists(path) else None for path in paths]
    key = json.dumps([spec, stats], sort_keys=True, default=str)
    if key not in _ALIGNER_CACHE:
        try:
            _ALIGNER_CACHE[key] = aligner_from_dict(spec)
        except Exception as err:  # any failure to build a model aligner becomes one line that says why (re-raised)
            if spec_is_precomputed(spec):
                raise
            raise load_failure(spec, err) from err
    return _ALIGNER_CACHE[key]


def takes_device(spec: dict[str, Any]) -> bool:
    """Whether the aligner of a spec is placed on a device by a `device` argument (model-based aligners)."""
    return "device" in inspect.signature(ALIGNER_TYPES[spec["type"]].__init__).parameters


def input_features(tags: ClassLabel, image: Value | Image | None = None) -> Features:
    """Columns of a tweet before alignment; `image` is a file name or path (a string) unless said otherwise.

    Args:
        tags: The `ner_tags` labels.
        image: The `image` column's feature: `Image(decode=False)` for images given as `{"bytes", "path"}`.
    """
    return Features(
        {
            "id": Value("string"),
            "tokens": Sequence(Value("string")),
            "ner_tags": Sequence(tags),
            "image_id": Value("string"),
            "image": image or Value("string"),
        }
    )


def output_features(tags: ClassLabel, image_storage: str | None = None) -> Features:
    """Columns of an aligned tweet: the input columns plus segments, context, sources and errors.

    Args:
        tags: The `ner_tags` labels.
        image_storage: How the `image` column holds the images read (`BatchAligner`'s `image_storage`).
    """
    features = input_features(tags, IMAGE_STORAGE[image_storage])
    for segment in SEGMENTS:
        features[segment] = Sequence(Value("string"))
    features["visual_context"] = Value("string")
    features["context_sources"] = Sequence(Value("string"))
    features["alignment_error"] = Value("string")
    return features


class BatchAligner:
    """Picklable `map` function (`with_rank=True`): reads a batch's images and turns them into visual context.

    It never raises for a bad image or a failing aligner: the tweet keeps whatever the other aligners
    produced and the problem is recorded in `alignment_error` ("" when there was none).

    With `devices`, the aligners that take a `device` run on one device per `map` process: process `rank` of
    a machine's `device_offset + rank`-th device (round robin when there are more processes than devices).

    With `image_storage`, every tweet's image is read (so that the `image` column holds only images that decode) and
    the `image` column holds the image file's absolute path (`"paths"`) or what an `Image()` feature stores, its bytes
    (`"bytes"`, the only storage for images that come as bytes), and `None` for an image that could not be read
    (`alignment_error` says why).

    Args:
        aligner_specs: Aligner specs (see `visual_context_ita.aligner_from_dict`; precomputed contexts by
            `paths`), run in this order; pieces of the same segment from several aligners are concatenated in this
            order.
        builder_settings: `VisualContextBuilder` keyword arguments.
        images_dir: Folder of the images (`None` when only precomputed aligners are used).
        max_pixels: Decompression-bomb guard of the image loader.
        devices: Devices to spread the `map` processes over (e.g. `["cuda:0", "cuda:1"]`); `None` keeps each
            spec's own `device`.
        device_offset: Index of this launcher's first device (under torchrun: local rank × map processes).
        image_storage: `"paths"`, `"bytes"`, or `None` to keep the `image` column as given.
    """

    def __init__(
        self,
        aligner_specs: list[dict[str, Any]],
        builder_settings: dict[str, Any],
        images_dir: str | None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        devices: SequenceOf[str] | None = None,
        device_offset: int = 0,
        image_storage: str | None = None,
    ) -> None:
        if image_storage not in IMAGE_STORAGE:
            raise ValueError(f"image_storage must be one of {IMAGE_STORAGE}, got {image_storage!r}")
        self.aligner_specs = aligner_specs
        self.builder_settings = builder_settings
        self.images_dir = images_dir
        self.max_pixels = max_pixels
        self.devices = list(devices) if devices else None
        self.device_offset = device_offset
        self.image_storage = image_storage

    def device(self, rank: int | None) -> str | None:
        """The device of `map` process `rank` (`None` in a single-process `map`), or `None` without devices."""
        if not self.devices:
            return None
        return self.devices[(self.device_offset + (rank or 0)) % len(self.devices)]

    def specs(self, rank: int | None) -> list[dict[str, Any]]:
        """The aligner specs of `map` process `rank`, placed on its device."""
        device = self.device(rank)
        if device is None:
            return self.aligner_specs
        return [{**spec, "device": device} if takes_device(spec) else spec for spec in self.aligner_specs]

    def _load(self, value: str | dict[str, Any] | None) -> tuple[Any, str | None, str | dict[str, Any] | None]:
        """The image of a tweet, why it could not be read, and what the `image` column stores for it.

        `value` is a file name or path (looked up in `images_dir`, else from the current folder) or a
        `{"bytes", "path"}` struct; a tweet without an image gives no error.
        """
        data, name = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
        if data is not None:
            source: Any = data
        elif not name:
            return None, None, None
        else:
            folder = self.images_dir if self.images_dir is not None else "."
            source = find_image_file(folder, name)
            if source is None:
                return None, f"image not found: {Path(folder) / name}", None
        try:
            image = load_image(source, self.max_pixels)
        except (FileNotFoundError, ValueError) as err:
            return None, str(err), None
        if data is not None:
            return image, None, {"bytes": data, "path": name}
        if self.image_storage == "bytes":
            return image, None, {"bytes": source.read_bytes(), "path": source.name}
        return image, None, str(source.absolute())

    def __call__(self, batch: dict[str, list[Any]], rank: int | None = None) -> dict[str, list[Any]]:
        aligners = [cached_aligner(spec) for spec in self.specs(rank)]
        size = len(batch["id"])
        images: list[Any] = [None] * size
        load_errors: list[str | None] = [None] * size
        stored: list[str | dict[str, Any] | None] = [None] * size
        if self.image_storage or any(a.needs_images for a in aligners):
            for i, value in enumerate(batch["image"]):
                images[i], load_errors[i], stored[i] = self._load(value)
        # Aligners that read the tweet (a vision-language model asked about its names) get its words joined by spaces.
        texts = [" ".join(tokens) for tokens in batch["tokens"]]
        contexts = align_images(
            images, batch["image_id"], aligners, VisualContextBuilder(**self.builder_settings), load_errors, texts
        )
        out = dict(batch)
        if self.image_storage:
            out["image"] = stored
        for name in SEGMENTS:
            out[name] = [context.segments[name] for context in contexts]
        out["visual_context"] = [context.text for context in contexts]
        out["context_sources"] = [context.sources for context in contexts]
        out["alignment_error"] = ["; ".join(context.errors) for context in contexts]
        return out
