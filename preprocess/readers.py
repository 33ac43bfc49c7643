r"""Readers for MNER datasets: the UMT CoNLL/IMGID format and a JSONL form, with BIO label checking.

The readers never guess: a line they cannot read exactly is a `DataFormatError` that names the file and the
line, and every tweet of a file that reads is kept.

UMT format (Twitter-2015/2017): a line `IMGID:<id>`, then `token<TAB>tag` lines, a blank line between tweets.
A tweet starts only at a line that is `IMGID:<id>` as a whole: `IMGID:trap<TAB>O` is the token `IMGID:trap`.
A token line has exactly two tab-separated columns unless `columns=(token, tag)` chooses two of a file's columns
(CoNLL files with POS or chunk columns); then every token line must have as many columns as the file's first one.
The traps of docs/method.md §6 handled here: files that do not end with a blank line (the last tweet is still
closed), invisible Unicode tokens (lines are split on `\n` and `\t` only, never on other whitespace, so U+00A0,
U+200B, U+0085 ... survive verbatim), and spans that start with `I-` (kept as they are; evaluation decides how to
read them).

JSONL format: one object per line, `{"tokens": [...], "tags": [...], "image": "<file or id>" | null}` with an
optional `"id"` (a string or an integer, unique in the file); any other key is an error.

Encodings: a byte-order mark (UTF-8, UTF-16, UTF-32) is detected, otherwise the file is UTF-8 unless `encoding`
says otherwise; a file that does not decode, or holds a NUL character (binary data, or UTF-16 without a mark), is an
error that names the file and line.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel

from configuration_ita import BIO_TAG

#: Split names accepted in file names, mapped to the DatasetDict split (UMT's `valid` → `validation`).
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
}
SPLIT_ORDER: tuple[str, ...] = ("train", "validation", "test")
DATA_SUFFIXES: tuple[str, ...] = (".txt", ".conll", ".jsonl")
JSONL_KEYS: tuple[str, ...] = ("id", "tokens", "tags", "image")
IMGID_PREFIX = "IMGID:"

# Longest marks first: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# The tweets of a UMT file, counted without parsing it: a witness for the reader (a tweet starts at a whole
# IMGID line). `^` and `$` with re.M match at "\n" only, the same line breaks the reader uses.
_UMT_TWEET = re.compile(r"^IMGID:[^\t\n]*$", re.M)


class DataFormatError(ValueError):
    """A data file does not follow its format; the message names the file and line."""


@dataclass
class Example:
    """One tweet as read from a file; `lines` holds the 1-based line of each tag, for error messages."""

    id: str
    tokens: list[str]
    tags: list[str]
    image: str
    lines: list[int]


def check_encoding(encoding: str | None) -> None:
    """Refuse an encoding name Python does not know.

    Raises:
        ValueError: Unknown encoding.
    """
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError as err:
            raise ValueError(
                f"unknown encoding {encoding!r}; give a Python codec name such as utf-8, latin-1, cp1252, utf-16"
            ) from err


def read_text(path: str | Path, encoding: str | None = None) -> str:
    """Decode a data file.

    Args:
        path: The file.
        encoding: A Python codec name; `None` detects a byte-order mark and otherwise reads UTF-8.

    Returns:
        The text, without a byte-order mark.

    Raises:
        DataFormatError: The bytes are not valid in the encoding, or the text holds a NUL character; the message
            names the file, the line and what to do.
    """
    path = Path(path)
    check_encoding(encoding)
    data = path.read_bytes()
    chosen = encoding or next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8")
    if b"\x00" in data:
        what = (
            "the file holds NUL bytes: binary data, or UTF-16/UTF-32 without a byte-order mark (then give "
            "--encoding utf-16-le, utf-16-be ...)"
        )
    else:
        what = "give the file's encoding with --encoding (e.g. latin-1, cp1252) or convert it to UTF-8"
    try:
        text = data.decode(chosen)
    except UnicodeDecodeError as err:
        line = data[: err.start].decode(chosen, errors="replace").count("\n") + 1
        raise DataFormatError(f"{path}:{line}: not valid {chosen} (byte {err.start}: {err.reason}); {what}") from err
    text = text.removeprefix("\ufeff")
    nul = text.find("\x00")
    if nul >= 0:
        raise DataFormatError(f"{path}:{text.count(chr(10), 0, nul) + 1}: NUL character read as {chosen}; {what}")
    return text


def _lines(text: str) -> Iterable[tuple[int, str]]:
    # split("\n") and not splitlines(): splitlines also breaks on U+0085, U+2028 ... inside tokens.
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line[:-1] if line.endswith("\r") else line


def _check_tag(tag: str, path: Path, line: int) -> None:
    if not BIO_TAG.match(tag):
        raise DataFormatError(f"{path}:{line}: tag {tag!r} is not BIO (expected 'O', 'B-<TYPE>' or 'I-<TYPE>')")


def check_columns(columns: Sequence[int] | None) -> tuple[int, int] | None:
    """Validate a `(token, tag)` column choice (0-based); `None` means exactly `token<TAB>tag`.

    Raises:
        ValueError: Not two distinct non-negative integers.
    """
    if columns is None:
        return None
    if len(columns) != 2 or len(set(columns)) != 2 or any(not isinstance(c, int) or c < 0 for c in columns):
        raise ValueError(f"columns must be two different 0-based column numbers (token, tag), got {list(columns)}")
    return columns[0], columns[1]


def count_umt_tweets(text: str) -> int:
    """The number of tweets in UMT text: its whole `IMGID:<id>` lines (a witness independent of the parser)."""
    return len(_UMT_TWEET.findall(text.replace("\r\n", "\n")))


def count_jsonl_tweets(text: str) -> int:
    """The number of tweets in JSONL text: its non-blank lines."""
    return sum(1 for _, line in _lines(text) if line.strip(" \t"))


def parse_umt(text: str, path: Path, columns: tuple[int, int] | None = None) -> list[Example]:
    """Parse UMT text (see `read_umt`); `path` names the file in errors."""
    examples: list[Example] = []
    current: Example | None = None
    start = 0
    width = None if columns is None else 0
    token_column, tag_column = columns or (0, 1)

    def close() -> None:
        if current is not None:
            if not current.tokens:
                raise DataFormatError(f"{path}:{start}: tweet IMGID:{current.image.removesuffix('.jpg')} has no tokens")
            examples.append(current)

    for number, line in _lines(text):
        if line.startswith(IMGID_PREFIX) and "\t" not in line:
            close()
            image_id = line[len(IMGID_PREFIX) :].strip(" ")
            if not image_id or re.search(r"\s", image_id):
                raise DataFormatError(
                    f"{path}:{number}: expected 'IMGID:<id>' with an id and no whitespace in it, got {line[:80]!r}"
                )
            current = Example(id=str(len(examples)), tokens=[], tags=[], image=f"{image_id}.jpg", lines=[])
            start = number
        elif "\t" in line:
            if current is None:
                raise DataFormatError(f"{path}:{number}: token line without an 'IMGID:<id>' line before it")
            cells = line.split("\t")
            if width is None and len(cells) != 2:
                raise DataFormatError(
                    f"{path}:{number}: {len(cells)} tab-separated columns, expected 2 ('token<TAB>tag'); for a file "
                    f"with more columns choose the token and tag columns (0-based) with --columns, e.g. --columns 0 {len(cells) - 1}"
                )
            if width == 0:
                # The first token line fixes the file's number of columns.
                width = len(cells)
                if max(token_column, tag_column) >= width:
                    raise DataFormatError(
                        f"{path}:{number}: {width} columns, too few for --columns {token_column} {tag_column}"
                    )
            if width is not None and len(cells) != width:
                raise DataFormatError(
                    f"{path}:{number}: {len(cells)} tab-separated columns, but the file's first token line has {width}"
                )
            token, tag = cells[token_column], cells[tag_column]
            if token == "":
                raise DataFormatError(f"{path}:{number}: empty token")
            _check_tag(tag, path, number)
            current.tokens.append(token)
            current.tags.append(tag)
            current.lines.append(number)
        elif not line.strip(" "):
            # A blank line ends the tweet; tokens after it need a new IMGID line.
            close()
            current = None
        else:
            raise DataFormatError(
                f"{path}:{number}: expected 'token<TAB>tag', 'IMGID:<id>' or a blank line, got {line[:80]!r}"
            )
    # The last tweet is closed even without a trailing blank line (Twitter-2015 files end that way).
    close()
    return examples


def read_umt(path: str | Path, encoding: str | None = None, columns: Sequence[int] | None = None) -> list[Example]:
    """Read a UMT CoNLL/IMGID file.

    Args:
        path: The file.
        encoding: Its encoding; `None` detects a byte-order mark and otherwise reads UTF-8.
        columns: `(token, tag)` column numbers (0-based) for files with more than two columns; `None` requires
            exactly `token<TAB>tag`.

    Returns:
        The tweets in file order; `image` is `"<IMGID>.jpg"` and `id` the tweet's index in the file.

    Raises:
        DataFormatError: The file is empty or does not decode; a token line not preceded by an `IMGID:` line, a line
            with another number of columns, an empty token, a non-BIO tag, or a tweet without tokens.
    """
    path = Path(path)
    examples = parse_umt(read_text(path, encoding), path, check_columns(columns))
    if not examples:
        raise DataFormatError(f"{path}: no tweets (the file is empty)")
    return examples


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} given twice in one object")
    return dict(pairs)


def parse_jsonl(text: str, path: Path) -> list[Example]:
    """Parse JSONL text (see `read_jsonl`); `path` names the file in errors."""
    examples: list[Example] = []
    first_line: dict[str, int] = {}
    for number, line in _lines(text):
        # Only JSON's own whitespace makes a blank line: a line of U+00A0 is an error, not a skipped tweet.
        if not line.strip(" \t"):
            continue
        try:
            record = json.loads(line, object_pairs_hook=_unique_keys)
        except ValueError as err:
            raise DataFormatError(f"{path}:{number}: invalid JSON: {err}") from err
        if not isinstance(record, dict):
            raise DataFormatError(
                f"{path}:{number}: expected a JSON object with the keys {list(JSONL_KEYS[1:])}, got {type(record).__name__}"
            )
        missing = [key for key in JSONL_KEYS[1:] if key not in record]
        unknown = sorted(set(record) - set(JSONL_KEYS))
        if missing or unknown:
            raise DataFormatError(
                f"{path}:{number}: "
                + "; ".join(
                    ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
                )
                + f" (a line holds {list(JSONL_KEYS[1:])} and optionally 'id')"
            )
        tokens, tags, image = record["tokens"], record["tags"], record["image"]
        if (
            not isinstance(tokens, list)
            or not isinstance(tags, list)
            or not all(isinstance(x, str) for x in [*tokens, *tags])
        ):
            raise DataFormatError(f"{path}:{number}: 'tokens' and 'tags' must be lists of strings")
        if len(tokens) != len(tags) or not tokens:
            raise DataFormatError(f"{path}:{number}: {len(tokens)} tokens but {len(tags)} tags")
        if any(t == "" for t in tokens):
            raise DataFormatError(f"{path}:{number}: empty token")
        for tag in tags:
            _check_tag(tag, path, number)
        if image is not None and not isinstance(image, str):
            raise DataFormatError(
                f"{path}:{number}: 'image' must be one file name or id (a string), or null for a tweet without an "
                f"image; got {type(image).__name__} {json.dumps(image)[:80]}"
            )
        example_id = record.get("id", len(examples))
        if isinstance(example_id, bool) or not isinstance(example_id, (str, int)):
            raise DataFormatError(
                f"{path}:{number}: 'id' must be a string or an integer, got {json.dumps(example_id)[:80]}"
            )
        example_id = str(example_id)
        if example_id in first_line:
            raise DataFormatError(f"{path}:{number}: id {example_id!r} already used on line {first_line[example_id]}")
        first_line[example_id] = number
        examples.append(Example(example_id, list(tokens), list(tags), image or "", [number] * len(tags)))
    return examples


def read_jsonl(path: str | Path, encoding: str | None = None) -> list[Example]:
    """Read a JSONL dataset file with `tokens`, `tags`, `image` (and optional `id`) per line.

    Args:
        path: The file.
        encoding: Its encoding; `None` detects a byte-order mark and otherwise reads UTF-8.

    Raises:
        DataFormatError: The file is empty or does not decode; invalid JSON, a repeated key, missing or unknown keys,
            non-string tokens/tags, length mismatch, non-BIO tag, an `image` that is not a string or null, an `id`
            that is not a string or integer, or an id used twice.
    """
    path = Path(path)
    examples = parse_jsonl(read_text(path, encoding), path)
    if not examples:
        raise DataFormatError(f"{path}: no tweets (the file is empty)")
    return examples


def is_jsonl(path: str | Path) -> bool:
    """Whether a data file is read as JSONL (by its suffix; anything else is UMT)."""
    return Path(path).suffix.lower() == ".jsonl"


def read_file(path: str | Path, encoding: str | None = None, columns: Sequence[int] | None = None) -> list[Example]:
    """Read a dataset file, choosing the reader from the suffix (`.jsonl` → JSONL, else UMT).

    `columns` applies to UMT files only (JSONL names its fields).
    """
    return read_jsonl(path, encoding) if is_jsonl(path) else read_umt(path, encoding, columns)


def count_tweets(path: str | Path, encoding: str | None = None) -> int:
    """Count the tweets of a data file without parsing it (whole `IMGID:` lines, or non-blank JSONL lines).

    The count is a witness for the reader: `len(read_file(path))` must equal it.
    """
    text = read_text(path, encoding)
    return count_jsonl_tweets(text) if is_jsonl(path) else count_umt_tweets(text)


def find_split_files(sources: Sequence[str | Path]) -> dict[str, Path]:
    """Map each split to its file.

    Args:
        sources: A folder holding `{train,valid|dev|validation,test}.{txt,conll,jsonl}`, or files whose
            stem names the split, or `split=path` pairs.

    Returns:
        `{"train": ..., "validation": ..., "test": ...}` for the splits found, in that order.

    Raises:
        DataFormatError: No data file found, a split given twice, a file whose split is unknown, or a file in a
            folder named like a split with a suffix that is not a data suffix (e.g. `train.tsv`).
    """
    files: dict[str, Path] = {}

    def add(split_name: str, path: Path) -> None:
        split = SPLIT_ALIASES.get(split_name.lower())
        if split is None:
            raise DataFormatError(f"{path}: cannot tell the split; name the file train/valid/test or pass 'split=path'")
        if split in files:
            raise DataFormatError(f"split {split!r} given twice: {files[split]} and {path}")
        files[split] = path

    for source in sources:
        name, eq, value = str(source).partition("=")
        if eq and name.lower() in SPLIT_ALIASES:
            add(name, Path(value))
        elif Path(source).is_dir():
            for path in sorted(Path(source).iterdir()):
                if path.stem.lower() not in SPLIT_ALIASES or not path.is_file():
                    continue
                if path.suffix.lower() not in DATA_SUFFIXES:
                    raise DataFormatError(
                        f"{path}: named like a split but {path.suffix!r} is not a data suffix {list(DATA_SUFFIXES)}; "
                        f"rename it, or pass the files as split=path"
                    )
                add(path.stem, path)
        else:
            add(Path(source).stem, Path(source))
    if not files:
        raise DataFormatError(f"no train/valid/test data files found in {list(map(str, sources))}")
    for split, path in files.items():
        if not path.is_file():
            raise DataFormatError(f"data file for split {split!r} not found: {path}")
    return {split: files[split] for split in SPLIT_ORDER if split in files}


def label_names(entity_types: Iterable[str]) -> list[str]:
    """`O` then `B-T`, `I-T` for each entity type, in the given order."""
    names = ["O"]
    for entity_type in entity_types:
        names += [f"B-{entity_type}", f"I-{entity_type}"]
    return names


def build_tag_feature(
    splits: dict[str, list[Example]],
    files: dict[str, Path],
    entity_types: Sequence[str] | None = None,
) -> ClassLabel:
    """The `ClassLabel` of the tags: `O` first, then `B-`/`I-` pairs per entity type.

    Args:
        splits: The examples of each split.
        files: The file of each split, for error messages.
        entity_types: The expected types, in label order. `None` takes every type seen in any split,
            sorted alphabetically (a stable order that does not depend on which tweet comes first).

    Returns:
        The class label.

    Raises:
        DataFormatError: A tag's type is not among `entity_types`; the message names file and line.
    """
    if entity_types is None:
        seen = {tag[2:] for examples in splits.values() for ex in examples for tag in ex.tags if tag != "O"}
        return ClassLabel(names=label_names(sorted(seen)))
    allowed = set(entity_types)
    for split, examples in splits.items():
        for ex in examples:
            for tag, line in zip(ex.tags, ex.lines):
                if tag != "O" and tag[2:] not in allowed:
                    raise DataFormatError(
                        f"{files[split]}:{line}: tag {tag!r} has a type outside the label set {list(entity_types)}"
                    )
    return ClassLabel(names=label_names(entity_types))
