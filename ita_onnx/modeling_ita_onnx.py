"""ONNX Runtime ITA model: the exported emissions graph behind the interface of `ITAForTokenClassification`.

`ORTModelForITA` is optimum's `ORTModelForCustomTasks` plus what the `multimodal-ner` pipeline reads from a
PyTorch ITA model: `config` (the `ITAConfig`), `crf` (a `ConditionalRandomField` rebuilt from
`crf.safetensors`, whose scores feed `crf_ita.viterbi_decode_numpy` and `marginals_numpy`) and a forward
that returns `logits` `(batch_size, num_words, num_labels)`.

This module is also copied verbatim into every export (with `crf_file.py`, beside the checkpoint's
`configuration_ita.py`, `crf_ita.py` and pipeline code), where the export's `config.json` names
`ITAOnnxForTokenClassification` for `AutoModelForTokenClassification`: `pipeline(model=<export>,
trust_remote_code=True)` then returns the multimodal-ner pipeline running the graph. Hence the flat relative
imports with the absolute fallback used inside this package.
"""

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PretrainedConfig
from transformers.dynamic_module_utils import get_relative_imports
from transformers.utils import CONFIG_NAME, ModelOutput, cached_file

try:
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidGraph, InvalidProtobuf
    from optimum.onnxruntime import ORTModelForCustomTasks
    from optimum.onnxruntime.constants import ONNX_WEIGHTS_NAME
except ImportError as error:
    raise ImportError(
        f"An ITA ONNX export runs with ONNX Runtime through optimum, which is not importable here ({error}). "
        "Install it with `pip install 'optimum-onnx[onnxruntime]'` (or this project's `pip install 'ita-mner[onnx]'`)."
    ) from error

try:
    from .configuration_ita import ITAConfig
    from .crf_ita import ConditionalRandomField
except ImportError:
    from configuration_ita import ITAConfig
    from crf_ita import ConditionalRandomField

from .crf_file import CRF_FILE, REEXPORT, load_crf, save_crf

# Hub options of `from_pretrained` that also locate config.json, the graph and crf.safetensors.
_HUB_OPTIONS = ("revision", "cache_dir", "force_download", "local_files_only", "token")
# What an export's `auto_map` names for `AutoModelForTokenClassification`: the loader below, in this very file.
AUTO_MODEL_ENTRY = "modeling_ita_onnx.ITAOnnxForTokenClassification"
README_FILE = "README.md"
# Written by `python -m ita_onnx quantize` (and `export --int8`); named here, where the loader's errors need it.
QUANTIZED_FILE = "model_quantized.onnx"
# What ONNX Runtime raises for a graph file that is not a complete ONNX model (empty, truncated, overwritten).
_BROKEN_GRAPH_ERRORS = (InvalidProtobuf, InvalidGraph, InvalidArgument)


def _remedy(model_id: str | Path, file_name: str) -> str:
    """What to do about a missing or broken `file_name` of the export `model_id`."""
    if file_name == QUANTIZED_FILE:
        return (
            f"the int8 graph is written by `python -m ita_onnx export --int8` or afterwards by "
            f"`python -m ita_onnx quantize {model_id}`; run the latter"
        )
    return f"every ITA ONNX export has one; {REEXPORT}"


def require_file(model_id: str | Path, file_name: str, subfolder: str = "", **hub: Any) -> Path:
    """The local path of `file_name` in the export `model_id` (fetched from the Hub for a repo id).

    Raises:
        FileNotFoundError: naming the file and what to do, when the export has no such file.
    """
    path, reason = Path(model_id, subfolder, file_name), ""
    if Path(model_id).is_dir():
        found = path.is_file()
    else:
        try:
            # None for a missing config.json, which transformers does not count as an error.
            resolved = cached_file(str(model_id), file_name, subfolder=subfolder, **hub)
        except OSError as error:
            resolved, reason = None, f" ({error})"
        found, path = resolved is not None, Path(resolved or path)
    if not found:
        raise FileNotFoundError(f"{path} is missing{reason}: {_remedy(model_id, file_name)}.")
    return path


