r"""`python -m preprocess`: a dataset plus images and/or precomputed contexts → `DatasetDict` shards.

Examples:
    Twitter-2017 with the released BLIP-2 captions (no images needed), saying what produced them::

        python -m preprocess --data ../shared/data/twitter2017 \
            --context ../shared/data/captions/blip2/BLIP2_17.txt --context-source "BLIP-2 captions, PGIM release" \
            --out shards/twitter2017-blip2

    Your own tweets and images with real aligners, in context order::

        python -m preprocess --data my_tweets/ --images my_tweets/images \
            --aligner image-to-text:model=Salesforce/blip-image-captioning-base \
            --aligner object-detection:model=hustvl/yolos-tiny,threshold=0.9 \
            --aligner rapidocr --num-proc 2 --out shards/my_tweets

    Two GPUs, one captioner per GPU (`--num-proc 2` map workers, worker i on the i-th device)::

        python -m preprocess --data my_tweets/ --images my_tweets/images \
            --aligner image-to-text:model=Salesforce/blip-image-captioning-base \
            --num-proc 2 --devices cuda:0 cuda:1 --out shards/my_tweets

    Several machines (each rank writes its own chunks of --out, on a filesystem they share; rank 0 assembles)::

        torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
            -m preprocess --data my_tweets/ --images my_tweets/images \
            --aligner image-to-text:model=Salesforce/blip-image-captioning-base --devices auto --out shards/my_tweets

    A dataset on the Hub with an Image column and BIOES ClassLabel tags, uploaded with its card once done::

        python -m preprocess --data me/my-mner --revision main --aligner rapidocr:threads=1 \
            --out shards/my-mner --push-to-hub me/my-mner-ita --license cc-by-4.0

    See docs/preprocessing.md for the file and dataset formats, recovery after a kill, the Hub and clusters.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from configuration_ita import DEFAULT_CONTEXT_ORDER, DEFAULT_CONTEXT_SEPARATOR, PRECOMPUTED_TYPE
from images_ita import DEFAULT_MAX_PIXELS
from ita_training.hub import HubAccessError, check_hub_access
from visual_context_ita import ALIGNER_TYPES

from .datasets_reader import COLUMN_OPTIONS
from .inputs import source_name
from .readers import DataFormatError
from .shards import SETTINGS_FILE, WorkStateError, preprocess
from .tag_schemes import TAG_SCHEMES


def parse_aligner(text: str) -> dict[str, Any]:
    """Parse an `--aligner` value: `TYPE`, `TYPE:key=value,key=value` or a JSON object.

    Values are read as JSON when they parse (numbers, booleans, lists) and as strings otherwise.
    """
    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"invalid JSON aligner spec {text!r}: {err}") from err
        if not isinstance(spec, dict) or "type" not in spec:
            raise argparse.ArgumentTypeError(f"a JSON aligner spec needs a 'type' key: {text!r}")
        return spec
    name, _, options = text.partition(":")
    if name not in ALIGNER_TYPES:
        raise argparse.ArgumentTypeError(f"unknown aligner {name!r}; choose from {sorted(ALIGNER_TYPES)}")
    spec: dict[str, Any] = {"type": name}
    for option in filter(None, options.split(",")):
        key, eq, value = option.partition("=")
        if not eq:
            raise argparse.ArgumentTypeError(f"aligner option {option!r} is not key=value (in {text!r})")
        try:
            spec[key] = json.loads(value)
        except json.JSONDecodeError:
            spec[key] = value
    return spec


def parse_context(path: str) -> dict[str, Any]:
    """Turn a `--context FILE` value into a precomputed-aligner spec.

    The path only says where to read the file: the recorded settings (and a model trained on the shards) name the
    file by name, checksum and source (see `precomputed_ita.PrecomputedAligner`).
    """
    return {"type": PRECOMPUTED_TYPE, "paths": [str(Path(path).resolve())]}


class ContextSource(argparse.Action):
    """`--context-source TEXT`: what produced the `--context` file given just before it."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option_string: Any = None
    ) -> None:
        specs = getattr(namespace, "aligners", None) or []
        last = specs[-1] if specs else {}
        if last.get("type") != PRECOMPUTED_TYPE or "paths" not in last or "source" in last:
            parser.error(f"{option_string} says what produced the --context FILE given just before it (once per file)")
        if not value.strip():
            parser.error(f"{option_string} needs a description, e.g. 'BLIP-2 captions, PGIM release'")
        last["source"] = value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess",
        description="Align tweet images into visual context and save the dataset as Arrow shards.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1],
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help="dataset folder with train/valid/test .txt (UMT) or .jsonl files, or the files, or split=path; or a "
        "datasets dataset: a Hub dataset id, a save_to_disk folder (DatasetDict), or Dataset folders as split=FOLDER",
    )
    dataset = parser.add_argument_group("a datasets dataset as --data (see docs/preprocessing.md)")
    dataset.add_argument("--dataset-config", help="the configuration (subset) of a Hub dataset")
    dataset.add_argument("--revision", help="the branch, tag or commit of a Hub dataset")
    for role, option in COLUMN_OPTIONS.items():
        dataset.add_argument(
            option, dest=f"{role}_column", metavar="COLUMN", help=f"the {role} column (default: found by name)"
        )
    dataset.add_argument(
        "--tag-scheme",
        choices=TAG_SCHEMES,
        help="the tags' scheme, converted to BIO (default: BIOES when the tags' ClassLabel names E-/S- tags, else BIO)",
    )
    parser.add_argument("--encoding", help="encoding of the data files (default: a byte-order mark's, else utf-8)")
    parser.add_argument(
        "--columns",
        nargs=2,
        type=int,
        metavar=("TOKEN", "TAG"),
        help="0-based token and tag columns of UMT files with more than two tab-separated columns "
        "(default: exactly token<TAB>tag)",
    )
    parser.add_argument("--out", required=True, help="output folder (DatasetDict.save_to_disk)")
    parser.add_argument(
        "--images",
        help="folder of the images, named by the data's image ids or file names (a dataset's relative image paths "
        "are relative to it)",
    )
    parser.add_argument(
        "--aligner",
        dest="aligners",
        action="append",
        type=parse_aligner,
        default=[],
        metavar="SPEC",
        help=f"an aligner: TYPE[:key=value,...] or JSON; types {sorted(ALIGNER_TYPES)}; "
        "repeatable, run in the order given",
    )
    parser.add_argument(
        "--context",
        dest="aligners",
        action="append",
        type=parse_context,
        metavar="FILE",
        help="precomputed contexts by image id: '<IMGID>.jpg :<caption>' lines or .jsonl; repeatable",
    )
    parser.add_argument(
        "--context-source",
        action=ContextSource,
        metavar="TEXT",
        help="what produced the --context file just before it (e.g. 'BLIP-2 captions, PGIM release'), "
        "recorded with it and in models trained on the shards; default 'precomputed file <name>'",
    )
    parser.add_argument("--order", nargs="+", default=DEFAULT_CONTEXT_ORDER, help="segment order in the context")
    parser.add_argument("--separator", default=DEFAULT_CONTEXT_SEPARATOR, help="text between segments")
    parser.add_argument("--max-words-per-segment", type=int, help="word cap per segment")
    parser.add_argument("--max-words", type=int, help="word cap for the whole context")
    parser.add_argument(
        "--entity-types",
        nargs="+",
        help="entity types in label order, after renaming (default: the tags' ClassLabel order, else all found, sorted)",
    )
    parser.add_argument(
        "--rename-types",
        nargs="+",
        metavar="OLD=NEW",
        help="rename entity types, e.g. OTHER=MISC so that Twitter-2015 data matches Twitter-2017 models (recorded in "
        "the settings)",
    )
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes for Dataset.map")
    parser.add_argument(
        "--devices",
        nargs="+",
        metavar="DEVICE",
        help="devices for the model aligners, one per --num-proc worker (round robin), e.g. cuda:0 "
        "cuda:1; 'auto' = every visible GPU; under torchrun rank r starts at LOCAL_RANK x --num-proc",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="tweets per map batch")
    parser.add_argument("--chunk-size", type=int, default=1000, help="tweets per resumable chunk")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    parser.add_argument(
        "--embed-images",
        action="store_true",
        help="store the images' bytes in the image column (a self-contained dataset) instead of their paths",
    )
    parser.add_argument("--overwrite", action="store_true", help="discard earlier results or work with other settings")
    hub = parser.add_argument_group(
        "upload the shards as a Hub dataset (checked before any work; see docs/preprocessing.md)"
    )
    hub.add_argument(
        "--push-to-hub",
        "--push_to_hub",
        metavar="REPO",
        help="the Hub dataset repository to upload the shards to, with a dataset card (images embedded)",
    )
    hub.add_argument("--private", action="store_true", help="create the repository private")
    hub.add_argument(
        "--license",
        help="the Hub licence id of the uploaded data (e.g. cc-by-4.0, other, unknown); required with --push-to-hub",
    )
    hub.add_argument("--license-note", help="what else users must know about the terms, e.g. 'research use only'")
    return parser


