"""Aligners that write knowledge: a model reads the tweet and its image, then names the entities it sees, with reasons.

PGIM and RiVEG gain over ITA's captions by appending such text to the tweet ("Named entities: 1. X (type) ...
Reasoning: ..."). Here it is the `knowledge` segment, written by one of two `KnowledgeAligner`s, both of which read the
tweet (`needs_text`) and fill one `KnowledgePrompt` from it and from the segments aligners earlier in the list produced
for the same image (PGIM's language model read a caption):

- `ImageTextToTextAligner` (`"image-text-to-text"`): any transformers vision-language model with a chat template,
  run in this process, batched with left padding, greedy;
- `ChatCompletionsAligner` (`"chat-completions"`): an OpenAI-compatible chat endpoint (vLLM, TGI, `transformers
  serve`, Inference Endpoints / Providers, OpenAI) through `huggingface_hub.InferenceClient`, requests in parallel,
  retried with back-off, temperature 0.

Whatever a model answers (nothing, garbage, thousands of words), the segment is cleaned and capped (`clean_answer`).

Remote code: imports only the standard library and its sibling modules at top level; torch and transformers when a
model is built or run, and huggingface_hub by name (`images_ita.optional_import`) when an endpoint is called.
"""

from __future__ import annotations

import base64
import io
import os
import random
import string
import threading
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar
from urllib.parse import urlsplit

try:
    from .aligners_ita import Aligner, PartialAlignment, Segments, _model_name, normalize_text
    from .configuration_ita import DEFAULT_PIECE_SEPARATORS
    from .images_ita import optional_import
except ImportError:
    from aligners_ita import Aligner, PartialAlignment, Segments, _model_name, normalize_text
    from configuration_ita import DEFAULT_PIECE_SEPARATORS
    from images_ita import optional_import

# What a prompt can read: the tweet, and the segments earlier aligners produced for its image.
PROMPT_FIELDS: tuple[str, ...] = ("text", "caption", "objects", "ocr")
# PGIM's answer form: the entities with a type, then a short reasoning. The image is shown to the model beside it.
DEFAULT_PROMPT = (
    "Here is a social media post and its image.\n"
    "Post: {text}\n"
    "Which named entities (people, organisations, locations and other names) does the post mention? Use the image "
    "and what you know about them. Answer in this form:\n"
    "Named entities: 1. <name> (<type>) 2. <name> (<type>) ...\n"
    "Reasoning: <two or three sentences on who or what each one is and how the image relates to them>"
)
# The form of PGIM itself: a text-only language model reads the caption an image-to-text aligner wrote before it.
PGIM_PROMPT = (
    "Here is a social media post and a caption of its image.\n"
    "Post: {text}\n"
    "Image caption: {caption}\n"
    "Which named entities (people, organisations, locations and other names) does the post mention? Use the caption "
    "and what you know about them. Answer in this form:\n"
    "Named entities: 1. <name> (<type>) 2. <name> (<type>) ...\n"
    "Reasoning: <two or three sentences on who or what each one is and how the image relates to them>"
)
# Words kept of an answer: PGIM's knowledge is 90-105 words; a model that runs on is cut here, and the encoder's
# `max_context_tokens` cuts the context again.
DEFAULT_MAX_WORDS = 200
# Generation settings that would make the answer depend on chance or on another search: refused, decoding is greedy.
_SAMPLING_SETTINGS = ("do_sample", "num_beams", "temperature", "top_k", "top_p", "typical_p", "num_return_sequences")


