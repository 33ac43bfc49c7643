"""The CRF parameters that travel beside an exported emissions graph, in `crf.safetensors`.

Only the learned scores are stored; the BIO decoding constraints are derived again from the label set in
`config.json`, exactly as `ITAForTokenClassification` does, so the file cannot disagree with the config.

This module is also copied verbatim into every export, beside `configuration_ita.py` and `crf_ita.py`, as part
of the remote code `AutoModelForTokenClassification` loads there (see `modeling_ita_onnx.py`); hence the flat relative
imports with the absolute fallback used inside this package.
"""

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load, save

try:
    from .configuration_ita import ITAConfig
    from .crf_ita import ConditionalRandomField, bio_transition_constraints
except ImportError:
    from configuration_ita import ITAConfig
    from crf_ita import ConditionalRandomField, bio_transition_constraints

CRF_FILE = "crf.safetensors"
# What every error about a missing or broken file of an export tells the user to do.
REEXPORT = (
    "re-export the checkpoint into a new folder with `python -m ita_onnx export <checkpoint> <out>` (or "
    "`optimum-cli export onnx --model <checkpoint> --task token-classification --trust-remote-code <out>`)"
)


def _expected_shapes(num_labels: int) -> dict[str, tuple[int, ...]]:
    return {
        "transitions": (num_labels, num_labels),
        "start_transitions": (num_labels,),
        "end_transitions": (num_labels,),
    }


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name} {shape}" for name, shape in shapes.items()) or "no tensors"


def save_crf(crf: ConditionalRandomField, folder: str | Path) -> Path:
    """Writes the learned transition, start and end scores of `crf` to `folder/crf.safetensors`."""
    path = Path(folder) / CRF_FILE
    tensors = {name: getattr(crf, name).detach().cpu().contiguous() for name in _expected_shapes(crf.num_tags)}
    # Not `safetensors.torch.save_file`: it writes through a private temporary file and so leaves mode 0600,
    # where every other file of the folder follows the umask.
    path.write_bytes(save(tensors))
    return path


def load_crf(path: str | Path, config: ITAConfig) -> ConditionalRandomField:
    """Rebuilds the model's CRF from a `crf.safetensors` file and the ITA config of the export.

    Raises:
        OSError: if the file is not a readable safetensors file (e.g. truncated).
        ValueError: if it does not hold exactly the three CRF score tensors, shaped for `config.num_labels` tags.
    """
    try:
        tensors = load(Path(path).read_bytes())
    except SafetensorError as error:
        raise OSError(
            f"{path} is not a readable safetensors file ({error}): it was truncated or overwritten; {REEXPORT}."
        ) from error
    expected = _expected_shapes(config.num_labels)
    # Listed in the expected order, then any others, so that the two lists of the message read side by side.
    order = {name: rank for rank, name in enumerate(expected)}
    found = {name: tuple(tensors[name].shape) for name in sorted(tensors, key=lambda name: (order.get(name, 3), name))}
    if found != expected:
        raise ValueError(
            f"{path} must hold the CRF scores {_describe(expected)} for the {config.num_labels} labels of the "
            f"export's config.json, but holds {_describe(found)}: the CRF file and config.json come from different "
            f"models, or the file was not written by the export; {REEXPORT}."
        )
    allowed, allowed_start = bio_transition_constraints(config.labels) if config.crf_bio_constraints else (None, None)
    crf = ConditionalRandomField(config.num_labels, allowed, allowed_start)
    crf.load_state_dict(tensors)
    return crf.requires_grad_(False).eval()
