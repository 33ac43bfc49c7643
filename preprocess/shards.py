"""Resumable, deterministic, data-parallel preprocessing of a dataset into `DatasetDict` Arrow shards.

Everything a run writes for `<out>` lives in four places next to it, and every step is a rename or a new file,
so a run killed at any instant leaves a state the same command recovers from:

- `<out>.lock`: a POSIX lock held by the run writing `<out>`. The kernel drops it when that process ends, however
  it ends, so a killed run never leaves a stale lock; a second run into the same `<out>` refuses to start while
  it is held.
- `<out>.partial/`: unfinished work. First `preprocess_settings.json` (written to a temporary file and
  renamed; a folder without it, from a run killed just after creating the folder, is started again), then
  `<split>/chunk-<start>-<stop>` folders: each is saved as `….tmp` and renamed when complete, so a chunk
  without `.tmp` is whole. A rerun deletes `.tmp` leftovers, checks that each finished chunk holds exactly
  its tweets (redoing it otherwise) and skips it.
- `<out>`: appears only whole. The splits are saved to `<out>.partial/complete.tmp` with the settings, checked
  (as many tweets out as in, the same ids in the same order), then renamed to `<out>`.
- `<out>.trash`: a folder being deleted. `<out>` or `<out>.partial` is renamed to it before deletion, so a
  kill in the middle of a deletion never leaves a half-deleted folder where a rerun would trust it.

The settings of a run (data checksums and tweet counts, reader, aligners, context builder, chunking) are stored with
the work and the result; a rerun with other settings is refused, naming what changed, instead of mixing chunks
made two ways.

Data-parallel runs: launched by `torchrun` (or `accelerate launch`), each rank takes its part of every split with
`datasets.distributed.split_dataset_by_node` and writes its own chunks; rank 0 holds the lock, prepares the work
folder, and assembles and checks the result once every rank is done. The output is identical to a one-process
run. Inside a process, `num_proc` `map` workers each get their own device (`devices`) through `with_rank`.

Fault injection for tests: `ITA_PREPROCESS_KILL_AT=<phase>[:<n>]` sends SIGKILL to the process the `n`-th time
(default first) it reaches `<phase>`, one of :data:`PHASES`; `ITA_PREPROCESS_KILL_SIGNAL=SIGSTOP` sends that
signal instead (a run frozen in the middle, e.g. to race another run against it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, Features, concatenate_datasets, load_from_disk
from datasets.distributed import split_dataset_by_node

from configuration_ita import PRECOMPUTED_TYPE
from images_ita import DEFAULT_MAX_PIXELS
from visual_context_ita import VisualContextBuilder, normalize_spec, spec_is_precomputed

from .align import BatchAligner, cached_aligner, output_features, takes_device
from .aligner_loading import check_model
from .datasets_reader import is_dataset_source, read_dataset
from .inputs import InputData, SplitInput, read_files
from .readers import DataFormatError, check_columns, check_encoding
from .tag_schemes import parse_renames

logger = logging.getLogger(__name__)

SETTINGS_FILE = "preprocess_settings.json"
KILL_AT_ENV = "ITA_PREPROCESS_KILL_AT"
KILL_SIGNAL_ENV = "ITA_PREPROCESS_KILL_SIGNAL"
#: The named points of a run, in the order a fresh run reaches them (`trash-moved` also when discarding an old
#: result with `overwrite`; `settings-tmp` and `trash-moved` are reached more than once, the `chunk-*`
#: phases once per chunk).
PHASES: tuple[str, ...] = (
    "locked",
    "work-created",
    "settings-tmp",
    "settings-written",
    "chunk-aligned",
    "chunk-saved",
    "chunk-done",
    "result-saved",
    "result-ready",
    "result-published",
    "trash-moved",
    "done",
)
# Tweet ids compared at a time when a result is checked against the data.
CHECK_BLOCK = 10_000
# Ranks of a torchrun launch wait for the slowest one before rank 0 assembles the result; torchrun ends the whole
# group when a rank dies, so a long timeout only keeps a slow but healthy rank from being cut off.
DIST_TIMEOUT = timedelta(days=7)

_phase_counts: Counter[str] = Counter()


def _phase(name: str) -> None:
    """A named point of a run: signal this process here when `ITA_PREPROCESS_KILL_AT` asks for it."""
    target = os.environ.get(KILL_AT_ENV)
    if not target:
        return
    _phase_counts[name] += 1
    wanted, _, count = target.partition(":")
    if wanted == name and _phase_counts[name] == int(count or 1):
        os.kill(os.getpid(), getattr(signal, os.environ.get(KILL_SIGNAL_ENV, "SIGKILL")))


class WorkStateError(ValueError):
    """`<out>` or its unfinished work cannot be used as it is; `rerun_with` are the options that recover.

    `rerun_with` is `[]` when the same command recovers later (another run holds the lock), `["--overwrite"]`
    when the existing work must be discarded, and `None` when only the user can decide (a foreign folder).
    """

    def __init__(self, message: str, rerun_with: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.rerun_with = None if rerun_with is None else list(rerun_with)

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent from rank 0 to the other ranks of a torchrun launch.
        return type(self), (str(self), self.rerun_with)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _discard(path: Path, trash: Path) -> None:
    """Delete a folder through `trash`: after the rename, the folder is gone from where any run would look."""
    if not path.exists():
        return
    _remove(trash)
    path.rename(trash)
    _phase("trash-moved")
    _remove(trash)


def _write_settings(folder: Path, settings: dict[str, Any]) -> None:
    final = folder / SETTINGS_FILE
    tmp = final.with_name(final.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _phase("settings-tmp")
    os.replace(tmp, final)


def _read_settings(folder: Path) -> dict[str, Any] | None:
    """The settings stored in a folder, or `None` when the file is missing or not a JSON object."""
    try:
        stored = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def _changed(stored: dict[str, Any], settings: dict[str, Any]) -> str:
    return ", ".join(sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k)))


class _OutputLock:
    """Exclusive claim on `<out>`: a POSIX lock on `<out>.lock`, which records who holds it.

    A POSIX lock (not `flock`) because `map` worker processes forked by the holder do not inherit it, so it is
    gone the instant the holder dies, and because network filesystems (NFS) support it.
    """

    def __init__(self, path: Path, out: Path) -> None:
        self.path = path
        self.out = out
        self.fd: int | None = None

    def __enter__(self) -> _OutputLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "starting"
                os.close(fd)
                raise WorkStateError(
                    f"another run ({holder}) is writing {self.out} (it holds {self.path}); wait for it to end, "
                    "then rerun this command (it reuses or resumes that run's work)",
                    rerun_with=[],
                ) from None
            # The holder before us may have deleted the file after we opened it: then lock the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0
        )
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


class _Ranks:
    """This process's place in a torchrun / accelerate launch (rank 0 of 1 when not launched so)."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.created_group = False
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                # gloo whatever the aligners run on: the ranks only exchange a few Python objects.
                dist.init_process_group("gloo", timeout=DIST_TIMEOUT)
                self.created_group = True
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @property
    def prefix(self) -> str:
        return f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""

    def on_rank0(self, function: Callable[[], Any]) -> Any:
        """Run `function` on rank 0 only; every rank returns its result or raises its error."""
        result = error = None
        if self.rank == 0:
            try:
                result = function()
            except Exception as err:  # noqa: BLE001 - re-raised below, on every rank.
                error = err
        if self.world_size > 1:
            import torch.distributed as dist

            shared = [(result, error)]
            dist.broadcast_object_list(shared, src=0)
            result, error = shared[0]
        if error is not None:
            raise error
        return result

    def all_succeed(self, function: Callable[[], None]) -> None:
        """Run `function` on every rank; if it failed anywhere, every rank raises the first rank's error."""
        error = None
        try:
            function()
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank.
            error = err
        errors = [error]
        if self.world_size > 1:
            import torch.distributed as dist

            errors = [None] * self.world_size
            dist.all_gather_object(errors, error)
        for rank, failure in enumerate(errors):
            if failure is not None:
                if rank == self.rank:
                    raise failure
                raise RuntimeError(f"rank {rank} failed: {type(failure).__name__}: {failure}") from failure

    def close(self) -> None:
        if self.created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _check_contexts(spec: dict[str, Any], image_ids: set[str]) -> None:
    """Read a precomputed aligner's files before anything is written, so that a bad or wrong file writes nothing.

    `map` workers forked later reuse the aligner read here.

    Raises:
        ValueError: A file does not decode (the aligner names it and the line).
        DataFormatError: The files hold a context for none of the data's images.
    """
    aligner = cached_aligner(spec)
    if image_ids and not any(aligner.knows(image_id) for image_id in image_ids):
        raise DataFormatError(
            f"precomputed context files {spec.get('paths')} hold a context for none of the {len(image_ids)} images of "
            "the data: another dataset's file, or image ids spelled otherwise?"
        )


