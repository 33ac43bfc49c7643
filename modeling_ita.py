"""PyTorch ITA model: a pretrained text encoder, first-sub-token word gather, emissions and a CRF.

This file is remote code: it is copied into every checkpoint and loaded with `trust_remote_code=True`, so it
imports only torch, numpy and transformers at top level, and its own siblings through flat relative imports
(with an absolute fallback so the checkout imports it too).
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput, logging

try:
    from .configuration_ita import ITAConfig
    from .crf_ita import PAD_TAG, ConditionalRandomField, bio_transition_constraints
except ImportError:
    from configuration_ita import ITAConfig
    from crf_ita import PAD_TAG, ConditionalRandomField, bio_transition_constraints


logger = logging.get_logger(__name__)

PIPELINE_FILE = "pipeline_ita.py"
# Files a checkpoint needs beyond the model's own remote code, by their name in the checkpoint -> name here; the
# pipeline's sibling modules are added from its imports.
SERVING_FILES = {
    PIPELINE_FILE: PIPELINE_FILE,
    "handler.py": "handler.py",
    "requirements.txt": "handler_requirements.txt",
}
_PUSH_ARGUMENTS = ("repo_id", "commit_message", "private", "create_pr", "revision", "commit_description")


@dataclass
class ITATokenClassifierOutput(ModelOutput):
    """Output of `ITAForTokenClassification`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
            Mean over the batch of the CRF negative log-likelihood, plus the cross-view alignment terms when
            the text-only view is given (docs/method.md §3).
        logits (`torch.FloatTensor` of shape `(batch_size, num_words, num_labels)`):
            Emission scores of the tweet words in the cross-modal view.
        text_logits (`torch.FloatTensor` of shape `(batch_size, num_words, num_labels)`, *optional*):
            Emission scores in the text-only view, when it is given.
        tags (`torch.LongTensor` of shape `(batch_size, num_words)`, *optional*, returned with `return_tags=True`):
            Viterbi tags of the cross-modal view (valid BIO when `config.crf_bio_constraints`), -100 at padding.
        tag_scores (`torch.FloatTensor` of shape `(batch_size, num_words)`, *optional*, with `return_tags=True`):
            CRF posterior marginal probability of each decoded tag, 0 at padding.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    text_logits: torch.FloatTensor | None = None
    tags: torch.LongTensor | None = None
    tag_scores: torch.FloatTensor | None = None


