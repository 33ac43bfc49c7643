"""Which `checkpoint-*` folder of an output directory a rerun resumes from, and what happens to the others.

`Trainer._save_checkpoint` writes a checkpoint in this order, on transformers 4.57 and 5.x alike: the model
(`config.json`, then `model.safetensors` or its shards, the tokenizer, `training_args.bin`), then
`optimizer.pt` and `scheduler.pt`, one RNG file per process (`rng_state.pth`, or `rng_state_<rank>.pth`
under torch.distributed), and last `trainer_state.json`; older checkpoints are rotated away after that.
A checkpoint is *complete* when it has the weights (every shard its index lists), a readable
`trainer_state.json`, and, unless the run keeps the model only (`save_only_model`) or DeepSpeed/FSDP save
their own layout, `optimizer.pt`, `scheduler.pt` and an RNG file.

`trainer_state.json` comes last, so a folder without a readable one is a save that a kill interrupted: it
is removed. A folder that has its state but lacks another file was not left by an interrupted save (the
files were deleted, or another configuration wrote it): it is kept and skipped, with a warning.
"""

import json
import logging
import re
import shutil
from pathlib import Path

from transformers import TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
RNG_FILES = ("rng_state.pth", "rng_state_*.pth")


class IncompleteCheckpointError(ValueError):
    """A checkpoint named for resuming lacks files that `Trainer` needs to continue from it."""


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-<step>` folders of `output_dir`, newest (highest step) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if path.is_dir() and (match := CHECKPOINT_NAME.match(path.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def _readable_state(folder: Path) -> str | None:
    """None when `trainer_state.json` parses and has a `global_step`, else what is wrong with it."""
    try:
        state = json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{TRAINER_STATE_NAME} (not written)"
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{TRAINER_STATE_NAME} (cut short: {err})"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"{TRAINER_STATE_NAME} (no global_step)"
    return None


def _weights_problem(folder: Path) -> str | None:
    for single, index in ((SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME), (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
        if (folder / single).is_file():
            return None
        if (folder / index).is_file():
            try:
                shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as err:
                return f"{index} (unreadable: {err})"
            absent = sorted(shard for shard in shards if not (folder / shard).is_file())
            return f"weight shards {absent}" if absent else None
    return f"weights ({SAFE_WEIGHTS_NAME})"


def keeps_full_state(args: TrainingArguments) -> bool:
    """Whether `Trainer` writes optimizer, scheduler and RNG files into each checkpoint under `args`."""
    return not (args.save_only_model or args.deepspeed or args.fsdp)


def missing_files(folder: str | Path, args: TrainingArguments) -> list[str]:
    """What `folder` lacks of a complete checkpoint (see the module docstring); empty when it is complete."""
    folder = Path(folder)
    missing = [problem for problem in (_readable_state(folder), _weights_problem(folder)) if problem]
    if keeps_full_state(args):
        missing += [name for name in (OPTIMIZER_NAME, SCHEDULER_NAME) if not (folder / name).is_file()]
        if not any(any(folder.glob(pattern)) for pattern in RNG_FILES):
            missing.append("rng_state.pth")
    return missing


def resumable_checkpoint(output_dir: str | Path, args: TrainingArguments, remove: bool) -> Path | None:
    """The newest complete checkpoint in `output_dir`, after dealing with the incomplete ones.

    Args:
        output_dir: the run's output directory.
        args: the run's arguments (they say which files a checkpoint holds).
        remove: delete the folders of interrupted saves (no readable `trainer_state.json`); True on the
            process that saves checkpoints only (`args.should_save`), so that other processes never delete.

    Returns:
        The folder to resume from, or None when there is no complete checkpoint.
    """
    chosen = None
    for folder in checkpoint_folders(output_dir):
        missing = missing_files(folder, args)
        if not missing:
            chosen = chosen or folder
        elif _readable_state(folder) is not None:
            if remove:
                logger.warning("Removing %s: its save was interrupted (missing %s).", folder, ", ".join(missing))
                shutil.rmtree(folder)
        else:
            logger.warning(
                "Skipping %s: it lacks %s, so training cannot resume from it (kept; delete it or restore the files).",
                folder,
                ", ".join(missing),
            )
    return chosen


def check_resumable(folder: str | Path, args: TrainingArguments) -> Path:
    """`folder` when it is a complete checkpoint; raises `IncompleteCheckpointError` naming what it lacks."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IncompleteCheckpointError(f"--resume_from_checkpoint {folder} is not a folder.")
    missing = missing_files(folder, args)
    if missing:
        raise IncompleteCheckpointError(
            f"Cannot resume from {folder}: it lacks {', '.join(missing)}. Resume from an older checkpoint, or "
            "leave out --resume_from_checkpoint to resume from the newest complete one."
        )
    return folder