def _node_part(base: Dataset, rank: int, world_size: int) -> Dataset:
    """The part of a split that `rank` preprocesses (`split_dataset_by_node`: contiguous, rank 0 first)."""
    # With fewer tweets than ranks the last ranks get none, but datasets' contiguous shard raises IndexError for them.
    if rank >= len(base):
        return base.select([])
    return split_dataset_by_node(base, rank=rank, world_size=world_size)


def _chunk_plan(split: SplitInput, chunk_size: int, world_size: int) -> list[list[tuple[int, int]]]:
    """For each rank, its `(start, stop)` chunks of a split: chunks of its `_node_part`."""
    plan, start = [], 0
    for rank in range(world_size):
        size = len(_node_part(split.rows, rank, world_size))
        plan.append([(s, min(s + chunk_size, start + size)) for s in range(start, start + size, chunk_size)])
        start += size
    return plan


def _chunk_path(work: Path, split: str, start: int, stop: int) -> Path:
    return work / split / f"chunk-{start:08d}-{stop:08d}"


def _holds(folder: Path, ids: list[str], features: Any) -> bool:
    """Whether a saved dataset holds exactly the tweets `ids`, in order, with the expected columns."""
    try:
        dataset = load_from_disk(str(folder))
    except Exception:  # noqa: BLE001 - any unreadable folder is simply not the chunk we want.
        return False
    return dataset.features == features and dataset["id"] == ids