class KnowledgePrompt:
    """The one way a tweet, its image's earlier segments and few-shot examples become a conversation.

    The template is a Python format string whose placeholders name what it reads: `{text}` (the tweet, required),
    `{caption}`, `{objects}`, `{ocr}` (the pieces those segments hold for the image, joined as in the visual context;
    "" when no earlier aligner produced them). Literal braces are doubled (`{{`, `}}`).

    Args:
        template: The user turn's text.
        examples: Few-shot demonstrations, each `{"answer": ..., "text": ..., "caption": ...}` with the fields the
            template reads (missing ones are ""): a user turn filled from it and an assistant turn with the answer,
            before the tweet's own turn. They carry no image.

    Raises:
        ValueError: A placeholder is unknown, has a format spec, or `{text}` is missing; an example is not a dict of
            strings with an `answer`, or has a key the template cannot read.
    """

    def __init__(self, template: str, examples: Sequence[dict[str, str]] | None = None) -> None:
        if not isinstance(template, str):
            raise ValueError(f"the prompt must be a str (a template with {{text}}), got {type(template).__name__}")
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as err:
            raise ValueError(
                f"the prompt is not a valid template ({err}); write a literal brace as {{{{ or }}}}"
            ) from err
        fields = []
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in PROMPT_FIELDS or spec or conversion:
                raise ValueError(
                    f"the prompt placeholder {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} is unknown: a prompt reads "
                    f"{', '.join('{' + field + '}' for field in PROMPT_FIELDS)} (a literal brace is written {{{{ or }}}})"
                )
            fields.append(name)
        if "text" not in fields:
            raise ValueError("the prompt never reads the tweet: put {text} where it goes")
        self.template = template
        self.examples = [self._check_example(example) for example in examples or []]

    @staticmethod
    def _check_example(example: Any) -> dict[str, str]:
        allowed = {"answer", *PROMPT_FIELDS}
        if not isinstance(example, dict) or not all(isinstance(value, str) for value in example.values()):
            raise ValueError(
                f"a few-shot example is a dict of strings, e.g. {{'text': ..., 'answer': ...}}; got {example!r}"
            )
        if "answer" not in example or sorted(set(example) - allowed):
            raise ValueError(
                f"a few-shot example needs an 'answer' and may give {list(PROMPT_FIELDS)}; got the keys {sorted(example)}"
            )
        return dict(example)

    def fill(self, text: str, segments: Segments | dict[str, str]) -> str:
        """The template filled with a tweet and its image's segments (pieces joined as in the visual context)."""
        values = {"text": normalize_text(text)}
        for name in PROMPT_FIELDS[1:]:
            value = segments.get(name) or []
            pieces = [value] if isinstance(value, str) else value
            values[name] = DEFAULT_PIECE_SEPARATORS.get(name, " ").join(normalize_text(p) for p in pieces if p.strip())
        return self.template.format(**values)

    def turns(self, text: str, segments: Segments) -> list[tuple[str, str]]:
        """`(role, text)` turns: the examples' user and assistant turns, then the tweet's user turn (last)."""
        turns: list[tuple[str, str]] = []
        for example in self.examples:
            turns += [("user", self.fill(example.get("text", ""), example)), ("assistant", example["answer"])]
        return [*turns, ("user", self.fill(text, segments))]


def clean_answer(answer: Any, max_words: int) -> list[str]:
    """A model's answer as the pieces of a `knowledge` segment: printable, whitespace collapsed, at most `max_words`.

    Control and format characters (a model emitting raw bytes or escape codes) are dropped; an empty answer gives no
    piece, so the tweet is tagged with the other segments.
    """
    if not isinstance(answer, str):
        return []
    printable = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in answer)
    words = normalize_text(printable).split(" ")
    text = " ".join(words[:max_words]).strip()
    return [text] if text else []