def resolve_devices(devices: list[str] | None) -> list[str] | None:
    """`--devices` as a list of devices; `auto` is every visible CUDA device."""
    if devices != ["auto"]:
        return devices
    import torch

    count = torch.cuda.device_count()
    if not count:
        raise ValueError("--devices auto found no CUDA device; leave --devices out to run the aligners on the CPU")
    return [f"cuda:{i}" for i in range(count)]


def recovery_command(argv: list[str], options: list[str]) -> str:
    """The command that recovers: this one with `options` added (once)."""
    arguments = shlex.join([*argv, *(o for o in options if o not in argv)])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"the same torchrun launch with: -m preprocess {arguments}"
    return f"python -m preprocess {arguments}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Under torchrun every rank runs main(); rank 0 speaks for all of them.
    speaks = int(os.environ.get("RANK", "0")) == 0
    unused = [s["type"] for s in args.aligners if not set(ALIGNER_TYPES[s["type"]].segments) & set(args.order)]
    if unused:
        print(f"error: aligners {unused} fill no segment of --order {args.order}", file=sys.stderr)
        return 2
    if args.push_to_hub and not args.license:
        print(
            "error: --push-to-hub needs --license: the Hub licence id of the data (cc-by-4.0, other, unknown ...)",
            file=sys.stderr,
        )
        return 2
    if not args.aligners:
        logging.warning("no --aligner or --context given: every visual_context will be empty (text-only data)")
    if args.push_to_hub and speaks:
        try:
            # Before any work: a long run must not find out at its end that it cannot upload.
            check_hub_access(args.push_to_hub, private=args.private, repo_type="dataset", option="--push-to-hub")
        except HubAccessError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    builder = {
        "order": args.order,
        "separator": args.separator,
        "max_words_per_segment": args.max_words_per_segment,
        "max_words": args.max_words,
    }
    try:
        result = preprocess(
            data=args.data,
            out=args.out,
            aligners=args.aligners,
            images_dir=args.images,
            builder_settings=builder,
            entity_types=args.entity_types,
            num_proc=args.num_proc,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            max_pixels=args.max_pixels,
            overwrite=args.overwrite,
            encoding=args.encoding,
            columns=args.columns,
            devices=resolve_devices(args.devices),
            dataset_config=args.dataset_config,
            revision=args.revision,
            dataset_columns={role: getattr(args, f"{role}_column") for role in COLUMN_OPTIONS},
            tag_scheme=args.tag_scheme,
            rename_types=args.rename_types,
            embed_images=args.embed_images,
        )
    except WorkStateError as err:
        if speaks:
            fix = "" if err.rerun_with is None else f"\n  to recover, run: {recovery_command(argv, err.rerun_with)}"
            print(f"error: {err}{fix}", file=sys.stderr)
        return 2
    except (DataFormatError, ValueError, FileNotFoundError) as err:
        if speaks:
            print(f"error: {err}", file=sys.stderr)
        return 2
    if not speaks:
        return 0
    data = json.loads((Path(args.out) / SETTINGS_FILE).read_text(encoding="utf-8"))["data"]
    for split, dataset in result.items():
        with_context = sum(1 for c in dataset["visual_context"] if c)
        errors = sum(1 for e in dataset["alignment_error"] if e)
        print(
            f"{split}: {data[split]['tweets']} tweets in ({source_name(data[split])}), {len(dataset)} out, "
            f"{with_context} with visual context, {errors} with alignment errors"
        )
    if args.push_to_hub:
        from .publish import push_shards

        try:
            url = push_shards(args.out, args.push_to_hub, args.license, args.license_note, private=args.private)
        except HubAccessError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