def read_export_config(model_id: str | Path, subfolder: str = "", **hub: Any) -> ITAConfig:
    """The `ITAConfig` of an ITA ONNX export, read without trusting remote code.

    Raises:
        FileNotFoundError: if the export has no `config.json`.
        OSError: if `config.json` is not valid JSON.
        ValueError: if it is not the config of a finished ITA ONNX export: another model type, or an `auto_map`
            that does not send `AutoModelForTokenClassification` to this runtime (a PyTorch checkpoint, or an
            `optimum-cli export onnx` whose post-processing did not run or finish: it rewrites `config.json` last).
    """
    path = require_file(model_id, CONFIG_NAME, subfolder=subfolder, **hub)
    try:
        values, _ = ITAConfig.get_config_dict(str(path.parent))
    except (OSError, ValueError) as error:
        raise OSError(f"{path} is not a readable config ({error}); {REEXPORT}.") from error
    if not isinstance(values, dict):
        raise OSError(f"{path} holds a JSON {type(values).__name__}, not a config object; {REEXPORT}.")
    if values.get("model_type") != ITAConfig.model_type:
        raise ValueError(
            f"{path} describes a {values.get('model_type')!r} model, not an ITA model; ORTModelForITA "
            "runs ITA ONNX exports only."
        )
    entry = (values.get("auto_map") or {}).get("AutoModelForTokenClassification")
    if entry != AUTO_MODEL_ENTRY:
        raise ValueError(
            f"{path} is not the config of a finished ITA ONNX export: its auto_map sends "
            f"AutoModelForTokenClassification to {entry!r}, not {AUTO_MODEL_ENTRY!r}. The folder is a PyTorch "
            f"checkpoint, an export that was interrupted, or one made with `optimum-cli export onnx "
            f"--no-post-process` (which skips the ITA files); {REEXPORT}."
        )
    return ITAConfig.from_pretrained(model_id, subfolder=subfolder, **hub)


