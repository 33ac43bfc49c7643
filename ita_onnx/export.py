"""Export of an ITA checkpoint's emissions graph with optimum, the CRF parameters written beside it.

The graph is the model's forward without labels and without `return_tags`, i.e. `word_emissions`:
encoder, first-sub-token gather, emission layer. It never touches the CRF; Viterbi and the marginals run on
its `logits` in numpy (`crf_ita.viterbi_decode_numpy`, `marginals_numpy`), with the scores saved in
`crf.safetensors`. Axes `batch_size`, `sequence_length` and `num_words` are dynamic.

Importing this module registers `ITAOnnxConfig` with optimum's `TasksManager` for model_type "ita" and the
token-classification task. `optimum-cli` imports it at start-up through the `optimum.commands.register`
plugin module this distribution ships (`optimum/commands/register/register_ita.py`), so
`optimum-cli export onnx --model <checkpoint> --task token-classification --trust-remote-code <out>` and
`python -m ita_onnx export <checkpoint> <out>` run the same `main_export` with the same config, and its
post-processing writes the same folder either way.

Neither leaves a folder that passes for a complete export when interrupted: `export_ita` writes under a hidden
name and renames the folder once complete (refusing a non-empty `<out>` unless told to overwrite it), and the
post-processing, the only writer under `optimum-cli`, replaces optimum's `config.json` last, which
`ORTModelForITA` refuses until then.
"""

import copy
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from optimum.exporters.onnx import OnnxConfig, main_export
from optimum.exporters.tasks import TasksManager
from optimum.utils import DummyInputGenerator, DummyTextInputGenerator, NormalizedTextConfig
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase
from transformers.dynamic_module_utils import get_cached_module_file
from transformers.utils import CONFIG_NAME, HF_MODULES_CACHE

from .crf_file import CRF_FILE, save_crf
from .modeling_ita_onnx import AUTO_MODEL_ENTRY, README_FILE, copy_remote_code, remote_code_modules

TASK = "token-classification"
# The remote code of the export's own runtime, taken from this package (the rest comes from the checkpoint).
_RUNTIME_FILES = ("modeling_ita_onnx.py", "crf_file.py")

_README = """\
# ITA ONNX export

The emissions graph of an ITA multimodal NER model (`model_type: ita`; labels {labels}) for ONNX Runtime,
written by `python -m ita_onnx export` or `optimum-cli export onnx --task token-classification
--trust-remote-code` (the two write the same folder).

| file | what it is |
|---|---|
| `model.onnx` | the fp32 graph: encoder, first-sub-token gather, emission layer. Inputs {inputs}, where `word_index` is the position of each word's first sub-token (-1 at padding); output `logits` `(batch_size, num_words, {num_labels})`. Batch size, sequence length and word count are dynamic. |
| `model_quantized.onnx`, `ort_config.json` | the same graph with int8 weights (dynamic quantization) and its quantization settings, present after `python -m ita_onnx export --int8` or `python -m ita_onnx quantize <folder>` |
| `{crf_file}` | the CRF's transition, start and end scores. The CRF is not in the graph: Viterbi decoding (with the BIO constraints derived from the labels) and the tag marginals run in numpy |
| `config.json`, `configuration_ita.py` | the model's `ITAConfig`: labels, encoder, visual-context settings |
| `tokenizer_config.json` and the tokenizer's files | the encoder's tokenizer |
| {runtime} | `ORTModelForITA`, which `AutoModelForTokenClassification` loads from this folder |
| {pipeline} | the `multimodal-ner` pipeline and the modules it imports |

## Running it

Needs ONNX Runtime and optimum: `pip install "optimum-onnx[onnxruntime]"`.

```python
from transformers import pipeline

ner = pipeline(model="<this folder>", trust_remote_code=True)
# int8: pipeline(model="<this folder>", trust_remote_code=True, model_kwargs={{"file_name": "model_quantized.onnx"}})
ner("Kawhi Leonard wins the fan vote", visual_context="a basketball player on a court")
```

The pipeline is the one of the PyTorch checkpoint (same inputs, aligners and output schema); only the
emissions come from ONNX Runtime. For the emissions themselves:
`AutoModelForTokenClassification.from_pretrained("<this folder>", trust_remote_code=True)` (or, with the ITA
project installed, `pip install 'ita-mner[onnx]'`, `ita_onnx.ORTModelForITA.from_pretrained("<this folder>")`)
returns an `ORTModelForITA`, whose forward takes the inputs above and whose `.crf` holds the decoding scores.
The export is inference only: no labels, no text-only view.
"""


