"""ITA model configuration.

This file is remote code: it is copied into every checkpoint and loaded by transformers' dynamic module
loader, so it imports only the standard library and transformers.
"""

import json
import re
from typing import Any

from transformers import AutoConfig, PretrainedConfig

# Twitter-2017's tag set; Twitter-2015 uses OTHER instead of MISC. Used only when no labels are given.
DEFAULT_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
# The visual-context builder's defaults (`visual_context_ita.VisualContextBuilder` reads them from here): segments in
# context order, the text between segments, and the joiner of a segment's pieces (" " for segments not listed).
# `knowledge` comes last: caption then knowledge and knowledge then caption score alike (Twitter-2017, 3 epochs:
# test F1 85.30 and 85.19, docs/benchmarks.md#knowledge), and a context over `max_context_tokens` loses its end, so
# last the long knowledge is what gets cut, never the short caption, object tags or OCR.
DEFAULT_CONTEXT_ORDER = ["caption", "objects", "ocr", "knowledge"]
DEFAULT_CONTEXT_SEPARATOR = " | "
DEFAULT_PIECE_SEPARATORS = {"objects": ", "}
# `VisualContextBuilder` argument -> the ITAConfig field that records it.
CONTEXT_BUILDER_FIELDS = {
    "order": "context_order",
    "separator": "context_separator",
    "max_words_per_segment": "context_max_words_per_segment",
    "max_words": "context_max_words",
    "piece_separators": "context_piece_separators",
}
# Specs of precomputed contexts: the aligner type, its settings, its file formats and the keys of a file record.
PRECOMPUTED_TYPE = "precomputed"
PRECOMPUTED_SPEC_KEYS = ("type", "precomputed", "files", "format")
PRECOMPUTED_FORMATS = ("auto", "captions", "jsonl")
CONTEXT_FILE_KEYS = ("name", "sha256", "source")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CVA_KL_MODES = ("crf_marginals", "emission_softmax")
# The pipeline every checkpoint opens with, by its own task name and by the names the Hub's snippets use for
# `pipeline_tag: token-classification` ("ner" is transformers' alias of that task).
PIPELINE_TASK = "multimodal-ner"
PIPELINE_TASK_ALIASES = ("token-classification", "ner")
PIPELINE_IMPL = "pipeline_ita.MultimodalNERPipeline"
# One BIO tag; the label-set check here and the dataset readers (`preprocess/readers.py`) both use it.
BIO_TAG = re.compile(r"^(?:O|[BI]-\S+)$")


def validate_bio_labels(labels: list[str]) -> None:
    """Checks that `labels` is a usable BIO tag set.

    Raises:
        ValueError: if `O` is missing, a tag is not `O`/`B-TYPE`/`I-TYPE`, or a tag repeats.
    """
    if "O" not in labels:
        raise ValueError(f"The label set {labels} has no 'O' tag; ITA tags BIO sequences and needs 'O'.")
    malformed = [label for label in labels if not BIO_TAG.match(label)]
    if malformed:
        raise ValueError(
            f"Malformed BIO tags {malformed}: every label must be 'O', 'B-<TYPE>' or 'I-<TYPE>' "
            "(BIOES or IOB1 data must be converted to BIO first)."
        )
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Labels {duplicates} appear more than once in {labels}.")


def validate_context_builder(
    order: list[str],
    separator: str,
    max_words_per_segment: int | None,
    max_words: int | None,
    piece_separators: dict[str, str],
) -> None:
    """Checks the settings of the visual-context builder (ITAConfig's `context_*` fields).

    Raises:
        ValueError: if a setting has the wrong type, a segment repeats or a word cap is negative.
    """
    if not isinstance(order, (list, tuple)) or not all(isinstance(name, str) and name for name in order):
        raise ValueError(f"The context order must be a list of segment names, got {order!r}.")
    if len(set(order)) != len(order):
        raise ValueError(f"The context order lists a segment twice: {list(order)}.")
    if not isinstance(separator, str):
        raise ValueError(f"The context separator must be a str, got {separator!r}.")
    for name, cap in (("max_words_per_segment", max_words_per_segment), ("max_words", max_words)):
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ValueError(f"The context word cap `{name}` must be None (no cap) or an int >= 0, got {cap!r}.")
    if not isinstance(piece_separators, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in piece_separators.items()
    ):
        raise ValueError(f"The piece separators must map segment names to strings, got {piece_separators!r}.")


