"""Image → text alignments for ITA: object tags, captions, OCR and precomputed contexts.

ITA turns an image into text ("visual context") that a text encoder reads next to the tweet (docs/method.md §1):
object tags (local alignment), captions (global alignment) and OCR (optical character alignment).
Every aligner here maps a batch of images to a list of *segments* per image, a dict from a segment name
(``"caption"``, ``"objects"``, ``"ocr"``) to a list of text pieces, and :class:`VisualContextBuilder`
joins the segments into one string.

This module is copied into model checkpoints and loaded by transformers' remote-code loader, so its
top-level imports are limited to the standard library, numpy, torch, transformers and its sibling
``configuration_ita`` (which defines the context defaults and the spec checks the model config shares). Pillow,
RapidOCR and pytesseract are imported only when an aligner or the image loader needs them.

Every aligner serialises to a JSON-able spec with :meth:`Aligner.to_dict` and is rebuilt with
:func:`aligner_from_dict`; a model config stores these specs so a pipeline can rebuild the aligners a
checkpoint was trained with. A spec never holds a path of this machine: precomputed contexts are recorded by
file name, sha256 checksum and what produced them, and rebuilt only from files found by that name in the folders
the caller names (the checkpoint's own folder, a ``context_dir``), checksum verified.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

try:
    from .configuration_ita import (
        CONTEXT_BUILDER_FIELDS,
        DEFAULT_CONTEXT_ORDER,
        DEFAULT_CONTEXT_SEPARATOR,
        DEFAULT_PIECE_SEPARATORS,
        PRECOMPUTED_FORMATS,
        PRECOMPUTED_TYPE,
        validate_aligner_spec,
        validate_context_builder,
        validate_context_file,
    )
except ImportError:
    from configuration_ita import (
        CONTEXT_BUILDER_FIELDS,
        DEFAULT_CONTEXT_ORDER,
        DEFAULT_CONTEXT_SEPARATOR,
        DEFAULT_PIECE_SEPARATORS,
        PRECOMPUTED_FORMATS,
        PRECOMPUTED_TYPE,
        validate_aligner_spec,
        validate_context_builder,
        validate_context_file,
    )

#: Segment names, in the default order of the visual context (docs/method.md §1: caption, object tags, OCR).
SEGMENTS: tuple[str, ...] = tuple(DEFAULT_CONTEXT_ORDER)
#: Images larger than this are refused before decoding (decompression-bomb guard); 64 MP ≈ 8000×8000.
DEFAULT_MAX_PIXELS: int = 64_000_000
#: File extensions tried, in order, when an image is named by its id only.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")

Segments = dict[str, list[str]]

_WHITESPACE = re.compile(r"\s+")


def optional_import(module: str, extra: str = "ocr") -> Any:
    """Imports an optional dependency by name, with an install hint when it is missing.

    By name rather than with an import statement: transformers refuses to load a checkpoint's remote code when
    any of its files has an import statement (even inside a function) of a package that is not installed, and
    these packages are needed only by the aligners that use them.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(
            f"{package} is not installed; this aligner needs it: pip install 'ita-mner[{extra}]' "
            f"(or pip install {'pillow' if package == 'PIL' else package})."
        ) from err


def normalize_text(text: str) -> str:
    """Collapse runs of whitespace (including newlines) into single spaces and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def image_id_from_name(name: str) -> str:
    """Return the image id of a file name: its base name without a known image extension.

    ``"1015799.jpg"``, ``"imgs/1015799.jpg"`` and ``"1015799"`` all give ``"1015799"``.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if dot and f".{ext.lower()}" in IMAGE_EXTENSIONS:
        return stem
    return base