def _check_result(result: DatasetDict, splits: dict[str, SplitInput], where: Path) -> None:
    """Tweet counts in = out, same ids in the same order, for every split (compared a block at a time).

    Raises:
        WorkStateError: A split is missing, has another number of tweets, or other ids.
    """
    if list(result) != list(splits):
        raise WorkStateError(f"{where} holds the splits {list(result)}, the data {list(splits)}", ["--overwrite"])
    for split, tweets in splits.items():
        ids = result[split].select_columns(["id"])
        same = len(ids) == len(tweets) and all(
            ids[start : start + CHECK_BLOCK]["id"] == tweets.ids(start, min(start + CHECK_BLOCK, len(tweets)))
            for start in range(0, len(tweets), CHECK_BLOCK)
        )
        if not same:
            raise WorkStateError(
                f"{where}: split {split!r} holds {len(ids)} tweets, the data {len(tweets)} (or other ids): it cannot "
                "be trusted",
                ["--overwrite"],
            )


def preprocess(
    data: Sequence[str | Path] | Dataset | DatasetDict,
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
    encoding: str | None = None,
    columns: Sequence[int] | None = None,
    devices: Sequence[str] | None = None,
    dataset_config: str | None = None,
    revision: str | None = None,
    dataset_columns: Mapping[str, str | None] | None = None,
    tag_scheme: str | None = None,
    rename_types: Sequence[str] | Mapping[str, str] | None = None,
    embed_images: bool = False,
) -> DatasetDict:
    """Read a dataset, align its images into visual context and save it as a `DatasetDict`.

    Under `torchrun` every rank calls this with the same arguments (see the module docstring).

    Args:
        data: Data files (a folder with `train/valid/test` files, or files, or `split=path` pairs: see
            `readers.find_split_files`), or a `datasets` dataset (a Hub id, a `save_to_disk` folder, `split=FOLDER`
            `Dataset` folders, or a `Dataset` / `DatasetDict` object: see `datasets_reader`).
        out: Output folder for `DatasetDict.save_to_disk`; `<out>.partial` holds unfinished work.
        aligners: Aligner specs (`aligners_ita` `to_dict` form), in order; precomputed contexts are given by
            `paths` (and an optional `source`) and recorded by file name, checksum and source.
        images_dir: Folder of the images; required when an aligner reads pixels and the data holds no images.
        builder_settings: `VisualContextBuilder` keyword arguments (order, separator, caps).
        entity_types: Entity types in label order (after renaming); `None` = the tags' `ClassLabel` order, else every
            type found, sorted.
        num_proc: Worker processes for `Dataset.map`.
        batch_size: Tweets per `map` batch.
        chunk_size: Tweets per resumable chunk.
        max_pixels: Images with more pixels are refused (recorded as an error).
        overwrite: Discard an existing result or unfinished work made with other settings.
        encoding: Encoding of the data files; `None` detects a byte-order mark, otherwise UTF-8.
        columns: `(token, tag)` columns (0-based) of UMT files with more than two columns.
        devices: One device per `map` worker for the aligners that take a `device` (round robin); under
            torchrun, rank `r` on a machine starts at device `local_rank × num_proc`. Not part of the settings:
            a rerun may use other devices.
        dataset_config: The configuration (subset) of a Hub dataset.
        revision: The branch, tag or commit of a Hub dataset.
        dataset_columns: A dataset's columns by role (`tokens`, `tags`, `image`, `image_id`); others found by name.
        tag_scheme: A dataset's tag scheme (`tag_schemes.TAG_SCHEMES`), converted to BIO; `None`: BIOES when its
            `ClassLabel` names `E-`/`S-` tags, else BIO.
        rename_types: Entity types to rename, as `OLD=NEW` strings or `{old: new}`.
        embed_images: Store the images' bytes in the `image` column (a self-contained dataset) instead of their paths.

    Returns:
        The saved `DatasetDict` (splits `train`, `validation`, `test` as present). When images were read (an
        `images_dir`, or a dataset with an image column), its `image` column holds each image file's absolute path, or
        is a `datasets.Image()` of their bytes with `embed_images` or when the dataset gave them as bytes; `None` for
        an image that could not be read.

    Raises:
        DataFormatError: The data is malformed, empty or does not decode, or cannot be loaded (nothing is written).
        WorkStateError: `<out>` or its unfinished work was made with other settings or cannot be trusted, or another
            run holds `<out>`; `rerun_with` says how to recover.
        ValueError: Invalid settings.
    """
    out = Path(out).absolute()
    work = out.with_name(out.name + ".partial")
    trash = out.with_name(out.name + ".trash")
    if chunk_size < 1 or batch_size < 1 or num_proc < 1:
        raise ValueError(
            f"chunk_size, batch_size and num_proc must be positive, got {chunk_size}, {batch_size}, {num_proc}"
        )
    check_encoding(encoding)
    columns = check_columns(columns)
    renames = parse_renames(rename_types)
    # Normalised (defaults filled in, precomputed files recorded by name and checksum instead of path) so that equal
    # settings compare equal however they were given; the aligners themselves are built from the specs as given.
    builder_settings = VisualContextBuilder(**(builder_settings or {})).to_dict()
    unlocated = [spec for spec in aligners if spec.get("type") == PRECOMPUTED_TYPE and "paths" not in spec]
    if unlocated:
        raise ValueError(f"precomputed contexts {unlocated} name no files here: give their paths (--context FILE)")
    specs = [normalize_spec(spec) for spec in aligners]
    placed = [s["type"] for s in specs if takes_device(s) and s.get("device") is not None]
    if devices and placed:
        raise ValueError(f"aligners {placed} set their own device: give devices either in the specs or by --devices")

    # Everything is read and checked before anything is written: bad input leaves nothing behind.
    if is_dataset_source(data):
        if encoding is not None or columns is not None:
            raise ValueError("--encoding and --columns read data files; a dataset's columns are --token-column ...")
        inputs = read_dataset(data, dataset_config, revision, dataset_columns, tag_scheme, entity_types, renames)
    else:
        dataset_only = {
            "--dataset-config": dataset_config,
            "--revision": revision,
            "--token-column/--tag-column/--image-column/--image-id-column": any((dataset_columns or {}).values()),
            "--tag-scheme": tag_scheme,
        }
        given = [option for option, value in dataset_only.items() if value]
        if given:
            raise ValueError(f"{given} read a datasets dataset (a Hub id or a save_to_disk folder), not data files")
        inputs = read_files(data, encoding, columns, entity_types, renames)
    image_aligners = [s["type"] for s in specs if not s.get("precomputed")]
    if image_aligners and images_dir is None and not inputs.carries_images:
        raise ValueError(f"aligners {image_aligners} read images: pass the images folder (--images)")
    reads_images = images_dir is not None or inputs.carries_images
    if embed_images and not reads_images:
        raise ValueError("--embed-images stores the images, but the data has none: give --images or an image column")
    image_storage = ("bytes" if embed_images or inputs.images_as_bytes else "paths") if reads_images else None
    for spec in aligners:
        if spec_is_precomputed(spec):
            _check_contexts(spec, inputs.image_ids)
        else:
            check_model(spec)
    settings = {
        "data": inputs.data,
        "reader": inputs.reader,
        "rename_types": renames or None,
        "aligners": specs,
        "builder": builder_settings,
        "images_dir": str(Path(images_dir).resolve()) if images_dir is not None else None,
        "image_storage": image_storage,
        "entity_types": list(entity_types) if entity_types is not None else None,
        "chunk_size": chunk_size,
        "max_pixels": max_pixels,
    }

    ranks = _Ranks()
    try:
        with contextlib.ExitStack() as lock:

            def claim() -> bool:
                out.parent.mkdir(parents=True, exist_ok=True)
                lock.enter_context(_OutputLock(out.with_name(out.name + ".lock"), out))
                _phase("locked")
                return _prepare(out, work, trash, settings, inputs, overwrite)

            if not ranks.on_rank0(claim):
                plans = {
                    split: _chunk_plan(tweets, chunk_size, ranks.world_size) for split, tweets in inputs.splits.items()
                }
                function = BatchAligner(
                    list(aligners),
                    builder_settings,
                    settings["images_dir"],
                    max_pixels,
                    devices,
                    device_offset=ranks.local_rank * num_proc,
                    image_storage=image_storage,
                )
                features = output_features(inputs.tags, image_storage)
                ranks.all_succeed(
                    lambda: _align_chunks(work, inputs, plans, features, function, ranks, num_proc, batch_size)
                )
                ranks.on_rank0(lambda: _assemble(out, work, trash, settings, inputs, plans))
        return load_from_disk(str(out))
    finally:
        ranks.close()


