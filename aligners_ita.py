"""Aligners: the models that turn an image into text segments (docs/method.md §1), and their base class.

Object tags (local alignment), captions (global alignment) and OCR (optical character alignment): each aligner maps a
batch of images to one dict of *segments* per image, segment name (`"caption"`, `"objects"`, `"ocr"`, `"knowledge"`)
→ text pieces. Aligners that also read the tweet (`needs_text`, e.g. a vision-language model writing `knowledge`) live
in `knowledge_ita`; contexts looked up by image id are `precomputed_ita`'s. Subclasses of `Aligner` register by `type`
in `ALIGNER_TYPES`; `visual_context_ita` builds aligners from specs and joins their segments into the context.

Remote code: imports only the standard library, numpy, torch, transformers and its sibling modules; RapidOCR, OpenCV
and pytesseract are imported by name (`images_ita.optional_import`) when an aligner that needs them is built.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

try:
    from .configuration_ita import DEFAULT_CONTEXT_ORDER
    from .images_ita import optional_import
except ImportError:
    from configuration_ita import DEFAULT_CONTEXT_ORDER
    from images_ita import optional_import

# Segment names, in the default order of the visual context (docs/method.md §1: caption, object tags, OCR; then the
# knowledge a language model writes after reading the tweet, see `configuration_ita.DEFAULT_CONTEXT_ORDER`).
SEGMENTS: tuple[str, ...] = tuple(DEFAULT_CONTEXT_ORDER)

# One image's segments: segment name → text pieces.
Segments = dict[str, list[str]]

_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Collapse runs of whitespace (including newlines) into single spaces and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


ALIGNER_TYPES: dict[str, type[Aligner]] = {}


class PartialAlignment(Exception):
    """Raised by an aligner that aligned some images of a batch and failed on others, each for its own reason.

    `visual_context_ita.align_images` keeps the segments of the images that worked and records each failure for its
    image, instead of running the batch again image by image (which would, e.g., send every request of a batch to a
    chat endpoint that is down a second time).

    Args:
        results: One dict of segments per image of the batch (empty for the images that failed).
        errors: One entry per image: why it failed, or `None` when it did not.
    """

    def __init__(self, results: list[Segments], errors: list[str | None]) -> None:
        super().__init__("; ".join(error for error in errors if error))
        self.results = results
        self.errors = errors


class Aligner:
    """Base class: turns a batch of images into text segments.

    Subclasses set `type` (the name used in specs), `segments` (the segment names they fill) and
    implement `align` and `settings`. Aligners that read the tweet too set `needs_text`.
    """

    type: ClassVar[str]
    segments: ClassVar[tuple[str, ...]]
    # `True` for aligners that look contexts up by image id instead of computing them from pixels.
    precomputed: ClassVar[bool] = False
    # `True` for aligners that read each image's tweet and the segments aligners before them produced (`align`'s
    # `texts` and `segments`), e.g. a vision-language model asked about this tweet's names.
    needs_text: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:  # a base class of several aligner types has none of its own
            ALIGNER_TYPES[cls.type] = cls

    @property
    def needs_images(self) -> bool:
        """Whether `align` reads the pixels (precomputed aligners only need image ids)."""
        return not self.precomputed

    def knows(self, image_id: str) -> bool:
        """Whether this aligner holds a context for `image_id` without seeing the image (precomputed aligners).

        The pipeline runs a checkpoint's live aligners instead of its precomputed ones for an image none of them knows.
        """
        return True

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        """Align a batch of images.

        Aligners with `needs_text` take two more arguments, passed by keyword (and only to them, so that an aligner
        written before they existed keeps working): `texts`, each image's tweet (`None` when unknown), and
        `segments`, the segments the aligners before this one produced for each image (e.g. the caption a language
        model reads with the tweet).

        Args:
            images: `PIL.Image` objects (RGB); `None` for an image that is missing, which yields
                empty segments.
            image_ids: The image ids (`None` for an image without one), by which precomputed aligners look
                contexts up; same length as `images`.

        Returns:
            One dict per image, from segment name to text pieces (possibly empty).

        Raises:
            PartialAlignment: Some images of the batch failed and the others did not (the results of both inside).
        """
        raise NotImplementedError

    def __call__(self, image: Any, image_id: str | None = None, text: str | None = None) -> Segments:
        """Align one image (see `align`); `text` is its tweet, read by aligners with `needs_text`."""
        image_ids = None if image_id is None else [image_id]
        if self.needs_text:
            return self.align([image], image_ids, texts=[text], segments=[{}])[0]
        return self.align([image], image_ids)[0]

    @classmethod
    def normalize_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings of a spec in the form `settings` writes: every constructor argument, defaults filled in.

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
        """Build the aligner of a spec's settings; `context_dirs` matter only to precomputed aligners."""
        return cls(**cls.normalize_settings(settings))

    def settings(self) -> dict[str, Any]:
        """The JSON-serialisable constructor arguments of this aligner."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The spec `visual_context_ita.aligner_from_dict` reads: `{"type": ..., "precomputed": ..., **settings}`."""
        return {"type": self.type, "precomputed": self.precomputed, **self.settings()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(self.settings(), sort_keys=True)})"