class WordIndexInputGenerator(DummyInputGenerator):
    """Dummy `word_index` `(batch_size, num_words)`: increasing first-sub-token positions, -1 padding in row 0.

    Positions start after the first special token and stay inside `sequence_length`, as real encodings do;
    the first row is padded so that the traced graph sees padded words too.
    """

    SUPPORTED_INPUT_NAMES = ("word_index",)

    def __init__(
        self,
        task: str,
        normalized_config: NormalizedTextConfig,
        batch_size: int = 2,
        sequence_length: int = 16,
        **kwargs,
    ):
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.num_words = max(1, (sequence_length - 2) // 2)

    def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
        if framework != "pt":
            raise ValueError(f"ITA exports from PyTorch only, got framework={framework!r}.")
        positions = torch.arange(1, self.num_words + 1, dtype=torch.int64) * 2 - 1
        word_index = positions.clamp(max=self.sequence_length - 1).repeat(self.batch_size, 1)
        if self.num_words > 1:
            word_index[0, self.num_words // 2 :] = -1
        return word_index


@TasksManager.create_register("onnx")("ita", TASK)
class ITAOnnxConfig(OnnxConfig):
    """ONNX export config of `ITAForTokenClassification` (model_type "ita") for `token-classification`.

    Registered with optimum's `TasksManager`, which builds it for `main_export` (and so for `optimum-cli export
    onnx`) with the checkpoint's preprocessors.

    Args:
        config: the checkpoint's `ITAConfig`.
        task: only `"token-classification"`.
        preprocessors: what optimum loaded from the checkpoint; its tokenizer decides whether the graph takes
            `token_type_ids` (BERT-style tokenizers make them, XLM-R-style ones do not).
        int_dtype: optimum's integer dtype of the dummy inputs.
        float_dtype: optimum's float dtype of the export.

    Raises:
        ValueError: for another task, or when the checkpoint has no tokenizer.
    """

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, WordIndexInputGenerator)
    # Emissions are compared with PyTorch on optimum's dummy inputs at export time.
    ATOL_FOR_VALIDATION = 1e-4

    def __init__(
        self,
        config: PretrainedConfig,
        task: str = TASK,
        preprocessors: list[Any] | None = None,
        int_dtype: str = "int64",
        float_dtype: str = "fp32",
    ):
        if task != TASK:
            raise ValueError(f"ITA exports only the {TASK!r} task, got {task!r}.")
        super().__init__(config, task=task, preprocessors=preprocessors, int_dtype=int_dtype, float_dtype=float_dtype)
        tokenizers = [p for p in preprocessors or [] if isinstance(p, PreTrainedTokenizerBase)]
        if not tokenizers:
            raise ValueError(
                f"The ITA checkpoint {config.name_or_path!r} has no tokenizer: save the encoder's "
                "tokenizer into it (`tokenizer.save_pretrained(checkpoint)`) before exporting."
            )
        self.with_token_type_ids = "token_type_ids" in tokenizers[0].model_input_names

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        tokens = {0: "batch_size", 1: "sequence_length"}
        inputs = {"input_ids": dict(tokens), "attention_mask": dict(tokens)}
        if self.with_token_type_ids:
            inputs["token_type_ids"] = dict(tokens)
        inputs["word_index"] = {0: "batch_size", 1: "num_words"}
        return inputs

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {"logits": {0: "batch_size", 1: "num_words"}}

    def post_process_exported_models(self, path: Path, models_and_onnx_configs: dict, onnx_files_subpaths: list[str]):
        """Optimum's post-processing, then what makes the folder an ITA export: the CRF, code, config, README.

        optimum calls this after writing the graph, `config.json` and the tokenizer, in `main_export` and so in
        `optimum-cli export onnx` (unless `--no-post-process`). It writes `crf.safetensors` from the very model
        optimum exported; copies every module that `auto_map` and `custom_pipelines` name, with their relative
        imports (pipeline code from the checkpoint, the runtime from this package); writes README.md; and last
        replaces `config.json` by one whose `auto_map` sends `AutoModelForTokenClassification` to the ONNX
        Runtime loader (the checkpoint's PyTorch classes have no weights here). Until that final rename the
        folder's `config.json` is optimum's, which `ORTModelForITA` refuses as an unfinished export: a folder
        left by an interrupted `optimum-cli` run is never taken for a complete one.
        """
        models_and_onnx_configs, onnx_files_subpaths = super().post_process_exported_models(
            path, models_and_onnx_configs, onnx_files_subpaths
        )
        path = Path(path)
        model, _ = models_and_onnx_configs["model"]
        save_crf(model.crf, path)
        config = copy.deepcopy(model.config)
        config.auto_map = {"AutoModelForTokenClassification": AUTO_MODEL_ENTRY}
        with tempfile.TemporaryDirectory(dir=path, prefix=".config-") as staged:
            config.save_pretrained(staged)  # adds AutoConfig -> configuration_ita.ITAConfig to auto_map
            modules = remote_code_modules(config)
            # The checkpoint's own remote code, fetched as `pipeline(model=<checkpoint>)` fetches it, into the
            # folder where transformers keeps it; the runtime comes from this package.
            checkpoint_code = {
                Path(HF_MODULES_CACHE, get_cached_module_file(config.name_or_path, name)).parent
                for name in modules
                if name not in _RUNTIME_FILES
            }
            copied = copy_remote_code(modules, [*sorted(checkpoint_code), Path(__file__).parent], path)
            pipeline_files = [name for name in copied if name not in _RUNTIME_FILES and name != "configuration_ita.py"]
            (path / README_FILE).write_text(
                _README.format(
                    labels=", ".join(f"`{label}`" for label in config.labels),
                    inputs=", ".join(f"`{name}`" for name in self.inputs),
                    num_labels=config.num_labels,
                    crf_file=CRF_FILE,
                    runtime=", ".join(f"`{name}`" for name in _RUNTIME_FILES),
                    pipeline=", ".join(f"`{name}`" for name in pipeline_files),
                )
            )
            os.replace(Path(staged, CONFIG_NAME), path / CONFIG_NAME)
        return models_and_onnx_configs, onnx_files_subpaths


def export_ita(
    checkpoint: str | Path,
    output: str | Path,
    int8: bool = False,
    int8_target: str = "avx512_vnni",
    opset: int | None = None,
    atol: float | None = None,
    do_validation: bool = True,
    overwrite: bool = False,
) -> Path:
    """Exports an ITA checkpoint to `output`, as `optimum-cli export onnx --task token-classification` does.

    The export is written into a fresh hidden folder beside `output` (`.<name>.partial-<id>`) and renamed to
    `output` only once complete (graph, CRF, config, code, README and, with `int8`, the int8 graph), so
    `output` never holds a partial export: a failed run removes its partial folder, and one that is killed
    leaves only that hidden folder, which nothing reads (delete it at leisure).

    Args:
        checkpoint: a saved ITA checkpoint (folder or Hub id) with its tokenizer.
        output: folder to write. It must not exist, or be empty, unless `overwrite`.
        int8: also write `model_quantized.onnx`, dynamically quantized to int8 (see `quantize_int8`).
        int8_target: the CPU family the int8 kernels are tuned for (`avx512_vnni`, `avx512`, `avx2`, `arm64`).
        opset: ONNX opset; optimum's default when None.
        atol: tolerance of optimum's export-time validation; `ITAOnnxConfig.ATOL_FOR_VALIDATION` when None.
        do_validation: run optimum's validation of the graph against PyTorch.
        overwrite: replace a non-empty `output` as a whole (none of its files are kept) once the new export
            is complete.

    Returns:
        The output folder: `model.onnx`, `crf.safetensors`, config, tokenizer, remote code and README.md (see
        `ITAOnnxConfig.post_process_exported_models`).

    Raises:
        FileExistsError: if `output` is a non-empty folder and not `overwrite`.
        NotADirectoryError: if `output` is a file.
        ValueError: if the checkpoint is not an ITA model or has no tokenizer, or `output` would contain it.
    """
    output = Path(output)
    checkpoint = str(checkpoint)
    _check_output(output, checkpoint, overwrite)
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    if config.model_type != "ita":
        raise ValueError(
            f"{checkpoint} holds a {config.model_type!r} model, not an ITA model; export plain "
            "transformers models with `optimum-cli export onnx` instead."
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    # mkdir rather than tempfile.mkdtemp, whose folders are private (0700): the folder follows the umask.
    staging = output.with_name(f".{output.name}.partial-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        main_export(
            checkpoint,
            output=staging,
            task=TASK,
            opset=opset,
            atol=atol,
            trust_remote_code=True,
            library_name="transformers",
            do_validation=do_validation,
        )
        if int8:
            from .quantize import quantize_int8

            quantize_int8(staging, target=int8_target)
        _publish(staging, output, checkpoint, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when published
    return output


def _check_output(output: Path, checkpoint: str, overwrite: bool) -> None:
    """Refuses an `output` the finished export could not replace, before minutes are spent exporting."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"{output} is a file; give `python -m ita_onnx export` a folder to write.")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{output} is not empty. Export into a new folder, or pass `--overwrite` (`overwrite=True`) to "
                "replace it as a whole once the new export is complete."
            )
        source = Path(checkpoint).resolve()
        if source.exists() and (source == output.resolve() or output.resolve() in source.parents):
            raise ValueError(
                f"Overwriting {output} would delete the checkpoint {checkpoint} being exported; "
                "export into another folder."
            )


def _publish(staging: Path, output: Path, checkpoint: str, overwrite: bool) -> None:
    """Renames the complete export `staging` to `output`, replacing a non-empty `output` only if `overwrite`."""
    _check_output(output, checkpoint, overwrite)  # again: another run may have written `output` meanwhile
    if not output.is_dir() or not any(output.iterdir()):
        os.replace(staging, output)  # POSIX renames onto an empty folder
        return
    # Two renames, no copy: between them `output` is briefly absent, never partial.
    replaced = output.with_name(f".{output.name}.replaced-{uuid.uuid4().hex[:12]}")
    output.rename(replaced)
    staging.rename(output)
    shutil.rmtree(replaced)
