"""Resumable, deterministic preprocessing of a dataset into ``DatasetDict`` Arrow shards.

Work is split into chunks of tweets. Each chunk is aligned with a batched ``Dataset.map`` and saved to
``<out>.partial/<split>/chunk-NNNNN.tmp``, then renamed to ``chunk-NNNNN``: a rename is atomic, so a
chunk folder without ``.tmp`` is always complete, and a killed run leaves at most a ``.tmp`` folder that
the next run deletes. A rerun skips finished chunks. When every chunk is done, the splits are written to
``<out>.partial/complete.tmp`` and renamed to ``<out>``: ``<out>`` exists only once it is whole.
The settings of a run are stored with the work and the result, and a rerun with other settings is
refused instead of silently mixing chunks made two ways.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

from alignment_ita import (
    DEFAULT_MAX_PIXELS,
    PRECOMPUTED_TYPE,
    VisualContextBuilder,
    file_sha256,
    image_id_from_name,
    normalize_spec,
)

from .align import BatchAligner, input_features, output_features
from .readers import build_tag_feature, find_split_files, read_file

logger = logging.getLogger(__name__)

SETTINGS_FILE = "preprocess_settings.json"


def _write_settings(folder: Path, settings: dict[str, Any]) -> None:
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_settings(folder: Path, settings: dict[str, Any]) -> None:
    stored = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    if stored != settings:
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise ValueError(
            f"{folder} was made with different settings (changed: {', '.join(changed)}); "
            "rerun with --overwrite to start again, or choose another --out"
        )


def preprocess(
    data: Sequence[str | Path],
    out: str | Path,
    aligners: Sequence[dict[str, Any]] = (),
    images_dir: str | Path | None = None,
    builder_settings: dict[str, Any] | None = None,
    entity_types: Sequence[str] | None = None,
    num_proc: int = 1,
    batch_size: int = 16,
    chunk_size: int = 1000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
) -> DatasetDict:
    """Read a dataset, align its images into visual context and save it as a ``DatasetDict``.

    Args:
        data: A folder with ``train/valid/test`` files, or files, or ``split=path`` pairs (see
            ``readers.find_split_files``).
        out: Output folder for ``DatasetDict.save_to_disk``; ``<out>.partial`` holds unfinished work.
        aligners: Aligner specs (``alignment_ita`` ``to_dict`` form), in order; precomputed contexts are given by
            ``paths`` (and an optional ``source``) and recorded by file name, checksum and source.
        images_dir: Folder of the images; required when an aligner reads pixels.
        builder_settings: ``VisualContextBuilder`` keyword arguments (order, separator, caps).
        entity_types: Entity types in label order; ``None`` = every type found, sorted.
        num_proc: Worker processes for ``Dataset.map``.
        batch_size: Tweets per ``map`` batch.
        chunk_size: Tweets per resumable chunk.
        max_pixels: Images with more pixels are refused (recorded as an error).
        overwrite: Discard an existing result or unfinished work made with other settings.

    Returns:
        The saved ``DatasetDict`` (splits ``train``, ``validation``, ``test`` as present).

    Raises:
        ValueError: Invalid settings, data format errors, or existing work made with other settings.
    """
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    # Normalised (defaults filled in, precomputed files recorded by name and checksum instead of path) so that equal
    # settings compare equal however they were given; the aligners themselves are built from the specs as given.
    builder_settings = VisualContextBuilder(**(builder_settings or {})).to_dict()
    unlocated = [spec for spec in aligners if spec.get("type") == PRECOMPUTED_TYPE and "paths" not in spec]
    if unlocated:
        raise ValueError(f"precomputed contexts {unlocated} name no files here: give their paths (--context FILE)")
    specs = [normalize_spec(spec) for spec in aligners]
    image_aligners = [s["type"] for s in specs if not s.get("precomputed")]
    if image_aligners and images_dir is None:
        raise ValueError(f"aligners {image_aligners} read images: pass the images folder (--images)")
    files = find_split_files(data)
    settings = {
        "data": {split: {"path": str(path.resolve()), "sha256": file_sha256(path)} for split, path in files.items()},
        "aligners": specs,
        "builder": builder_settings,
        "images_dir": str(Path(images_dir).resolve()) if images_dir is not None else None,
        "entity_types": list(entity_types) if entity_types is not None else None,
        "chunk_size": chunk_size,
        "max_pixels": max_pixels,
    }

    if (out / "dataset_dict.json").is_file():
        if overwrite:
            shutil.rmtree(out)
        else:
            _check_settings(out, settings)
            logger.info("%s is already complete; nothing to do", out)
            shutil.rmtree(work, ignore_errors=True)
            return load_from_disk(str(out))
    elif out.exists():
        raise ValueError(f"{out} exists but is not a finished DatasetDict; remove it or choose another --out")
    if work.exists() and overwrite:
        shutil.rmtree(work)
    if work.exists():
        _check_settings(work, settings)
    else:
        work.mkdir(parents=True)
        _write_settings(work, settings)
    for stale in work.glob("**/*.tmp"):
        shutil.rmtree(stale)

    examples = {split: read_file(path) for split, path in files.items()}
    tags = build_tag_feature(examples, files, entity_types)
    function = BatchAligner(list(aligners), builder_settings, settings["images_dir"], max_pixels)
    splits: dict[str, Dataset] = {}
    for split, split_examples in examples.items():
        chunks = []
        starts = range(0, len(split_examples), chunk_size)
        for number, start in enumerate(starts):
            final = work / split / f"chunk-{number:05d}"
            chunks.append(final)
            if final.is_dir():
                logger.info("%s chunk %d/%d already done", split, number + 1, len(starts))
                continue
            part = split_examples[start : start + chunk_size]
            dataset = Dataset.from_dict(
                {
                    "id": [ex.id for ex in part],
                    "tokens": [ex.tokens for ex in part],
                    "ner_tags": [[tags.str2int(t) for t in ex.tags] for ex in part],
                    "image_id": [image_id_from_name(ex.image) for ex in part],
                    "image": [ex.image for ex in part],
                },
                features=input_features(tags),
            )
            dataset = dataset.map(
                function,
                batched=True,
                batch_size=batch_size,
                num_proc=num_proc if num_proc > 1 else None,
                features=output_features(tags),
                desc=f"{split} chunk {number + 1}/{len(starts)}",
            )
            tmp = final.with_name(final.name + ".tmp")
            dataset.save_to_disk(str(tmp))
            tmp.rename(final)
        splits[split] = concatenate_datasets([load_from_disk(str(c)) for c in chunks])

    complete = work / "complete.tmp"
    DatasetDict(splits).save_to_disk(str(complete))
    _write_settings(complete, settings)
    complete.rename(out)
    shutil.rmtree(work)
    logger.info("saved %s", out)
    return load_from_disk(str(out))
