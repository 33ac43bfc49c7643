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

from datasets import ClassLabel, Features, Sequence, Value

from aligners_ita import SEGMENTS, Aligner
from images_ita import DEFAULT_MAX_PIXELS, find_image_file, load_image
from visual_context_ita import ALIGNER_TYPES, VisualContextBuilder, align_images, aligner_from_dict

# Aligners are built once per worker process and reused across batches and chunks: loading a detector
# or captioner per batch would dominate the run time. Keyed by the JSON of the spec and the size and modification
# time of the files it reads, so that a context file rewritten in place is read again.
_ALIGNER_CACHE: dict[str, Aligner] = {}


def cached_aligner(spec: dict[str, Any]) -> Aligner:
    """Build (once per process, and again when a file it reads changes) the aligner of a spec."""
    paths = spec.get("paths") or []
    paths = [paths] if isinstance(paths, (str, Path)) else paths
    stats = [(os.stat(path).st_size, os.stat(path).st_mtime_ns) if os.path.exists(path) else None for path in paths]
    key = json.dumps([spec, stats], sort_keys=True, default=str)
    if key not in _ALIGNER_CACHE:
        _ALIGNER_CACHE[key] = aligner_from_dict(spec)
    return _ALIGNER_CACHE[key]


def takes_device(spec: dict[str, Any]) -> bool:
    """Whether the aligner of a spec is placed on a device by a `device` argument (model-based aligners)."""
    return "device" in inspect.signature(ALIGNER_TYPES[spec["type"]].__init__).parameters


def input_features(tags: ClassLabel) -> Features:
    """Columns of a tweet before alignment."""
    return Features(
        {
            "id": Value("string"),
            "tokens": Sequence(Value("string")),
            "ner_tags": Sequence(tags),
            "image_id": Value("string"),
            "image": Value("string"),
        }
    )


def output_features(tags: ClassLabel) -> Features:
    """Columns of an aligned tweet: the input columns plus segments, context, sources and errors."""
    features = input_features(tags)
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
    """

    def __init__(
        self,
        aligner_specs: list[dict[str, Any]],
        builder_settings: dict[str, Any],
        images_dir: str | None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        devices: SequenceOf[str] | None = None,
        device_offset: int = 0,
    ) -> None:
        self.aligner_specs = aligner_specs
        self.builder_settings = builder_settings
        self.images_dir = images_dir
        self.max_pixels = max_pixels
        self.devices = list(devices) if devices else None
        self.device_offset = device_offset

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

    def _load(self, name: str) -> tuple[Any, str | None]:
        """The image of a tweet, or None and why it could not be read (no error for a tweet without an image)."""
        if self.images_dir is None or not name:
            return None, None
        path = find_image_file(self.images_dir, name)
        if path is None:
            return None, f"image not found: {Path(self.images_dir) / name}"
        try:
            return load_image(path, self.max_pixels), None
        except (FileNotFoundError, ValueError) as err:
            return None, str(err)

    def __call__(self, batch: dict[str, list[Any]], rank: int | None = None) -> dict[str, list[Any]]:
        aligners = [cached_aligner(spec) for spec in self.specs(rank)]
        size = len(batch["id"])
        images: list[Any] = [None] * size
        load_errors: list[str | None] = [None] * size
        if any(a.needs_images for a in aligners):
            for i, name in enumerate(batch["image"]):
                images[i], load_errors[i] = self._load(name)
        # Aligners that read the tweet (a vision-language model asked about its names) get its words joined by spaces.
        texts = [" ".join(tokens) for tokens in batch["tokens"]]
        contexts = align_images(
            images, batch["image_id"], aligners, VisualContextBuilder(**self.builder_settings), load_errors, texts
        )
        out = dict(batch)
        for name in SEGMENTS:
            out[name] = [context.segments[name] for context in contexts]
        out["visual_context"] = [context.text for context in contexts]
        out["context_sources"] = [context.sources for context in contexts]
        out["alignment_error"] = ["; ".join(context.errors) for context in contexts]
        return out