def iter_jsonl(
    path: str | Path, required: Sequence[str] = (), error: type[ValueError] = ValueError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for the non-blank lines of a JSONL file (a BOM is accepted).

    Args:
        path: The file.
        required: Keys every object must have.
        error: The exception raised for a bad line; its message names the file and line.
    """
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise error(f"{path}:{number}: invalid JSON: {err}") from err
            missing = [key for key in required if not isinstance(record, dict) or key not in record]
            if missing or not isinstance(record, dict):
                raise error(
                    f"{path}:{number}: each line must be a JSON object with the keys {list(required)}; missing {missing}"
                )
            yield number, record


# ---------------------------------------------------------------------------------------------------
# Image loading
# ---------------------------------------------------------------------------------------------------


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """Open an image file robustly and return it as an upright RGB ``PIL.Image``.

    The format is detected from the content, not the name (some tweet images are PNG data behind a
    ``.jpg`` name); EXIF orientation is applied; transparency is composited onto white so that dark
    text on a transparent background stays readable for OCR.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this before decoding them (a small file can
            declare gigapixel dimensions and exhaust memory when decoded).

    Returns:
        The decoded ``PIL.Image.Image`` in mode ``RGB``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a readable image, is truncated, or is too large.
    """
    Image, ImageOps = optional_import("PIL.Image"), optional_import("PIL.ImageOps")
    UnidentifiedImageError = Image.UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we want a hard refusal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ValueError(
                        f"image {path} is {width}x{height} = {width * height} pixels, more than "
                        f"max_pixels={max_pixels}; raise max_pixels if you trust this file"
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def find_image_file(images_dir: str | Path, name: str) -> Path | None:
    """Find the file of an image in ``images_dir`` given its file name or bare id.

    Args:
        images_dir: Folder holding the images.
        name: A file name relative to ``images_dir`` (``"1015799.jpg"``) or a bare id (``"1015799"``).

    Returns:
        The existing path, or ``None`` when no candidate exists.
    """
    images_dir = Path(images_dir)
    direct = images_dir / name
    if direct.is_file():
        return direct
    image_id = image_id_from_name(name)
    for ext in IMAGE_EXTENSIONS:
        candidate = images_dir / f"{image_id}{ext}"
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------------
# Aligners
# ---------------------------------------------------------------------------------------------------

ALIGNER_TYPES: dict[str, type[Aligner]] = {}


class Aligner:
    """Base class: turns a batch of images into text segments.

    Subclasses set ``type`` (the name used in specs), ``segments`` (the segment names they fill) and
    implement :meth:`align` and :meth:`settings`.
    """

    type: ClassVar[str]
    segments: ClassVar[tuple[str, ...]]
    #: ``True`` for aligners that look contexts up by image id instead of computing them from pixels.
    precomputed: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        ALIGNER_TYPES[cls.type] = cls

    @property
    def needs_images(self) -> bool:
        """Whether :meth:`align` reads the pixels (precomputed aligners only need image ids)."""
        return not self.precomputed

    def knows(self, image_id: str) -> bool:
        """Whether this aligner holds a context for ``image_id`` without seeing the image (precomputed aligners).

        The pipeline runs a checkpoint's live aligners instead of its precomputed ones for an image none of them knows.
        """
        return True

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        """Align a batch of images.

        Args:
            images: ``PIL.Image`` objects (RGB); ``None`` for an image that is missing, which yields
                empty segments.
            image_ids: The image ids, used by precomputed aligners; same length as ``images``.

        Returns:
            One dict per image, from segment name to text pieces (possibly empty).
        """
        raise NotImplementedError

    def __call__(self, image: Any, image_id: str | None = None) -> Segments:
        """Align one image (see :meth:`align`)."""
        return self.align([image], None if image_id is None else [image_id])[0]

    @classmethod
    def normalize_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings of a spec in the form :meth:`settings` writes: every constructor argument, defaults filled in.

        Raises:
            ValueError: A setting is not an argument of the constructor, or a required one is missing.
        """
        try:
            bound = inspect.signature(cls.__init__).bind(None, **settings)
        except TypeError as err:
            raise ValueError(f"invalid settings for aligner {cls.type!r}: {err}") from err
        bound.apply_defaults()
        return dict(list(bound.arguments.items())[1:])

    @classmethod
    def from_settings(cls, settings: dict[str, Any], context_dirs: Sequence[str | Path] = ()) -> Aligner:
        """Build the aligner of a spec's settings; ``context_dirs`` matter only to precomputed aligners."""
        return cls(**cls.normalize_settings(settings))

    def settings(self) -> dict[str, Any]:
        """The JSON-serialisable constructor arguments of this aligner."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"type": ..., "precomputed": ..., **settings}``, the spec :func:`aligner_from_dict` reads."""
        return {"type": self.type, "precomputed": self.precomputed, **self.settings()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.settings(), sort_keys=True)})"


