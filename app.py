"""ITA multimodal NER as a Gradio app, ready to be a Hugging Face Space: a tweet and its image in, entities out.

Type a tweet, upload or link its image, and see the entities highlighted by type, the visual context the image became
(what the model read beside the tweet), and the pipeline's JSON. Runs on Gradio 6 (the `app` extra; Gradio 6 needs
huggingface_hub>=1.16, i.e. the transformers-5 stack):

    python app.py --model demo-output/model                       # the checkpoint `make demo` writes
    python app.py --model demo-output/model --data ../shared/data --aligner '{"type": "rapidocr"}'

Settings (a command-line option, else an environment variable):

- `--model` / `ITA_MODEL`: a checkpoint folder or Hub id, opened with `pipeline(model=..., trust_remote_code=True)`.
- `--allow-model-choice` / `ITA_ALLOW_MODEL_CHOICE=1`: let visitors type another checkpoint folder or Hub id in the
  page. Off by default: loading a checkpoint runs its remote code, so only allow it on a machine you trust visitors with.
- `--aligner SPEC` (repeatable) / `ITA_ALIGNERS` (a JSON list): aligner specs (`aligners_ita` `to_dict()` form) that
  turn images into context instead of the checkpoint's own, e.g. `{"type": "rapidocr"}`.
- `--data` / `DATA_DIR`: a data folder of the shared layout (`images/twitter2015/*.jpg` with
  `twitter2015/{train,valid,test}.txt`) whose real tweet images become the examples; default `../shared/data` beside
  this checkout when it exists. The images are read where they are, never copied.
- `--host`, `--port`: default to Gradio's (`GRADIO_SERVER_NAME`, `GRADIO_SERVER_PORT`: 127.0.0.1:7860 locally).
- `--max-text-chars` / `ITA_MAX_TEXT_CHARS`: the characters a tweet may have (default 2000); a longer one is refused,
  never cut.
- `--allow-private-urls` / `ITA_ALLOW_PRIVATE_URLS=1`: let image URLs reach loopback, private, link-local and other
  non-public addresses. Off by default: a visitor's URL would otherwise make the app fetch from inside its own network
  (cloud metadata, admin pages); such a URL is not fetched, and the tweet is tagged text-only with a note saying why.

On a Space: upload this file with `requirements-space.txt` as `requirements.txt`, and set `ITA_MODEL` to the Hub id of
the checkpoint. A bad input (no text, an image that cannot be read, a model that cannot be loaded) is a message in the
page, never a traceback.
"""

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

# No usage statistics sent from wherever the app runs (and no waiting on a network that may be absent).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

logger = logging.getLogger("ita_app")

REPO = Path(__file__).resolve().parent
# Characters a tweet may have by default: a tweet has at most 280, and the work grows with the length. The handler
# (handler.py) has the same cap; this file, uploaded alone to a Space, cannot import it.
MAX_TEXT_CHARS = 2000
MAX_UPLOAD = "16mb"
# Entity colours by type; types beyond these get Gradio's own.
COLORS = {"PER": "#f4a261", "LOC": "#2a9d8f", "ORG": "#8ab17d", "MISC": "#e9c46a", "OTHER": "#e9c46a"}
TEXT_EXAMPLES = [
    "RT @nytimes : Barack Obama meets Angela Merkel in Berlin ahead of the G20 summit",
    "Watching the Warriors parade downtown with Steph and Klay today !",
]
MAX_EXAMPLES = 15


