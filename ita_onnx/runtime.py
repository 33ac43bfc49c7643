"""ONNX Runtime ITA model: the exported emissions graph behind the interface of `ITAForTokenClassification`.

`ORTModelForITA` is optimum's `ORTModelForCustomTasks` plus what the `multimodal-ner` pipeline reads from a
PyTorch ITA model: `config` (the `ITAConfig`), `crf` (a `ConditionalRandomField` rebuilt from
`crf.safetensors`, whose scores feed `crf_ita.viterbi_decode_numpy` and `marginals_numpy`) and a forward
that returns `logits` `(batch_size, num_words, num_labels)`.
"""

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from optimum.onnxruntime import ORTModelForCustomTasks
from transformers.utils import ModelOutput, cached_file

from configuration_ita import ITAConfig
from crf_ita import ConditionalRandomField

from .crf_file import CRF_FILE, load_crf, save_crf

# Hub options of `from_pretrained` that also locate config.json and crf.safetensors.
_HUB_OPTIONS = ("revision", "cache_dir", "force_download", "local_files_only", "token")


class ORTModelForITA(ORTModelForCustomTasks):
    """An exported ITA emissions graph run by ONNX Runtime, with the model's CRF beside it.

    Load an export of `python -m ita_onnx export` with `ORTModelForITA.from_pretrained(folder)`; pass
    `file_name="model_quantized.onnx"` for the int8 graph. Decoding is not part of `forward`: as with the
    PyTorch model in the pipeline, tags come from `crf_ita.viterbi_decode_numpy` on the returned emissions.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.config, ITAConfig) and getattr(self.config, "model_type", None) != "ita":
            raise ValueError(f"ORTModelForITA runs ITA exports; this config is a {type(self.config).__name__} "
                             f"(model_type {getattr(self.config, 'model_type', None)!r}).")
        path = self.model_save_dir / CRF_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: an ITA export keeps its CRF scores there. Export "
                                    "the checkpoint with `python -m ita_onnx export <checkpoint> <out>`.")
        self.crf: ConditionalRandomField = load_crf(path, self.config)

    @classmethod
    def from_pretrained(cls, model_id: Union[str, Path], config: Optional[ITAConfig] = None, **kwargs):
        """Loads an ITA export (local folder or Hub repo); see `optimum.onnxruntime.ORTModel.from_pretrained`.

        The config is read with this package's `ITAConfig`, so no remote code needs to be trusted.
        """
        hub = {key: kwargs[key] for key in _HUB_OPTIONS if key in kwargs}
        subfolder = kwargs.get("subfolder", "")
        if config is None:
            config = ITAConfig.from_pretrained(model_id, subfolder=subfolder, **hub)
        # Fetches crf.safetensors next to the graph (a no-op for local folders), where __init__ reads it.
        cached_file(str(model_id), CRF_FILE, subfolder=subfolder, **hub)
        return super().from_pretrained(model_id, config=config, **kwargs)

    def forward(
        self,
        input_ids: Union[torch.Tensor, np.ndarray],
        word_index: Union[torch.Tensor, np.ndarray],
        attention_mask: Optional[Union[torch.Tensor, np.ndarray]] = None,
        token_type_ids: Optional[Union[torch.Tensor, np.ndarray]] = None,
        **unexpected: Any,
    ) -> ModelOutput:
        """Emission scores of the tweet words.

        Args:
            input_ids: `(batch_size, sequence_length)`, the cross-modal view as `encoding_ita` builds it.
            word_index: `(batch_size, num_words)`, first sub-token position of each word, -1 at padding.
            attention_mask: `(batch_size, sequence_length)`; all ones when None.
            token_type_ids: `(batch_size, sequence_length)`, for graphs exported with them (BERT-style).

        Returns:
            `ModelOutput` with `logits` `(batch_size, num_words, num_labels)`, torch tensors for torch inputs
            and numpy arrays for numpy inputs.

        Raises:
            ValueError: on inputs the graph does not take (e.g. the text-only view or `labels`: the ONNX
                path is inference only), or `token_type_ids` missing for a graph that needs them.
        """
        if unexpected:
            raise ValueError(f"The ITA ONNX graph takes input_ids, word_index, attention_mask and token_type_ids; "
                             f"got also {sorted(unexpected)}. Training inputs and the text-only view are "
                             "not part of the export: use the PyTorch model for them.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids) if isinstance(input_ids, torch.Tensor) else np.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "word_index": word_index}
        if "token_type_ids" in self.input_names:
            if token_type_ids is None:
                raise ValueError("This graph was exported with `token_type_ids` (its tokenizer makes them): pass them.")
            inputs["token_type_ids"] = token_type_ids
        elif token_type_ids is not None:
            raise ValueError("This graph was exported without `token_type_ids` (its tokenizer makes none); "
                             "encode with the export's own tokenizer.")
        return super().forward(**inputs)

    def _save_pretrained(self, save_directory: Union[str, Path]) -> None:
        super()._save_pretrained(save_directory)
        save_crf(self.crf, save_directory)
