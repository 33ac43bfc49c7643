"""optimum-cli plugin of ita-mner: `optimum-cli export onnx` exports ITA checkpoints (model_type "ita").

optimum-cli imports every module of the `optimum.commands.register` namespace package at start-up (that is
how optimum-onnx adds `export onnx`) and registers the commands in their `REGISTER_COMMANDS`. This module adds
no command: importing `ita_onnx.export` registers `ITAOnnxConfig` with optimum's `TasksManager`, which is all
`export onnx` needs to export an ITA checkpoint as `python -m ita_onnx export` does (same config, same
post-processing writing `crf.safetensors`, the remote code, `config.json` and README.md).

Keep this folder free of `__init__.py`: `optimum.commands.register` is a PEP 420 namespace package shared by
every distribution that extends optimum-cli.
"""

import importlib.util
import sys

# optimum-cli imports this module before it parses its arguments, and asks register modules to stay light.
# Registering needs TasksManager, i.e. torch and transformers (seconds), so it is done only for the one command
# that builds ONNX export configs; and only where optimum's ONNX exporter (optimum-onnx) is installed.
if sys.argv[1:3] == ["export", "onnx"] and importlib.util.find_spec("optimum.exporters.onnx") is not None:
    import ita_onnx.export  # noqa: F401  (registers ITAOnnxConfig with TasksManager)

REGISTER_COMMANDS = []