def _prepare(out: Path, work: Path, trash: Path, settings: dict[str, Any], inputs: InputData, overwrite: bool) -> bool:
    """Make `<out>.partial` ready to (re)start, under the lock; `True` when `<out>` is already complete."""
    # A deletion that a kill interrupted.
    _remove(trash)
    if out.exists():
        finished = _read_settings(out) if (out / "dataset_dict.json").is_file() else None
        if finished is None:
            raise WorkStateError(
                f"{out} exists but is not a dataset written by `python -m preprocess`; remove it or choose another --out"
            )
        if overwrite:
            _discard(out, trash)
        elif finished != settings:
            raise WorkStateError(
                f"{out} was made with different settings (changed: {_changed(finished, settings)}); "
                "rerun with --overwrite to start again, or choose another --out",
                ["--overwrite"],
            )
        else:
            _check_result(load_from_disk(str(out)), inputs.splits, out)
            logger.info("%s is already complete; nothing to do", out)
            _discard(work, trash)
            return True
    if work.exists() and not overwrite:
        stored = _read_settings(work)
        finished_chunks = [p for p in work.glob("*/chunk-*") if not p.name.endswith(".tmp")]
        if stored is None and finished_chunks:
            raise WorkStateError(
                f"{work} holds {len(finished_chunks)} finished chunks but no readable {SETTINGS_FILE}, so they cannot "
                "be trusted; rerun with --overwrite to start again",
                ["--overwrite"],
            )
        if stored is None:
            logger.info("%s was left by a run killed before it recorded its settings; starting again", work)
            _discard(work, trash)
        elif stored != settings:
            raise WorkStateError(
                f"{work} was made with different settings (changed: {_changed(stored, settings)}); "
                "rerun with --overwrite to start again, or choose another --out",
                ["--overwrite"],
            )
    if overwrite:
        _discard(work, trash)
    if work.exists():
        for stale in [*work.glob("*.tmp"), *work.glob("*/*.tmp")]:
            _remove(stale)
    else:
        work.mkdir()
        _phase("work-created")
        _write_settings(work, settings)
        _phase("settings-written")
    return False