def _model_name(model: Any) -> str:
    """The name or path of a model given as a string or as a transformers pipeline/model object."""
    if isinstance(model, str):
        return model
    inner = getattr(model, "model", model)
    return getattr(inner, "name_or_path", None) or type(inner).__name__


def _device_arg(device: str | int | None) -> Any:
    """Pipeline device argument; `None` means CPU (-1) so behaviour never depends on hidden GPUs."""
    return -1 if device is None else device


class ObjectTagAligner(Aligner):
    """Object tags (docs/method.md §1 local alignment) from any transformers `object-detection` model.

    Each detected region gives one label phrase (e.g. `"dog"`, or `"black shirt"` for models whose
    labels carry attributes). Detections below `threshold` are dropped, the rest are sorted by score
    (ties broken by label, so the order is stable), repeated labels are kept once when `deduplicate`,
    and at most `top_k` remain. With `candidate_labels` the `zero-shot-object-detection` task is
    used instead (OWL-ViT, OWLv2, Grounding DINO).

    Args:
        model: A model id or local path, or a ready transformers pipeline (then not re-serialisable
            beyond its `name_or_path`).
        threshold: Minimum detection score.
        top_k: Maximum number of tags per image.
        deduplicate: Keep each label once (at its best score).
        candidate_labels: Text queries for zero-shot detectors.
        batch_size: Images per forward pass.
        device: Pipeline device (`None` = CPU).
        revision: The Hub revision (branch, tag or commit) of a model given by id; `None` is the default branch.
            A commit makes the aligner reproducible when the repository changes.
    """

    type = "object-detection"
    segments = ("objects",)
    # Placeholder labels of COCO-style heads that mean "no class".
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
        revision: str | None = None,
    ) -> None:
        from transformers import pipeline

        self.model_name = _model_name(model)
        self.revision = revision
        self.threshold = threshold
        self.top_k = top_k
        self.deduplicate = deduplicate
        self.candidate_labels = list(candidate_labels) if candidate_labels else None
        self.batch_size = batch_size
        self.device = device
        if isinstance(model, str):
            task = "zero-shot-object-detection" if self.candidate_labels else "object-detection"
            model = pipeline(task, model=model, revision=revision, device=_device_arg(device))
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
            "revision": self.revision,
        }

    def tags(self, detections: Iterable[dict[str, Any]]) -> list[str]:
        """Turn raw pipeline detections (`{"score", "label", "box"}`) into the ordered tag list."""
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

    The model is run directly (image processor → `generate` → tokenizer decoding, as transformers 4's
    `image-to-text` pipeline does), because transformers 5 replaced that pipeline with `image-text-to-text`,
    which expects chat prompts.

    Args:
        model: A model id or local folder holding the model (an `AutoModelForImageTextToText` class), its image
            processor and tokenizer, or a ready `(model, image_processor, tokenizer)` triple.
        generate_kwargs: Generation settings passed to `generate` (e.g. `max_new_tokens`,
            `num_beams`, `num_return_sequences` for several captions per image). Defaults to greedy
            decoding of at most 30 new tokens, which is deterministic.
        batch_size: Images per forward pass.
        device: Torch device, or a pipeline-style index (`None` or -1 = CPU).
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
    """OCR junk filter: keep a piece only if it has at least `min_chars` letters or digits.

    OCR engines emit stray single characters for edges, icons and textures (`"|"`, `"e"`, `"©"`);
    they carry no entity information and would only add noise to the context.
    """
    return sum(ch.isalnum() for ch in text) >= min_chars


class RapidOCRAligner(Aligner):
    """OCR (docs/method.md §1 optical character alignment) with RapidOCR; its ONNX models ship in the wheel.

    Args:
        min_score: Minimum recognition confidence of a text line.
        min_chars: Minimum number of letters/digits in a kept line.
        threads: ONNX Runtime intra-op and OpenCV threads (`None` = library defaults). Set 1 when
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

    Words below `min_conf` are dropped, the rest are grouped into lines in reading order, and lines
    with fewer than `min_chars` letters/digits are dropped.

    Args:
        lang: Tesseract language(s), e.g. `"eng"` or `"eng+deu"`.
        min_conf: Minimum word confidence (0–100).
        min_chars: Minimum number of letters/digits in a kept line.
        config: Extra Tesseract command-line options (e.g. `"--psm 11"`).
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
            `"florence-community/Florence-2-base"`), or a `(model, processor)` pair.
        tasks: Florence-2 task tokens to run, each mapped to a segment: `<CAPTION>`,
            `<DETAILED_CAPTION>`, `<MORE_DETAILED_CAPTION>` → caption; `<OD>`,
            `<DENSE_REGION_CAPTION>` → objects; `<OCR>` → ocr.
        top_k: Maximum number of object tags (first-seen order, de-duplicated).
        min_chars: Minimum number of letters/digits in a kept OCR line.
        generate_kwargs: Generation settings (default: greedy, at most 64 new tokens).
        device: Torch device (`None` = CPU).
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
        """Turn the processor's `post_process_generation` answer for `task` into text pieces."""
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