def _spec_class(spec: dict[str, Any]) -> tuple[type[Aligner], dict[str, Any]]:
    """The aligner class of a spec and its settings (the spec without ``type`` and ``precomputed``)."""
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

    Precomputed contexts given by ``paths`` are turned into file records (name, sha256, source), so the result
    holds no path, and one file spelled two ways (relative, through a symlink) gives one spec.

    Args:
        spec: ``{"type": <name>, ...settings}``; the ``precomputed`` flag is recomputed from the type.

    Returns:
        The spec in the form :meth:`Aligner.to_dict` writes, every constructor argument present.

    Raises:
        ValueError: The type is unknown or a setting is not accepted by that aligner.
        FileNotFoundError: A precomputed file given by path does not exist.
    """
    cls, settings = _spec_class(spec)
    return {"type": cls.type, "precomputed": cls.precomputed, **cls.normalize_settings(settings)}


def aligner_from_dict(spec: dict[str, Any], context_dirs: Sequence[str | Path] = ()) -> Aligner:
    """Rebuild an aligner from the spec written by :meth:`Aligner.to_dict` (or a hand-written one).

    Args:
        spec: ``{"type": <name>, ...settings}``; the ``precomputed`` flag is informational.
        context_dirs: Where precomputed files recorded by name are looked up, in order: local folders or Hub model
            ids (see :func:`locate_context_file`). A spec giving ``paths`` reads those paths instead.

    Returns:
        The aligner.

    Raises:
        ValueError: The type is unknown, a setting is not accepted by that aligner, or a precomputed file found
            by name has another checksum than the recorded one.
        FileNotFoundError: A precomputed aligner's files are absent (e.g. rebuilding a checkpoint's
            aligners on another machine); check :func:`spec_is_precomputed` first to report that.
    """
    cls, settings = _spec_class(spec)
    return cls.from_settings(settings, context_dirs)


def spec_is_precomputed(spec: dict[str, Any]) -> bool:
    """Whether an aligner spec describes contexts looked up by image id (unavailable for new images)."""
    cls = ALIGNER_TYPES.get(spec.get("type", ""))
    return bool(spec.get("precomputed", cls.precomputed if cls else False))


def _model_name(model: Any) -> str:
    """The name or path of a model given as a string or as a transformers pipeline/model object."""
    if isinstance(model, str):
        return model
    inner = getattr(model, "model", model)
    return getattr(inner, "name_or_path", None) or type(inner).__name__


def _device_arg(device: str | int | None) -> Any:
    """Pipeline device argument; ``None`` means CPU (-1) so behaviour never depends on hidden GPUs."""
    return -1 if device is None else device


class ObjectTagAligner(Aligner):
    """Object tags (docs/method.md §1 local alignment) from any transformers ``object-detection`` model.

    Each detected region gives one label phrase (e.g. ``"dog"``, or ``"black shirt"`` for models whose
    labels carry attributes). Detections below ``threshold`` are dropped, the rest are sorted by score
    (ties broken by label, so the order is stable), repeated labels are kept once when ``deduplicate``,
    and at most ``top_k`` remain. With ``candidate_labels`` the ``zero-shot-object-detection`` task is
    used instead (OWL-ViT, OWLv2, Grounding DINO).

    Args:
        model: A model id or local path, or a ready transformers pipeline (then not re-serialisable
            beyond its ``name_or_path``).
        threshold: Minimum detection score.
        top_k: Maximum number of tags per image.
        deduplicate: Keep each label once (at its best score).
        candidate_labels: Text queries for zero-shot detectors.
        batch_size: Images per forward pass.
        device: Pipeline device (``None`` = CPU).
    """

    type = "object-detection"
    segments = ("objects",)
    #: Placeholder labels of COCO-style heads that mean "no class".
    _IGNORED_LABELS = frozenset({"", "n/a", "no-object", "no object"})

    def __init__(
        self,
        model: Any,
        threshold: float = 0.5,
        top_k: int = 10,
        deduplicate: bool = True,
        candidate_labels: list[str] | None = None,
        batch_size: int = 8,
        device: str | int | None = None,
    ) -> None:
        from transformers import pipeline

        self.model_name = _model_name(model)
        self.threshold = threshold
        self.top_k = top_k
        self.deduplicate = deduplicate
        self.candidate_labels = list(candidate_labels) if candidate_labels else None
        self.batch_size = batch_size
        self.device = device
        if isinstance(model, str):
            task = "zero-shot-object-detection" if self.candidate_labels else "object-detection"
            model = pipeline(task, model=model, device=_device_arg(device))
        self.pipe = model

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "threshold": self.threshold,
            "top_k": self.top_k,
            "deduplicate": self.deduplicate,
            "candidate_labels": self.candidate_labels,
            "batch_size": self.batch_size,
            "device": self.device,
        }

    def tags(self, detections: Iterable[dict[str, Any]]) -> list[str]:
        """Turn raw pipeline detections (``{"score", "label", "box"}``) into the ordered tag list."""
        kept = []
        for det in detections:
            label = normalize_text(str(det["label"]).replace("_", " "))
            if det["score"] >= self.threshold and label.lower() not in self._IGNORED_LABELS:
                kept.append((-float(det["score"]), label))
        tags: list[str] = []
        for _, label in sorted(kept):
            if self.deduplicate and label in tags:
                continue
            tags.append(label)
        return tags[: self.top_k]

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        present = [i for i, image in enumerate(images) if image is not None]
        results: list[Segments] = [{"objects": []} for _ in images]
        if not present:
            return results
        batch = [images[i] for i in present]
        if self.candidate_labels:
            # The zero-shot pipeline takes one image per call with its queries.
            raw = [self.pipe(image, candidate_labels=self.candidate_labels, threshold=0.0) for image in batch]
        else:
            raw = self.pipe(batch, threshold=0.0, batch_size=self.batch_size)
        for i, detections in zip(present, raw):
            results[i]["objects"] = self.tags(detections)
        return results


class CaptionAligner(Aligner):
    """Captions (docs/method.md §1 global alignment) from any transformers image captioner (BLIP, GIT, ViT-GPT2 ...).

    The model is run directly (image processor → ``generate`` → tokenizer decoding, as transformers 4's
    ``image-to-text`` pipeline does), because transformers 5 replaced that pipeline with ``image-text-to-text``,
    which expects chat prompts.

    Args:
        model: A model id or local folder holding the model (an ``AutoModelForImageTextToText`` class), its image
            processor and tokenizer, or a ready ``(model, image_processor, tokenizer)`` triple.
        generate_kwargs: Generation settings passed to ``generate`` (e.g. ``max_new_tokens``,
            ``num_beams``, ``num_return_sequences`` for several captions per image). Defaults to greedy
            decoding of at most 30 new tokens, which is deterministic.
        batch_size: Images per forward pass.
        device: Torch device, or a pipeline-style index (``None`` or -1 = CPU).
    """

    type = "image-to-text"
    segments = ("caption",)

    def __init__(
        self,
        model: Any,
        generate_kwargs: dict[str, Any] | None = None,
        batch_size: int = 8,
        device: str | int | None = None,
    ) -> None:
        self.generate_kwargs = dict(generate_kwargs) if generate_kwargs else {"max_new_tokens": 30, "do_sample": False}
        self.batch_size = batch_size
        self.device = device
        if isinstance(model, str):
            from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

            self.model_name = model
            self.model = AutoModelForImageTextToText.from_pretrained(model)
            self.image_processor = AutoImageProcessor.from_pretrained(model)
            self.tokenizer = AutoTokenizer.from_pretrained(model)
        else:
            self.model, self.image_processor, self.tokenizer = model
            self.model_name = _model_name(self.model)
        torch_device = (
            "cpu" if device is None or device == -1 else f"cuda:{device}" if isinstance(device, int) else device
        )
        self.model.to(torch_device).eval()

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "generate_kwargs": self.generate_kwargs,
            "batch_size": self.batch_size,
            "device": self.device,
        }

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        import torch

        present = [i for i, image in enumerate(images) if image is not None]
        results: list[Segments] = [{"caption": []} for _ in images]
        per_image = self.generate_kwargs.get("num_return_sequences", 1)
        for start in range(0, len(present), self.batch_size):
            batch = present[start : start + self.batch_size]
            pixels = self.image_processor(images=[images[i] for i in batch], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                pixels = pixels.to(device=self.model.device, dtype=self.model.dtype)
                generated = self.model.generate(pixel_values=pixels, **self.generate_kwargs)
            texts = [normalize_text(text) for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
            for position, i in enumerate(batch):
                captions = texts[position * per_image : (position + 1) * per_image]
                results[i]["caption"] = [caption for caption in captions if caption]
        return results


def keep_ocr_text(text: str, min_chars: int) -> bool:
    """OCR junk filter: keep a piece only if it has at least ``min_chars`` letters or digits.

    OCR engines emit stray single characters for edges, icons and textures (``"|"``, ``"e"``, ``"©"``);
    they carry no entity information and would only add noise to the context.
    """
    return sum(ch.isalnum() for ch in text) >= min_chars


class RapidOCRAligner(Aligner):
    """OCR (docs/method.md §1 optical character alignment) with RapidOCR; its ONNX models ship in the wheel.

    Args:
        min_score: Minimum recognition confidence of a text line.
        min_chars: Minimum number of letters/digits in a kept line.
        threads: ONNX Runtime intra-op and OpenCV threads (``None`` = library defaults). Set 1 when
            running several processes so they do not oversubscribe the cores.
    """

    type = "rapidocr"
    segments = ("ocr",)

    def __init__(self, min_score: float = 0.5, min_chars: int = 2, threads: int | None = None) -> None:
        RapidOCR = optional_import("rapidocr").RapidOCR

        self.min_score = min_score
        self.min_chars = min_chars
        self.threads = threads
        params: dict[str, Any] = {"Global.log_level": "error", "Global.text_score": min_score}
        if threads is not None:
            # cv2 is a RapidOCR dependency; its pre/post-processing has its own thread pool.
            optional_import("cv2").setNumThreads(threads)
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
            params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
        self.engine = RapidOCR(params=params)

    def settings(self) -> dict[str, Any]:
        return {"min_score": self.min_score, "min_chars": self.min_chars, "threads": self.threads}

    def read(self, image: Any) -> list[str]:
        """Return the kept text lines of one image, top to bottom as RapidOCR orders them."""
        import numpy as np

        # RapidOCR expects BGR arrays (OpenCV convention); a PIL image would be taken as RGB-as-BGR.
        output = self.engine(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]))
        if output.txts is None:
            return []
        lines = [normalize_text(t) for t, s in zip(output.txts, output.scores) if s >= self.min_score]
        return [line for line in lines if keep_ocr_text(line, self.min_chars)]

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        return [{"ocr": [] if image is None else self.read(image)} for image in images]


class TesseractAligner(Aligner):
    """OCR with Tesseract (the reference tool of docs/method.md §1), through pytesseract.

    Words below ``min_conf`` are dropped, the rest are grouped into lines in reading order, and lines
    with fewer than ``min_chars`` letters/digits are dropped.

    Args:
        lang: Tesseract language(s), e.g. ``"eng"`` or ``"eng+deu"``.
        min_conf: Minimum word confidence (0–100).
        min_chars: Minimum number of letters/digits in a kept line.
        config: Extra Tesseract command-line options (e.g. ``"--psm 11"``).
    """

    type = "tesseract"
    segments = ("ocr",)

    def __init__(self, lang: str = "eng", min_conf: float = 60.0, min_chars: int = 2, config: str = "") -> None:
        pytesseract = optional_import("pytesseract")
        try:
            pytesseract.get_tesseract_version()
        except pytesseract.TesseractNotFoundError as err:
            raise RuntimeError(
                "the tesseract binary is not installed: install it (e.g. apt-get install tesseract-ocr) "
                "or use the 'rapidocr' aligner"
            ) from err
        self.lang = lang
        self.min_conf = min_conf
        self.min_chars = min_chars
        self.config = config

    def settings(self) -> dict[str, Any]:
        return {"lang": self.lang, "min_conf": self.min_conf, "min_chars": self.min_chars, "config": self.config}

    def read(self, image: Any) -> list[str]:
        """Return the kept text lines of one image in Tesseract's reading order."""
        pytesseract = optional_import("pytesseract")
        data = pytesseract.image_to_data(image, lang=self.lang, config=self.config, output_type=pytesseract.Output.DICT)
        lines: dict[tuple[int, int, int], list[str]] = {}
        for i, word in enumerate(data["text"]):
            if word.strip() and float(data["conf"][i]) >= self.min_conf:
                key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
                lines.setdefault(key, []).append(word)
        texts = [normalize_text(" ".join(words)) for words in lines.values()]
        return [text for text in texts if keep_ocr_text(text, self.min_chars)]

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        return [{"ocr": [] if image is None else self.read(image)} for image in images]


