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

import base64
import binascii
import functools
import hashlib
import http.client
import importlib
import inspect
import io
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
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
#: Image sources of more bytes than this are refused (files, downloads, base64); tweet images are far smaller.
DEFAULT_MAX_IMAGE_BYTES: int = 20 * 1024 * 1024
#: Seconds an image URL may take in all, from connecting to the last byte, redirects included.
DEFAULT_IMAGE_TIMEOUT: float = 10.0
#: Redirects followed for an image URL.
MAX_IMAGE_REDIRECTS: int = 5
#: File extensions tried, in order, when an image is named by its id only.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")

Segments = dict[str, list[str]]

_WHITESPACE = re.compile(r"\s+")
# A string of at least this many base64 characters that is not a file is read as base64 (the smallest PNG is 92).
_BASE64_MIN_CHARS = 64
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}\s*")
_PATH_MAX = 4096
# Characters shown in messages of a path or URL, and of base64 or a data: URI.
_NAME_CHARS = 300
_PREVIEW_CHARS = 60
_DOWNLOAD_CHUNK = 64 * 1024
_USER_AGENT = "ita-mner image loader (Python urllib)"


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


def _text_lines(path: str | Path, encoding: str, error: type[ValueError] = ValueError) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a text file; a byte that does not decode is an error naming the file and line."""
    with open(path, encoding=encoding) as handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                yield number, line
        except UnicodeDecodeError as err:
            # The file is decoded in blocks, so the bad byte is somewhere after the last line read.
            raise error(
                f"{path}: not {encoding.removesuffix('-sig').upper()} text after line {number} ({err.reason}): "
                "convert the file to UTF-8."
            ) from err


def iter_jsonl(
    path: str | Path, required: Sequence[str] = (), error: type[ValueError] = ValueError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for the non-blank lines of a JSONL file (a BOM is accepted).

    Args:
        path: The file.
        required: Keys every object must have.
        error: The exception raised for a bad line; its message names the file and line.
    """
    for number, line in _text_lines(path, "utf-8-sig", error):
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


def check_image_limits(**limits: float) -> None:
    """Check limits of :func:`load_image` given by name, so that a bad setting is an error at once, not a failed image.

    Args:
        **limits: A name ending in ``timeout`` is seconds (a number), any other a count (an integer); all must be > 0.

    Raises:
        TypeError: A limit is not a number (a timeout) or not an integer (a count).
        ValueError: A limit is not positive.
    """
    for name, value in limits.items():
        seconds = name.endswith("timeout")
        if isinstance(value, bool) or not isinstance(value, (int, float) if seconds else int):
            raise TypeError(f"`{name}` must be {'a number of seconds' if seconds else 'an integer'}, got {value!r}.")
        if not value > 0:
            raise ValueError(f"`{name}` must be > 0, got {value!r}.")


def image_source_kind(source: Any) -> str:
    """What an image source is: ``"pil"``, ``"bytes"``, ``"url"``, ``"data"`` (``data:`` URI), ``"base64"``, ``"path"``.

    A string is a URL when it starts with ``http://`` or ``https://`` and a ``data:`` URI when it starts with
    ``data:``; otherwise it is a path when a file of that name exists, and base64 when it is at least 64
    characters of the base64 alphabet (line breaks allowed). Anything else is a path, which may not exist. So an
    existing file is never read as base64, and :func:`load_image` reads a ``"base64"`` string as an image only when
    it decodes to one.
    """
    pil = sys.modules.get("PIL.Image")  # no PIL image exists before Pillow is imported
    if pil is not None and isinstance(source, pil.Image):
        return "pil"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(source, os.PathLike):
        return "path"
    if not isinstance(source, str):
        raise TypeError(
            f"an image is a PIL image, a path, an http(s) URL, base64, a data: URI or bytes, not {type(source).__name__}"
        )
    if source[:8].lower().startswith(("http://", "https://")):
        return "url"
    if source[:5].lower() == "data:":
        return "data"
    # No file name is longer than PATH_MAX; the check spares encoding a multi-megabyte string for a stat.
    if len(source) <= _PATH_MAX and os.path.isfile(source):
        return "path"
    if len(source) >= _BASE64_MIN_CHARS and _BASE64.fullmatch(source):
        return "base64"
    return "path"