def _align_chunks(
    work: Path,
    inputs: InputData,
    plans: dict[str, list[list[tuple[int, int]]]],
    features: Features,
    function: BatchAligner,
    ranks: _Ranks,
    num_proc: int,
    batch_size: int,
) -> None:
    """Align and save this rank's chunks, skipping those a killed run finished."""
    for split, tweets in inputs.splits.items():
        mine = plans[split][ranks.rank]
        (work / split).mkdir(exist_ok=True)
        for number, (start, stop) in enumerate(mine, start=1):
            final = _chunk_path(work, split, start, stop)
            if final.exists():
                if _holds(final, tweets.ids(start, stop), features):
                    logger.info("%s%s chunk %d/%d already done", ranks.prefix, split, number, len(mine))
                    continue
                logger.warning(
                    "%s%s does not hold the tweets %d-%d it should; redoing it", ranks.prefix, final, start, stop
                )
                _remove(final)
            chunk = tweets.chunk(start, stop).map(
                function,
                batched=True,
                batch_size=batch_size,
                with_rank=True,
                num_proc=num_proc if num_proc > 1 else None,
                features=features,
                desc=f"{ranks.prefix}{split} chunk {number}/{len(mine)}",
            )
            _phase("chunk-aligned")
            tmp = final.with_name(final.name + ".tmp")
            chunk.save_to_disk(str(tmp))
            _phase("chunk-saved")
            tmp.rename(final)
            _phase("chunk-done")
            logger.info("%s%s chunk %d/%d (tweets %d-%d) done", ranks.prefix, split, number, len(mine), start, stop)


