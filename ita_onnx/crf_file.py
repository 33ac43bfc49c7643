"""The CRF parameters that travel beside an exported emissions graph, in `crf.safetensors`.

Only the learned scores are stored; the BIO decoding constraints are derived again from the label set in
`config.json`, exactly as `ITAForTokenClassification` does, so the file cannot disagree with the config.

This module is also copied verbatim into every export, beside `configuration_ita.py` and `crf_ita.py`, as part
of the remote code `AutoModelForTokenClassification` loads there (see `modeling_ita_onnx.py`); hence the flat relative
imports with the absolute fallback used inside this package.
"""

from pathlib import Path
from typing import Union

from safetensors.torch import load_file, save_file

try:
    from .configuration_ita import ITAConfig
    from .crf_ita import ConditionalRandomField, bio_transition_constraints
except ImportError:
    from configuration_ita import ITAConfig
    from crf_ita import ConditionalRandomField, bio_transition_constraints

CRF_FILE = "crf.safetensors"
_PARAMETERS = ("transitions", "start_transitions", "end_transitions")


def save_crf(crf: ConditionalRandomField, folder: Union[str, Path]) -> Path:
    """Writes the learned transition, start and end scores of `crf` to `folder/crf.safetensors`."""
    path = Path(folder) / CRF_FILE
    save_file({name: getattr(crf, name).detach().cpu().contiguous() for name in _PARAMETERS}, str(path))
    return path


def load_crf(path: Union[str, Path], config: ITAConfig) -> ConditionalRandomField:
    """Rebuilds the model's CRF from a `crf.safetensors` file and the ITA config of the export.

    Raises:
        ValueError: if the file lacks a parameter or its tag count differs from `config.num_labels`.
    """
    tensors = load_file(str(path))
    missing = [name for name in _PARAMETERS if name not in tensors]
    if missing:
        raise ValueError(f"{path} lacks the CRF parameters {missing}; re-export with `python -m ita_onnx export`.")
    if tensors["transitions"].shape != (config.num_labels, config.num_labels):
        raise ValueError(f"{path} holds a CRF over {tensors['transitions'].shape[0]} tags but the config has "
                         f"{config.num_labels} labels: the CRF file and config.json come from different models.")
    allowed, allowed_start = bio_transition_constraints(config.labels) if config.crf_bio_constraints else (None, None)
    crf = ConditionalRandomField(config.num_labels, allowed, allowed_start)
    crf.load_state_dict(tensors)
    return crf.requires_grad_(False).eval()
