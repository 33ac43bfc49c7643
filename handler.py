"""The custom handler of Hugging Face Inference Endpoints for an ITA checkpoint: its `multimodal-ner` pipeline behind JSON.

This file is copied into every checkpoint folder, beside the `requirements.txt` of `handler_requirements.txt`.
Inference Endpoints imports it from the model folder (which it puts on `sys.path`), builds `EndpointHandler(path)`
once, and calls it with the JSON body of every request; what it returns is sent back as JSON. Like the checkpoint's
other remote code it imports only the standard library, torch, numpy and transformers at top level.

Payloads (`"parameters"` is optional):

```json
{"inputs": "Kawhi Leonard wins the fan vote"}
{"inputs": {"text": "Kawhi Leonard wins the fan vote", "image": "https://example.com/photo.jpg"}}
{"inputs": {"text": "...", "image": "<base64 or data:image/jpeg;base64,...>", "image_id": "654"}}
{"inputs": {"text": ["Kawhi", "Leonard", "wins"], "visual_context": "a man holding a basketball"}}
{"inputs": ["first tweet", {"text": "second tweet", "image": "..."}], "parameters": {"aggregation_strategy": "none"}}
```

An `"options"` object (sent by some Inference API clients, e.g. `{"wait_for_model": true}`) is accepted and ignored.
The answer is the pipeline's: a list of entities for one input, a list of such lists for a list of inputs, and
`{"entities": [...], "visual_context": "..."}` per input with `"parameters": {"return_visual_context": true}`.

Limits: at most `MAX_BATCH_SIZE` tweets a request, and at most `max_text_chars` characters a text (a tweet or a
visual context; default `MAX_TEXT_CHARS`, set by the environment variable `ITA_MAX_TEXT_CHARS`): a text over the cap
is refused, never cut. Image URLs are fetched by the pipeline from public addresses only: a URL whose host is (or
resolves to, or redirects to) a loopback, private, link-local or other non-public address is not fetched, and the tweet
is tagged text-only, unless `ITA_ALLOW_PRIVATE_URLS=1` (for a server whose callers are all trusted).

A bad payload (not a JSON object, no `inputs`, a wrong type, an unknown parameter, an image that cannot be decoded, a
request over a limit) raises `PayloadError`: its message says what was wrong and what to send instead. Inference
Endpoints answers any exception raised by a handler with status 400 and `{"error": str(exception)}`;
`handler_server.py` answers a `PayloadError` with 400 and `PayloadError.to_dict()` (`{"error": ..., "error_type":
...}`). A server-side path is never read: an image is an http(s) URL or the image's bytes in base64.

Thread safety: the handler keeps no state of its own between calls, so concurrent calls are as safe as the pipeline.
"""

import base64
import binascii
import math
import os
import sys
from typing import Any

import torch
from transformers import pipeline

# The keys of one tweet's object in "inputs".
INPUT_KEYS = ("text", "image", "image_id", "visual_context")
# The pipeline's call arguments a client may set; the pipeline validates their values. Its construction arguments
# (aligners, context folders, devices) stay the server's.
PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "aggregation_strategy": (str,),
    "ignore_labels": (list,),
    "return_visual_context": (bool,),
    "stride": (int,),
    "timeout": (int, float),
    "visual_context": (str,),
}
MAX_BATCH_SIZE = 64
# Characters a text may have: a tweet has at most 280, and the work of one grows with its length (900,000 characters
# held a worker for over a minute). app.py, uploaded alone to a Space, keeps a cap of its own.
MAX_TEXT_CHARS = 2000
# The environment variables that configure the handler where its constructor is called for it (Inference Endpoints).
ALLOW_PRIVATE_URLS_ENV = "ITA_ALLOW_PRIVATE_URLS"
MAX_TEXT_CHARS_ENV = "ITA_MAX_TEXT_CHARS"
MAX_IMAGE_BYTES = 16 * 1024 * 1024
# Seconds a client may let the pipeline wait for an image URL, so that no request holds a worker for long.
MAX_TIMEOUT = 30.0
_URL_PREFIXES = ("http://", "https://")


