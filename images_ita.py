"""Reading a tweet's image, from whatever form it comes in, within limits: the first step of image → context.

`load_image` takes a PIL image, a path, an http(s) URL, base64, a `data:` URI or the bytes of a file, and gives the
same upright 8-bit RGB `PIL.Image` for the same picture however it is given; `find_image_file` finds an image of a
dataset by its id. The aligners (`aligners_ita`) then turn the image into text.

A URL is fetched only from a public address unless its caller opts in (`allow_private_urls=True`): the host is
resolved within the URL's deadline, every address it resolves to is checked (`private_address_kind`), at the first
hop and at every redirect, and the connection goes to the address checked, never to a second lookup's.

Remote code: imports only the standard library and numpy. Pillow is imported by name when an image is read
(`optional_import`, which the aligners use for their optional packages too), so a checkpoint loads without it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import http.client
import importlib
import io
import ipaddress
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Images larger than this are refused before decoding (decompression-bomb guard); 64 MP ≈ 8000×8000.
DEFAULT_MAX_PIXELS: int = 64_000_000
# Image sources of more bytes than this are refused (files, downloads, base64); tweet images are far smaller.
DEFAULT_MAX_IMAGE_BYTES: int = 20 * 1024 * 1024
# Seconds an image URL may take in all, from connecting to the last byte, redirects included.
DEFAULT_IMAGE_TIMEOUT: float = 10.0
# Redirects followed for an image URL.
MAX_IMAGE_REDIRECTS: int = 5
# The only schemes an image URL, or a redirect, may have.
URL_SCHEMES: tuple[str, ...] = ("http", "https")
# File extensions tried, in order, when an image is named by its id only.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")

# A string of at least this many base64 characters that is not a file is read as base64 (the smallest PNG is 92).
_BASE64_MIN_CHARS = 64
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}\s*")
_PATH_MAX = 4096
# Characters shown in messages of a path or URL, and of base64 or a data: URI.
_NAME_CHARS = 300
_PREVIEW_CHARS = 60
_URL_PREFIXES = tuple(f"{scheme}://" for scheme in URL_SCHEMES)
# IPv6 prefix of NAT64 (RFC 6052): its addresses reach the IPv4 address in their last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DOWNLOAD_CHUNK = 64 * 1024
_USER_AGENT = "ita-mner image loader (Python urllib)"


def optional_import(module: str, extra: str = "ocr") -> Any:
    """Imports an optional dependency by name, with an install hint when it is missing.

    By name rather than with an import statement: transformers refuses to load a checkpoint's remote code when
    any of its files has an import statement (even inside a function) of a package that is not installed, and
    these packages are needed only where they are used: Pillow to read an image, the OCR engines by their aligners.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(
            f"{package} is not installed; this aligner needs it: pip install 'ita-mner[{extra}]' "
            f"(or pip install {'pillow' if package == 'PIL' else package})."
        ) from err