class ORTModelForITA(ORTModelForCustomTasks):
    """An exported ITA emissions graph run by ONNX Runtime, with the model's CRF beside it.

    Load an export of `python -m ita_onnx export` or `optimum-cli export onnx` with
    `ORTModelForITA.from_pretrained(folder)`; pass `file_name="model_quantized.onnx"` for the int8 graph.
    Decoding is not part of `forward`: as with the PyTorch model in the pipeline, tags come from
    `crf_ita.viterbi_decode_numpy` on the returned emissions.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.config, ITAConfig) and getattr(self.config, "model_type", None) != "ita":
            raise ValueError(
                f"ORTModelForITA runs ITA exports; this config is a {type(self.config).__name__} "
                f"(model_type {getattr(self.config, 'model_type', None)!r})."
            )
        path = self.model_save_dir / CRF_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: an ITA export keeps its CRF scores there, written by the export's "
                f"post-processing (so not by `optimum-cli export onnx --no-post-process`); {REEXPORT}."
            )
        self.crf: ConditionalRandomField = load_crf(path, self.config)
        logits = self.output_shapes.get("logits")
        if logits is None or logits[-1] != self.config.num_labels:
            raise ValueError(
                f"{self.path} outputs {self.output_shapes}, but the graph of an ITA export outputs logits "
                f"['batch_size', 'num_words', {self.config.num_labels}] for the {self.config.num_labels} labels of "
                f"its config.json: the graph and config.json come from different models; {REEXPORT}."
            )

    @classmethod
    def from_pretrained(cls, model_id: str | Path, config: ITAConfig | None = None, **kwargs):
        """Loads an ITA export (local folder or Hub repo); see `optimum.onnxruntime.ORTModel.from_pretrained`.

        The config is read with this module's `ITAConfig`, so no remote code needs to be trusted. Every file the
        export needs is checked before optimum sees the folder: optimum itself would load another `.onnx` file
        of the folder when `model.onnx` is missing, or try to export the folder again when it has none.

        Raises:
            FileNotFoundError: if `config.json`, the graph (`file_name`, default `model.onnx`) or `crf.safetensors`
                is missing; the message says how to write it.
            OSError: if one of them is not readable (truncated, overwritten).
            ValueError: if they do not belong together (labels, tag counts), if the folder is not a finished ITA
                ONNX export, or for `export=True` (this class only loads exports).
        """
        if kwargs.pop("export", False):
            raise ValueError(f"ORTModelForITA loads ITA ONNX exports and does not export; {REEXPORT}.")
        hub = {key: kwargs[key] for key in _HUB_OPTIONS if key in kwargs}
        subfolder = kwargs.get("subfolder", "")
        if config is None:
            config = read_export_config(model_id, subfolder=subfolder, **hub)
        file_name = kwargs.setdefault("file_name", ONNX_WEIGHTS_NAME)
        graph = require_file(model_id, file_name, subfolder=subfolder, **hub)
        # Fetches crf.safetensors next to the graph (a no-op for local folders), where __init__ reads it.
        require_file(model_id, CRF_FILE, subfolder=subfolder, **hub)
        try:
            return super().from_pretrained(model_id, config=config, export=False, **kwargs)
        except _BROKEN_GRAPH_ERRORS as error:
            raise OSError(
                f"{graph} is not a loadable ONNX graph ({error}): it was truncated or overwritten; "
                f"{_remedy(model_id, file_name)}."
            ) from error

    def forward(
        self,
        input_ids: torch.Tensor | np.ndarray,
        word_index: torch.Tensor | np.ndarray,
        attention_mask: torch.Tensor | np.ndarray | None = None,
        token_type_ids: torch.Tensor | np.ndarray | None = None,
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
            raise ValueError(
                f"The ITA ONNX graph takes input_ids, word_index, attention_mask and token_type_ids; "
                f"got also {sorted(unexpected)}. Training inputs and the text-only view are "
                "not part of the export: use the PyTorch model for them."
            )
        if attention_mask is None:
            attention_mask = (
                torch.ones_like(input_ids) if isinstance(input_ids, torch.Tensor) else np.ones_like(input_ids)
            )
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "word_index": word_index}
        if "token_type_ids" in self.input_names:
            if token_type_ids is None:
                raise ValueError("This graph was exported with `token_type_ids` (its tokenizer makes them): pass them.")
            inputs["token_type_ids"] = token_type_ids
        elif token_type_ids is not None:
            raise ValueError(
                "This graph was exported without `token_type_ids` (its tokenizer makes none); "
                "encode with the export's own tokenizer."
            )
        return super().forward(**inputs)

    def _save_pretrained(self, save_directory: str | Path) -> None:
        """The graph, `crf.safetensors`, the remote code `config.json` names and the README of the loaded export."""
        super()._save_pretrained(save_directory)
        save_crf(self.crf, save_directory)
        copy_remote_code(remote_code_modules(self.config), [self.model_save_dir], save_directory)
        if (self.model_save_dir / README_FILE).is_file():
            shutil.copyfile(self.model_save_dir / README_FILE, Path(save_directory) / README_FILE)


class ITAOnnxForTokenClassification:
    """What an export's `config.json` names for `AutoModelForTokenClassification`: loads it as `ORTModelForITA`.

    transformers loads remote code for an auto class through a class with `config_class`,
    `register_for_auto_class` and `from_pretrained`. `ORTModelForITA` cannot be that class itself: optimum's
    `ORTModel` registers every instance's class for `AutoConfig`, which transformers refuses for a class whose
    `config_class` is `ITAConfig`. With this loader, `AutoModelForTokenClassification.from_pretrained(<export>,
    trust_remote_code=True)` returns an `ORTModelForITA`, and `pipeline(model=<export>, trust_remote_code=True)`
    the multimodal-ner pipeline running it (`model_kwargs={"file_name": "model_quantized.onnx"}` for int8).
    """

    config_class = ITAConfig

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModelForTokenClassification") -> None:
        """Called by transformers when it loads this class through `auto_map`; a loader saves nothing, so a no-op."""

    @classmethod
    def from_pretrained(
        cls,
        model_id: str | Path,
        config: ITAConfig | None = None,
        dtype: str | torch.dtype | None = None,
        adapter_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> ORTModelForITA:
        """`ORTModelForITA.from_pretrained` with the options transformers' auto classes and pipelines add.

        Args:
            model_id: the export (local folder or Hub repo).
            config: the export's `ITAConfig`, as transformers has loaded it.
            dtype: `"auto"` (what `pipeline()` passes) or None keeps the graph's own precision; a torch dtype
                is handed to ONNX Runtime as optimum's `dtype`.
            adapter_kwargs: transformers' PEFT adapter options, always empty for an export.
            **kwargs: the options of `ORTModelForITA.from_pretrained` (`file_name`, `provider`, hub options...).

        Raises:
            ValueError: for PEFT adapter options (an export has no adapters to load).
        """
        if adapter_kwargs:
            raise ValueError(f"An ITA ONNX export has no PEFT adapters; got adapter options {adapter_kwargs}.")
        if isinstance(dtype, torch.dtype):
            kwargs["dtype"] = dtype
        return ORTModelForITA.from_pretrained(model_id, config=config, **kwargs)


def remote_code_modules(config: PretrainedConfig) -> list[str]:
    """The module files (`name.py`) that `config.auto_map` and `config.custom_pipelines` name."""
    references = list((getattr(config, "auto_map", None) or {}).values())
    references += [entry["impl"] for entry in (getattr(config, "custom_pipelines", None) or {}).values()]
    return sorted({f"{reference.rsplit('.', 1)[0]}.py" for reference in references})


def copy_remote_code(modules: Iterable[str], sources: list[str | Path], destination: str | Path) -> list[str]:
    """Copies `modules` and, recursively, the sibling modules they import relatively, into `destination`.

    Each file is taken from the first folder of `sources` that has it, so a folder can be assembled from
    several (the checkpoint's remote code and this package's runtime).

    Returns:
        The names of the files copied, sorted.

    Raises:
        FileNotFoundError: if a module is in none of `sources`.
    """
    destination = Path(destination)
    pending, copied = list(modules), set()
    while pending:
        name = pending.pop()
        if name in copied:
            continue
        found = [Path(folder) / name for folder in sources if (Path(folder) / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"{name} is named by config.json (or imported by its remote code) but is in none "
                f"of {[str(folder) for folder in sources]}: re-export the checkpoint."
            )
        target = destination / name
        if not (target.exists() and found[0].samefile(target)):
            # Written anew, so that it follows the umask like the folder's other files: transformers'
            # `custom_object_save` (run by `config.save_pretrained`) may have put it there with the source's mode.
            target.unlink(missing_ok=True)
            shutil.copyfile(found[0], target)
        copied.add(name)
        pending += [f"{module}.py" for module in get_relative_imports(str(found[0]))]
    return sorted(copied)