def validate_context_file(record: Any) -> None:
    """Checks a precomputed-context file record, `{"name", "sha256", "source"}`.

    `name` must be a bare file name: a checkpoint finds its context files only in its own folder or in the folder its
    user passes, so a name like `"../../etc/passwd"` or `"/data/BLIP2_17.txt"` is refused rather than read.

    Raises:
        ValueError: if a key is missing or unknown, the name is not a bare file name, the checksum is not a sha256
            hex digest or the source is empty.
    """
    if not isinstance(record, dict) or set(record) != set(CONTEXT_FILE_KEYS):
        raise ValueError(
            f"A precomputed-context file is recorded as {{'name', 'sha256', 'source'}}, got {record!r}; write it with "
            "precomputed_ita.PrecomputedAligner(paths).to_dict() (or normalize_spec) where the file is."
        )
    name = record["name"]
    if not isinstance(name, str) or name in ("", ".", "..") or any(character in name for character in "/\\:\x00"):
        raise ValueError(
            f"The precomputed-context file name {name!r} is not a bare file name: a checkpoint names its context files "
            "by name only, and they are looked up in its own folder or the folder passed as `context_dir`, never at a path."
        )
    if not isinstance(record["sha256"], str) or not _SHA256.match(record["sha256"]):
        raise ValueError(f"The sha256 of {name!r} must be 64 lowercase hex digits, got {record['sha256']!r}.")
    if not isinstance(record["source"], str) or not record["source"].strip():
        raise ValueError(f"The source of {name!r} (what produced the contexts) must be a non-empty str.")


