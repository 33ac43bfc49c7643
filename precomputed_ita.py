"""Precomputed visual contexts: files of contexts computed elsewhere, looked up by image id.

`PrecomputedAligner` reads them (e.g. the BLIP-2 captions released by the PGIM authors). A model config never records
a path: a file is recorded by name, sha256 checksum and what produced it (`context_file_record`), and found again
only in the folders a caller names (the checkpoint's own folder, a `context_dir`), checksum verified
(`locate_context_file`). The files are read line by line (`iter_jsonl` for JSONL), with errors that name the file
and line.

Remote code: imports only the standard library, transformers and its sibling modules.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    from .aligners_ita import SEGMENTS, Aligner, Segments, normalize_text
    from .configuration_ita import PRECOMPUTED_FORMATS, PRECOMPUTED_TYPE, validate_aligner_spec, validate_context_file
    from .images_ita import image_id_from_name
except ImportError:
    from aligners_ita import SEGMENTS, Aligner, Segments, normalize_text
    from configuration_ita import PRECOMPUTED_FORMATS, PRECOMPUTED_TYPE, validate_aligner_spec, validate_context_file
    from images_ita import image_id_from_name


def _text_lines(path: str | Path, encoding: str, error: type[ValueError] = ValueError) -> Iterator[tuple[int, str]]:
    """`(line number, line)` of a text file; a byte that does not decode is an error naming the file and line."""
    with open(path, encoding=encoding) as handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                yield number, line
        except UnicodeDecodeError as err:
            # The file is decoded in blocks, so the bad byte is somewhere after the last line read.
            raise error(
                f"{path}: not {encoding.removesuffix('-sig').upper()} text after line {number} ({err.reason}): "
                "convert the file to UTF-8."
            ) from err


def iter_jsonl(
    path: str | Path, required: Sequence[str] = (), error: type[ValueError] = ValueError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line number, object)` for the non-blank lines of a JSONL file (a BOM is accepted).

    Args:
        path: The file.
        required: Keys every object must have.
        error: The exception raised for a bad line; its message names the file and line.
    """
    for number, line in _text_lines(path, "utf-8-sig", error):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{number}: invalid JSON: {err}") from err
        missing = [key for key in required if not isinstance(record, dict) or key not in record]
        if missing or not isinstance(record, dict):
            raise error(
                f"{path}:{number}: each line must be a JSON object with the keys {list(required)}; missing {missing}"
            )
        yield number, record


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def context_file_record(path: str | Path, source: str | None = None) -> dict[str, str]:
    """The record of a precomputed-context file, as configs store it: `{"name", "sha256", "source"}`.

    Args:
        path: The file. Its name is the path's last part as given (a Hub cache's file is a symlink to a blob named by
            its hash), so relative, absolute and symlinked-folder spellings of one file give one record.
        source: What produced the contexts (e.g. `"BLIP-2 captions, PGIM release"`); default
            `"precomputed file <name>"`, which claims nothing about how they were made.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"precomputed context file not found: {path} (contexts looked up by image id exist only for "
            "the images of their files; use a real aligner for new images)"
        )
    return {"name": path.name, "sha256": file_sha256(path), "source": source or f"precomputed file {path.name}"}


def _context_file_records(
    paths: str | Path | Sequence[str | Path], source: str | Sequence[str] | None
) -> list[dict[str, str]]:
    """The records of files given by path, with one source for all, one per file, or the default."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("give at least one precomputed context file")
    sources = [source] * len(paths) if source is None or isinstance(source, str) else list(source)
    if len(sources) != len(paths):
        raise ValueError(
            f"got {len(sources)} sources for {len(paths)} precomputed context files; give one, or one per file"
        )
    return [context_file_record(path, source) for path, source in zip(paths, sources)]


def locate_context_file(record: dict[str, str], folders: Sequence[str | Path]) -> Path:
    """Find a recorded precomputed-context file by its name, only inside `folders`, and verify its checksum.

    Args:
        record: `{"name", "sha256", "source"}` (see `context_file_record`); the name must be a bare file
            name, so nothing outside the folders is ever read.
        folders: Local folders or Hugging Face Hub model ids, searched in order; from a Hub repository the file is
            fetched into the Hub cache (offline: taken from it).

    Returns:
        The local path of the first file of that name whose sha256 matches the record.

    Raises:
        ValueError: The record is malformed, or a file of that name was found but with another checksum.
        FileNotFoundError: No folder holds a file of that name.
    """
    validate_context_file(record)
    name = record["name"]
    mismatches = []
    for folder in folders:
        candidate = _local_file(str(folder), name)
        if candidate is None:
            continue
        checksum = file_sha256(candidate)
        if checksum == record["sha256"]:
            return candidate
        mismatches.append(f"{candidate} has sha256 {checksum}")
    if mismatches:
        raise ValueError(
            f"precomputed context file {name!r} ({record['source']}) does not match the checksum recorded with the "
            f"model (sha256 {record['sha256']}): {'; '.join(mismatches)}. It is not the file the model was trained "
            "with; put that file there, or pass aligners= to use others knowingly"
        )
    raise FileNotFoundError(
        f"precomputed context file {name!r} ({record['source']}, sha256 {record['sha256']}) is not in "
        f"{[str(folder) for folder in folders] or 'any folder (none given)'}; put it in the checkpoint folder or "
        "pass the folder that holds it (pipeline argument context_dir=)"
    )


def _local_file(folder: str, name: str) -> Path | None:
    """The file `name` of a local folder, or the Hub cache's copy of it when `folder` is a Hub model id, or None."""
    if os.path.isdir(folder):
        candidate = Path(os.path.abspath(folder)) / name
        return candidate if candidate.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(
            folder, name, _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False
        )
    except (OSError, ValueError):  # not a repository id, or no such repository
        return None
    return Path(found) if found else None


