"""int8 dynamic quantization of an exported ITA emissions graph with optimum's `ORTQuantizer`."""

from pathlib import Path
from typing import Optional, Union

from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig

from transformers import PretrainedConfig

from configuration_ita import ITAConfig

QUANTIZED_FILE = "model_quantized.onnx"
TARGETS = ("avx512_vnni", "avx512", "avx2", "arm64")


def quantize_int8(
    folder: Union[str, Path],
    target: str = "avx512_vnni",
    per_channel: bool = False,
    config: Optional[PretrainedConfig] = None,
) -> Path:
    """Writes `folder/model_quantized.onnx`: `folder/model.onnx` with int8 weights and dynamic activation scales.

    The emission layer and every encoder MatMul are quantized; the CRF is untouched (it lives in
    `crf.safetensors` and runs in float64 numpy). Load the result with
    `ORTModelForITA.from_pretrained(folder, file_name="model_quantized.onnx")`.

    Args:
        folder: an export made by `export_ita`.
        target: CPU family the quantization scheme is chosen for, one of `TARGETS`.
        per_channel: one scale per output channel of each weight rather than per tensor.
        config: the export's config; its `ITAConfig` (read from `folder`) when None. Pass another model's
            config to quantize a plain transformers export the same way (as the benchmark's baseline does).

    Returns:
        The path of the quantized graph.
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown int8 target {target!r}; choose one of {TARGETS}.")
    folder = Path(folder)
    if not (folder / "model.onnx").is_file():
        raise FileNotFoundError(f"No model.onnx in {folder}: export the checkpoint first (`python -m ita_onnx export`).")
    quantization_config = getattr(AutoQuantizationConfig, target)(is_static=False, per_channel=per_channel)
    # The config is passed in: ORTQuantizer.from_pretrained would load it without trust_remote_code and
    # stop at an interactive prompt for the "ita" model type.
    quantizer = ORTQuantizer(folder / "model.onnx", config=config or ITAConfig.from_pretrained(folder))
    quantizer.quantize(save_dir=folder, quantization_config=quantization_config)
    return folder / QUANTIZED_FILE