def _describe_source(source: Any, kind: str) -> str:
    """A short description of an image source for messages: a path or URL, or a ~60-character preview of base64."""
    if kind == "pil":
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if kind == "bytes":
        return f"<{len(source)} bytes>"
    text = os.fspath(source)
    if kind in ("path", "url"):
        shown, limit = text[:_NAME_CHARS], _NAME_CHARS
    else:
        shown, limit = f"{'' if kind == 'data' else 'base64 '}{text[:_PREVIEW_CHARS]!r}", _PREVIEW_CHARS
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def load_image(
    source: Any,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    timeout: float = DEFAULT_IMAGE_TIMEOUT,
) -> Any:
    """Read an image from anywhere, within limits, and return it as an upright RGB ``PIL.Image``.

    Every kind of source goes through the same steps, so the same picture gives the same pixels however it is
    given: a byte cap; a content check (the format is detected from the bytes, never from a name: some tweet images
    are PNG data behind a ``.jpg`` name); the pixel cap, read from the header before anything is decoded; EXIF
    orientation; and a conversion to 8-bit RGB: 16-bit and 32-bit grey scaled to 8 bits rather than clipped,
    transparency (alpha, palette or colour key) composited onto white so that dark text on a transparent background
    stays readable for OCR, CMYK and other modes converted by Pillow.

    Sources (see :func:`image_source_kind`):

    - a ``PIL.Image`` (its pixel count is checked; it is transposed and converted, never modified in place);
    - a path (``str`` or ``os.PathLike``);
    - an ``http://`` / ``https://`` URL: at most ``timeout`` seconds in all, however slowly the server sends and across
      at most ``MAX_IMAGE_REDIRECTS`` redirects, and at most ``max_bytes`` read;
    - a ``data:image/...;base64,`` URI, or a bare base64 string (what JSON payloads carry);
    - the bytes of an image file.

    Thread-safe: it keeps no state and changes no global setting.

    Args:
        source: The image.
        max_pixels: Refuse images with more pixels than this before decoding them (a small file can declare
            gigapixel dimensions and exhaust memory when decoded). Pillow refuses more than twice its own
            ``Image.MAX_IMAGE_PIXELS`` (about 179 million) whatever this is.
        max_bytes: Refuse sources of more bytes than this (files, downloads, decoded base64), without reading more.
        timeout: Seconds a URL may take in total, from connecting to the last byte, redirects included.

    Returns:
        The decoded ``PIL.Image.Image`` in mode ``RGB``.

    Raises:
        FileNotFoundError: A path that does not exist.
        TimeoutError: A URL took longer than ``timeout``.
        OSError: A URL could not be fetched (network error, HTTP error status, too many redirects).
        ValueError: The source is not a readable image (not an image, truncated, invalid base64), is too large in
            bytes or pixels, or a limit is not positive.
    """
    Image = optional_import("PIL.Image")
    check_image_limits(timeout=timeout, max_bytes=max_bytes, max_pixels=max_pixels)
    kind = image_source_kind(source)
    name = _describe_source(source, kind)
    if kind == "pil":
        return _normalize_image(source, name, max_pixels)
    stream, origin = _image_stream(source, kind, name, max_bytes, timeout)
    with stream:
        try:
            opened = Image.open(stream)
        except Image.UnidentifiedImageError:
            size = stream.seek(0, io.SEEK_END)
            stream.seek(0)
            head = stream.read(16)
            what = f"{size} bytes{origin}, starting with {head!r},"
            if kind == "base64":
                raise ValueError(
                    f"{name} is neither an image file nor base64 of an image: as base64 it decodes to {what} which "
                    "PIL cannot identify as an image"
                ) from None
            raise ValueError(f"cannot read image {name}: its {what} are not an image PIL can identify") from None
        # A header cut short, or a size beyond Pillow's own hard limit whatever max_pixels says.
        except (OSError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot read image {name}: {err}") from None
        with opened:
            return _normalize_image(opened, name, max_pixels)


def _normalize_image(image: Any, name: str, max_pixels: int) -> Any:
    """The pixel cap, decoding, EXIF orientation and RGB conversion of an opened, possibly not yet decoded, image."""
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(
            f"image {name} is {width}x{height} = {width * height} pixels, more than max_pixels={max_pixels}: refused "
            "before decoding (a small file can declare huge dimensions, a decompression bomb); raise max_pixels if you "
            "trust this image"
        )
    try:
        image.load()
        return _to_rgb(optional_import("PIL.ImageOps").exif_transpose(image))
    except OSError as err:  # truncated or corrupt data
        raise ValueError(f"cannot read image {name}: {err}") from err


def _to_rgb(image: Any) -> Any:
    """An RGB copy of an upright image: deep grey scaled to 8 bits, transparency composited onto white."""
    Image = optional_import("PIL.Image")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _grey_to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:  # a mode Pillow cannot convert (e.g. LAB)
        raise ValueError(f"cannot convert an image of mode {image.mode} to RGB: {err}") from err


def _grey_to_8bit(image: Any) -> Any:
    """An ``L`` image of a 16-bit, 32-bit integer or float grey image, scaled linearly rather than clipped at 255.

    16-bit modes span 0..65535. Modes ``I`` and ``F`` carry no range of their own (Pillow gives ``I`` to 16-bit data
    in some formats and to 8-bit data converted to ``I``), so theirs is read from the values: 0..1 (``F`` only),
    0..255, 0..65535, or else the values' own minimum to maximum.
    """
    import numpy as np

    Image = optional_import("PIL.Image")
    values = np.asarray(image)
    offset, span = 0.0, 65535.0
    if not image.mode.startswith("I;16") and values.size:
        low, high = values.min(), values.max()
        if image.mode == "F" and low >= 0 and high <= 1:
            span = 1.0
        elif low >= 0 and high <= 255:
            span = 255.0
        elif not (low >= 0 and high <= 65535):
            offset, span = float(low), float(high - low) or 1.0
    # float32 holds every 16-bit value exactly; 4 bytes a pixel bounds the memory of a capped image.
    scaled = (values.astype(np.float32) - np.float32(offset)) * np.float32(255.0 / span)
    return Image.fromarray(np.rint(scaled).clip(0, 255).astype(np.uint8))


def _image_stream(source: Any, kind: str, name: str, max_bytes: int, timeout: float) -> tuple[Any, str]:
    """A binary file of the image's bytes (at most ``max_bytes``) and what their origin adds to a message."""
    if kind == "path":
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {name}")
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"image {name} is {size} bytes, more than max_bytes={max_bytes}")
        return open(path, "rb"), ""
    if kind == "url":
        return _download(source, name, max_bytes, timeout)
    if kind == "bytes":
        data = bytes(source)
    else:
        data = _decode_base64(source, kind, name, max_bytes)
    if len(data) > max_bytes:
        raise ValueError(f"image {name} is {len(data)} bytes, more than max_bytes={max_bytes}")
    return io.BytesIO(data), ""


