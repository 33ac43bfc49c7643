"""The batched ``Dataset.map`` function that aligns the images of a batch of tweets into visual context."""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence as SequenceOf
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Features, Sequence, Value

from alignment_ita import (
    ALIGNER_TYPES,
    DEFAULT_MAX_PIXELS,
    SEGMENTS,
    Aligner,
    VisualContextBuilder,
    aligner_from_dict,
    find_image_file,
    load_image,
)

logger = logging.getLogger(__name__)

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
    """Whether the aligner of a spec is placed on a device by a ``device`` argument (model-based aligners)."""
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
    """Picklable ``map`` function (``with_rank=True``): loads a batch's images, runs the aligners, builds the contexts.

    It never raises for a bad image or a failing aligner: the tweet keeps whatever the other aligners
    produced and the problem is recorded in ``alignment_error`` ("" when there was none).

    With ``devices``, the aligners that take a ``device`` run on one device per ``map`` process: process ``rank`` of
    a machine's ``device_offset + rank``-th device (round robin when there are more processes than devices).

    Args:
        aligner_specs: Aligner specs (see ``alignment_ita.aligner_from_dict``; precomputed contexts by ``paths``),
            run in this order; pieces of the same segment from several aligners are concatenated in this order.
        builder_settings: ``VisualContextBuilder`` keyword arguments.
        images_dir: Folder of the images (``None`` when only precomputed aligners are used).
        max_pixels: Decompression-bomb guard of the image loader.
        devices: Devices to spread the ``map`` processes over (e.g. ``["cuda:0", "cuda:1"]``); ``None`` keeps each
            spec's own ``device``.
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
        """The device of ``map`` process ``rank`` (``None`` in a single-process ``map``), or ``None`` without devices."""
        if not self.devices:
            return None
        return self.devices[(self.device_offset + (rank or 0)) % len(self.devices)]

    def specs(self, rank: int | None) -> list[dict[str, Any]]:
        """The aligner specs of ``map`` process ``rank``, placed on its device."""
        device = self.device(rank)
        if device is None:
            return self.aligner_specs
        return [{**spec, "device": device} if takes_device(spec) else spec for spec in self.aligner_specs]

    def _load(self, name: str) -> tuple[Any, str]:
        # A tweet without an image is a plain text example, not an error.
        if self.images_dir is None or not name:
            return None, ""
        path = find_image_file(self.images_dir, name)
        if path is None:
            return None, f"image not found: {Path(self.images_dir) / name}"
        try:
            return load_image(path, self.max_pixels), ""
        except (FileNotFoundError, ValueError) as err:
            return None, str(err)

    def _run(self, aligner: Aligner, images: list[Any], ids: list[str], errors: list[list[str]]) -> list[dict]:
        try:
            return aligner.align(images, ids)
        except Exception:  # noqa: BLE001 - one bad image must not cost the batch; retry one by one.
            results = []
            for i, (image, image_id) in enumerate(zip(images, ids)):
                try:
                    results.append(aligner.align([image], [image_id])[0])
                except Exception as err:  # noqa: BLE001 - recorded per tweet, never lost.
                    errors[i].append(f"{aligner.type}: {type(err).__name__}: {err}")
                    results.append({})
            return results

    def __call__(self, batch: dict[str, list[Any]], rank: int | None = None) -> dict[str, list[Any]]:
        aligners = [cached_aligner(spec) for spec in self.specs(rank)]
        builder = VisualContextBuilder(**self.builder_settings)
        size = len(batch["id"])
        errors: list[list[str]] = [[] for _ in range(size)]
        images: list[Any] = [None] * size
        if any(a.needs_images for a in aligners):
            for i, name in enumerate(batch["image"]):
                images[i], error = self._load(name)
                if error:
                    errors[i].append(error)
        segments: list[dict[str, list[str]]] = [{name: [] for name in SEGMENTS} for _ in range(size)]
        producers: list[dict[str, list[str]]] = [{} for _ in range(size)]
        for aligner in aligners:
            for i, result in enumerate(self._run(aligner, images, batch["image_id"], errors)):
                for name, pieces in result.items():
                    if pieces:
                        segments[i].setdefault(name, []).extend(pieces)
                        producers[i].setdefault(name, []).append(aligner.type)
        out = dict(batch)
        for name in SEGMENTS:
            out[name] = [s[name] for s in segments]
        contexts = [builder.build(s) for s in segments]
        out["visual_context"] = [text for text, _ in contexts]
        out["context_sources"] = [
            [f"{name}:{producer}" for name in sources for producer in dict.fromkeys(producers[i][name])]
            for i, (_, sources) in enumerate(contexts)
        ]
        out["alignment_error"] = ["; ".join(e) for e in errors]
        return out
