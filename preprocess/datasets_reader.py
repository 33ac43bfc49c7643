"""MNER data that already lives in `datasets`: a Hub dataset id, a `save_to_disk` folder, or `Dataset` objects.

`--data` names a Hub dataset id (with `--dataset-config` and `--revision`), a folder written by `save_to_disk` (a
`DatasetDict`, or a `Dataset`, whose split is named by `split=FOLDER`, else by the split it records, else `train`), and
`preprocess()` also takes a `Dataset` or `DatasetDict` object. Split names map as for files (`valid`, `dev` →
`validation`); other splits are left out with a warning naming them.

Columns are found by their usual names, and an ambiguous or missing one is an error that lists the columns there are
and the option that names one (`--token-column`, `--tag-column`, `--image-column`, `--image-id-column`):

- tokens: a list of strings per tweet;
- tags: a list per tweet of `ClassLabel` ints (the conll2003 convention; the label order is the `ClassLabel`'s) or of
  strings, in BIO, IOB1 or BIOES (`tag_schemes`: checked, then converted to BIO, and the run says so);
- image (optional): a `datasets.Image` feature (stored as bytes or as a path), a `{"bytes", "path"}` struct, or a
  string that is a path (relative to `--images`, else to the current folder) or an image id or file name in
  `--images`; without one, the image ids are looked up in `--images`;
- image id (optional): a string or integer; by default the image's file name without its extension;
- `id` (optional): a string or integer; by default the row's number in its split.

Every split is checked whole before anything is written, in one pass over its rows that reads no image bytes, and is
converted again a chunk at a time when it is aligned: a dataset larger than memory is fine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Image, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetNotFoundError
from datasets.utils import tqdm
from huggingface_hub import constants as hub_constants

from images_ita import image_id_from_name

from .align import input_features
from .inputs import InputData, SplitInput
from .readers import DATA_SUFFIXES, SPLIT_ALIASES, SPLIT_ORDER, DataFormatError, label_names
from .tag_schemes import (
    BIO,
    TAG_SCHEMES,
    TagSchemeError,
    check_renames,
    rename_tag,
    scheme_of_labels,
    split_tag,
    to_bio,
    types_of_labels,
)

logger = logging.getLogger(__name__)

# The usual names of each column, in the order they are looked for.
TOKEN_COLUMNS: tuple[str, ...] = ("tokens", "words")
TAG_COLUMNS: tuple[str, ...] = ("ner_tags", "tags", "labels")
IMAGE_COLUMNS: tuple[str, ...] = ("image", "img", "image_path", "img_path")
IMAGE_ID_COLUMNS: tuple[str, ...] = ("image_id", "img_id")
ID_COLUMN = "id"
# The options that name each column, for messages.
COLUMN_OPTIONS = {
    "tokens": "--token-column",
    "tags": "--tag-column",
    "image": "--image-column",
    "image_id": "--image-id-column",
}
# Rows per batch of the checking pass.
CHECK_BATCH = 1000
IN_MEMORY = "<in memory>"
# The keys of an image given as a struct, as `datasets.Image` stores it.
IMAGE_KEYS = ("bytes", "path")


@dataclass(frozen=True)
class Columns:
    """The source columns read, by role (`None`: the dataset has none)."""

    tokens: str
    tags: str
    image: str | None
    image_id: str | None
    id: str | None

    def used(self) -> list[str]:
        return list(dict.fromkeys(c for c in (self.id, self.tokens, self.tags, self.image_id, self.image) if c))


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by `save_to_disk` (a `DatasetDict` or a `Dataset`)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _split_and_value(text: str) -> tuple[str | None, str]:
    name, eq, value = text.partition("=")
    return (name, value) if eq and name.lower() in SPLIT_ALIASES else (None, text)


def is_hub_id(text: str) -> bool:
    """Whether a `--data` value can only be a Hub dataset id: no such local path, no data-file suffix, `[owner/]name`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(text).exists() or Path(text).suffix.lower() in DATA_SUFFIXES or text.count("/") > 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def is_dataset_source(data: Any) -> bool:
    """Whether `--data` names a `datasets` dataset (an object, a `save_to_disk` folder or a Hub id), not data files."""
    if isinstance(data, (Dataset, DatasetDict)):
        return True
    values = [str(value) for value in data]
    if any(is_saved_dataset(Path(_split_and_value(value)[1])) for value in values):
        return True
    return len(values) == 1 and is_hub_id(values[0])