def image_id_from_name(name: str) -> str:
    """Return the image id of a file name: its base name without a known image extension.

    `"1015799.jpg"`, `"imgs/1015799.jpg"` and `"1015799"` all give `"1015799"`.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if dot and f".{ext.lower()}" in IMAGE_EXTENSIONS:
        return stem
    return base


def check_image_limits(**limits: float) -> None:
    """Check limits of `load_image` given by name, so that a bad setting is an error at once, not a failed image.

    Args:
        **limits: A name ending in `timeout` is seconds (a number), any other a count (an integer); all must be > 0.

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
    """What an image source is: `"pil"`, `"bytes"`, `"url"`, `"data"` (`data:` URI), `"base64"`, `"path"`.

    A string is a URL when it starts with `http://` or `https://` and a `data:` URI when it starts with
    `data:`; otherwise it is a path when a file of that name exists, and base64 when it is at least 64
    characters of the base64 alphabet (line breaks allowed). Anything else is a path, which may not exist. So an
    existing file is never read as base64, and `load_image` reads a `"base64"` string as an image only when
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
    if source[:8].lower().startswith(_URL_PREFIXES):
        return "url"
    if source[:5].lower() == "data:":
        return "data"
    # No file name is longer than PATH_MAX; the check spares encoding a multi-megabyte string for a stat.
    if len(source) <= _PATH_MAX and os.path.isfile(source):
        return "path"
    if len(source) >= _BASE64_MIN_CHARS and _BASE64.fullmatch(source):
        return "base64"
    return "path"


def image_id_from_source(source: Any) -> str | None:
    """The image id a path or URL names (see `image_id_from_name`); `None` for an image given in another form."""
    if isinstance(source, (str, os.PathLike)) and image_source_kind(source) in ("path", "url"):
        return image_id_from_name(os.fspath(source))
    return None


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
    allow_private_urls: bool = False,
) -> Any:
    """Read an image from anywhere, within limits, and return it as an upright RGB `PIL.Image`.

    Every kind of source goes through the same steps, so the same picture gives the same pixels however it is
    given: a byte cap; a content check (the format is detected from the bytes, never from a name: some tweet images
    are PNG data behind a `.jpg` name); the pixel cap, read from the header before anything is decoded; EXIF
    orientation; and a conversion to 8-bit RGB: 16-bit and 32-bit grey scaled to 8 bits rather than clipped,
    transparency (alpha, palette or colour key) composited onto white so that dark text on a transparent background
    stays readable for OCR, CMYK and other modes converted by Pillow.

    Sources (see `image_source_kind`):

    - a `PIL.Image` (its pixel count is checked; it is transposed and converted, never modified in place);
    - a path (`str` or `os.PathLike`);
    - an `http://` / `https://` URL: at most `timeout` seconds in all, host name resolution included, however
      slowly the server sends and across at most `MAX_IMAGE_REDIRECTS` redirects, and at most `max_bytes` read;
      only from public addresses unless `allow_private_urls` (see `download`);
    - a `data:image/...;base64,` URI, or a bare base64 string (what JSON payloads carry);
    - the bytes of an image file.

    Thread-safe: it keeps no state and changes no global setting.

    Args:
        source: The image.
        max_pixels: Refuse images with more pixels than this before decoding them (a small file can declare
            gigapixel dimensions and exhaust memory when decoded). Pillow refuses more than twice its own
            `Image.MAX_IMAGE_PIXELS` (about 179 million) whatever this is.
        max_bytes: Refuse sources of more bytes than this (files, downloads, decoded base64), without reading more.
        timeout: Seconds a URL may take in total, from resolving its host to the last byte, redirects included.
        allow_private_urls: Let URLs (and their redirects) reach loopback, private, link-local and other non-public
            addresses. Off by default, so that a service fetching the URLs its callers send cannot be made to reach
            inside its own network (cloud metadata, admin pages, databases); turn it on only for URLs you trust.

    Returns:
        The decoded `PIL.Image.Image` in mode `RGB`.

    Raises:
        FileNotFoundError: A path that does not exist.
        TimeoutError: A URL took longer than `timeout`.
        RefusedURLError: A URL, or one of its redirects, leads to a non-public address or to a scheme other than
            http and https (a `PermissionError`, raised before any connection to that address).
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
    policy = URLPolicy(allow_private=allow_private_urls)
    stream, origin = _image_stream(source, kind, name, max_bytes, timeout, policy)
    with stream:
        try:
            opened = Image.open(stream)
        except Image.UnidentifiedImageError:
            # Its size and content type, never its bytes: a URL's answer may be a page that is not the caller's to see.
            what = f"{stream.seek(0, io.SEEK_END)} bytes{origin}"
            if kind == "base64":
                raise ValueError(
                    f"{name} is neither an image file nor base64 of an image: as base64 it decodes to {what}, which "
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
    """An `L` image of a 16-bit, 32-bit integer or float grey image, scaled linearly rather than clipped at 255.

    16-bit modes span 0..65535. Modes `I` and `F` carry no range of their own (Pillow gives `I` to 16-bit data
    in some formats and to 8-bit data converted to `I`), so theirs is read from the values: 0..1 (`F` only),
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


def _image_stream(
    source: Any, kind: str, name: str, max_bytes: int, timeout: float, policy: URLPolicy
) -> tuple[Any, str]:
    """A binary file of the image's bytes (at most `max_bytes`) and what their origin adds to a message."""
    if kind == "path":
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {name}")
        size = path.stat().st_size
        if size > max_bytes:
            raise ValueError(f"image {name} is {size} bytes, more than max_bytes={max_bytes}")
        return open(path, "rb"), ""
    if kind == "url":
        body, content_type = download(source, max_bytes=max_bytes, timeout=timeout, policy=policy)
        return body, f" (Content-Type: {content_type[:_PREVIEW_CHARS]})" if content_type else ""
    if kind == "bytes":
        data = bytes(source)
    else:
        data = _decode_base64(source, kind, name, max_bytes)
    if len(data) > max_bytes:
        raise ValueError(f"image {name} is {len(data)} bytes, more than max_bytes={max_bytes}")
    return io.BytesIO(data), ""


def _decode_base64(text: str, kind: str, name: str, max_bytes: int) -> bytes:
    """The bytes of a base64 string or of a `data:...;base64,` URI, refused before decoding when too large."""
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


def private_address_kind(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The kind of non-public address `address` is, or `None` for a public one: what image URLs may not reach.

    A pure function of the address (no lookup, no packet). The kinds: `"unspecified"` (`0.0.0.0`, `::`),
    `"loopback"` (`127.0.0.0/8`, `::1`), `"link-local"` (`169.254.0.0/16`, where cloud metadata services answer;
    `fe80::/10`), `"multicast"`, `"private"` (`10/8`, `172.16/12`, `192.168/16`, `fc00::/7` and the other ranges
    IANA marks not globally reachable), `"reserved"`, and `"non-global"` for any other address that is not
    globally reachable (e.g. carrier-grade NAT, `100.64.0.0/10`). An IPv6 address that carries an IPv4 one
    (IPv4-mapped `::ffff:a.b.c.d`, 6to4 `2002::/16`, NAT64 `64:ff9b::/96`) is of the kind of that IPv4 address,
    where its packets end up.

    Args:
        address: An IPv4 or IPv6 address, as text (an IPv6 zone such as `%eth0` allowed) or an `ipaddress` object.

    Raises:
        ValueError: `address` is not an IP address.
    """
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return private_address_kind(embedded)
    kinds = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),  # some multicast ranges count as global
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-global", not ip.is_global),
    )
    return next((kind for kind, is_kind in kinds if is_kind), None)


class RefusedURLError(PermissionError):
    """An image URL, or a redirect of one, that leads where image URLs may not go.

    That is a scheme other than http and https, or a host at a non-public address (see `private_address_kind`)
    without `allow_private_urls`.
    """


@dataclasses.dataclass(frozen=True)
class URLPolicy:
    """Where the URLs of a `download` may lead, and how their host names are resolved.

    Each hop (the URL, then every redirect) resolves its host once, with `resolve`, within the download's deadline;
    every address the host resolves to must pass `classify` before any connection is made, and the connection goes
    to one of those very addresses (never to a second lookup's, which a DNS server could answer differently: DNS
    rebinding). The host name stays the request's `Host` header and, over https, the name TLS checks the
    certificate against.

    Attributes:
        allow_private: Let URLs reach any address `resolve` gives, checking none of them.
        classify: An address (text) → the kind of address refused, or `None` for one allowed; by default
            `private_address_kind`. Replaceable because tests need it: the only addresses a test may send packets to
            are loopback ones, so a redirect refused at its hop is tested with a `classify` that allows the first
            hop's loopback address and refuses the redirect's.
        resolve: A function with the signature and answers of `socket.getaddrinfo` (tests give a slow one, or one
            whose answer changes from call to call).
    """

    allow_private: bool = False
    classify: Callable[[str], str | None] = private_address_kind
    resolve: Callable[..., list] = socket.getaddrinfo


def download(
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    timeout: float = DEFAULT_IMAGE_TIMEOUT,
    policy: URLPolicy = URLPolicy(),
) -> tuple[io.BytesIO, str]:
    """The body of an http(s) URL, read within one deadline for the whole exchange and at most `max_bytes`.

    What `load_image` does with a URL before decoding it. The deadline covers resolving the host of every hop (in a
    thread: a resolver cannot be interrupted), connecting, the redirects and every byte, each read waiting only for
    the time left. A redirect's own body is never read. Environment proxies are not used: a proxy would resolve and
    reach the host itself, out of the policy's sight. Errors never quote the server's answer (body, status text,
    headers), which may come from inside the network.

    Args:
        url: An `http://` or `https://` URL.
        max_bytes: Refuse a body of more bytes than this, without reading more.
        timeout: Seconds the whole download may take.
        policy: Where the URL and its redirects may lead; by default, public addresses only.

    Returns:
        The body, and the server's `Content-Type` ("" when it sends none; a non-image is often an HTML error page).

    Raises:
        RefusedURLError: The URL or a redirect leads where `policy` refuses to go (before any connection there).
        TimeoutError: The download took longer than `timeout`.
        OSError: The URL could not be fetched (network error, HTTP error status, too many redirects).
        ValueError: The URL is malformed, or the body has more than `max_bytes`.
    """
    name = _describe_source(url, "url")
    _check_scheme(url)
    deadline = time.monotonic() + timeout
    opener = urllib.request.OpenerDirector()
    for handler in (
        _DeadlineHTTPHandler(deadline, policy),
        _DeadlineHTTPSHandler(deadline, policy),
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
    except RefusedURLError as err:
        raise RefusedURLError(f"cannot fetch image {name}: {err}") from None
    except urllib.error.HTTPError as err:
        err.close()
        if 300 <= err.code < 400:
            raise OSError(
                f"cannot fetch image {name}: more than {MAX_IMAGE_REDIRECTS} redirects, or a redirect loop "
                f"(HTTP {err.code})"
            ) from None
        raise OSError(f"cannot fetch image {name}: the server answered HTTP {err.code}") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise _url_timeout(name, timeout, body.tell()) from None
        error = RefusedURLError if isinstance(err.reason, RefusedURLError) else OSError
        raise error(f"cannot fetch image {name}: {err.reason}") from None
    except TimeoutError:
        raise _url_timeout(name, timeout, body.tell()) from None
    except OSError as err:  # e.g. the connection reset while reading the body
        raise OSError(f"cannot fetch image {name}: {err}") from None
    except http.client.InvalidURL as err:
        raise ValueError(f"{name} is not a valid URL ({err})") from None
    except http.client.HTTPException as err:
        # By its type only: the message of some (BadStatusLine) is the first line the server sent.
        raise OSError(
            f"cannot fetch image {name}: the connection broke, or the answer is not HTTP ({type(err).__name__})"
        ) from None
    if body.tell() > max_bytes:
        raise ValueError(f"image {name} is more than max_bytes={max_bytes} bytes: stopped reading there")
    body.seek(0)
    return body, content_type


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise RefusedURLError(
            f"{url[:_NAME_CHARS]!r} is a {scheme or 'relative'} URL: image URLs and their redirects are http or https only"
        )


def _url_timeout(name: str, timeout: float, received: int) -> TimeoutError:
    return TimeoutError(f"image {name} did not arrive within timeout={timeout:g}s ({received} bytes of it received)")


def _time_left(deadline: float) -> float:
    """Seconds until `deadline`; `TimeoutError` when it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline reached")
    return left


def _before(deadline: float, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, given until `deadline` to return; `TimeoutError` when it has not.

    For host name resolution, which takes no timeout: `getaddrinfo` waits as long as the system's resolver does
    (seconds an attempt, several attempts). It runs in a daemon thread, left to finish in the background, its answer
    dropped, when the deadline comes first.
    """
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, function(*args, **kwargs)))
        except Exception as err:  # noqa: BLE001 - handed to the waiting thread, which raises it
            outcome.append((False, err))

    thread = threading.Thread(target=run, name="image-url-resolver", daemon=True)
    thread.start()
    thread.join(_time_left(deadline))
    if not outcome:
        raise TimeoutError("deadline reached while resolving the host")
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


def _connect_checked(address: tuple[str, int], *_: Any, deadline: float, policy: URLPolicy) -> socket.socket:
    """A socket connected to `address`'s host at an address `policy` allows, the host resolved once, by the deadline.

    Stands in for `socket.create_connection` in `http.client`; its timeout and source address are not used (the
    deadline bounds every step; no source address is ever set).
    """
    host, port = address
    found = _before(deadline, policy.resolve, host, port, type=socket.SOCK_STREAM)
    if not policy.allow_private:
        for *_, sockaddr in found:
            kind = policy.classify(sockaddr[0])
            if kind is not None:
                raise RefusedURLError(
                    f"the host {host!r} {'is' if sockaddr[0] == host else 'resolves to'} a non-public address ({kind}): "
                    "image URLs may lead to public addresses only, so that no caller can reach inside the network. "
                    "If every URL is trusted, allow them with allow_private_urls=True (ITA_ALLOW_PRIVATE_URLS=1 for "
                    "the handler and the app)."
                )
    error = OSError(f"the host {host!r} resolves to no address")
    for family, kind, proto, _, sockaddr in found:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_time_left(deadline))
            sock.connect(sockaddr)
            return sock
        except OSError as err:  # a timeout included: the next address then fails at once with it
            sock.close()
            error = err
    raise error


class _DeadlineReader(io.RawIOBase):
    """A socket's byte stream that gives up at a deadline: each receive may wait only for the time left.

    A socket timeout alone bounds each receive, so a server sending a byte a second would never time out.
    """

    def __init__(self, stream: Any, sock: Any, deadline: float) -> None:
        self._stream, self._sock, self._deadline = stream, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(_time_left(self._deadline))
        return self._stream.readinto1(buffer)

    def close(self) -> None:
        self._stream.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP response read through a `_DeadlineReader`: status line, headers and body within the deadline."""

    def __init__(self, sock: Any, *args: Any, deadline: float, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_DeadlineReader(self.fp, sock, deadline))


class _DeadlineConnection:
    """Connects within the time left, to an address `policy` allows, and reads its responses as `_DeadlineResponse`."""

    def __init__(self, *args: Any, deadline: float, policy: URLPolicy, **kwargs: Any) -> None:
        kwargs["timeout"] = _time_left(deadline)
        super().__init__(*args, **kwargs)
        self.response_class = functools.partial(_DeadlineResponse, deadline=deadline)
        # What `connect` opens its socket with (HTTPS's too, before the TLS handshake on the host name).
        self._create_connection = functools.partial(_connect_checked, deadline=deadline, policy=policy)


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float, policy: URLPolicy) -> None:
        super().__init__()
        self.deadline, self.policy = deadline, policy

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_DeadlineHTTPConnection, req, deadline=self.deadline, policy=self.policy)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float, policy: URLPolicy) -> None:
        super().__init__()
        self.deadline, self.policy = deadline, policy

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(
            _DeadlineHTTPSConnection, req, context=self._context, deadline=self.deadline, policy=self.policy
        )


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most `MAX_IMAGE_REDIRECTS` redirects, to http and https URLs only, without reading their bodies.

    The base class reads a redirect's body whole: as much memory as arrives before the deadline.
    """

    max_redirections = MAX_IMAGE_REDIRECTS

    def http_error_302(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any) -> Any:
        fp.close()  # its `read()` then returns b""
        location = headers.get("Location") or headers.get("URI")
        if location:
            _check_scheme(urllib.parse.urljoin(req.full_url, location))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def find_image_file(images_dir: str | Path, name: str) -> Path | None:
    """Find the file of an image in `images_dir` given its file name or bare id.

    Args:
        images_dir: Folder holding the images.
        name: A file name relative to `images_dir` (`"1015799.jpg"`) or a bare id (`"1015799"`).

    Returns:
        The existing path, or `None` when no candidate exists.
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