def _check_positive(name: str, value: Any, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (kind, int)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive {kind.__name__}, got {value!r}")


class KnowledgeAligner(Aligner):
    """Base class of the aligners that write `knowledge`, the answer of a model to each image and its tweet.

    The model also reads the segments the aligners before it made; its answer, cleaned and capped at `max_words`, is
    the image's knowledge. Subclasses set `prompt` (a `KnowledgePrompt`) and `max_words`, and implement `write`.
    """

    segments = ("knowledge",)
    needs_text = True
    prompt: KnowledgePrompt
    max_words: int

    def align(
        self,
        images: Sequence[Any],
        image_ids: Sequence[str] | None = None,
        texts: Sequence[str | None] | None = None,
        segments: Sequence[Segments] | None = None,
    ) -> list[Segments]:
        texts = [text or "" for text in texts] if texts is not None else [""] * len(images)
        segments = list(segments) if segments is not None else [{} for _ in images]
        return self.write(images, texts, segments)

    def write(self, images: Sequence[Any], texts: list[str], segments: list[Segments]) -> list[Segments]:
        """One `{"knowledge": pieces}` per image (`None` images included), from each tweet and its earlier segments."""
        raise NotImplementedError

    def knowledge(self, answer: Any) -> Segments:
        """The segment of a model's answer."""
        return {"knowledge": clean_answer(answer, self.max_words)}


class ImageTextToTextAligner(KnowledgeAligner):
    """Knowledge from any transformers vision-language model with a chat template, run in this process.

    Each image is shown to the model with its tweet in a `KnowledgePrompt`; the answer, cleaned and capped, is the
    image's `knowledge`. Batches are padded on the left, so a batch gives the text each image gives alone, and
    decoding is greedy whatever the checkpoint's `generation_config` says (it may turn sampling on). A processor
    without a chat template (PaliGemma's) gets the filled prompt as it is. Models whose processor needs `torchvision`
    (Qwen2-VL and newer Qwen-VL, SmolVLM2, LLaVA-OneVision) load only where torchvision does; SmolVLM / Idefics3,
    LLaVA, Gemma 3 and PaliGemma do not need it.

    Args:
        model: A model id or local folder (an `AutoModelForImageTextToText` with its `AutoProcessor`), or a ready
            `(model, processor)` pair.
        prompt: The template (see `KnowledgePrompt`); default `DEFAULT_PROMPT`, PGIM's answer form.
        examples: Few-shot demonstrations (see `KnowledgePrompt`).
        max_new_tokens: Tokens generated at most per answer.
        batch_size: Images per `generate` call.
        device: Torch device, or a CUDA index (`None` or -1 = CPU).
        dtype: `"float32"`, `"bfloat16"`, `"float16"` or `"auto"` (the checkpoint's); `None` = float32.
        processor_kwargs: Settings of the processor or its image processor, e.g. `{"do_image_splitting": False}`
            (SmolVLM: 64 image tokens instead of several hundred).
        generate_kwargs: Other generation settings (e.g. `min_new_tokens`, `repetition_penalty`); sampling and beam
            settings are refused.
        max_words: Words kept of an answer.
        revision: The model's revision on the Hub.

    Raises:
        ValueError: The prompt or examples are invalid, a setting is out of range, the model is not an image-text-to-text
            model, or examples are given to a processor without a chat template.
    """

    type = "image-text-to-text"

    def __init__(
        self,
        model: Any,
        prompt: str = DEFAULT_PROMPT,
        examples: list[dict[str, str]] | None = None,
        max_new_tokens: int = 160,
        batch_size: int = 8,
        device: str | int | None = None,
        dtype: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        max_words: int = DEFAULT_MAX_WORDS,
        revision: str | None = None,
    ) -> None:
        self.prompt = KnowledgePrompt(prompt, examples)
        for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size), ("max_words", max_words)):
            _check_positive(name, value)
        refused = sorted(set(generate_kwargs or {}) & set(_SAMPLING_SETTINGS))
        if refused:
            raise ValueError(f"generate_kwargs {refused}: the image-text-to-text aligner always decodes greedily")
        self.max_new_tokens, self.batch_size, self.max_words = max_new_tokens, batch_size, max_words
        self.device, self.dtype, self.revision = device, dtype, revision
        self.processor_kwargs = dict(processor_kwargs or {})
        self.generate_kwargs = dict(generate_kwargs or {})
        if isinstance(model, str):
            self.model_name = model
            self.model, self.processor = self._load(model, dtype, revision)
        else:
            self.model, self.processor = model
            self.model_name = _model_name(self.model)
        # PaliGemma's processors have no chat template: they take the prompt as it is and place the image themselves.
        self.chat = bool(getattr(self.processor, "chat_template", None))
        if not self.chat and self.prompt.examples:
            raise ValueError(
                f"{self.model_name}'s processor has no chat template, so few-shot examples (turns of a conversation) "
                "cannot be given to it: leave examples out, or give a model with a chat template"
            )
        # Left padding: a batch's prompts then all end where generation starts, so each image gets the answer it gets
        # alone (right padding would put pad tokens between a short prompt and its answer).
        self.processor.tokenizer.padding_side = "left"
        self._apply_processor_settings()
        torch_device = (
            "cpu" if device is None or device == -1 else f"cuda:{device}" if isinstance(device, int) else device
        )
        self.model.to(torch_device).eval()
        self.generate_arguments = self._greedy_arguments()

    @staticmethod
    def _load(model: str, dtype: str | None, revision: str | None) -> tuple[Any, Any]:
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        config = AutoConfig.from_pretrained(model, revision=revision)
        if type(config) not in AutoModelForImageTextToText._model_mapping:
            raise ValueError(
                f"{model} is a {config.model_type!r} model, not an image-text-to-text model: give a vision-language "
                "model with a chat template (e.g. HuggingFaceTB/SmolVLM-256M-Instruct, llava-hf/llava-interleave-qwen-"
                "0.5b-hf), or the 'image-to-text' aligner for a captioner"
            )
        if dtype not in (None, "auto") and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype: use 'float32', 'bfloat16', 'float16' or 'auto'")
        loaded_dtype = "auto" if dtype == "auto" else getattr(torch, dtype or "float32")
        processor = AutoProcessor.from_pretrained(model, revision=revision)
        return AutoModelForImageTextToText.from_pretrained(model, revision=revision, dtype=loaded_dtype), processor

    def _apply_processor_settings(self) -> None:
        """Set `processor_kwargs` on the image processor (or the processor) that owns each setting.

        As attributes rather than call arguments: transformers 4.57's processors drop some call arguments with only a
        warning (Idefics3's `do_image_splitting`), and an attribute holds for every call.
        """
        owners = [getattr(self.processor, "image_processor", None), self.processor]
        for name, value in self.processor_kwargs.items():
            owner = next((owner for owner in owners if owner is not None and hasattr(owner, name)), None)
            if owner is None:
                raise ValueError(
                    f"processor_kwargs {name!r}: neither {type(self.processor).__name__} nor its image processor has "
                    "such a setting"
                )
            setattr(owner, name, value)

    def _greedy_arguments(self) -> dict[str, Any]:
        """`generate` arguments that make decoding greedy and capped whatever the checkpoint's generation config says.

        As arguments, not as a `GenerationConfig`: `generate` fills every setting a passed config leaves at its default
        (`do_sample=False` is the default) from the checkpoint's own, which may turn sampling on; arguments are applied
        last. The sampling settings are unset, since greedy decoding does not read them.
        """
        own = self.model.generation_config
        eos = own.eos_token_id if own.eos_token_id is not None else self.processor.tokenizer.eos_token_id
        pad = own.pad_token_id if own.pad_token_id is not None else self.processor.tokenizer.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        return {
            "do_sample": False,
            "num_beams": 1,
            "temperature": None,
            "top_k": None,
            "top_p": None,
            "max_new_tokens": self.max_new_tokens,
            "eos_token_id": eos,
            "pad_token_id": pad,
            **self.generate_kwargs,
        }

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "prompt": self.prompt.template,
            "examples": self.prompt.examples or None,
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "processor_kwargs": self.processor_kwargs or None,
            "generate_kwargs": self.generate_kwargs or None,
            "max_words": self.max_words,
            "revision": self.revision,
        }

    def prompt_text(self, text: str, segments: Segments) -> str:
        """What the processor reads for one image: the conversation through the chat template, or the filled prompt."""
        if not self.chat:
            return self.prompt.fill(text, segments)
        return self.processor.apply_chat_template(
            self.conversation(text, segments), add_generation_prompt=True, tokenize=False
        )

    def conversation(self, text: str, segments: Segments) -> list[dict[str, Any]]:
        """The chat of one image: the examples' turns, then the image and the filled prompt."""
        turns = self.prompt.turns(text, segments)
        chat = [{"role": role, "content": [{"type": "text", "text": content}]} for role, content in turns]
        chat[-1]["content"].insert(0, {"type": "image"})
        return chat

    def write(self, images: Sequence[Any], texts: list[str], segments: list[Segments]) -> list[Segments]:
        import torch

        results: list[Segments] = [{"knowledge": []} for _ in images]
        present = [i for i, image in enumerate(images) if image is not None]
        for start in range(0, len(present), self.batch_size):
            batch = present[start : start + self.batch_size]
            prompts = [self.prompt_text(texts[i], segments[i]) for i in batch]
            inputs = self.processor(
                text=prompts,
                images=[[images[i]] for i in batch],
                padding=True,
                return_tensors="pt",
            ).to(self.model.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            inputs.pop("labels", None)  # PaliGemma's processor makes training labels, which generation does not read
            with torch.inference_mode():
                generated = self.model.generate(**inputs, **self.generate_arguments)
            answers = self.processor.batch_decode(
                generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for i, answer in zip(batch, answers):
                results[i] = self.knowledge(answer)
        return results


class ChatCompletionsAligner(KnowledgeAligner):
    """Knowledge from an OpenAI-compatible chat endpoint, through `huggingface_hub.InferenceClient`.

    vLLM, TGI, `transformers serve`, Inference Endpoints, Inference Providers and OpenAI all answer it. Each tweet is
    one request (its image as a base64 data URI of at most `max_image_side` pixels a side and `max_image_bytes`,
    unless `send_image=False` for a text-only language model reading an earlier caption, as PGIM did); up to
    `concurrency` requests of a batch run at once; temperature 0. Answers are streamed, which every such server
    supports (transformers 4.57's `transformers serve` answers nothing else).

    A request that fails (the endpoint is down, slow, refuses the key, throttles, answers malformed JSON) is retried
    with exponential back-off on 429, 5xx, timeouts and lost connections, up to `max_retries` times (a 429's
    `Retry-After` is honoured, within `timeout`); then that tweet gets no knowledge and the error names the aligner,
    the host and the status, never the key. The key is read from the environment variable named `api_key_env`, so it
    never enters a spec, a `config.json`, a model card, a log line or an error message.

    Args:
        base_url: The endpoint's OpenAI-compatible base URL, e.g. `http://127.0.0.1:8000/v1` (http or https).
        model: The model name the endpoint serves (for `transformers serve`, its model id or folder).
        prompt: The template (see `KnowledgePrompt`); default `DEFAULT_PROMPT` (`PGIM_PROMPT` with `send_image=False`
            after a captioner reproduces PGIM's setting).
        examples: Few-shot demonstrations (see `KnowledgePrompt`).
        max_tokens: Tokens the endpoint generates at most per answer.
        timeout: Seconds per request.
        max_retries: Retries of a request after the first attempt.
        concurrency: Requests in flight at once.
        api_key_env: The name of the environment variable holding the API key (`None`: no key is sent).
        send_image: Show the model the image (a vision-language endpoint), or only the prompt.
        max_image_side: Longest side, in pixels, of the image sent.
        max_image_bytes: Bytes of the encoded image sent at most (JPEG quality and size are lowered to fit).
        max_words: Words kept of an answer.

    Raises:
        ValueError: A setting is invalid (an unknown prompt placeholder, a URL that is not http(s)) or the variable
            `api_key_env` names is not set.
        RuntimeError: `HF_HUB_OFFLINE` is on, which makes `InferenceClient` refuse every URL, 127.0.0.1 included.
    """

    type = "chat-completions"
    # Back-off before retry k (k = 0, 1, ...): BACKOFF_SECONDS * 2**k, with up to 25% jitter, at most MAX_BACKOFF.
    BACKOFF_SECONDS: ClassVar[float] = 0.5
    MAX_BACKOFF_SECONDS: ClassVar[float] = 8.0
    _RETRIED_STATUSES: ClassVar[frozenset[int]] = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def __init__(
        self,
        base_url: str,
        model: str,
        prompt: str = DEFAULT_PROMPT,
        examples: list[dict[str, str]] | None = None,
        max_tokens: int = 256,
        timeout: float = 60.0,
        max_retries: int = 3,
        concurrency: int = 4,
        api_key_env: str | None = None,
        send_image: bool = True,
        max_image_side: int = 1024,
        max_image_bytes: int = 1024 * 1024,
        max_words: int = DEFAULT_MAX_WORDS,
    ) -> None:
        self.prompt = KnowledgePrompt(prompt, examples)
        parts = urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must name the model the endpoint serves, got {model!r}")
        for name, value in (
            ("max_tokens", max_tokens),
            ("concurrency", concurrency),
            ("max_image_side", max_image_side),
            ("max_image_bytes", max_image_bytes),
            ("max_words", max_words),
        ):
            _check_positive(name, value)
        _check_positive("timeout", timeout, float)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be an int >= 0, got {max_retries!r}")
        if api_key_env is not None and not (isinstance(api_key_env, str) and api_key_env in os.environ):
            raise ValueError(
                f"api_key_env names the environment variable {api_key_env!r}, which is not set: export it with the "
                "endpoint's key (the key itself never goes into a spec), or leave api_key_env out for an endpoint "
                "without one"
            )
        if optional_import("huggingface_hub.constants").HF_HUB_OFFLINE:
            raise RuntimeError(
                f"HF_HUB_OFFLINE is set, and huggingface_hub's InferenceClient then refuses every URL, {parts.hostname} "
                "included: unset HF_HUB_OFFLINE in the process that calls the endpoint (models already on disk load "
                "without it, and local folders never reach the Hub)"
            )
        self.base_url, self.model = base_url, model
        self.host = parts.netloc.rpartition("@")[2]  # never a user:password@ part
        self.max_tokens, self.timeout, self.max_retries, self.concurrency = (
            max_tokens,
            timeout,
            max_retries,
            concurrency,
        )
        self.api_key_env, self.send_image = api_key_env, send_image
        self.max_image_side, self.max_image_bytes, self.max_words = max_image_side, max_image_bytes, max_words
        self._local = threading.local()

    @property
    def needs_images(self) -> bool:
        return self.send_image

    def settings(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "prompt": self.prompt.template,
            "examples": self.prompt.examples or None,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "concurrency": self.concurrency,
            "api_key_env": self.api_key_env,
            "send_image": self.send_image,
            "max_image_side": self.max_image_side,
            "max_image_bytes": self.max_image_bytes,
            "max_words": self.max_words,
        }

    def _client(self) -> Any:
        """This thread's client (its HTTP session is not shared between the threads of `concurrency`)."""
        client = getattr(self._local, "client", None)
        if client is None:
            InferenceClient = optional_import("huggingface_hub").InferenceClient
            if self.api_key_env:
                credentials: dict[str, Any] = {"api_key": os.environ.get(self.api_key_env)}
            else:
                # Without a key InferenceClient would send the machine's Hugging Face token (HF_TOKEN, `hf auth
                # login`) to whatever endpoint this is: the header is unset (lower case, as huggingface_hub names it).
                credentials = {"headers": {"authorization": None}}
            client = self._local.client = InferenceClient(base_url=self.base_url, timeout=self.timeout, **credentials)
        return client

    def image_uri(self, image: Any) -> str:
        """The image as a JPEG `data:` URI within `max_image_side` and `max_image_bytes`."""
        picture = image.convert("RGB")
        picture.thumbnail((self.max_image_side, self.max_image_side))
        quality = 90
        while True:
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=quality)
            if buffer.tell() <= self.max_image_bytes or max(picture.size) <= 16:
                break
            # Too many bytes: lower the quality first, then the size, until it fits.
            if quality > 50:
                quality -= 20
            else:
                picture = picture.resize((max(1, picture.width * 3 // 4), max(1, picture.height * 3 // 4)))
        if buffer.tell() > self.max_image_bytes:
            raise ValueError(
                f"the image does not fit in max_image_bytes={self.max_image_bytes} even at 16 pixels a side"
            )
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def messages(self, text: str, segments: Segments, image: Any) -> list[dict[str, Any]]:
        """The request's messages: the examples' turns, then the filled prompt (with the image when it is sent)."""
        messages: list[dict[str, Any]] = [
            {"role": role, "content": content} for role, content in self.prompt.turns(text, segments)
        ]
        if self.send_image and image is not None:
            parts = [{"type": "image_url", "image_url": {"url": self.image_uri(image)}}]
            messages[-1]["content"] = [*parts, {"type": "text", "text": messages[-1]["content"]}]
        return messages

    def ask(self, messages: list[dict[str, Any]]) -> str:
        """One answer, retried on throttling, server errors, timeouts and lost connections.

        Raises:
            RuntimeError: The request failed for good; the message names the aligner, the host and the status.
        """
        for attempt in range(self.max_retries + 1):
            try:
                stream = self._client().chat_completion(
                    messages, model=self.model, max_tokens=self.max_tokens, temperature=0.0, stream=True
                )
                return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            except Exception as err:  # noqa: BLE001 - classified below; every failure is reported, none escapes.
                status, retried, wait = self._classify(err)
                if not retried or attempt == self.max_retries:
                    raise RuntimeError(self._failure(status, err, attempt + 1)) from None
                time.sleep(wait if wait is not None else self._backoff(attempt))
        raise AssertionError("unreachable")

    def _classify(self, err: Exception) -> tuple[int | None, bool, float | None]:
        """`(HTTP status or None, whether to retry, seconds the server asked to wait or None)` of a failed request."""
        response = getattr(err, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            wait = None
            if status == 429:
                try:
                    wait = min(float(response.headers.get("Retry-After")), self.timeout)
                except (TypeError, ValueError, AttributeError):
                    wait = None
            return status, status in self._RETRIED_STATUSES, wait
        name = type(err).__name__
        # Timeouts and lost connections (requests' and httpx' exception names, huggingface_hub's own timeout).
        transient = any(word in name for word in ("Timeout", "Connect", "RemoteProtocol", "ReadError"))
        return None, transient, None

    def _backoff(self, attempt: int) -> float:
        delay = min(self.BACKOFF_SECONDS * 2**attempt, self.MAX_BACKOFF_SECONDS)
        return delay * (1 + random.random() / 4)

    def _failure(self, status: int | None, err: Exception, attempts: int) -> str:
        """Why a request failed, naming the host and status, never the key or the server's answer."""
        if status in (401, 403):
            reason = (
                f"HTTP {status}: the endpoint refused the key in ${self.api_key_env}"
                if self.api_key_env
                else f"HTTP {status}: the endpoint wants a key; name its environment variable with api_key_env"
            )
        elif status is not None:
            reason = f"HTTP {status}"
        elif "Offline" in type(err).__name__:
            reason = "HF_HUB_OFFLINE is set, so InferenceClient refuses every URL: unset it in this process"
        else:
            reason = f"{type(err).__name__} (no answer: is the endpoint up, and is its answer OpenAI chat JSON?)"
        return f"{self.type} aligner, model {self.model!r} at {self.host}: {reason} after {attempts} attempt(s)"

    def write(self, images: Sequence[Any], texts: list[str], segments: list[Segments]) -> list[Segments]:
        def one(index: int) -> tuple[Segments, str | None]:
            try:
                answer = self.ask(self.messages(texts[index], segments[index], images[index]))
            except Exception as err:  # noqa: BLE001 - one tweet's failure is recorded for it; the others go on.
                return {"knowledge": []}, str(err) if isinstance(err, RuntimeError) else f"{type(err).__name__}: {err}"
            return self.knowledge(answer), None

        with ThreadPoolExecutor(min(self.concurrency, max(1, len(images)))) as pool:
            outcomes = list(pool.map(one, range(len(images))))
        results, errors = [result for result, _ in outcomes], [error for _, error in outcomes]
        if any(errors):
            raise PartialAlignment(results, errors)
        return results
