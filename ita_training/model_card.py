"""The README.md model card of a trained ITA model, rendered offline from the top-level `model_card.md` template.

Structure after SpanMarker's cards: YAML metadata (with `model-index` for both inference modes), model
details, labels, data and visual-context sources, usage (pipeline, ONNX), results, hyper-parameters,
limitations, citation. Rendering uses huggingface_hub's `ModelCard.from_template` (Jinja), never the network.
"""

import platform
from pathlib import Path
from typing import Any, Optional, Union

import huggingface_hub
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"
MODES = {"with_context": "with visual context", "text_only": "text only"}
TASK = {"task_type": "token-classification", "task_name": "Multimodal Named Entity Recognition"}


def metrics_table(metrics: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Rows `{mode, precision, recall, f1, strict_f1, per_type}` for both modes, scores in percent."""
    rows = []
    for mode, title in MODES.items():
        key = f"{prefix}_{mode}_"
        if f"{key}f1" not in metrics:
            continue
        types = sorted(name[len(key):-len("_f1")] for name in metrics
                       if name.startswith(key) and name.endswith("_f1") and name != f"{key}f1" and name != f"{key}strict_f1")
        rows.append({
            "mode": title,
            **{name: 100 * metrics[key + name] for name in ("precision", "recall", "f1", "strict_f1")},
            "per_type": {entity: 100 * metrics[f"{key}{entity}_f1"] for entity in types},
        })
    return rows


def render_model_card(
    config,
    encoder: str,
    dataset_name: str,
    dataset_sizes: dict[str, int],
    context_columns: list[str],
    hyperparameters: dict[str, Any],
    eval_metrics: dict[str, Any],
    test_metrics: Optional[dict[str, Any]] = None,
    model_id: Optional[str] = None,
    template_path: Union[str, Path] = TEMPLATE,
) -> ModelCard:
    """Renders the model card of a trained model.

    Args:
        config: the model's `ITAConfig` (labels, CVA settings, context order and aligners).
        encoder: the encoder name or path the model was built on.
        dataset_name: name of the training data, e.g. the shards folder's name.
        dataset_sizes: tweets per split used.
        context_columns: the segments the visual context was built from ([] for text only).
        hyperparameters: training settings to list.
        eval_metrics, test_metrics: outputs of `ITATrainer.evaluate_modes` (`eval_*`, `test_*` keys).
        model_id: the Hub repository id, used in the usage snippets (a placeholder when None).
        template_path: the Jinja template.
    """
    model_id = model_id or "path/to/this/model"
    results = test_metrics if test_metrics is not None else eval_metrics
    prefix, split = ("test", "test") if test_metrics is not None else ("eval", "validation")
    eval_results = [
        EvalResult(
            # huggingface_hub groups results by task, dataset type, config and split: the mode goes in the
            # config so that the two modes stay two results.
            **TASK, dataset_type=dataset_name, dataset_name=f"{dataset_name} ({title})", dataset_config=mode,
            dataset_split=split,
            metric_type=metric, metric_name=f"{metric.capitalize()} ({title})", metric_value=results[f"{prefix}_{mode}_{metric}"],
        )
        for mode, title in MODES.items() for metric in ("f1", "precision", "recall")
        if f"{prefix}_{mode}_{metric}" in results
    ]
    card_data = ModelCardData(
        model_name=f"ITA on {dataset_name}",
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="token-classification",
        base_model=encoder if not Path(encoder).exists() else None,
        tags=["ita", "multimodal-ner", "named-entity-recognition", "token-classification", "crf", "twitter"],
        metrics=["precision", "recall", "f1"],
        eval_results=eval_results,
    )
    entity_types = sorted({label[2:] for label in config.labels if label != "O"})
    encoder_config = config.encoder_config
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=card_data.model_name,
        model_id=model_id,
        encoder=encoder,
        encoder_shape=f"{encoder_config.model_type}, {encoder_config.num_hidden_layers} layers, "
                      f"hidden size {encoder_config.hidden_size}",
        dataset_name=dataset_name,
        dataset_sizes=dataset_sizes,
        labels=config.labels,
        entity_types=entity_types,
        context_columns=context_columns,
        context_order=config.context_order,
        context_separator=config.context_separator,
        max_context_tokens=config.max_context_tokens,
        aligners=config.aligners,
        precomputed_context=any(spec.get("precomputed") for spec in config.aligners),
        cva=hyperparameters.get("cva", False),
        cva_temperature=config.cva_temperature,
        cva_weight=config.cva_weight,
        hyperparameters=hyperparameters,
        test_rows=metrics_table(test_metrics or {}, "test"),
        eval_rows=metrics_table(eval_metrics, "eval"),
        versions={
            "Python": platform.python_version(), "Transformers": transformers.__version__,
            "PyTorch": torch.__version__, "huggingface_hub": huggingface_hub.__version__,
        },
    )


def write_model_card(folder: Union[str, Path], **kwargs) -> Path:
    """Renders the card (see `render_model_card`) and saves it as `<folder>/README.md`."""
    path = Path(folder) / "README.md"
    render_model_card(**kwargs).save(path)
    return path
