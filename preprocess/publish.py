"""The shards of `python -m preprocess` as a Hub dataset repository, and its upload (`--push_to_hub`).

The repository is written to a local folder first, so everything but the upload runs (and is tested) offline:

- `data/<split>-NNNNN.parquet`: the splits, with the images' bytes in an `Image()` column (the paths of the shards are
  read into it), so the dataset is self-contained and the Hub's viewer shows the pictures; files of at most
  `MAX_SHARD_BYTES`;
- `README.md`: the dataset card (`dataset_card.md`): the source data and its licence, the aligners that made the
  context, the context sources and their counts per split, and the tweets in and out;
- `preprocess_settings.json`: the run's settings without paths of this machine, which `train.py --dataset_name` reads.

`load_dataset(<folder or repo id>)` gives the shards back, images included.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, Features, Image, load_from_disk
from datasets.table import embed_table_storage, table_cast
from datasets.utils import tqdm
from huggingface_hub import DatasetCard, DatasetCardData

from aligners_ita import SEGMENTS
from ita_training.hub import upload_folder
from ita_training.model_card import repository_url, spec_settings, without_paths

from .inputs import source_name
from .shards import SETTINGS_FILE

logger = logging.getLogger(__name__)

DATA_FOLDER = "data"
# A Parquet file is closed once it holds this many bytes (the Hub's viewer and `datasets` both like ~500 MB files).
MAX_SHARD_BYTES = 500 * 1024 * 1024
# Rows read, given their images and written at a time.
WRITE_BATCH = 100
PAPER_URL = "https://arxiv.org/abs/2112.06482"
# The `size_categories` of the Hub's metadata: (upper bound, name).
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def _template() -> Path:
    return Path(str(importlib.resources.files(__package__) / "dataset_card.md"))


def published_features(features: Features) -> Features:
    """The features of a published split: an `image` column of paths becomes an `Image()` (its files read into it)."""
    published = features.copy()
    if "image" in published and not isinstance(published["image"], Image):
        published["image"] = Image()
    return published


def write_parquet(split: Dataset, folder: Path, name: str) -> list[str]:
    """Write a split as `<folder>/data/<name>-NNNNN.parquet` files, the bytes of its images in them.

    Returns:
        The files written, relative to `folder`.
    """
    features = published_features(split.features)
    schema = features.arrow_schema
    (folder / DATA_FOLDER).mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    writer = None
    written = 0
    batches = split.with_format("arrow").iter(batch_size=WRITE_BATCH)
    for table in tqdm(batches, total=-(-len(split) // WRITE_BATCH), desc=f"writing {name} as Parquet", unit="batch"):
        table = embed_table_storage(table_cast(table, schema))
        if writer is None or written >= MAX_SHARD_BYTES:
            if writer is not None:
                writer.close()
            files.append(f"{DATA_FOLDER}/{name}-{len(files):05d}.parquet")
            writer = pq.ParquetWriter(folder / files[-1], schema)
            written = 0
        writer.write_table(table)
        written += table.nbytes
    if writer is None:
        # A split without rows is still a split: one file with its columns.
        files.append(f"{DATA_FOLDER}/{name}-00000.parquet")
        pq.write_table(schema.empty_table(), folder / files[-1])
    else:
        writer.close()
    return files


def split_counts(split: Dataset) -> dict[str, Any]:
    """Tweets out, with a visual context, with an alignment error, and per context source (`segment:aligner`)."""
    sources: Counter[str] = Counter()
    with_context = errors = 0
    columns = split.select_columns(["visual_context", "context_sources", "alignment_error"])
    for batch in columns.iter(batch_size=10_000):
        with_context += sum(1 for text in batch["visual_context"] if text)
        errors += sum(1 for error in batch["alignment_error"] if error)
        for tweet_sources in batch["context_sources"]:
            sources.update(set(tweet_sources or []))
    return {"tweets_out": len(split), "with_context": with_context, "errors": errors, "sources": dict(sources)}


def describe_source(record: dict[str, Any]) -> str:
    """A split's source as the card says it: a file by name and checksum, a dataset by id, configuration and split."""
    if "path" in record:
        return f"`{source_name(record)}` (sha256 `{record['sha256']}`)"
    dataset = without_paths(record["dataset"])
    extra = "".join(f", {key} `{record[key]}`" for key in ("config", "revision") if record.get(key))
    return f"the `{record['split']}` split of the dataset `{dataset}`{extra} (fingerprint `{record['fingerprint']}`)"