class PayloadError(ValueError):
    """A request the handler refuses; `str(error)` says what was wrong and what to send instead.

    Args:
        message (`str`): The explanation sent to the client.
        error_type (`str`): A stable name of the kind of error: `"invalid_payload"`, `"unknown_parameter"`,
            `"invalid_parameter"`, `"invalid_image"` or `"invalid_input"` (refused by the pipeline).
    """

    status_code = 400

    def __init__(self, message: str, error_type: str):
        super().__init__(message)
        self.error_type = error_type

    def to_dict(self) -> dict[str, str]:
        return {"error": str(self), "error_type": self.error_type}


class EndpointHandler:
    """Tags the tweets of Inference Endpoints payloads with the checkpoint's `multimodal-ner` pipeline.

    Args:
        path (`str`, defaults to `""`):
            The checkpoint folder (or Hub id), opened with `transformers.pipeline(model=path, trust_remote_code=True)`;
            `""` is the folder this file is in, i.e. the checkpoint it was copied into. On a GPU machine the model
            runs on the first GPU.
        allow_private_urls (`bool`, *optional*):
            Let image URLs reach loopback, private, link-local and other non-public addresses. Defaults to the
            environment variable `ITA_ALLOW_PRIVATE_URLS` (`1` allows, `0` or unset refuses).
        max_text_chars (`int`, *optional*):
            Characters a text (a tweet, or a visual context) may have. Defaults to the environment variable
            `ITA_MAX_TEXT_CHARS`, else `MAX_TEXT_CHARS`.

    Raises:
        ValueError: A setting (argument or environment variable) is not valid.
    """

    def __init__(self, path: str = "", allow_private_urls: bool | None = None, max_text_chars: int | None = None):
        self.allow_private_urls = (
            _env_flag(ALLOW_PRIVATE_URLS_ENV) if allow_private_urls is None else allow_private_urls
        )
        self.max_text_chars = (
            _env_count(MAX_TEXT_CHARS_ENV, MAX_TEXT_CHARS) if max_text_chars is None else max_text_chars
        )
        if isinstance(self.max_text_chars, bool) or not isinstance(self.max_text_chars, int) or self.max_text_chars < 1:
            raise ValueError(f"max_text_chars must be an integer > 0, got {self.max_text_chars!r}.")
        device = 0 if torch.cuda.is_available() else -1
        model = str(path) or os.path.dirname(os.path.abspath(__file__))
        self.pipeline = pipeline(model=model, trust_remote_code=True, device=device)
        # Base64 images are decoded here until the pipeline decodes them itself; their bytes go through the loader the
        # pipeline uses for image files (format from the content, pixel cap, EXIF orientation, transparency), so that
        # an image sent as base64 gives the same context as the same file given by path.
        self._load_image_file = vars(sys.modules[type(self.pipeline).__module__])["load_image"]

    def __call__(self, data: Any) -> list | dict:
        """Tags the tweet(s) of one request.

        Args:
            data (`dict`): The request's JSON body: `{"inputs": ..., "parameters": {...}}` (see the module docstring).

        Returns:
            The pipeline's result for `inputs`: a list of entity dicts (a dict with `return_visual_context`), or a
            list of those for a list of inputs.

        Raises:
            PayloadError: The payload is malformed, or the pipeline refused its inputs.
        """
        if not isinstance(data, dict):
            raise PayloadError(
                f'The request body must be a JSON object such as {{"inputs": "a tweet"}}, got {_json_type(data)}.',
                "invalid_payload",
            )
        unexpected = sorted(set(data) - {"inputs", "parameters", "options"})
        if unexpected:
            raise PayloadError(
                f'Unknown key(s) {unexpected} in the request body: it takes "inputs" and an optional "parameters".',
                "invalid_payload",
            )
        if "inputs" not in data:
            raise PayloadError(
                'The request body has no "inputs": send {"inputs": "a tweet"} or {"inputs": {"text": ..., '
                '"image": ...}}, or a list of those.',
                "invalid_payload",
            )
        parameters = self._parameters(data.get("parameters"))
        if "visual_context" in parameters:
            self._check_length(parameters["visual_context"], 'Parameter "visual_context"')
        inputs = data["inputs"]
        if isinstance(inputs, list):
            if len(inputs) > MAX_BATCH_SIZE:
                raise PayloadError(
                    f'"inputs" holds {len(inputs)} tweets, more than the {MAX_BATCH_SIZE} one request may hold: '
                    "split the batch.",
                    "invalid_payload",
                )
            tweets: list | dict = [self._tweet(element, f"inputs[{index}]") for index, element in enumerate(inputs)]
            if not tweets:
                return []
        else:
            tweets = self._tweet(inputs, "inputs")
        if self.allow_private_urls:  # passed only when set: a pipeline older than the switch still serves the rest
            parameters["allow_private_urls"] = True
        try:
            return self.pipeline(tweets, **parameters)
        except (TypeError, ValueError) as err:
            # The pipeline raises these for inputs it cannot tag (documented in its `__call__`); anything else is a
            # fault of the server, left to propagate.
            raise PayloadError(f"The pipeline refused the input: {err}", "invalid_input") from err

    @staticmethod
    def _parameters(parameters: Any) -> dict[str, Any]:
        """The payload's `parameters`, checked against `PARAMETER_TYPES` (JSON types; values are the pipeline's)."""
        if parameters is None:
            return {}
        if not isinstance(parameters, dict):
            raise PayloadError(
                f'"parameters" must be a JSON object, got {_json_type(parameters)}.', "invalid_parameter"
            )
        unknown = sorted(set(parameters) - set(PARAMETER_TYPES))
        if unknown:
            raise PayloadError(
                f"Unknown parameter(s) {unknown}: the parameters are {sorted(PARAMETER_TYPES)}.", "unknown_parameter"
            )
        for name, value in parameters.items():
            expected = PARAMETER_TYPES[name]
            # JSON true/false are Python bools, which are ints too: a flag is no number and a number no flag.
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                raise PayloadError(
                    f'Parameter "{name}" must be {" or ".join(_JSON_NAMES[kind] for kind in expected)}, got '
                    f"{_json_type(value)}.",
                    "invalid_parameter",
                )
        timeout = parameters.get("timeout")
        if timeout is not None and not (0 < timeout <= MAX_TIMEOUT and math.isfinite(timeout)):
            raise PayloadError(
                f'Parameter "timeout" (seconds to wait for an image URL) must be in (0, {MAX_TIMEOUT}], got {timeout}.',
                "invalid_parameter",
            )
        return dict(parameters)

    def _tweet(self, element: Any, where: str) -> dict[str, Any]:
        """One input of the payload as the pipeline's input dict, its image decoded when it is base64."""
        if isinstance(element, str):
            self._check_length(element, where)
            return {"text": element}
        if not isinstance(element, dict):
            raise PayloadError(
                f'{where} must be a tweet (a string) or an object {{"text", "image", "image_id", '
                f'"visual_context"}}, got {_json_type(element)}.',
                "invalid_payload",
            )
        unknown = sorted(set(element) - set(INPUT_KEYS))
        if unknown:
            raise PayloadError(
                f"Unknown key(s) {unknown} in {where}: its keys are {list(INPUT_KEYS)}.", "invalid_payload"
            )
        text = element.get("text")
        if not (isinstance(text, str) or (isinstance(text, list) and all(isinstance(word, str) for word in text))):
            raise PayloadError(
                f"{where}.text must be the tweet as a string, or its words as a list of strings, got {_json_type(text)}.",
                "invalid_payload",
            )
        for key in ("image_id", "visual_context"):
            if element.get(key) is not None and not isinstance(element[key], str):
                raise PayloadError(
                    f"{where}.{key} must be a string, got {_json_type(element[key])}"
                    + (' (write an image id in quotes, e.g. "654").' if key == "image_id" else "."),
                    "invalid_payload",
                )
        self._check_length(text, f"{where}.text")
        if element.get("visual_context") is not None:
            self._check_length(element["visual_context"], f"{where}.visual_context")
        tweet = {key: element[key] for key in INPUT_KEYS if element.get(key) is not None}
        if "image" in tweet:
            tweet["image"] = self._image(tweet["image"], f"{where}.image")
        return tweet

    def _check_length(self, text: str | list[str], where: str) -> None:
        """Refuses a text (or a list of words, read with a space between) of more than `max_text_chars` characters."""
        length = len(text) if isinstance(text, str) else sum(len(word) + 1 for word in text) - 1
        if length > self.max_text_chars:
            raise PayloadError(
                f"{where} has {length} characters, more than the {self.max_text_chars} a text may have here: send a "
                f"shorter text (the server sets the cap with {MAX_TEXT_CHARS_ENV}).",
                "invalid_payload",
            )

    def _image(self, image: Any, where: str) -> Any:
        """An http(s) URL as it is (the pipeline fetches it, bounded), or the PIL image a base64 string encodes."""
        if not isinstance(image, str):
            raise PayloadError(
                f"{where} must be an http(s) URL or the image file's bytes in base64, got {_json_type(image)}.",
                "invalid_image",
            )
        if image.startswith(_URL_PREFIXES):
            return image
        encoded = _base64_payload(image, where)
        # 4 base64 characters carry 3 bytes: refuse an oversized image before decoding it.
        if len(encoded) // 4 * 3 > MAX_IMAGE_BYTES:
            raise PayloadError(
                f"{where} holds about {len(encoded) // 4 * 3} bytes, more than the {MAX_IMAGE_BYTES} an image may have: "
                "send a smaller image, or its URL.",
                "invalid_image",
            )
        try:
            content = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise PayloadError(
                f"{where} is neither an http(s) URL nor valid base64 ({_preview(image)}): send the image's URL, or its "
                "file's bytes in base64 (optionally as a data:image/...;base64, URI). Server paths are not read.",
                "invalid_image",
            ) from None
        try:
            # The pipeline's own loader, on the bytes: the same checks and conversion as any other image source.
            return self._load_image_file(content, max_bytes=MAX_IMAGE_BYTES)
        except (OSError, ValueError) as err:
            raise PayloadError(
                f"{where} decodes from base64 to {len(content)} bytes that are not a usable image ({err}).",
                "invalid_image",
            ) from None


def _env_flag(name: str) -> bool:
    """An on/off environment variable: `1` is on, `0` or unset is off."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"The environment variable {name} must be 1 (on) or 0 (off).")
    return value == "1"


def _env_count(name: str, default: int) -> int:
    """A positive integer from an environment variable, `default` when it is unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"The environment variable {name} must be a whole number above 0.")
    return int(value)


def _base64_payload(image: str, where: str) -> str:
    """The base64 characters of a base64 string or a `data:` URI, without line breaks."""
    if image.startswith("data:"):
        header, comma, encoded = image.partition(",")
        if not comma or not header.endswith(";base64"):
            raise PayloadError(
                f"{where} is a data: URI without base64 data ({_preview(image)}): write data:image/jpeg;base64,<data>.",
                "invalid_image",
            )
        image = encoded
    # Base64 from files and mail is often wrapped at 76 characters.
    return "".join(image.split())


def _preview(value: str, limit: int = 60) -> str:
    return repr(value[:limit] + ("..." if len(value) > limit else ""))


_JSON_NAMES = {str: "a string", list: "a list", bool: "true or false", int: "an integer", float: "a number"}


def _json_type(value: Any) -> str:
    """The JSON name of a decoded JSON value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_preview(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