def _decode_base64(text: str, kind: str, name: str, max_bytes: int) -> bytes:
    """The bytes of a base64 string or of a ``data:...;base64,`` URI, refused before decoding when too large."""
    if kind == "data":
        header, comma, text = text.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise ValueError(f"{name} is a data: URI without base64 data: write data:image/<type>;base64,<data>")
    # Base64 in JSON or e-mail is often wrapped in lines; padding is sometimes left out.
    payload = "".join(text.split())
    payload += "=" * (-len(payload) % 4)
    at_least = len(payload) // 4 * 3 - 2  # 4 characters carry 3 bytes, less up to 2 of padding
    if at_least > max_bytes:
        raise ValueError(f"image {name} holds at least {at_least} bytes, more than max_bytes={max_bytes}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        if kind == "base64":
            raise ValueError(f"{name} is neither an image file nor valid base64 ({err})") from None
        raise ValueError(f"{name} does not hold valid base64 ({err})") from None


def _download(url: str, name: str, max_bytes: int, timeout: float) -> tuple[io.BytesIO, str]:
    """The body of an http(s) URL, read in chunks within one deadline for the whole exchange and at most ``max_bytes``.

    Returns:
        The body, and the server's content type as message text (a non-image is often an HTML error page).
    """
    deadline = time.monotonic() + timeout
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _DeadlineHTTPHandler(deadline),
        _DeadlineHTTPSHandler(deadline),
        _RedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept": "image/*"})
    body = io.BytesIO()
    try:
        with opener.open(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "")
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) > max_bytes:
                raise ValueError(f"image {name} is {declared} bytes (Content-Length), more than max_bytes={max_bytes}")
            # What has arrived, chunk by chunk (each read waits only for the time left), up to one byte more than
            # allowed, which tells an oversized body from one of exactly max_bytes.
            while body.tell() <= max_bytes:
                chunk = response.read1(min(_DOWNLOAD_CHUNK, max_bytes + 1 - body.tell()))
                if not chunk:
                    break
                body.write(chunk)
    except urllib.error.HTTPError as err:
        err.close()
        if 300 <= err.code < 400:
            raise OSError(
                f"cannot fetch image {name}: more than {MAX_IMAGE_REDIRECTS} redirects, or a redirect loop "
                f"(HTTP {err.code} to {err.headers.get('Location')!r})"
            ) from None
        raise OSError(f"cannot fetch image {name}: the server answered HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        if not isinstance(err.reason, TimeoutError):
            raise OSError(f"cannot fetch image {name}: {err.reason}") from None
        raise _url_timeout(name, timeout, body.tell()) from None
    except TimeoutError:
        raise _url_timeout(name, timeout, body.tell()) from None
    except OSError as err:  # e.g. the connection reset while reading the body
        raise OSError(f"cannot fetch image {name}: {err}") from None
    except http.client.HTTPException as err:
        raise OSError(f"cannot fetch image {name}: the connection broke ({type(err).__name__}: {err})") from None
    if body.tell() > max_bytes:
        raise ValueError(f"image {name} is more than max_bytes={max_bytes} bytes: stopped reading there")
    body.seek(0)
    return body, f" (Content-Type: {content_type})" if content_type else ""


def _url_timeout(name: str, timeout: float, received: int) -> TimeoutError:
    return TimeoutError(f"image {name} did not arrive within timeout={timeout:g}s ({received} bytes of it received)")


class _DeadlineReader(io.RawIOBase):
    """A socket's byte stream that gives up at a deadline: each receive may wait only for the time left.

    A socket timeout alone bounds each receive, so a server sending a byte a second would never time out.
    """

    def __init__(self, stream: Any, sock: Any, deadline: float) -> None:
        self._stream, self._sock, self._deadline = stream, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        self._sock.settimeout(left)
        return self._stream.readinto1(buffer)

    def close(self) -> None:
        self._stream.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP response read through a :class:`_DeadlineReader`: status line, headers and body within the deadline."""

    def __init__(self, sock: Any, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_DeadlineReader(self.fp, sock, deadline))


class _DeadlineConnection:
    """Connects within the time left to the deadline and reads its responses as :class:`_DeadlineResponse`."""

    def __init__(self, *args: Any, deadline: float, **kwargs: Any) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline reached")
        kwargs["timeout"] = left
        super().__init__(*args, **kwargs)
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_DeadlineHTTPConnection, req, deadline=self.deadline)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_DeadlineHTTPSConnection, req, context=self._context, deadline=self.deadline)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_IMAGE_REDIRECTS


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
        for number, line in _text_lines(path, "utf-8"):
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