class Florence2Aligner(Aligner):
    """Florence-2 (native in transformers ≥ 4.57): one model for caption, object tags and OCR.

    Args:
        model: A Florence-2 model id or local path in the transformers format (e.g.
            ``"florence-community/Florence-2-base"``), or a ``(model, processor)`` pair.
        tasks: Florence-2 task tokens to run, each mapped to a segment: ``<CAPTION>``,
            ``<DETAILED_CAPTION>``, ``<MORE_DETAILED_CAPTION>`` → caption; ``<OD>``,
            ``<DENSE_REGION_CAPTION>`` → objects; ``<OCR>`` → ocr.
        top_k: Maximum number of object tags (first-seen order, de-duplicated).
        min_chars: Minimum number of letters/digits in a kept OCR line.
        generate_kwargs: Generation settings (default: greedy, at most 64 new tokens).
        device: Torch device (``None`` = CPU).
    """

    type = "florence2"
    segments = ("caption", "objects", "ocr")
    TASK_SEGMENTS: ClassVar[dict[str, str]] = {
        "<CAPTION>": "caption",
        "<DETAILED_CAPTION>": "caption",
        "<MORE_DETAILED_CAPTION>": "caption",
        "<OD>": "objects",
        "<DENSE_REGION_CAPTION>": "objects",
        "<OCR>": "ocr",
    }

    def __init__(
        self,
        model: Any,
        tasks: Sequence[str] = ("<CAPTION>", "<OD>", "<OCR>"),
        top_k: int = 10,
        min_chars: int = 2,
        generate_kwargs: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        unknown = [t for t in tasks if t not in self.TASK_SEGMENTS]
        if unknown:
            raise ValueError(f"unsupported Florence-2 tasks {unknown}; choose from {sorted(self.TASK_SEGMENTS)}")
        self.tasks = list(tasks)
        self.top_k = top_k
        self.min_chars = min_chars
        self.generate_kwargs = (
            dict(generate_kwargs) if generate_kwargs else {"max_new_tokens": 64, "do_sample": False, "num_beams": 1}
        )
        self.device = device
        if isinstance(model, str):
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.model_name = model
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = AutoModelForImageTextToText.from_pretrained(model)
        else:
            self.model, self.processor = model
            self.model_name = _model_name(self.model)
        self.model.to(device or "cpu").eval()

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "tasks": self.tasks,
            "top_k": self.top_k,
            "min_chars": self.min_chars,
            "generate_kwargs": self.generate_kwargs,
            "device": self.device,
        }

    def segment_from_parsed(self, task: str, parsed: Any) -> list[str]:
        """Turn the processor's ``post_process_generation`` answer for ``task`` into text pieces."""
        segment = self.TASK_SEGMENTS[task]
        if segment == "objects":
            tags: list[str] = []
            for label in parsed["labels"]:
                label = normalize_text(label)
                if label and label not in tags:
                    tags.append(label)
            return tags[: self.top_k]
        text = normalize_text(parsed)
        if segment == "ocr":
            return [text] if keep_ocr_text(text, self.min_chars) else []
        return [text] if text else []

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        import torch

        results: list[Segments] = [{name: [] for name in self.segments} for _ in images]
        present = [i for i, image in enumerate(images) if image is not None]
        if not present:
            return results
        batch = [images[i] for i in present]
        for task in self.tasks:
            inputs = self.processor(text=[task] * len(batch), images=batch, return_tensors="pt")
            inputs = inputs.to(self.model.device)
            with torch.inference_mode():
                generated = self.model.generate(**inputs, **self.generate_kwargs)
            # Special tokens are kept because <OD> answers are <loc_*> tokens; padding of the shorter
            # answers in a batch is not, and the pure-text parser would leave it in the text.
            pad = self.processor.tokenizer.pad_token
            texts = [t.replace(pad, "") for t in self.processor.batch_decode(generated, skip_special_tokens=False)]
            for i, image, text in zip(present, batch, texts):
                parsed = self.processor.post_process_generation(text, task=task, image_size=image.size)[task]
                results[i][self.TASK_SEGMENTS[task]].extend(self.segment_from_parsed(task, parsed))
        return results


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def context_file_record(path: str | Path, source: str | None = None) -> dict[str, str]:
    """The record of a precomputed-context file, as configs store it: ``{"name", "sha256", "source"}``.

    Args:
        path: The file. Its name is the path's last part as given (a Hub cache's file is a symlink to a blob named by
            its hash), so relative, absolute and symlinked-folder spellings of one file give one record.
        source: What produced the contexts (e.g. ``"BLIP-2 captions, PGIM release"``); default
            ``"precomputed file <name>"``, which claims nothing about how they were made.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"precomputed context file not found: {path} (contexts looked up by image id exist only for "
            "the images of their files; use a real aligner for new images)"
        )
    return {"name": path.name, "sha256": file_sha256(path), "source": source or f"precomputed file {path.name}"}


def _context_file_records(
    paths: str | Path | Sequence[str | Path], source: str | Sequence[str] | None
) -> list[dict[str, str]]:
    """The records of files given by path, with one source for all, one per file, or the default."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("give at least one precomputed context file")
    sources = [source] * len(paths) if source is None or isinstance(source, str) else list(source)
    if len(sources) != len(paths):
        raise ValueError(
            f"got {len(sources)} sources for {len(paths)} precomputed context files; give one, or one per file"
        )
    return [context_file_record(path, source) for path, source in zip(paths, sources)]


