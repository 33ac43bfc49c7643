"""Export of an ITA checkpoint's emissions graph with optimum, the CRF parameters written beside it.

The graph is the model's forward without labels and without `return_tags`, i.e. `word_emissions`:
encoder, first-sub-token gather, emission layer. It never touches the CRF; Viterbi and the marginals run on
its `logits` in numpy (`crf_ita.viterbi_decode_numpy`, `marginals_numpy`), with the scores saved in
`crf.safetensors`. Axes `batch_size`, `sequence_length` and `num_words` are dynamic.
"""

from pathlib import Path
from typing import Optional, Union

import torch
from optimum.exporters.onnx import OnnxConfig, main_export
from optimum.utils import DummyInputGenerator, DummyTextInputGenerator, NormalizedTextConfig
from transformers import AutoConfig, AutoTokenizer

from .crf_file import save_crf

TASK = "token-classification"


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


class ITAOnnxConfig(OnnxConfig):
    """ONNX export config of `ITAForTokenClassification` (model_type "ita") for `token-classification`.

    Args:
        config: the checkpoint's `ITAConfig`.
        task: only `"token-classification"`.
        with_token_type_ids: whether the graph takes `token_type_ids`; true when the checkpoint's tokenizer
            produces them (BERT-style), false for XLM-R-style tokenizers.
    """

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator, WordIndexInputGenerator)
    # Emissions are compared with PyTorch on optimum's dummy inputs at export time.
    ATOL_FOR_VALIDATION = 1e-4

    def __init__(self, config, task: str = TASK, with_token_type_ids: bool = True, **kwargs):
        if task != TASK:
            raise ValueError(f"ITA exports only the {TASK!r} task, got {task!r}.")
        super().__init__(config, task=task, **kwargs)
        self.with_token_type_ids = with_token_type_ids

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
        """optimum's post-processing, then the CRF scores of the exported model written to `path/crf.safetensors`."""
        models_and_onnx_configs, onnx_files_subpaths = super().post_process_exported_models(
            path, models_and_onnx_configs, onnx_files_subpaths
        )
        model, _ = models_and_onnx_configs["model"]
        save_crf(model.crf, path)
        return models_and_onnx_configs, onnx_files_subpaths


def export_ita(
    checkpoint: Union[str, Path],
    output: Union[str, Path],
    int8: bool = False,
    int8_target: str = "avx512_vnni",
    opset: Optional[int] = None,
    atol: Optional[float] = None,
    do_validation: bool = True,
) -> Path:
    """Exports an ITA checkpoint to `output`: `model.onnx`, `crf.safetensors`, config and tokenizer.

    Args:
        checkpoint: a saved ITA checkpoint (folder or Hub id) with its tokenizer.
        output: folder to write; created if needed.
        int8: also write `model_quantized.onnx`, dynamically quantized to int8 (see `quantize_int8`).
        int8_target: the CPU family the int8 kernels are tuned for (`avx512_vnni`, `avx512`, `avx2`, `arm64`).
        opset: ONNX opset; optimum's default when None.
        atol: tolerance of optimum's export-time validation; `ITAOnnxConfig.ATOL_FOR_VALIDATION` when None.
        do_validation: run optimum's validation of the graph against PyTorch.

    Returns:
        The output folder. `crf.safetensors` is written by `ITAOnnxConfig.post_process_exported_models`, from
        the very model optimum exported.

    Raises:
        ValueError: if the checkpoint is not an ITA model or has no tokenizer.
    """
    output = Path(output)
    checkpoint = str(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=True)
    if config.model_type != "ita":
        raise ValueError(f"{checkpoint} holds a {config.model_type!r} model, not an ITA model; export plain "
                         "transformers models with `optimum-cli export onnx` instead.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError) as error:
        raise ValueError(f"{checkpoint} has no tokenizer: save the encoder's tokenizer into it "
                         "(`tokenizer.save_pretrained(checkpoint)`) before exporting.") from error
    onnx_config = ITAOnnxConfig(config, with_token_type_ids="token_type_ids" in tokenizer.model_input_names)
    main_export(
        checkpoint,
        output=output,
        task=TASK,
        opset=opset,
        atol=atol,
        trust_remote_code=True,
        library_name="transformers",
        custom_onnx_configs={"model": onnx_config},
        do_validation=do_validation,
    )
    if int8:
        from .quantize import quantize_int8

        quantize_int8(output, target=int8_target)
    return output
