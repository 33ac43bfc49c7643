"""What `--data` names, read and checked before anything is written, as splits that are aligned a chunk at a time.

Two kinds of data give the same `InputData`: data files (UMT or JSONL, read by `readers`) and `datasets` datasets
(read by `datasets_reader`). Every split is a `SplitInput`, whose chunks have the columns of
`align.input_features`, so `shards` aligns and saves either kind in the same resumable chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, Features

from images_ita import image_id_from_name
from precomputed_ita import file_sha256

from .align import input_features
from .readers import Example, build_tag_feature, check_columns, count_tweets, find_split_files, read_file
from .tag_schemes import check_renames, rename_tag


@dataclass
class SplitInput:
    """One split's tweets before alignment, read a chunk at a time (here: rows that already have the input columns).

    Attributes:
        rows: The split's rows.
        features: The columns of a chunk (`align.input_features`).
        name: What the run's summary calls the split's source (a file name, or `<dataset>[<split>]`).
    """

    rows: Dataset
    features: Features
    name: str

    def __len__(self) -> int:
        return len(self.rows)

    def chunk(self, start: int, stop: int) -> Dataset:
        """Tweets `start` to `stop` (0-based, `stop` excluded) with the input columns."""
        return self.rows.select(range(start, stop))

    def ids(self, start: int, stop: int) -> list[str]:
        """The ids of tweets `start` to `stop`, as the chunk holds them."""
        return self.rows.select_columns(["id"])[start:stop]["id"]


@dataclass
class InputData:
    """Everything read from `--data`, checked.

    Attributes:
        splits: Each split's tweets, in `readers.SPLIT_ORDER`.
        tags: The `ClassLabel` of the `ner_tags` column (BIO, `O` first).
        data: What each split was read from and how many tweets it holds, for the run's settings.
        reader: How the data was read (encoding and columns, or dataset columns and tag scheme), for the settings.
        image_ids: Every image id of the data, to check that precomputed contexts belong to it.
        carries_images: The data names or holds its images itself (an image column), so no `--images` is needed.
        images_as_bytes: The data holds its images as bytes (an `Image` column), so they are stored as bytes.
    """

    splits: dict[str, SplitInput]
    tags: ClassLabel
    data: dict[str, dict[str, Any]]
    reader: dict[str, Any]
    image_ids: set[str] = field(default_factory=set)
    carries_images: bool = False
    images_as_bytes: bool = False


def source_name(record: Mapping[str, Any]) -> str:
    """How a split's `data` record of the settings is named in the run's summary: its file's name, or dataset[split]."""
    if "path" in record:
        return Path(record["path"]).name
    return f"{Path(record['dataset']).name}[{record['split']}]"


def _input_dataset(examples: list[Example], tags: ClassLabel) -> Dataset:
    """The tweets of a split file before alignment, in file order."""
    return Dataset.from_dict(
        {
            "id": [ex.id for ex in examples],
            "tokens": [ex.tokens for ex in examples],
            "ner_tags": [[tags.str2int(t) for t in ex.tags] for ex in examples],
            "image_id": [image_id_from_name(ex.image) for ex in examples],
            "image": [ex.image for ex in examples],
        },
        features=input_features(tags),
    )


def read_files(
    data: Sequence[str | Path],
    encoding: str | None = None,
    columns: Sequence[int] | None = None,
    entity_types: Sequence[str] | None = None,
    renames: Mapping[str, str] | None = None,
) -> InputData:
    """Read UMT or JSONL split files (see `readers.find_split_files`), every tweet checked and counted twice.

    Args:
        data: A folder, files, or `split=path` pairs.
        encoding: The files' encoding; `None` detects a byte-order mark, otherwise UTF-8.
        columns: `(token, tag)` columns (0-based) of UMT files with more than two columns.
        entity_types: The entity types in label order (after renaming); `None` = every type found, sorted.
        renames: Entity types to rename, `{old: new}`.

    Raises:
        DataFormatError: A file is malformed, empty or does not decode, or a tag's type is outside `entity_types`.
        ValueError: A renamed type is not in the data.
    """
    columns = check_columns(columns)
    files = find_split_files(data)
    examples = {split: read_file(path, encoding, columns) for split, path in files.items()}
    for split, path in files.items():
        witness = count_tweets(path, encoding)
        if witness != len(examples[split]):
            raise RuntimeError(
                f"{path}: read {len(examples[split])} tweets but the file has {witness}; please report this"
            )
    if renames:
        check_renames(
            renames, {tag[2:] for split in examples.values() for ex in split for tag in ex.tags if tag != "O"}
        )
        for split in examples.values():
            for ex in split:
                ex.tags = [rename_tag(tag, renames) for tag in ex.tags]
    tags = build_tag_feature(examples, files, entity_types)
    return InputData(
        splits={
            split: SplitInput(_input_dataset(split_examples, tags), input_features(tags), files[split].name)
            for split, split_examples in examples.items()
        },
        tags=tags,
        data={
            split: {"path": str(path.resolve()), "sha256": file_sha256(path), "tweets": len(examples[split])}
            for split, path in files.items()
        },
        reader={"encoding": encoding, "columns": list(columns) if columns else None},
        image_ids={image_id_from_name(ex.image) for split in examples.values() for ex in split if ex.image},
    )
