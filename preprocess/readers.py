r"""Readers for MNER datasets: the UMT CoNLL/IMGID format and a JSONL form, with BIO label checking.

UMT format (Twitter-2015/2017): a line ``IMGID:<id>``, then ``token<TAB>tag`` lines, a blank line
between tweets. SPEC §6 traps handled here: files that do not end with a blank line (the last tweet is
still closed), invisible Unicode tokens (lines are split on ``\n`` and ``\t`` only, never on other
whitespace, so U+00A0, U+200B, U+0085 ... survive verbatim), and spans that start with ``I-`` (kept as
they are; evaluation decides how to read them).

JSONL format: one object per line, ``{"tokens": [...], "tags": [...], "image": "<file or id>"}`` with an
optional ``"id"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import ClassLabel

from alignment_ita import iter_jsonl

#: Split names accepted in file names, mapped to the DatasetDict split (UMT's ``valid`` → ``validation``).
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
}
SPLIT_ORDER: tuple[str, ...] = ("train", "validation", "test")
DATA_SUFFIXES: tuple[str, ...] = (".txt", ".conll", ".jsonl")

_TAG = re.compile(r"^(?:O|[BI]-\S+)$")


class DataFormatError(ValueError):
    """A data file does not follow its format; the message names the file and line."""


@dataclass
class Example:
    """One tweet as read from a file; ``lines`` holds the 1-based line of each tag, for error messages."""

    id: str
    tokens: list[str]
    tags: list[str]
    image: str
    lines: list[int]


def _check_tag(tag: str, path: Path, line: int) -> None:
    if not _TAG.match(tag):
        raise DataFormatError(f"{path}:{line}: tag {tag!r} is not BIO (expected 'O', 'B-<TYPE>' or 'I-<TYPE>')")


def read_umt(path: str | Path) -> list[Example]:
    """Read a UMT CoNLL/IMGID file.

    Args:
        path: The file (UTF-8).

    Returns:
        The tweets in file order; ``image`` is ``"<IMGID>.jpg"`` and ``id`` the tweet's index in the file.

    Raises:
        DataFormatError: A token line not preceded by an ``IMGID:`` line, a line without a tab, an empty
            token, a non-BIO tag, or a tweet without tokens.
    """
    path = Path(path)
    text = path.read_bytes().decode("utf-8-sig")
    examples: list[Example] = []
    current: Example | None = None
    start = 0

    def close() -> None:
        if current is not None:
            if not current.tokens:
                raise DataFormatError(f"{path}:{start}: tweet IMGID:{current.image} has no tokens")
            examples.append(current)

    # split("\n") and not splitlines(): splitlines also breaks on U+0085, U+2028 ... inside tokens.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if line.startswith("IMGID:"):
            close()
            image_id = line[len("IMGID:") :].strip()
            current = Example(id=str(len(examples)), tokens=[], tags=[], image=f"{image_id}.jpg", lines=[])
            start = number
        elif "\t" in line:
            if current is None:
                raise DataFormatError(f"{path}:{number}: token line without an 'IMGID:<id>' line before it")
            token, tag = line.rsplit("\t", 1)
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
            raise DataFormatError(f"{path}:{number}: expected 'token<TAB>tag', 'IMGID:<id>' or a blank line, got {line[:80]!r}")
    # The last tweet is closed even without a trailing blank line (Twitter-2015 files end that way).
    close()
    return examples


def read_jsonl(path: str | Path) -> list[Example]:
    """Read a JSONL dataset file with ``tokens``, ``tags``, ``image`` (and optional ``id``) per line.

    Raises:
        DataFormatError: Invalid JSON, missing keys, non-string tokens/tags, length mismatch, non-BIO tag.
    """
    path = Path(path)
    examples: list[Example] = []
    for number, record in iter_jsonl(path, required=("tokens", "tags", "image"), error=DataFormatError):
        tokens, tags = record["tokens"], record["tags"]
        if not isinstance(tokens, list) or not isinstance(tags, list) or not all(isinstance(x, str) for x in [*tokens, *tags]):
            raise DataFormatError(f"{path}:{number}: 'tokens' and 'tags' must be lists of strings")
        if len(tokens) != len(tags) or not tokens:
            raise DataFormatError(f"{path}:{number}: {len(tokens)} tokens but {len(tags)} tags")
        if any(t == "" for t in tokens):
            raise DataFormatError(f"{path}:{number}: empty token")
        for tag in tags:
            _check_tag(tag, path, number)
        example_id = str(record.get("id", len(examples)))
        examples.append(Example(example_id, list(tokens), list(tags), str(record["image"] or ""), [number] * len(tags)))
    return examples


def read_file(path: str | Path) -> list[Example]:
    """Read a dataset file, choosing the reader from the suffix (``.jsonl`` → JSONL, else UMT)."""
    return read_jsonl(path) if str(path).endswith(".jsonl") else read_umt(path)


def find_split_files(sources: Sequence[str | Path]) -> dict[str, Path]:
    """Map each split to its file.

    Args:
        sources: A folder holding ``{train,valid|dev|validation,test}.{txt,conll,jsonl}``, or files whose
            stem names the split, or ``split=path`` pairs.

    Returns:
        ``{"train": ..., "validation": ..., "test": ...}`` for the splits found, in that order.

    Raises:
        DataFormatError: No data file found, a split given twice, or a file whose split is unknown.
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
                if path.suffix in DATA_SUFFIXES and path.stem.lower() in SPLIT_ALIASES:
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
    """``O`` then ``B-T``, ``I-T`` for each entity type, in the given order."""
    names = ["O"]
    for entity_type in entity_types:
        names += [f"B-{entity_type}", f"I-{entity_type}"]
    return names


def build_tag_feature(
    splits: dict[str, list[Example]],
    files: dict[str, Path],
    entity_types: Sequence[str] | None = None,
) -> ClassLabel:
    """The ``ClassLabel`` of the tags: ``O`` first, then ``B-``/``I-`` pairs per entity type.

    Args:
        splits: The examples of each split.
        files: The file of each split, for error messages.
        entity_types: The expected types, in label order. ``None`` takes every type seen in any split,
            sorted alphabetically (a stable order that does not depend on which tweet comes first).

    Returns:
        The class label.

    Raises:
        DataFormatError: A tag's type is not among ``entity_types``; the message names file and line.
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