class PrecomputedAligner(Aligner):
    """Contexts computed elsewhere, looked up by image id.

    Two file formats are read:

    - `"captions"`: one caption per line, `<IMGID>.jpg :<caption>` (the BLIP-2 captions released by
      the PGIM authors for Twitter-2015/2017). An id on several lines gets several captions.
    - `"jsonl"`: one JSON object per line with `image_id` and any of `caption`, `objects`,
      `ocr`, each a string or a list of strings.

    An image id absent from every file yields empty segments, as does an empty caption. Since these
    contexts exist only for the images of the files, a checkpoint trained on them needs another aligner for new
    images (ITAConfig `live_aligners`); its spec says `"precomputed": true` so that a pipeline can tell.

    The spec (`to_dict`) records each file by name, sha256 and source, never by path:

    ```json
    {"type": "precomputed", "precomputed": true, "format": "auto",
     "files": [{"name": "BLIP2_17.txt", "sha256": "...", "source": "BLIP-2 captions, PGIM release"}]}
    ```

    and `visual_context_ita.aligner_from_dict` rebuilds it only from files of those names and checksums found in the
    folders it is given. A hand-written spec may name the files by `paths` (with an optional `source`), like the constructor.

    Args:
        paths: One or more files; later files add pieces after earlier ones.
        format: `"captions"`, `"jsonl"` or `"auto"` (`.jsonl`/`.json` → jsonl, else captions).
        source: What produced the contexts, one string for all files or one per file (e.g. `"BLIP-2 captions,
            PGIM release"`); default `"precomputed file <name>"`.
    """

    type = PRECOMPUTED_TYPE
    segments = SEGMENTS
    precomputed = True

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        format: str = "auto",
        source: str | Sequence[str] | None = None,
    ) -> None:
        if format not in PRECOMPUTED_FORMATS:
            raise ValueError(f"format must be one of {PRECOMPUTED_FORMATS}, got {format!r}")
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        self.files = _context_file_records(paths, source)
        # The files read, on this machine (never part of the spec).
        self.paths = [os.path.abspath(path) for path in paths]
        self.format = format
        self.table: dict[str, Segments] = {}
        for path, record in zip(self.paths, self.files):
            jsonl = format == "jsonl" or (format == "auto" and record["name"].endswith((".jsonl", ".json")))
            self._read_jsonl(path) if jsonl else self._read_captions(path)

    @classmethod
    def normalize_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """`{"files": [records], "format": ...}` from settings naming the files by `files` records or by `paths`.

        Records are computed from files given by path, so the result holds no path and compares equal however the
        files were spelled (a rerun of `python -m preprocess` compares its settings with those of the finished work).
        """
        cls._check_keys(settings)
        files = (
            settings["files"]
            if "files" in settings
            else _context_file_records(settings["paths"], settings.get("source"))
        )
        spec = {"type": cls.type, "files": files, "format": settings.get("format", "auto")}
        validate_aligner_spec(spec)
        return {"files": [dict(record) for record in files], "format": spec["format"]}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], context_dirs: Sequence[str | Path] = ()) -> PrecomputedAligner:
        """Build from `paths` as given, or from `files` records found by name in `context_dirs` (only there)."""
        cls._check_keys(settings)
        if "paths" in settings:
            return cls(**settings)
        normalized = cls.normalize_settings(settings)
        records = normalized["files"]
        paths = [locate_context_file(record, context_dirs) for record in records]
        return cls(paths, normalized["format"], [record["source"] for record in records])

    @classmethod
    def _check_keys(cls, settings: dict[str, Any]) -> None:
        given = set(settings) - {"format"}
        if given not in ({"files"}, {"paths"}, {"paths", "source"}):
            raise ValueError(
                f"invalid settings for aligner {cls.type!r}: {sorted(settings)}; give 'paths' (files on this machine, "
                "with an optional 'source') or 'files' (records {'name', 'sha256', 'source'}), and optionally 'format'"
            )

    def knows(self, image_id: str) -> bool:
        return image_id_from_name(image_id) in self.table

    def settings(self) -> dict[str, Any]:
        return {"files": [dict(record) for record in self.files], "format": self.format}

    def _add(self, image_id: str, segment: str, pieces: list[str]) -> None:
        entry = self.table.setdefault(image_id, {name: [] for name in SEGMENTS})
        entry[segment].extend(p for p in (normalize_text(piece) for piece in pieces) if p)

    def _read_captions(self, path: str) -> None:
        for number, line in _text_lines(path, "utf-8"):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            name, sep, caption = line.partition(" :")
            if not sep or not name.strip():
                raise ValueError(f"{path}:{number}: expected '<IMGID>.jpg :<caption>', got {line[:80]!r}")
            self._add(image_id_from_name(name.strip()), "caption", [caption])

    def _read_jsonl(self, path: str) -> None:
        for number, record in iter_jsonl(path, required=("image_id",)):
            image_id = image_id_from_name(str(record["image_id"]))
            for segment in SEGMENTS:
                value = record.get(segment)
                if value is None:
                    continue
                pieces = [value] if isinstance(value, str) else value
                if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
                    raise ValueError(f"{path}:{number}: '{segment}' must be a string or a list of strings")
                self._add(image_id, segment, pieces)

    def align(self, images: Sequence[Any], image_ids: Sequence[str] | None = None) -> list[Segments]:
        if image_ids is None or len(image_ids) != len(images):
            raise ValueError("precomputed contexts are looked up by image id: pass one image_id per image")
        empty: Segments = {name: [] for name in SEGMENTS}
        return [{k: list(v) for k, v in self.table.get(image_id_from_name(i), empty).items()} for i in image_ids]