def validate_aligner_spec(spec: Any, live: bool = False) -> None:
    """Checks an aligner spec as a config records it (`aligners` or, with `live=True`, `live_aligners`).

    Every spec must be a JSON-serialisable dict with a `type`; a precomputed spec must hold only `type`,
    `precomputed`, `files` (file records, see `validate_context_file`) and `format`. The settings of other aligner
    types are checked against their constructor when the pipeline builds them (`visual_context_ita.normalize_spec`): the
    config cannot know the aligner types user code registers.

    Raises:
        ValueError: naming the spec and what is wrong with it.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) or not spec["type"]:
        raise ValueError(f"An aligner spec must be a dict with a 'type' (e.g. {{'type': 'rapidocr'}}), got {spec!r}.")
    if not isinstance(spec.get("precomputed", False), bool):
        raise ValueError(f"The 'precomputed' flag of {spec!r} must be true or false.")
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"The aligner spec {spec!r} is not JSON-serialisable ({err}); give models by id or path."
        ) from err
    is_precomputed = spec["type"] == PRECOMPUTED_TYPE or spec.get("precomputed", False)
    if live and is_precomputed:
        raise ValueError(
            f"{spec!r} cannot be a live aligner: live aligners compute the context of new images from their pixels, "
            "precomputed contexts exist only for the images of their files."
        )
    if spec["type"] != PRECOMPUTED_TYPE:
        return
    unknown = sorted(set(spec) - set(PRECOMPUTED_SPEC_KEYS))
    if unknown:
        hint = (
            " (paths are never recorded: the files are named in 'files', by name and checksum)"
            if "paths" in unknown
            else ""
        )
        raise ValueError(
            f"Unknown key(s) {unknown} in the precomputed spec {spec!r}; it takes {list(PRECOMPUTED_SPEC_KEYS)}{hint}. "
            "Write it with visual_context_ita.normalize_spec(spec) where the files are."
        )
    files = spec.get("files")
    if not isinstance(files, list) or not files:
        raise ValueError(f"The precomputed spec {spec!r} needs 'files', a non-empty list of file records.")
    for record in files:
        validate_context_file(record)
    if spec.get("format", "auto") not in PRECOMPUTED_FORMATS:
        raise ValueError(f"The format of {spec!r} must be one of {PRECOMPUTED_FORMATS}.")


class CustomPipelines(dict):
    """`config.custom_pipelines` that also answers to the token-classification task names.

    transformers' `pipeline()` infers the task from `custom_pipelines` only when it holds exactly one entry, and
    looks a named task up in it with `in` and `[]`. So the one stored entry, `multimodal-ner`, is also what
    `"token-classification"` and `"ner"` find: `pipeline(model=...)`, `pipeline("multimodal-ner", model=...)` and
    the Hub's `pipeline("token-classification", model=...)` all return the ITA pipeline, and `config.json`
    keeps the single entry `Pipeline.save_pretrained` would write.
    """

    @staticmethod
    def _task(task: Any) -> Any:
        return PIPELINE_TASK if task in PIPELINE_TASK_ALIASES else task

    def __contains__(self, task: Any) -> bool:
        return dict.__contains__(self, self._task(task))

    def __getitem__(self, task: Any) -> Any:
        return dict.__getitem__(self, self._task(task))

    def get(self, task: Any, default: Any = None) -> Any:
        return dict.get(self, self._task(task), default)


def pipeline_entry() -> dict[str, Any]:
    """The `custom_pipelines` entry of the multimodal-ner pipeline.

    It has the form `Pipeline.save_pretrained` writes, without the TensorFlow classes transformers 5 dropped.
    """
    return {"impl": PIPELINE_IMPL, "pt": ["AutoModelForTokenClassification"], "type": "multimodal"}


class ITAConfig(PretrainedConfig):
    r"""Configuration of an ITA model: a pretrained text encoder, an emission layer and a CRF over tweet words.

    The encoder's own configuration is kept whole in `encoder_config`, so any encoder that `AutoConfig`
    knows (BERT, RoBERTa/XLM-R, DeBERTa-v2, ...) works; its sizes are exposed as `hidden_size`,
    `vocab_size`, `max_position_embeddings` and `initializer_range`.

    Args:
        encoder_config (`dict` or `PretrainedConfig`, *optional*):
            Configuration of the text encoder. A dict must carry `model_type`. Defaults to a BERT-base config.
        labels (`list[str]`, *optional*):
            BIO tags in id order; a shortcut for `id2label`. Defaults to Twitter-2017's tags when neither
            `labels` nor `id2label` is given.
        word_dropout (`float`, *optional*, defaults to 0.1):
            Probability of zeroing a whole word representation during training (docs/method.md §2).
        crf_bio_constraints (`bool`, *optional*, defaults to `True`):
            Forbid `O → I-X`, `B-X → I-Y`, `I-X → I-Y` and starting on `I-X` when decoding, so that decoded
            tags are always valid BIO. Training and marginals are unconstrained (the data has spans that
            start with `I-`).
        cva_temperature (`float`, *optional*, defaults to 2.0):
            Temperature T of cross-view alignment (docs/method.md §3: 2 for Twitter-2017, 4 for Twitter-2015).
        cva_weight (`float`, *optional*, defaults to 0.5):
            λ in `λ·(NLL(x') + NLL(x)) + (1−λ)·T²·KL`.
        cva_kl_on (`str`, *optional*, defaults to `"crf_marginals"`):
            `"crf_marginals"` (the paper's default) or `"emission_softmax"`.
        context_order (`list[str]`, *optional*, defaults to `["caption", "objects", "ocr", "knowledge"]`):
            Order of the visual-context segments.
        context_separator (`str`, *optional*, defaults to `" | "`):
            String placed between visual-context segments.
        context_max_words_per_segment (`int`, *optional*):
            Word cap of each visual-context segment (`None`: no cap).
        context_max_words (`int`, *optional*):
            Word cap of the whole visual context (`None`: no cap), applied before the sub-token budget.
        context_piece_separators (`dict[str, str]`, *optional*, defaults to `{"objects": ", "}`):
            Joiner of the pieces inside a segment, by segment name (`" "` for segments not listed).
            These five `context_*` settings are those of the `VisualContextBuilder` that built the training contexts
            (`python -m preprocess` records them, `train.py` copies them here); the pipeline rebuilds it from them.
        max_context_tokens (`int`, *optional*, defaults to 128):
            Sub-token budget of the visual context; the context, never the tweet, is cut to fit.
        aligners (`list[dict]`, *optional*):
            Specs of the aligners that produced the training contexts (`aligners_ita.Aligner.to_dict()`), so inference
            can rebuild them. Precomputed contexts are recorded without any path, as
            `{"type": "precomputed", "precomputed": true, "format": "auto", "files": [{"name": "BLIP2_17.txt",
            "sha256": "<hex digest>", "source": "BLIP-2 captions, PGIM release"}]}`: the pipeline looks each file up by
            name only in the checkpoint's folder (or Hub repository) and in the `context_dir` its user passes, and uses
            it only if its checksum matches.
        live_aligners (`list[dict]`, *optional*):
            Specs of aligners that compute context from the pixels (and tweet) of new images (e.g. `{"type":
            "image-to-text", "model": "Salesforce/blip-image-captioning-base"}`, or an `image-text-to-text` /
            `chat-completions` aligner for a model trained on precomputed knowledge), used by the pipeline instead of
            the precomputed aligners for an image they hold no context for (or when their files are not there). They
            did not produce the training contexts, so they should produce the same kind of text (e.g. captions for
            BLIP-2 captions).
    """

    model_type = "ita"

    def __init__(
        self,
        encoder_config: dict[str, Any] | PretrainedConfig | None = None,
        labels: list[str] | None = None,
        word_dropout: float = 0.1,
        crf_bio_constraints: bool = True,
        cva_temperature: float = 2.0,
        cva_weight: float = 0.5,
        cva_kl_on: str = "crf_marginals",
        context_order: list[str] | None = None,
        context_separator: str = DEFAULT_CONTEXT_SEPARATOR,
        max_context_tokens: int = 128,
        aligners: list[dict[str, Any]] | None = None,
        context_max_words_per_segment: int | None = None,
        context_max_words: int | None = None,
        context_piece_separators: dict[str, str] | None = None,
        live_aligners: list[dict[str, Any]] | None = None,
        **kwargs,
    ):
        if labels is not None:
            if "id2label" in kwargs or "label2id" in kwargs:
                raise ValueError("Pass either `labels` or `id2label`/`label2id`, not both.")
            kwargs["id2label"] = dict(enumerate(labels))
            kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
        elif "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["id2label"] = dict(enumerate(DEFAULT_LABELS))
            kwargs["label2id"] = {label: i for i, label in enumerate(DEFAULT_LABELS)}
        super().__init__(**kwargs)

        if encoder_config is None:
            encoder_config = AutoConfig.for_model("bert")
        elif isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            if "model_type" not in encoder_config:
                raise ValueError("`encoder_config` needs a `model_type` key (e.g. 'bert', 'xlm-roberta').")
            encoder_config = AutoConfig.for_model(**encoder_config)
        elif not isinstance(encoder_config, PretrainedConfig):
            raise TypeError(f"`encoder_config` must be a dict or a PretrainedConfig, got {type(encoder_config)}.")
        self.encoder_config = encoder_config

        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"`word_dropout` must be in [0, 1), got {word_dropout}.")
        if cva_temperature <= 0:
            raise ValueError(f"`cva_temperature` must be positive, got {cva_temperature}.")
        if not 0.0 <= cva_weight <= 1.0:
            raise ValueError(f"`cva_weight` (λ) must be in [0, 1], got {cva_weight}.")
        if cva_kl_on not in CVA_KL_MODES:
            raise ValueError(f"`cva_kl_on` must be one of {CVA_KL_MODES}, got {cva_kl_on!r}.")
        if max_context_tokens < 0:
            raise ValueError(f"`max_context_tokens` must be >= 0, got {max_context_tokens}.")
        self.word_dropout = word_dropout
        self.crf_bio_constraints = crf_bio_constraints
        self.cva_temperature = cva_temperature
        self.cva_weight = cva_weight
        self.cva_kl_on = cva_kl_on
        context_order = DEFAULT_CONTEXT_ORDER if context_order is None else context_order
        piece_separators = DEFAULT_PIECE_SEPARATORS if context_piece_separators is None else context_piece_separators
        validate_context_builder(
            context_order, context_separator, context_max_words_per_segment, context_max_words, piece_separators
        )
        self.context_order = list(context_order)
        self.context_separator = context_separator
        self.max_context_tokens = max_context_tokens
        self.context_max_words_per_segment = context_max_words_per_segment
        self.context_max_words = context_max_words
        self.context_piece_separators = dict(piece_separators)
        self.aligners = list(aligners) if aligners is not None else []
        self.live_aligners = list(live_aligners) if live_aligners is not None else []
        for spec in self.aligners:
            validate_aligner_spec(spec)
        for spec in self.live_aligners:
            validate_aligner_spec(spec, live=True)

        validate_bio_labels(self.labels)
        # Every ITA checkpoint opens with `pipeline(model=<checkpoint>, trust_remote_code=True)`.
        self.custom_pipelines = CustomPipelines(
            {**(getattr(self, "custom_pipelines", None) or {}), PIPELINE_TASK: pipeline_entry()}
        )

    @property
    def labels(self) -> list[str]:
        """The tags in id order."""
        return [self.id2label[i] for i in range(len(self.id2label))]

    @property
    def reads_new_images(self) -> bool:
        """Whether this checkpoint's pipeline turns an image it has never seen into context by itself.

        `False` for a model trained on precomputed contexts (looked up by image id) that names no live aligner, and
        for a model trained without visual context.
        """
        return bool(self.live_aligners) or any(not spec.get("precomputed", False) for spec in self.aligners)

    # Setters forward to the encoder so that generic transformers code (e.g. resize_token_embeddings,
    # which writes `config.vocab_size`) keeps the two in sync.
    @property
    def hidden_size(self) -> int:
        return self.encoder_config.hidden_size

    @hidden_size.setter
    def hidden_size(self, value: int) -> None:
        self.encoder_config.hidden_size = value

    @property
    def vocab_size(self) -> int:
        return self.encoder_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        self.encoder_config.vocab_size = value

    @property
    def max_position_embeddings(self) -> int:
        return self.encoder_config.max_position_embeddings

    @property
    def initializer_range(self) -> float:
        return getattr(self.encoder_config, "initializer_range", 0.02)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["encoder_config"] = self.encoder_config.to_dict()
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        # The encoder writes its own diff (it carries `model_type`, so it rebuilds exactly); the base
        # class would diff it against a default BERT config, which is wrong for any other encoder.
        output = super().to_diff_dict()
        output["encoder_config"] = self.encoder_config.to_diff_dict()
        return output


ITAConfig.register_for_auto_class()