class Tagger:
    """Opens checkpoints (once each) and tags tweets with them; what the page's button calls.

    Args:
        model: The checkpoint folder or Hub id used when the page names no other.
        aligners: Aligner specs used instead of each checkpoint's own, or `None`.
        allow_model_choice: Whether a request may name another checkpoint than `model`.
        allow_private_urls: Whether image URLs may reach non-public addresses (the pipeline's `allow_private_urls`).
        max_text_chars: Characters a tweet may have; a longer one is refused.
    """

    def __init__(
        self,
        model: str,
        aligners: list[dict] | None = None,
        allow_model_choice: bool = False,
        allow_private_urls: bool = False,
        max_text_chars: int = MAX_TEXT_CHARS,
    ):
        self.model = model
        self.aligners = aligners
        self.allow_model_choice = allow_model_choice
        self.allow_private_urls = allow_private_urls
        self.max_text_chars = max_text_chars
        self._pipelines: dict[str, Any] = {}
        self._lock = threading.Lock()

    def pipeline(self, name: str) -> Any:
        """The `multimodal-ner` pipeline of checkpoint `name`, opened on first use.

        Raises:
            gr.Error: The checkpoint cannot be opened (the message says why).
        """
        with self._lock:
            if name not in self._pipelines:
                from transformers import pipeline

                options = {} if self.aligners is None else {"aligners": self.aligners}
                try:
                    self._pipelines[name] = pipeline(model=name, trust_remote_code=True, **options)
                except Exception as err:  # noqa: BLE001 - any failure to open a checkpoint is a message in the page.
                    raise gr.Error(
                        f"Cannot open the model {name!r} ({type(err).__name__}: {_first_line(err)}). Give an ITA "
                        "checkpoint folder (e.g. demo-output/model) or the Hub id of one.",
                        print_exception=False,
                    ) from None
            return self._pipelines[name]

    def labels(self) -> list[str]:
        """The entity types of the default checkpoint (`PER`, `LOC`, ...)."""
        labels = self.pipeline(self.model).model.config.id2label.values()
        return sorted({label.split("-", 1)[1] for label in labels if label != "O"})

    def tag(self, text: Any, image: str | None, image_url: str | None, model: str | None) -> tuple:
        """Tags one tweet; the page's outputs in order.

        Args:
            text: The tweet.
            image: The path of an uploaded image, or `None`.
            image_url: An http(s) URL of the image, or empty.
            model: The checkpoint to use (empty: the default one).

        Returns:
            `(highlighted, visual_context, result, notes)`: the HighlightedText value, the visual context, the
            pipeline's output and a Markdown line saying what happened (and any warning about the image).

        Raises:
            gr.Error: The input cannot be tagged; the message says what to change.
        """
        if not isinstance(text, str) or not text.strip():
            raise gr.Error(
                "Type a tweet first: the text is what gets tagged (the image only helps).", print_exception=False
            )
        if len(text) > self.max_text_chars:
            raise gr.Error(
                f"The text has {len(text)} characters; this app tags at most {self.max_text_chars}.",
                print_exception=False,
            )
        image_url = (image_url or "").strip()
        if image and image_url:
            raise gr.Error("Give the image either as an upload or as a URL, not both.", print_exception=False)
        if image_url and not image_url.startswith(("http://", "https://")):
            raise gr.Error(
                f"The image URL must start with http:// or https://, got {image_url[:80]!r}.", print_exception=False
            )
        name = (model or "").strip() or self.model
        if name != self.model and not self.allow_model_choice:
            raise gr.Error(
                "This app serves one model only (start it with --allow-model-choice to choose).", print_exception=False
            )
        ner = self.pipeline(name)
        picture = image or image_url or None
        # Passed only when set: a checkpoint whose pipeline predates the switch still tags.
        options = {"allow_private_urls": True} if self.allow_private_urls else {}
        start = time.perf_counter()
        with _captured_warnings(type(ner).__module__) as warnings:
            try:
                result = ner(text, image=picture, return_visual_context=True, **options)
            except (TypeError, ValueError) as err:
                raise gr.Error(f"The model cannot tag this input: {_first_line(err)}", print_exception=False) from None
            except Exception as err:
                logger.exception("Tagging failed")
                raise gr.Error(
                    f"The model failed on this input ({type(err).__name__}); the app's log has the details.",
                    print_exception=False,
                ) from None
        elapsed = time.perf_counter() - start
        entities = result["entities"]
        found = ", ".join(f"{e['entity_group']} “{e['word']}”" for e in entities) or "no entity"
        notes = [f"{len(entities)} entit{'y' if len(entities) == 1 else 'ies'} found in {elapsed:.2f} s: {found}."]
        # An upload is a file in a folder of the server's, which the page does not show: its name is enough.
        folder = os.path.join(os.path.dirname(image), "") if image else None
        notes += [f"⚠️ {warning.replace(folder, '') if folder else warning}" for warning in warnings]
        highlighted = {"text": text, "entities": entities}
        return highlighted, result["visual_context"], result, "\n\n".join(notes)


def _with_plain_upload_errors(image: gr.Image) -> gr.Image:
    """Makes an unreadable upload a plain message instead of Gradio's report of its preprocessing internals.

    The component's own `preprocess` is wrapped on the instance: a subclass of a Gradio component would make Gradio
    write a `.pyi` stub beside this file.
    """
    preprocess = image.preprocess

    def checked(payload: Any) -> str | None:
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception as err:  # noqa: BLE001 - whatever the file is, the visitor is told to upload an image.
            raise gr.Error(
                f"The uploaded file is not an image this app can read ({type(err).__name__}): upload a JPEG, PNG, GIF "
                "or WebP picture, or give its URL.",
                print_exception=False,
            ) from None

    image.preprocess = checked
    return image