def render_dataset_card(
    shards: DatasetDict, settings: dict[str, Any], repo_id: str, license_id: str, license_note: str | None = None
) -> DatasetCard:
    """The dataset card of the shards, rendered offline from `dataset_card.md`.

    Args:
        shards: The shards (`load_from_disk` of `--out`).
        settings: Their `preprocess_settings.json`.
        repo_id: The Hub repository they go to (named in the usage snippets).
        license_id: The Hub licence id of the shards (e.g. `cc-by-4.0`, `other`, `unknown`).
        license_note: What else users must know about the terms (e.g. "research use only, as the source data").
    """
    splits = [
        {
            "name": name,
            "source": describe_source(settings["data"][name]),
            "tweets_in": settings["data"][name]["tweets"],
            **split_counts(split),
        }
        for name, split in shards.items()
    ]
    sources = sorted({source for split in splits for source in split["sources"]})
    total = sum(split["tweets_out"] for split in splits)
    card_data = DatasetCardData(
        license=license_id,
        pretty_name=repo_id.split("/")[-1],
        task_categories=["token-classification"],
        task_ids=["named-entity-recognition"],
        size_categories=next((name for bound, name in SIZE_CATEGORIES if total < bound), "n>1M"),
        tags=["ita", "multimodal-ner", "named-entity-recognition", "image"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"{DATA_FOLDER}/{name}-*"} for name in shards],
            }
        ],
    )
    first = next(iter(shards.values()))
    builder = settings["builder"]
    return DatasetCard.from_template(
        card_data,
        template_path=str(_template()),
        pretty_name=card_data.pretty_name,
        repo_id=repo_id,
        code_url=repository_url() or PAPER_URL,
        splits=splits,
        license=license_id,
        license_note=license_note,
        renames=settings.get("rename_types") or {},
        aligners=[
            {"type": spec["type"], "precomputed": bool(spec.get("precomputed")), "settings": spec_settings(spec)}
            for spec in settings["aligners"]
        ],
        order=builder["order"],
        separator=builder["separator"],
        max_words_per_segment=builder.get("max_words_per_segment"),
        max_words=builder.get("max_words"),
        sources=sources,
        labels=first.features["ner_tags"].feature.names,
        segments=SEGMENTS,
        images=bool(settings.get("image_storage")),
    )


def write_hub_folder(
    shards_folder: str | Path, folder: str | Path, repo_id: str, license_id: str, license_note: str | None = None
) -> list[str]:
    """Write the Hub repository of the shards in `shards_folder` to `folder` (see the module docstring).

    Returns:
        The files written, relative to `folder`, sorted.
    """
    shards_folder, folder = Path(shards_folder), Path(folder)
    settings = json.loads((shards_folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    shards = load_from_disk(str(shards_folder))
    files = [path for name, split in shards.items() for path in write_parquet(split, folder, name)]
    render_dataset_card(shards, settings, repo_id, license_id, license_note).save(folder / "README.md")
    (folder / SETTINGS_FILE).write_text(json.dumps(without_paths(settings), indent=2, sort_keys=True) + "\n")
    return sorted([*files, "README.md", SETTINGS_FILE])


def push_shards(
    shards_folder: str | Path,
    repo_id: str,
    license_id: str,
    license_note: str | None = None,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Upload the shards in `shards_folder` to the Hub dataset repository `repo_id`, in one commit.

    The repository is written next to the shards first (a temporary folder, removed afterwards), then uploaded.

    Raises:
        HubAccessError: The upload failed (the shards stay complete: the same command uploads them again).

    Returns:
        The URL of the Hub commit.
    """
    shards_folder = Path(shards_folder)
    with tempfile.TemporaryDirectory(prefix=f"{shards_folder.name}.hub-", dir=shards_folder.parent) as folder:
        files = write_hub_folder(shards_folder, folder, repo_id, license_id, license_note)
        logger.info("Uploading %d files from %s to the dataset %s", len(files), shards_folder, repo_id)
        retry = f"the shards in {shards_folder} are complete: the same command uploads them again"
        return upload_folder(folder, repo_id, "dataset", "Upload ITA shards", token, private, retry=retry)