def load_hub_dataset(
    name: str,
    config: str | None = None,
    revision: str | None = None,
    option: str = "--data",
    folder_option: str = "--data",
) -> DatasetDict:
    """`load_dataset(name, config, revision=revision)`, with errors that say what to do.

    Offline (`HF_HUB_OFFLINE=1`) a dataset in the local cache loads without the network; any other is an error.

    Args:
        name: The Hub dataset id.
        config: Its configuration (subset), if it has several.
        revision: A branch, tag or commit.
        option: The option that gave `name`, for messages.
        folder_option: The option that takes the dataset saved to a folder instead, for messages.

    Raises:
        DataFormatError: The Hub cannot be reached (or is switched off) and the dataset is not cached, or there is no
            such dataset that this user can read.
    """
    try:
        loaded = load_dataset(name, config, revision=revision)
    except ConnectionError as err:
        why = (
            "HF_HUB_OFFLINE=1 keeps the Hub off"
            if hub_constants.HF_HUB_OFFLINE
            else f"the Hub cannot be reached ({err})"
        )
        raise DataFormatError(
            f"{option} {name}: no local folder or file has this name, so it is read as a Hub dataset id, but {why} "
            f"and the dataset is not in the local cache. Where the Hub is reachable, save it with "
            f"`datasets.load_dataset({name!r}).save_to_disk('FOLDER')`, then pass {folder_option} FOLDER"
        ) from None
    except DatasetNotFoundError as err:
        raise DataFormatError(
            f"{option} {name}: no local folder or file has this name, and no Hub dataset you can read has this id "
            f"({err}); check the path or id, and log in (`hf auth login`) for a private or gated dataset"
        ) from None
    if not isinstance(loaded, DatasetDict):
        raise DataFormatError(f"{option} {name}: load_dataset gave a {type(loaded).__name__}, not splits")
    return loaded


def _map_splits(found: Mapping[str, tuple[Dataset, dict[str, Any]]], source: str) -> dict[str, tuple[Dataset, dict]]:
    """Source splits under their DatasetDict names (`valid`, `dev` → `validation`), in `SPLIT_ORDER`."""
    mapped: dict[str, tuple[Dataset, dict]] = {}
    skipped = []
    for name, value in found.items():
        split = SPLIT_ALIASES.get(name.lower())
        if split is None:
            skipped.append(name)
        elif split in mapped:
            raise DataFormatError(f"{source}: splits {mapped[split][1]['split']!r} and {name!r} are both {split!r}")
        else:
            mapped[split] = value
    if not mapped:
        raise DataFormatError(
            f"{source} has the splits {list(found)}, none of them train, validation (valid, dev) or test"
        )
    if skipped:
        logger.warning("%s: the splits %s are none of train/validation/test and are left out", source, skipped)
    return {split: mapped[split] for split in SPLIT_ORDER if split in mapped}


def open_splits(
    data: Any, config: str | None = None, revision: str | None = None
) -> tuple[dict[str, tuple[Dataset, dict[str, Any]]], str]:
    """The splits `data` names, each with the record of where it came from (for the run's settings), and a name.

    Raises:
        DataFormatError: The dataset cannot be loaded, has no usable split, or `data` mixes datasets with files.
        ValueError: `config` or `revision` given for something that is not a Hub dataset id.
    """

    def record(dataset: Dataset, name: str, split: str, **extra: Any) -> dict[str, Any]:
        return {"dataset": name, "split": split, **extra, "fingerprint": dataset._fingerprint}

    hub = not isinstance(data, (Dataset, DatasetDict)) and len(data) == 1 and is_hub_id(str(data[0]))
    if (config is not None or revision is not None) and not hub:
        raise ValueError("--dataset-config and --revision choose what to read from a Hub dataset id given as --data")
    if isinstance(data, Dataset):
        data = DatasetDict({str(data.split or "train"): data})
    if isinstance(data, DatasetDict):
        return _map_splits({s: (d, record(d, IN_MEMORY, s)) for s, d in data.items()}, IN_MEMORY), IN_MEMORY
    if hub:
        name = str(data[0])
        loaded = load_hub_dataset(name, config, revision)
        extra = {"config": config, "revision": revision}
        return _map_splits({s: (d, record(d, name, s, **extra)) for s, d in loaded.items()}, name), name
    folders = [_split_and_value(str(value)) for value in data]
    if len(folders) == 1 and (Path(folders[0][1]) / "dataset_dict.json").is_file() and folders[0][0] is None:
        folder = Path(folders[0][1]).resolve()
        loaded = load_from_disk(str(folder))
        return _map_splits({s: (d, record(d, str(folder), s)) for s, d in loaded.items()}, str(folder)), folder.name
    found: dict[str, tuple[Dataset, dict]] = {}
    for split, value in folders:
        folder = Path(value).resolve()
        if not (folder / "state.json").is_file():
            raise DataFormatError(
                f"{value}: give one dataset as --data (a Hub id, a DatasetDict folder, or Dataset folders as "
                "split=FOLDER); data files and datasets cannot be mixed"
            )
        dataset = load_from_disk(str(folder))
        split = split or str(dataset.split or "train")
        if split in found:
            raise DataFormatError(f"split {split!r} given twice: {found[split][1]['dataset']} and {folder}")
        found[split] = (dataset, record(dataset, str(folder), split))
    return _map_splits(found, ", ".join(value for _, value in folders)), ", ".join(
        Path(value).name for _, value in folders
    )