def locate_context_file(record: dict[str, str], folders: Sequence[str | Path]) -> Path:
    """Find a recorded precomputed-context file by its name, only inside ``folders``, and verify its checksum.

    Args:
        record: ``{"name", "sha256", "source"}`` (see :func:`context_file_record`); the name must be a bare file
            name, so nothing outside the folders is ever read.
        folders: Local folders or Hugging Face Hub model ids, searched in order; from a Hub repository the file is
            fetched into the Hub cache (offline: taken from it).

    Returns:
        The local path of the first file of that name whose sha256 matches the record.

    Raises:
        ValueError: The record is malformed, or a file of that name was found but with another checksum.
        FileNotFoundError: No folder holds a file of that name.
    """
    validate_context_file(record)
    name = record["name"]
    mismatches = []
    for folder in folders:
        candidate = _local_file(str(folder), name)
        if candidate is None:
            continue
        checksum = file_sha256(candidate)
        if checksum == record["sha256"]:
            return candidate
        mismatches.append(f"{candidate} has sha256 {checksum}")
    if mismatches:
        raise ValueError(
            f"precomputed context file {name!r} ({record['source']}) does not match the checksum recorded with the "
            f"model (sha256 {record['sha256']}): {'; '.join(mismatches)}. It is not the file the model was trained "
            "with; put that file there, or pass aligners= to use others knowingly"
        )
    raise FileNotFoundError(
        f"precomputed context file {name!r} ({record['source']}, sha256 {record['sha256']}) is not in "
        f"{[str(folder) for folder in folders] or 'any folder (none given)'}; put it in the checkpoint folder or "
        "pass the folder that holds it (pipeline argument context_dir=)"
    )