class _WarningList(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class _captured_warnings:
    """Collects the warnings a module logs while in the block (Gradio runs one tagging at a time)."""

    def __init__(self, name: str):
        self.logger, self.handler = logging.getLogger(name), _WarningList()

    def __enter__(self) -> list[str]:
        self.logger.addHandler(self.handler)
        return self.handler.messages

    def __exit__(self, *exc_info) -> None:
        self.logger.removeHandler(self.handler)


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def example_tweets(data: Path | None) -> list[list[Any]]:
    """`[text, image, url]` rows: the real tweet images of `data` with their tweets, then text-only tweets."""
    rows: list[list[Any]] = []
    if data is not None and data.is_dir():
        try:
            # The demo's reader of the shared layout, importable from the checkout this file runs from.
            from demo.__main__ import real_image_tweets

            rows = [[" ".join(words), str(path), ""] for path, words in real_image_tweets(data)[:MAX_EXAMPLES]]
        except (ImportError, OSError, ValueError) as err:
            # Examples are a convenience: the app starts without them, and says why.
            logger.warning(f"No image examples from {data} ({type(err).__name__}: {_first_line(err)}).")
    return rows + [[text, None, ""] for text in TEXT_EXAMPLES]


def build_app(tagger: Tagger, examples: list[list[Any]]) -> gr.Blocks:
    """The page: inputs on the left, entities, visual context, notes and JSON on the right."""
    colors = {label: COLORS[label] for label in tagger.labels() if label in COLORS}
    with gr.Blocks(title="ITA multimodal NER") as app:
        gr.Markdown(
            "# ITA: named entities in tweets, read with their images\n"
            "The image is turned into text (caption, objects, OCR, as the checkpoint was trained) and read beside the "
            "tweet. Type a tweet, add its image if it has one, and press **Find entities**."
        )
        with gr.Row():
            with gr.Column():
                model = gr.Textbox(
                    value=tagger.model,
                    label="Model (checkpoint folder or Hub id)",
                    interactive=tagger.allow_model_choice,
                    elem_id="model",
                )
                text = gr.Textbox(
                    label="Tweet", lines=3, placeholder="RT @user : Obama visits Paris ...", elem_id="tweet"
                )
                image = _with_plain_upload_errors(
                    gr.Image(
                        label="Image (optional)",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        elem_id="image",
                    )
                )
                url = gr.Textbox(label="…or the image's URL", placeholder="https://...", elem_id="image-url")
                submit = gr.Button("Find entities", variant="primary", elem_id="submit")
            with gr.Column():
                highlighted = gr.HighlightedText(
                    label="Entities", color_map=colors, show_legend=True, elem_id="entities"
                )
                context = gr.Textbox(
                    label="Visual context (what the image became)", interactive=False, elem_id="context"
                )
                notes = gr.Markdown(elem_id="notes")
                raw = gr.JSON(label="Pipeline output", elem_id="json")
        gr.Examples(examples=examples, inputs=[text, image, url], label="Examples (click one, then Find entities)")
        outputs = [highlighted, context, raw, notes]
        submit.click(tagger.tag, inputs=[text, image, url, model], outputs=outputs, api_name="tag")
        text.submit(tagger.tag, inputs=[text, image, url, model], outputs=outputs, api_visibility="private")
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("ITA_MODEL"), help="checkpoint folder or Hub id (ITA_MODEL)")
    parser.add_argument(
        "--allow-model-choice",
        action="store_true",
        default=os.environ.get("ITA_ALLOW_MODEL_CHOICE", "") == "1",
        help="let visitors open other checkpoints (ITA_ALLOW_MODEL_CHOICE=1)",
    )
    parser.add_argument(
        "--aligner",
        action="append",
        type=json.loads,
        dest="aligners",
        metavar="SPEC",
        help="an aligner spec as JSON, instead of the checkpoint's (repeatable; ITA_ALIGNERS: a JSON list)",
    )
    default_data = os.environ.get("DATA_DIR") or (REPO.parent / "shared" / "data")
    parser.add_argument("--data", type=Path, default=Path(default_data), help="data folder for examples (DATA_DIR)")
    parser.add_argument("--host", default=None, help="default: GRADIO_SERVER_NAME, else 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: GRADIO_SERVER_PORT, else 7860")
    parser.add_argument(
        "--max-text-chars",
        type=int,
        default=os.environ.get("ITA_MAX_TEXT_CHARS") or MAX_TEXT_CHARS,
        help=f"characters a tweet may have (ITA_MAX_TEXT_CHARS; default {MAX_TEXT_CHARS})",
    )
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        default=os.environ.get("ITA_ALLOW_PRIVATE_URLS", "") == "1",
        help="let image URLs reach loopback and private addresses (ITA_ALLOW_PRIVATE_URLS=1)",
    )
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("name the model: --model demo-output/model (a checkpoint folder or Hub id), or set ITA_MODEL.")
    if args.max_text_chars < 1:
        parser.error("--max-text-chars (ITA_MAX_TEXT_CHARS) must be at least 1.")
    if args.aligners is None and os.environ.get("ITA_ALIGNERS"):
        try:
            args.aligners = json.loads(os.environ["ITA_ALIGNERS"])
        except json.JSONDecodeError as err:
            parser.error(f"ITA_ALIGNERS must be a JSON list of aligner specs: {err}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tagger = Tagger(
        args.model,
        aligners=args.aligners,
        allow_model_choice=args.allow_model_choice,
        allow_private_urls=args.allow_private_urls,
        max_text_chars=args.max_text_chars,
    )
    try:
        tagger.pipeline(args.model)  # fail at start, with the reason, rather than on the first visitor
    except gr.Error as err:
        raise SystemExit(err.message) from None
    examples = example_tweets(args.data)
    image_folders = sorted({str(Path(row[1]).parent) for row in examples if row[1]})
    build_app(tagger, examples).launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=image_folders,
        max_file_size=MAX_UPLOAD,
        ssr_mode=False,
        show_error=True,
    )


if __name__ == "__main__":
    main()
