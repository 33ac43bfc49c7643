"""ONNX export and ONNX Runtime inference for ITA checkpoints (the `onnx` install extra).

The emissions graph (encoder + first-sub-token gather + emission layer) is exported with optimum; the CRF
parameters travel beside it in `crf.safetensors`, and Viterbi and the marginals run outside the graph in the
numpy decoder of `crf_ita.py`. Typical use:

    python -m ita_onnx export <checkpoint> <out> --int8
    # or, writing the same folder (without int8): the plugin optimum/commands/register/register_ita.py
    optimum-cli export onnx --model <checkpoint> --task token-classification --trust-remote-code <out>

    from transformers import pipeline
    ner = pipeline(model="<out>", trust_remote_code=True)                 # the multimodal-ner pipeline on ORT

    from ita_onnx import ORTModelForITA
    model = ORTModelForITA.from_pretrained("<out>")                       # fp32
    model = ORTModelForITA.from_pretrained("<out>", file_name="model_quantized.onnx")  # int8

optimum and onnxruntime are imported only when one of the names below is first used, so `import ita_onnx`
(and the model and pipeline modules) work without the extra installed.
"""

import importlib
from typing import Any

# Public name -> submodule that defines it.
_EXPORTS = {
    "CRF_FILE": "crf_file",
    "load_crf": "crf_file",
    "save_crf": "crf_file",
    "ITAOnnxConfig": "export",
    "export_ita": "export",
    "ORTModelForITA": "modeling_ita_onnx",
    "QUANTIZED_FILE": "modeling_ita_onnx",
    "quantize_int8": "quantize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ita_onnx' has no attribute {name!r}")
    try:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    except ImportError as error:
        raise ImportError(
            f"ita_onnx.{name} needs the ONNX extra (optimum, optimum-onnx, onnxruntime), which is not importable "
            f"here ({error}). Install it with `pip install 'ita-mner[onnx]'`."
        ) from error
    return getattr(module, name)