def _local_file(folder: str, name: str) -> Path | None:
    """The file ``name`` of a local folder, or the Hub cache's copy of it when ``folder`` is a Hub model id, or None."""
    if os.path.isdir(folder):
        candidate = Path(os.path.abspath(folder)) / name
        return candidate if candidate.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(
            folder, name, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False
        )
    except (OSError, ValueError):  # not a repository id, or no such repository
        return None
    return Path(found) if found else None


class PrecomputedAligner(Aligner):
    """Contexts computed elsewhere, looked up by image id.

    Two file formats are read:

    - ``"captions"``: one caption per line, ``<IMGID>.jpg :<caption>`` (the BLIP-2 captions released by
      the PGIM authors for Twitter-2015/2017). An id on several lines gets several captions.
    - ``"jsonl"``: one JSON object per line with ``image_id`` and any of ``caption``, ``objects``,
      ``ocr``, each a string or a list of strings.

    An image id absent from every file yields empty segments, as does an empty caption. Since these
    contexts exist only for the images of the files, a checkpoint trained on them needs another aligner for new
    images (ITAConfig ``live_aligners``); its spec says ``"precomputed": true`` so that a pipeline can tell.

    The spec (:meth:`to_dict`) records each file by name, sha256 and source, never by path::

        {"type": "precomputed", "precomputed": true, "format": "auto",
         "files": [{"name": "BLIP2_17.txt", "sha256": "...", "source": "BLIP-2 captions, PGIM release"}]}

    and :func:`aligner_from_dict` rebuilds it only from files of those names and checksums found in the folders it is
    given. A hand-written spec may name the files by ``paths`` (with an optional ``source``), like the constructor.

    Args:
        paths: One or more files; later files add pieces after earlier ones.
        format: ``"captions"``, ``"jsonl"`` or ``"auto"`` (``.jsonl``/``.json`` → jsonl, else captions).
        source: What produced the contexts, one string for all files or one per file (e.g. ``"BLIP-2 captions,
            PGIM release"``); default ``"precomputed file <name>"``.
    """

    type = PRECOMPUTED_TYPE
    segments = SEGMENTS
    precomputed = True

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        format: str = "auto",
        source: str | Sequence[str] | None = None,
    ) -> None:
        if format not in PRECOMPUTED_FORMATS:
            raise ValueError(f"format must be one of {PRECOMPUTED_FORMATS}, got {format!r}")
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.files = _context_file_records(paths, source)
        #: The files read, on this machine (never part of the spec).
        self.paths = [os.path.abspath(path) for path in paths]
        self.format = format
        self.table: dict[str, Segments] = {}
        for path, record in zip(self.paths, self.files):
            jsonl = format == "jsonl" or (format == "auto" and record["name"].endswith((".jsonl", ".json")))
            self._read_jsonl(path) if jsonl else self._read_captions(path)

    @classmethod
    def normalize_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """``{"files": [records], "format": ...}`` from settings naming the files by ``files`` records or by ``paths``.

        Records are computed from files given by path, so the result holds no path and compares equal however the
        files were spelled (a rerun of ``python -m preprocess`` compares its settings with those of the finished work).
        """
        cls._check_keys(settings)
        files = (
            settings["files"]
            if "files" in settings
            else _context_file_records(settings["paths"], settings.get("source"))
        )
        spec = {"type": cls.type, "files": files, "format": settings.get("format", "auto")}
        validate_aligner_spec(spec)
        return {"files": [dict(record) for record in files], "format": spec["format"]}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], context_dirs: Sequence[str | Path] = ()) -> PrecomputedAligner:
        """Build from ``paths`` as given, or from ``files`` records found by name in ``context_dirs`` (only there)."""
        cls._check_keys(settings)
        if "paths" in settings:
            return cls(**settings)
        normalized = cls.normalize_settings(settings)
        records = normalized["files"]
        paths = [locate_context_file(record, context_dirs) for record in records]
        return cls(paths, normalized["format"], [record["source"] for record in records])

    @classmethod
    def _check_keys(cls, settings: dict[str, Any]) -> None:
        given = set(settings) - {"format"}
        if given not in ({"files"}, {"paths"}, {"paths", "source"}):
            raise ValueError(
                f"invalid settings for aligner {cls.type!r}: {sorted(settings)}; give 'paths' (files on this machine, "
                "with an optional 'source') or 'files' (records {'name', 'sha256', 'source'}), and optionally 'format'"
            )

    def knows(self, image_id: str) -> bool:
        return image_id_from_name(image_id) in self.table

    def settings(self) -> dict[str, Any]:
        return {"files": [dict(record) for record in self.files], "format": self.format}

    def _add(self, image_id: str, segment: str, pieces: list[str]) -> None:
        entry = self.table.setdefault(image_id, {name: [] for name in SEGMENTS})
        entry[segment].extend(p for p in (normalize_text(piece) for piece in pieces) if p)

    def _read_captions(self, path: str) -> None:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                name, sep, caption = line.partition(" :")
                if not sep or not name.strip():
                    raise ValueError(f"{path}:{number}: expected '<IMGID>.jpg :<caption>', got {line[:80]!r}")
                self._add(image_id_from_name(name.strip()), "caption", [caption])

    def _read_jsonl(self, path: str) -> None:
        for number, record in iter_jsonl(path, required=("image_id",)):
            image_id = image_id_from_name(str(record["image_id"]))
            for segment in SEGMENTS:
                value = record.get(segment)
                if value is None:
                    continue
                pieces = [value] if isinstance(value, str) else value
                if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
                    raise ValueError(f"{path}:{number}: '{segment}' must be a string or a list of strings")
                self._add(image_id, segment, pieces)

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        if image_ids is None or len(image_ids) != len(images):
            raise ValueError("precomputed contexts are looked up by image id: pass one image_id per image")
        empty: Segments = {name: [] for name in SEGMENTS}
        return [{k: list(v) for k, v in self.table.get(image_id_from_name(i), empty).items()} for i in image_ids]


