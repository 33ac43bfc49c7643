"""Aligner models that cannot be loaded, said in one line: which aligner, which model, why, and what to do.

`check_model` looks for a model's files before a run writes anything; `load_failure` turns whatever building a model
aligner raised (in the main process or in a `map` worker, whose exception the main process re-raises) into an
`AlignerLoadError`, whose message fits on one line even when transformers quotes whole tracebacks in its own.
"""

from __future__ import annotations

import builtins
import re
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hub_constants

from visual_context_ita import spec_is_precomputed

# A line of a quoted traceback that names the exception raised: `OSError: Error no file named ...`.
_RAISED = re.compile(r"^([\w.]*(?:Error|Exception)): (.*)$")


class AlignerLoadError(ValueError):
    """An aligner's model cannot be loaded; the one-line message names the aligner, the model and what to do.

    Raised in whichever `map` worker builds the aligner first, and re-raised as it is in the main process.
    """


def _root_cause(err: Exception) -> tuple[type[BaseException], str]:
    """What made `err`: its type and message, on one line.

    transformers' pipelines raise a `ValueError` that quotes the tracebacks of their attempts: the last exception
    quoted is what made it.
    """
    kind: type[BaseException] = type(err)
    message = str(err)
    if "Traceback (most recent call last)" in message:
        quoted = [found for line in message.splitlines() if (found := _RAISED.match(line.strip()))]
        if quoted:
            name, message = quoted[-1].groups()
            found_kind = getattr(builtins, name.rsplit(".", 1)[-1], None)
            kind = found_kind if isinstance(found_kind, type) and issubclass(found_kind, BaseException) else Exception
            message = f"{name}: {message}"
    else:
        message = f"{kind.__name__}: {message}"
    return kind, " ".join(message.split())


def load_failure(spec: dict[str, Any], err: Exception) -> AlignerLoadError:
    """The `AlignerLoadError` of a model aligner that failed to build, with what to do about that kind of failure."""
    model = spec.get("model")
    kind, reason = _root_cause(err)
    if issubclass(kind, ImportError):
        fix = "install the package the error names, or choose a model that does not need it"
    elif issubclass(kind, OSError) and isinstance(model, str) and Path(model).exists():
        fix = f"the folder {model} holds no complete model: save one there (save_pretrained) or give model= a Hub id"
    elif issubclass(kind, OSError) and hub_constants.HF_HUB_OFFLINE:
        fix = (
            f"HF_HUB_OFFLINE=1 is set: download the model where the Hub is reachable (hf download {model}) so that it "
            "is in the cache, or give model= a local folder"
        )
    elif issubclass(kind, OSError):
        fix = (
            "check that the model= id names a Hub model (or a local folder); if it does, download it where the Hub is "
            f"reachable (hf download {model}) or give model= a local folder"
        )
    else:
        fix = f"check the aligner's settings {spec}"
    return AlignerLoadError(f"aligner {spec.get('type')} cannot load the model {model!r} ({reason}); {fix}")


def check_model(spec: dict[str, Any]) -> None:
    """Find the `config.json` of a model aligner's model (a local folder, the Hub cache or the Hub) before any work.

    An unknown id, or a model not downloaded while offline, is then an error before anything is written; a failure
    only building the model can show (a missing package) comes from the `map` worker that builds it, as one line too.

    Raises:
        AlignerLoadError: The model's files cannot be found.
    """
    from transformers.utils import cached_file

    model = spec.get("model")
    if spec_is_precomputed(spec) or not isinstance(model, str):
        return
    try:
        found = cached_file(model, "config.json", revision=spec.get("revision"))
    except OSError as err:
        raise load_failure(spec, err) from err
    if found is None:
        raise load_failure(spec, FileNotFoundError(f"{model} has no config.json"))