class ITAWordDropout(nn.Module):
    """Zeroes whole word representations with probability `p` in training (no rescaling, as in flair)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return words
        keep = torch.bernoulli(torch.full(words.shape[:2], 1.0 - self.p, device=words.device))
        return words * keep.unsqueeze(-1).to(words.dtype)


def _drop_pooler(encoder: PreTrainedModel) -> None:
    # ITA reads token states only; an unused pooler would hold weights that never get a gradient.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None


class ITAPreTrainedModel(PreTrainedModel):
    """Weight initialisation, loading and saving shared by ITA models."""

    config_class = ITAConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' own initialisation for linear, embedding and norm layers. Everything here goes through
        # `nn.init`, which transformers 5 guards so that weights it has just loaded are not overwritten (it builds
        # the model on the meta device and re-initialises every module whose tensors were not all loaded).
        super()._init_weights(module)
        if isinstance(module, ConditionalRandomField):
            nn.init.zeros_(module.transitions)
            nn.init.zeros_(module.start_transitions)
            nn.init.zeros_(module.end_transitions)
            # The constraint masks are derived from the labels, never loaded: transformers 5 refills such
            # non-persistent buffers with uninitialised memory before calling this, so they are rebuilt here.
            module.reset_constraints(*self._decoding_constraints())

    def _decoding_constraints(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The CRF's `allowed` and `allowed_start` masks for `config.labels` (None when unconstrained)."""
        if not self.config.crf_bio_constraints:
            return None, None
        return bio_transition_constraints(self.config.labels)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, push_to_hub: bool = False, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus the files that serve the checkpoint (see `write_serving_files`).

        With `push_to_hub=True` the folder is uploaded once it is complete.
        """
        hub_kwargs = {key: kwargs.pop(key) for key in _PUSH_ARGUMENTS if key in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        write_serving_files(save_directory, self.name_or_path)
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", None) or Path(save_directory).name
            self.push_to_hub(repo_id, token=kwargs.get("token"), **hub_kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` that refuses a checkpoint whose CRF scores are missing or malformed.

        A CRF missing from the weights would otherwise be initialised to zero with only a warning, and the model
        would decode without its learned transitions; a malformed one fails inside transformers without naming
        the file.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except (RuntimeError, ValueError) as error:
            problem = _crf_weights_problem(pretrained_model_name_or_path, kwargs)
            if problem:
                raise ValueError(problem) from error
            raise
        if any(key.startswith("crf.") for key in loading_info.get("missing_keys", ())):
            raise ValueError(
                _crf_weights_problem(pretrained_model_name_or_path, kwargs) or "The CRF scores are missing."
            )
        return (model, loading_info) if output_loading_info else model


def write_serving_files(folder: str | os.PathLike, source: str | None = None) -> list[str]:
    """Copies the pipeline's remote code and the Inference Endpoints files into a checkpoint folder.

    `save_pretrained` writes the model's own remote code (this file, the config, the CRF); the config's
    `custom_pipelines` names `pipeline_ita.MultimodalNERPipeline`, and `handler.py` + `requirements.txt` serve the
    folder on Inference Endpoints, so those travel too. Each file is taken from beside this module (the checkout,
    or an installed copy) or, for a model that was itself loaded as remote code (whose module folder holds only
    what the model imports), from the checkpoint it was loaded from, `source`.

    Returns:
        The names of the files written.
    """
    from transformers.dynamic_module_utils import get_relative_imports
    from transformers.utils import cached_file

    here = Path(__file__).resolve().parent
    folder = Path(folder)

    def copy(target: str, name: str) -> bool:
        destination = folder / target
        if destination.exists():
            return True
        origin = here / name
        if not origin.is_file() and source:
            try:
                origin = Path(cached_file(source, target, _raise_exceptions_for_missing_entries=False) or "")
            except OSError:
                return False
        if not origin.is_file():
            return False
        shutil.copyfile(origin, destination)
        written.append(target)
        return True

    written: list[str] = []
    missing = [target for target, name in SERVING_FILES.items() if not copy(target, name)]
    # The pipeline's sibling modules, import by import from the copies just written.
    pending = [PIPELINE_FILE] if (folder / PIPELINE_FILE).is_file() else []
    while pending:
        for module in get_relative_imports(folder / pending.pop()):
            name = f"{module}.py"
            if not (folder / name).exists():
                if copy(name, name):
                    pending.append(name)
                else:
                    missing.append(name)
    if missing:
        logger.warning(
            f"{folder} lacks {missing}: pipeline(model=..., trust_remote_code=True) or an Inference Endpoint may not "
            "open it. Save the model from the ITA code (or a checkpoint that has these files) to complete it."
        )
    return written


def _crf_weights_problem(pretrained_model_name_or_path, kwargs: dict) -> str | None:
    """What is wrong with the CRF scores in a checkpoint's `model.safetensors`, or None when they look right."""
    from transformers.utils import SAFE_WEIGHTS_NAME, cached_file

    hub_kwargs = {
        k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs
    }
    try:
        config = ITAConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        path = cached_file(pretrained_model_name_or_path, SAFE_WEIGHTS_NAME, **hub_kwargs)
    except (OSError, ValueError):
        return None  # not a single-file ITA checkpoint: transformers' own error says more
    num_tags = config.num_labels
    expected = {
        "crf.transitions": (num_tags, num_tags),
        "crf.start_transitions": (num_tags,),
        "crf.end_transitions": (num_tags,),
    }
    # The safetensors header: an 8-byte little-endian length, then JSON with each tensor's shape.
    with open(path, "rb") as weights:
        header = json.loads(weights.read(int.from_bytes(weights.read(8), "little")))
    shapes = {key: tuple(header[key]["shape"]) for key in expected if key in header}
    wrong = {key: shapes.get(key) for key, shape in expected.items() if shapes.get(key) != shape}
    if not wrong:
        return None
    found = ", ".join(f"{key} {'missing' if shape is None else shape}" for key, shape in wrong.items())
    return (
        f"{path} does not hold the CRF of this {num_tags}-label model ({found}; expected "
        f"{', '.join(f'{k} {v}' for k, v in expected.items())}). It is not a trained ITA checkpoint, or its weights "
        "do not match its config.json labels: save the model again with `save_pretrained`."
    )