def _pick(role: str, candidates: Sequence[str], given: str | None, columns: list[str], where: str) -> str | None:
    option = COLUMN_OPTIONS[role]
    if given is not None:
        if given not in columns:
            raise DataFormatError(f"{where}: no column {given!r} ({option}); its columns are {columns}")
        return given
    found = [name for name in candidates if name in columns]
    if len(found) > 1:
        raise DataFormatError(f"{where}: the columns {found} could each be the {role} column; choose one with {option}")
    return found[0] if found else None


def find_columns(dataset: Dataset, given: Mapping[str, str | None], where: str) -> Columns:
    """The columns of each role in `dataset`: those `given` (by role), else the one with a usual name.

    Raises:
        DataFormatError: No token or tag column, a given column that does not exist, or several candidates for a role;
            the message lists the dataset's columns and the option that names one.
    """
    columns = list(dataset.column_names)
    picked: dict[str, str | None] = {}
    for role, candidates in (
        ("tokens", TOKEN_COLUMNS),
        ("tags", TAG_COLUMNS),
        ("image", IMAGE_COLUMNS),
        ("image_id", IMAGE_ID_COLUMNS),
    ):
        picked[role] = _pick(role, candidates, given.get(role), columns, where)
    for role in ("tokens", "tags"):
        if picked[role] is None:
            raise DataFormatError(
                f"{where}: no {role} column (looked for {list(TOKEN_COLUMNS if role == 'tokens' else TAG_COLUMNS)}); "
                f"its columns are {columns}: name it with {COLUMN_OPTIONS[role]}"
            )
    return Columns(**picked, id=ID_COLUMN if ID_COLUMN in columns else None)


def _list_item(feature: Any) -> Any:
    """The item feature of a list feature (`List`, `Sequence`, `LargeList`), or `None` for any other feature."""
    item = getattr(feature, "feature", None)
    return None if isinstance(item, dict) else item