def _assemble(
    out: Path,
    work: Path,
    trash: Path,
    settings: dict[str, Any],
    inputs: InputData,
    plans: dict[str, list[list[tuple[int, int]]]],
) -> None:
    """Join every rank's chunks into `<out>`, checked before it is published (rank 0, under the lock)."""
    splits: dict[str, Dataset] = {}
    for split, plan in plans.items():
        chunks = [_chunk_path(work, split, start, stop) for rank_chunks in plan for start, stop in rank_chunks]
        missing = [c for c in chunks if not c.is_dir()]
        if missing:
            raise RuntimeError(
                f"{len(missing)} chunks are missing after every rank finished (first: {missing[0]}); under torchrun "
                "--out must be on a filesystem every node shares"
            )
        splits[split] = concatenate_datasets([load_from_disk(str(c)) for c in chunks])
    complete = work / "complete.tmp"
    DatasetDict(splits).save_to_disk(str(complete))
    _phase("result-saved")
    _write_settings(complete, settings)
    _check_result(load_from_disk(str(complete)), inputs.splits, complete)
    _phase("result-ready")
    complete.rename(out)
    _phase("result-published")
    _discard(work, trash)
    _phase("done")
    logger.info(
        "saved %s: %s",
        out,
        ", ".join(f"{split} {len(tweets)} tweets in = out" for split, tweets in inputs.splits.items()),
    )