class ITAForTokenClassification(ITAPreTrainedModel):
    """ITA: tags tweet words with a CRF after a text encoder has read the tweet together with its visual context.

    Build it on a pretrained encoder with `ITAForTokenClassification.from_encoder(name_or_path, labels=...)`,
    or from an `ITAConfig` (random weights). Inputs come from `encoding_ita.encode_example` + `pad_batch`.
    """

    def __init__(self, config: ITAConfig):
        super().__init__(config)
        # The encoder takes the dtype the whole model is being built in (`from_pretrained(..., dtype=...)` sets the
        # default dtype), not the one its own saved config names.
        self.encoder = AutoModel.from_config(config.encoder_config, dtype=torch.get_default_dtype())
        _drop_pooler(self.encoder)
        self.word_dropout = ITAWordDropout(config.word_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.crf = ConditionalRandomField(config.num_labels, *self._decoding_constraints())
        self.post_init()

    @classmethod
    def from_encoder(
        cls, encoder_name_or_path: str, labels: list[str], encoder_kwargs: dict | None = None, **config_kwargs
    ) -> "ITAForTokenClassification":
        """Builds an ITA model on a pretrained encoder (any Hub name or local folder `AutoModel` can load).

        Args:
            encoder_name_or_path: e.g. `"xlm-roberta-large"` (the paper's encoder) or a local folder.
            labels: BIO tags in id order, `O` included.
            encoder_kwargs: extra arguments for `AutoModel.from_pretrained` (revision, cache_dir, ...).
            **config_kwargs: other `ITAConfig` settings (cva_temperature, word_dropout, ...).

        Returns:
            The model with pretrained encoder weights and freshly initialised emission and CRF layers. Save
            the encoder's tokenizer beside it (`tokenizer.save_pretrained(folder)`) to make a complete checkpoint.
        """
        encoder = AutoModel.from_pretrained(encoder_name_or_path, **(encoder_kwargs or {}))
        _drop_pooler(encoder)
        config = ITAConfig(encoder_config=encoder.config, labels=labels, **config_kwargs)
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    def word_emissions(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        word_index: torch.LongTensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Emission scores of the tweet words of one view.

        Args:
            input_ids: `(batch_size, sequence_length)`.
            attention_mask, token_type_ids: `(batch_size, sequence_length)` or None.
            word_index: `(batch_size, num_words)`, position of each word's first sub-token, -1 at padding.

        Returns:
            `emissions` `(batch_size, num_words, num_labels)` and `word_mask` `(batch_size, num_words)` bool.
        """
        encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            encoder_inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**encoder_inputs).last_hidden_state
        word_mask = word_index >= 0
        # Only the tweet words are gathered, so context positions never reach the CRF (docs/method.md §2).
        gather_index = word_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        words = hidden.gather(1, gather_index)
        emissions = self.classifier(self.word_dropout(words))
        return emissions, word_mask

    def _alignment_scores(self, emissions: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        if self.config.cva_kl_on == "crf_marginals":
            return self.crf.log_marginal_scores(emissions, word_mask)
        return emissions

    def cross_view_kl(
        self,
        emissions: torch.Tensor,
        text_emissions: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Σ_i KL(q_T(·|x') ‖ q_T(·|x)) per sentence, `(batch_size,)`, with the cross-modal view as a detached teacher.

        Args:
            emissions: cross-modal emissions `(batch_size, num_words, num_labels)` (the teacher).
            text_emissions: text-only emissions, same shape (the student).
            word_mask: `(batch_size, num_words)` bool.
        """
        temperature = self.config.cva_temperature
        teacher = torch.log_softmax(self._alignment_scores(emissions, word_mask).detach() / temperature, dim=-1)
        student = torch.log_softmax(self._alignment_scores(text_emissions, word_mask) / temperature, dim=-1)
        per_word = (teacher.exp() * (teacher - student)).sum(dim=-1)
        return (per_word * word_mask.to(per_word.dtype)).sum(dim=1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        word_index: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        text_input_ids: torch.LongTensor | None = None,
        text_word_index: torch.LongTensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        text_token_type_ids: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_tags: bool = False,
        return_dict: bool | None = None,
    ) -> tuple | ITATokenClassifierOutput:
        r"""Tags or scores one batch; with `labels`, the ITA loss (and the cross-view alignment terms).

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Cross-modal view x': tweet, separator, visual context (or the tweet alone when it has none).
            word_index (`torch.LongTensor` of shape `(batch_size, num_words)`):
                Position in `input_ids` of the first sub-token of each tweet word; -1 at padding.
            attention_mask, token_type_ids (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                As for the encoder.
            text_input_ids, text_word_index, text_attention_mask, text_token_type_ids (*optional*):
                The text-only view x with the same fields. With `labels`, turns on cross-view alignment.
            labels (`torch.LongTensor` of shape `(batch_size, num_words)`, *optional*):
                Gold tag ids per word, -100 at padding (and only there: a CRF scores whole sequences).
            return_tags (`bool`, *optional*, defaults to `False`):
                Also return Viterbi `tags` and their marginal `tag_scores` for the cross-modal view.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if word_index.dim() != 2 or word_index.size(1) == 0:
            raise ValueError(
                f"`word_index` must be (batch_size, num_words) with num_words >= 1, got {tuple(word_index.shape)}."
            )
        emissions, word_mask = self.word_emissions(input_ids, attention_mask, token_type_ids, word_index)

        text_emissions = None
        if text_input_ids is not None:
            if text_word_index is None:
                raise ValueError("The text-only view needs `text_word_index` as well as `text_input_ids`.")
            text_emissions, text_mask = self.word_emissions(
                text_input_ids, text_attention_mask, text_token_type_ids, text_word_index
            )
            if not torch.equal(text_mask, word_mask):
                raise ValueError(
                    "The two views must cover the same words: `word_index` and `text_word_index` "
                    "differ in which positions are padding."
                )

        loss = None
        if labels is not None:
            if labels.shape != word_mask.shape:
                raise ValueError(f"`labels` {tuple(labels.shape)} must match `word_index` {tuple(word_mask.shape)}.")
            if ((labels == PAD_TAG) & word_mask).any() or ((labels != PAD_TAG) & ~word_mask).any():
                raise ValueError(
                    "`labels` must be -100 exactly at word padding: a CRF cannot skip a word inside a sentence."
                )
            nll = self.crf.neg_log_likelihood(emissions, labels, word_mask)
            if text_emissions is None:
                per_sentence = nll
            else:
                weight = self.config.cva_weight
                text_nll = self.crf.neg_log_likelihood(text_emissions, labels, word_mask)
                kl = self.cross_view_kl(emissions, text_emissions, word_mask)
                # A tweet whose image gave no context has identical views: no alignment term (docs/method.md §3).
                has_context = self._has_context(input_ids, attention_mask, text_input_ids, text_attention_mask)
                cva = self.config.cva_temperature**2 * kl * has_context.to(kl.dtype)
                per_sentence = weight * (nll + text_nll) + (1.0 - weight) * cva
            loss = per_sentence.mean()

        tags = tag_scores = None
        if return_tags:
            tags, _ = self.crf.viterbi_decode(emissions, word_mask, constrained=self.config.crf_bio_constraints)
            marginals = self.crf.marginals(emissions, word_mask)
            tag_scores = marginals.gather(2, tags.clamp(min=0).unsqueeze(2)).squeeze(2) * word_mask

        output = ITATokenClassifierOutput(
            loss=loss, logits=emissions, text_logits=text_emissions, tags=tags, tag_scores=tag_scores
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _has_context(
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        text_input_ids: torch.Tensor,
        text_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """True where x' is longer than x, i.e. where the tweet has a non-empty visual context, `(batch_size,)`."""
        length = (
            attention_mask.sum(dim=1)
            if attention_mask is not None
            else torch.full_like(input_ids[:, 0], input_ids.size(1))
        )
        text_length = (
            text_attention_mask.sum(dim=1)
            if text_attention_mask is not None
            else torch.full_like(text_input_ids[:, 0], text_input_ids.size(1))
        )
        return length > text_length


ITAForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
