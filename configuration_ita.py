# coding=utf-8
"""ITA model configuration.

This file is remote code: it is copied into every checkpoint and loaded by transformers' dynamic module
loader, so it imports only the standard library and transformers.
"""

import re
from typing import Any, Optional, Union

from transformers import AutoConfig, PretrainedConfig

# Twitter-2017's tag set; Twitter-2015 uses OTHER instead of MISC. Used only when no labels are given.
DEFAULT_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
DEFAULT_CONTEXT_ORDER = ["caption", "objects", "ocr"]
CVA_KL_MODES = ("crf_marginals", "emission_softmax")
_BIO_TAG = re.compile(r"^[BI]-\S+$")


def validate_bio_labels(labels: list[str]) -> None:
    """Checks that `labels` is a usable BIO tag set.

    Raises:
        ValueError: if `O` is missing, a tag is not `O`/`B-TYPE`/`I-TYPE`, or a tag repeats.
    """
    if "O" not in labels:
        raise ValueError(f"The label set {labels} has no 'O' tag; ITA tags BIO sequences and needs 'O'.")
    malformed = [label for label in labels if label != "O" and not _BIO_TAG.match(label)]
    if malformed:
        raise ValueError(
            f"Malformed BIO tags {malformed}: every label must be 'O', 'B-<TYPE>' or 'I-<TYPE>' "
            "(BIOES or IOB1 data must be converted to BIO first)."
        )
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Labels {duplicates} appear more than once in {labels}.")


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
            Probability of zeroing a whole word representation during training (SPEC §2).
        crf_bio_constraints (`bool`, *optional*, defaults to `True`):
            Forbid `O → I-X`, `B-X → I-Y`, `I-X → I-Y` and starting on `I-X` when decoding, so that decoded
            tags are always valid BIO. Training and marginals are unconstrained (the data has spans that
            start with `I-`).
        cva_temperature (`float`, *optional*, defaults to 2.0):
            Temperature T of cross-view alignment (SPEC §3: 2 for Twitter-2017, 4 for Twitter-2015).
        cva_weight (`float`, *optional*, defaults to 0.5):
            λ in `λ·(NLL(x') + NLL(x)) + (1−λ)·T²·KL`.
        cva_kl_on (`str`, *optional*, defaults to `"crf_marginals"`):
            `"crf_marginals"` (the paper's default) or `"emission_softmax"`.
        context_order (`list[str]`, *optional*, defaults to `["caption", "objects", "ocr"]`):
            Order of the visual-context segments.
        context_separator (`str`, *optional*, defaults to `" | "`):
            String placed between visual-context segments.
        max_context_tokens (`int`, *optional*, defaults to 128):
            Sub-token budget of the visual context; the context, never the tweet, is cut to fit.
        aligners (`list[dict]`, *optional*):
            Specs of the aligners that produced the training contexts, so inference can rebuild them.
    """

    model_type = "ita"

    def __init__(
        self,
        encoder_config: Optional[Union[dict[str, Any], PretrainedConfig]] = None,
        labels: Optional[list[str]] = None,
        word_dropout: float = 0.1,
        crf_bio_constraints: bool = True,
        cva_temperature: float = 2.0,
        cva_weight: float = 0.5,
        cva_kl_on: str = "crf_marginals",
        context_order: Optional[list[str]] = None,
        context_separator: str = " | ",
        max_context_tokens: int = 128,
        aligners: Optional[list[dict[str, Any]]] = None,
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
        self.context_order = list(context_order) if context_order is not None else list(DEFAULT_CONTEXT_ORDER)
        self.context_separator = context_separator
        self.max_context_tokens = max_context_tokens
        self.aligners = list(aligners) if aligners is not None else []

        validate_bio_labels(self.labels)

    @property
    def labels(self) -> list[str]:
        """The tags in id order."""
        return [self.id2label[i] for i in range(len(self.id2label))]

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