# ---------------------------------------------------------------------------------------------------
# Visual context
# ---------------------------------------------------------------------------------------------------


class VisualContextBuilder:
    """Join aligned segments into the visual-context string the encoder reads after the tweet.

    Segments are taken in ``order``, each segment's pieces are joined (object tags with ``", "``, other
    segments with ``" "``, configurable), capped at ``max_words_per_segment`` words, and non-empty
    segments are joined with ``separator``; the whole context is then capped at ``max_words`` words.
    The model's own encoding additionally caps the context in sub-tokens.

    The defaults are ITAConfig's; a checkpoint records the settings its training contexts were built with
    (its ``context_*`` fields), and :meth:`from_config` rebuilds that builder.

    Args:
        order: Segment names in context order (ITAConfig ``context_order``).
        separator: Text between segments (ITAConfig ``context_separator``).
        max_words_per_segment: Word cap per segment (``None`` = no cap; ``context_max_words_per_segment``).
        max_words: Word cap for the whole context (``None`` = no cap; ``context_max_words``).
        piece_separators: Joiner of pieces inside a segment, by segment name; default ``{"objects": ", "}``
            and ``" "`` for segments not listed (``context_piece_separators``).
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
        """The builder a model's ``ITAConfig`` records (its ``context_*`` fields): the one its training contexts used."""
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
            segments: Segment name → text or list of text pieces. Names not in ``order`` are ignored.

        Returns:
            ``(text, sources)``: the context ("" when nothing was aligned) and the names of the segments
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