def _is_text(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _image_kind(feature: Any, column: str, where: str) -> str:
    """`"struct"` for an image stored as `{"bytes", "path"}` (a `datasets.Image`), `"name"` for a path or id string."""
    if isinstance(feature, Image) or (isinstance(feature, dict) and set(feature) == set(IMAGE_KEYS)):
        return "struct"
    if _is_text(feature):
        return "name"
    raise DataFormatError(
        f"{where}: the image column {column!r} is {feature}; expected a datasets.Image, a {{'bytes', 'path'}} struct, "
        f"or a string (a path, or an id or file name in --images); name another with {COLUMN_OPTIONS['image']}"
    )


@dataclass
class TweetConverter:
    """Turns a batch of source rows into the input columns, checking each row; tags come out as BIO strings.

    Attributes:
        where: The dataset and split, for errors.
        columns: The source columns.
        names: The tags' `ClassLabel` names, `None` for string tags.
        scheme: The tags' scheme (converted to BIO).
        image_kind: `"struct"`, `"name"`, or `None` (no image column: the image ids are the images' names).
    """

    where: str
    columns: Columns
    names: list[str] | None
    scheme: str
    image_kind: str | None

    def __call__(self, batch: Mapping[str, list[Any]], start: int) -> dict[str, list[Any]]:
        """The input columns of `batch`, whose first row is row `start` of its split.

        Raises:
            DataFormatError: A row's tokens are not a non-empty list of non-empty strings, its tags are not as many, or
                its tags are not valid in the scheme; the message names the split, the row and the tag.
        """
        c = self.columns
        size = len(batch[c.tokens])
        out: dict[str, list[Any]] = {name: [] for name in ("id", "tokens", "ner_tags", "image_id", "image")}
        for i in range(size):
            row_id = str(batch[c.id][i]) if c.id else str(start + i)
            where = f"{self.where} row {start + i}" + (f" (id {row_id!r})" if c.id else "")
            tokens, tags = batch[c.tokens][i], batch[c.tags][i]
            if not tokens or not all(isinstance(token, str) and token for token in tokens):
                raise DataFormatError(f"{where}: tokens must be a non-empty list of non-empty strings, got {tokens!r}")
            if tags is None or len(tags) != len(tokens):
                raise DataFormatError(f"{where}: {len(tokens)} tokens but {len(tags or [])} tags")
            if self.names is not None:
                bad = [tag for tag in tags if not isinstance(tag, int) or not 0 <= tag < len(self.names)]
                if bad:
                    raise DataFormatError(f"{where}: tag {bad[0]!r} is not a label of the ClassLabel {self.names}")
                tags = [self.names[tag] for tag in tags]
            try:
                bio = to_bio(tags, self.scheme)
            except TagSchemeError as err:
                raise DataFormatError(f"{where}: {err}") from None
            image = batch[c.image][i] if c.image else None
            if self.image_kind == "name":
                image = image or ""
            name = image.get("path") if isinstance(image, dict) else image
            if c.image_id:
                image_id = "" if batch[c.image_id][i] is None else str(batch[c.image_id][i])
            else:
                image_id = image_id_from_name(name) if name else ""
            out["id"].append(row_id)
            out["tokens"].append(list(tokens))
            out["ner_tags"].append(bio)
            out["image_id"].append(image_id)
            out["image"].append(image if self.image_kind is not None else image_id)
        return out


@dataclass
class DatasetSplitInput(SplitInput):
    """A split of a `datasets` dataset, converted a chunk at a time.

    Attributes:
        convert: Source rows → input columns.
        tags: The `ClassLabel` of the input's `ner_tags`.
        renames: Entity types renamed, `{old: new}`.
    """

    convert: TweetConverter
    tags: ClassLabel
    renames: dict[str, str]

    def chunk(self, start: int, stop: int) -> Dataset:
        columns = self.convert(self.rows[start:stop], start)
        columns["ner_tags"] = [
            [self.tags.str2int(rename_tag(tag, self.renames)) for tag in tags] for tags in columns["ner_tags"]
        ]
        return Dataset.from_dict(columns, features=self.features)

    def ids(self, start: int, stop: int) -> list[str]:
        column = self.convert.columns.id
        if column is None:
            return [str(row) for row in range(start, stop)]
        return [str(value) for value in self.rows.select_columns([column])[start:stop][column]]


def _check_rows(rows: Dataset, convert: TweetConverter, found: dict[str, str], image_ids: set[str]) -> None:
    """Convert every row once (no image bytes read), so that a bad row is an error before anything is written.

    Adds each entity type met (before renaming) to `found` with where it first occurs, and each image id to `image_ids`.
    """
    image = convert.columns.image
    light = rows.select_columns([c for c in convert.columns.used() if c != image or convert.image_kind != "struct"])
    table = rows.with_format("arrow")
    for start in tqdm(range(0, len(rows), CHECK_BATCH), desc=f"checking {convert.where}", unit="batch"):
        batch = dict(light[start : start + CHECK_BATCH])
        if image and convert.image_kind == "struct":
            paths = pc.struct_field(table.select_columns([image])[start : start + CHECK_BATCH].column(image), "path")
            batch[image] = [None if path is None else {"bytes": None, "path": path} for path in paths.to_pylist()]
        converted = convert(batch, start)
        for offset, tags in enumerate(converted["ner_tags"]):
            for tag in tags:
                if tag != "O":
                    found.setdefault(tag[2:], f"{convert.where} row {start + offset}")
        image_ids.update(image_id for image_id in converted["image_id"] if image_id)


def read_dataset(
    data: Any,
    config: str | None = None,
    revision: str | None = None,
    columns: Mapping[str, str | None] | None = None,
    tag_scheme: str | None = None,
    entity_types: Sequence[str] | None = None,
    renames: Mapping[str, str] | None = None,
) -> InputData:
    """Read and check a `datasets` dataset (see the module docstring), every split whole.

    Args:
        data: `--data` values naming one dataset (a Hub id, a `save_to_disk` folder, `split=FOLDER` Dataset folders),
            or a `Dataset` / `DatasetDict` object.
        config: The Hub dataset's configuration.
        revision: The Hub dataset's branch, tag or commit.
        columns: Source columns by role (`tokens`, `tags`, `image`, `image_id`); the others are found by name.
        tag_scheme: The tags' scheme (`TAG_SCHEMES`); `None`: BIOES when the `ClassLabel` names `E-`/`S-` tags, else
            BIO.
        entity_types: The entity types in label order (after renaming); `None`: the `ClassLabel`'s order, or every
            type found in string tags, sorted.
        renames: Entity types to rename, `{old: new}`.

    Raises:
        DataFormatError: The dataset cannot be read, lacks a column, or has a bad row (named by split and row).
        ValueError: An unknown tag scheme, or a renamed type that the data does not have.
    """
    if tag_scheme is not None and tag_scheme not in TAG_SCHEMES:
        raise ValueError(f"unknown tag scheme {tag_scheme!r}; choose from {list(TAG_SCHEMES)}")
    renames = dict(renames or {})
    splits, name = open_splits(data, config, revision)
    given = dict(columns or {})
    found: dict[str, str] = {}
    image_ids: set[str] = set()
    converters: dict[str, TweetConverter] = {}
    label_sets: list[str] = []
    read: dict[str, tuple[Dataset, dict[str, Any]]] = {}
    for split, (dataset, origin) in splits.items():
        where = f"{origin['dataset']} split {origin['split']!r}"
        picked = find_columns(dataset, given, where)
        token_item = _list_item(dataset.features[picked.tokens])
        if not _is_text(token_item):
            raise DataFormatError(
                f"{where}: the token column {picked.tokens!r} is {dataset.features[picked.tokens]}, not a list of "
                f"strings; name another with {COLUMN_OPTIONS['tokens']}"
            )
        tag_item = _list_item(dataset.features[picked.tags])
        if not isinstance(tag_item, ClassLabel) and not _is_text(tag_item):
            raise DataFormatError(
                f"{where}: the tag column {picked.tags!r} is {dataset.features[picked.tags]}: expected a list of "
                "ClassLabel ints or of strings (integers need their names: cast the column to "
                f"Sequence(ClassLabel(names=[...]))); name another with {COLUMN_OPTIONS['tags']}"
            )
        names = list(tag_item.names) if isinstance(tag_item, ClassLabel) else None
        scheme = tag_scheme or (scheme_of_labels(names) if names else BIO)
        for label in names or []:
            try:
                split_tag(label, scheme)
            except TagSchemeError as err:
                raise DataFormatError(f"{where}: the ClassLabel of {picked.tags!r} names {err}") from None
        label_sets.extend(names or [])
        image_kind = _image_kind(dataset.features[picked.image], picked.image, where) if picked.image else None
        if image_kind == "struct" and isinstance(dataset.features[picked.image], Image):
            # Read as stored ({"bytes", "path"}): decoding is the aligners' job, with load_image's limits.
            dataset = dataset.cast_column(picked.image, Image(decode=False))
        read[split] = (dataset.select_columns(picked.used()), origin)
        converters[split] = TweetConverter(where, picked, names, scheme, image_kind)
    image_kinds = {split: converter.image_kind for split, converter in converters.items()}
    if len(set(image_kinds.values())) > 1:
        raise DataFormatError(f"{name}: the splits give their images in different forms {image_kinds}; give one form")
    schemes = sorted({converter.scheme for converter in converters.values()})
    if schemes != [BIO]:
        logger.info("%s: tags read as %s and converted to BIO", name, " and ".join(schemes))
    for split, (dataset, _) in read.items():
        _check_rows(dataset, converters[split], found, image_ids)
    check_renames(renames, [*found, *(label[2:] for label in label_sets if label != "O")])
    renamed = {rename_tag(f"B-{entity}", renames)[2:]: where for entity, where in found.items()}
    if entity_types is not None:
        outside = [entity for entity in renamed if entity not in entity_types]
        if outside:
            raise DataFormatError(
                f"{renamed[outside[0]]}: tag type {outside[0]!r} is outside the label set {list(entity_types)}"
            )
        tags = ClassLabel(names=label_names(entity_types))
    elif label_sets:
        tags = ClassLabel(names=label_names(types_of_labels(label_sets, renames)))
    else:
        tags = ClassLabel(names=label_names(sorted(renamed)))
    first = next(iter(converters.values()))
    image_feature = Image(decode=False) if first.image_kind == "struct" else Value("string")
    features = input_features(tags, image_feature)
    return InputData(
        splits={
            split: DatasetSplitInput(
                dataset,
                features,
                f"{Path(origin['dataset']).name}[{origin['split']}]",
                converters[split],
                tags,
                renames,
            )
            for split, (dataset, origin) in read.items()
        },
        tags=tags,
        data={split: {**origin, "tweets": len(dataset)} for split, (dataset, origin) in read.items()},
        reader={
            "columns": {split: asdict(converter.columns) for split, converter in converters.items()},
            "tag_scheme": {split: converter.scheme for split, converter in converters.items()},
        },
        image_ids=image_ids,
        carries_images=first.image_kind is not None,
        images_as_bytes=first.image_kind == "struct",
    )
