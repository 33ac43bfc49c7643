"""int8 dynamic quantization of an exported ITA emissions graph with optimum's `ORTQuantizer`."""

import os
import tempfile
from pathlib import Path

from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
from optimum.onnxruntime.constants import ONNX_WEIGHTS_NAME
from transformers import PretrainedConfig

from .modeling_ita_onnx import QUANTIZED_FILE, read_export_config, require_file

TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")
# What ORTQuantizer writes beside the quantized graph.
_ORT_CONFIG_FILE = "ort_config.json"


def quantize_int8(
    folder: str | Path,
    target: str = "avx512_vnni",
    per_channel: bool = False,
    config: PretrainedConfig | None = None,
) -> Path:
    """Writes `folder/model_quantized.onnx`: `folder/model.onnx` with int8 weights and dynamic activation scales.

    The emission layer and every encoder MatMul are quantized; the CRF is untouched (it lives in
    `crf.safetensors` and runs in float64 numpy). Load the result with
    `ORTModelForITA.from_pretrained(folder, file_name="model_quantized.onnx")`.

    The quantizer writes into a temporary folder beside `folder`, and the finished `ort_config.json` and
    `model_quantized.onnx` are then renamed into `folder` (the graph last): an interrupted run leaves the
    export as it was (and, if killed, a hidden `.<name>.quantize-*` folder beside it, which nothing reads), and
    a rerun replaces both files.

    Args:
        folder: an export made by `export_ita`.
        target: CPU family the quantization scheme is chosen for, one of `TARGETS`.
        per_channel: one scale per output channel of each weight rather than per tensor.
        config: the export's config; its `ITAConfig` (read from `folder`) when None. Pass another model's
            config to quantize a plain transformers export the same way (as the benchmark's baseline does).

    Returns:
        The path of the quantized graph.

    Raises:
        ValueError: for an unknown `target`, or a folder that is not an ITA export (when `config` is None).
        FileNotFoundError: if the folder has no `model.onnx` (or, when `config` is None, no `config.json`).
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown int8 target {target!r}; choose one of {TARGETS}.")
    folder = Path(folder)
    graph = require_file(folder, ONNX_WEIGHTS_NAME)
    quantization_config = getattr(AutoQuantizationConfig, target)(is_static=False, per_channel=per_channel)
    # The config is passed in: ORTQuantizer.from_pretrained would load it without trust_remote_code and
    # stop at an interactive prompt for the "ita" model type.
    quantizer = ORTQuantizer(graph, config=config or read_export_config(folder))
    # Beside the folder, not inside it: optimum finds graphs in subfolders too (`**/*.onnx`).
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.quantize-") as staging:
        quantizer.quantize(save_dir=staging, quantization_config=quantization_config)
        # The quantizer also copies the config and tokenizer there; only its own outputs are moved.
        stem = Path(QUANTIZED_FILE).stem
        written = sorted(Path(staging).glob(f"{stem}*"), key=lambda path: path.name == QUANTIZED_FILE)
        for path in [Path(staging, _ORT_CONFIG_FILE), *written]:
            os.replace(path, folder / path.name)
    return folder / QUANTIZED_FILE
