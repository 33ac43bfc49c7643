"""The demo's HTML page: each image beside its tweet, entities highlighted by type, the visual context below."""

import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path

# One colour per common type; other types cycle through the rest.
TYPE_COLOURS = {"PER": "#ffd6a5", "LOC": "#caffbf", "ORG": "#9bf6ff", "MISC": "#bdb2ff", "OTHER": "#bdb2ff"}
EXTRA_COLOURS = ["#ffadad", "#fdffb6", "#a0c4ff", "#ffc6ff"]

STYLE = """
body { font-family: sans-serif; margin: 2em; background: #fafafa; color: #222; }
h1 { font-size: 1.5em; } .summary { color: #555; margin-bottom: 1.5em; }
.card { display: flex; gap: 1.5em; background: white; border: 1px solid #ddd; border-radius: 8px;
        padding: 1em; margin-bottom: 1em; align-items: flex-start; }
.card img { flex: none; width: 220px; max-height: 220px; object-fit: contain; border-radius: 4px; background: #eee; }
.noimage { flex: none; width: 220px; height: 120px; display: flex; align-items: center; justify-content: center;
           background: #eee; color: #888; border-radius: 4px; }
.tweet { font-size: 1.15em; line-height: 1.9; }
.entity { padding: 0.1em 0.3em; border-radius: 4px; }
.entity .type { font-size: 0.65em; font-weight: bold; margin-left: 0.3em; vertical-align: middle; }
.context { margin-top: 0.6em; color: #555; font-size: 0.9em; }
.context b { color: #333; } .title { color: #888; font-size: 0.8em; margin-bottom: 0.3em; }
"""


@dataclass
class ReportItem:
    """One tweet of the report.

    Args:
        title: a short label (e.g. the image id and what the example shows).
        text: the tweet as the pipeline saw it.
        entities: pipeline output with `aggregation_strategy="simple"` (`entity_group`, `start`, `end`, `score`).
        visual_context: the text the image became ("" when none).
        image: the image file, or None for a text-only call.
        context_sources: what the context holds, as "<segment>:<aligner type>" (the pipeline's `context_sources`).
        alignment_error: why the image gave no context or less than it could ("" when nothing went wrong).
    """

    title: str
    text: str
    entities: list[dict] = field(default_factory=list)
    visual_context: str = ""
    image: Path | None = None
    context_sources: list[str] = field(default_factory=list)
    alignment_error: str = ""

    @classmethod
    def of(cls, title: str, text: str, result: dict, image: Path | None = None) -> "ReportItem":
        """The item of a pipeline answer given with `return_visual_context=True`."""
        return cls(
            title,
            text,
            result["entities"],
            result["visual_context"],
            image,
            result["context_sources"],
            result["alignment_error"],
        )


def colour(entity_type: str) -> str:
    if entity_type in TYPE_COLOURS:
        return TYPE_COLOURS[entity_type]
    return EXTRA_COLOURS[sum(map(ord, entity_type)) % len(EXTRA_COLOURS)]


def highlight(text: str, entities: list[dict]) -> str:
    """The tweet as HTML with every entity wrapped in a typed span, using the pipeline's character offsets."""
    pieces, cursor = [], 0
    for entity in sorted(entities, key=lambda e: e["start"]):
        if entity["start"] < cursor:
            raise ValueError(f"overlapping entities in {text!r}: {entities}")
        entity_type = entity["entity_group"]
        pieces.append(html.escape(text[cursor : entity["start"]]))
        pieces.append(
            f'<span class="entity" data-type="{html.escape(entity_type)}" data-score="{entity["score"]:.3f}" '
            f'style="background:{colour(entity_type)}" title="{entity_type} {entity["score"]:.2f}">'
            f'{html.escape(text[entity["start"] : entity["end"]])}<span class="type">{html.escape(entity_type)}</span></span>'
        )
        cursor = entity["end"]
    pieces.append(html.escape(text[cursor:]))
    return "".join(pieces)


def write_report(items: list[ReportItem], path: Path, summary: str) -> Path:
    """Writes the HTML page and copies its images beside it (so the folder can be moved or served as is)."""
    image_dir = path.parent / "report-images"
    image_dir.mkdir(parents=True, exist_ok=True)
    cards = []
    for number, item in enumerate(items):
        if item.image is not None:
            copy = image_dir / f"{number:02d}-{item.image.name}"
            shutil.copyfile(item.image, copy)
            picture = f'<img src="{copy.parent.name}/{copy.name}" alt="{html.escape(item.title)}">'
        else:
            picture = '<div class="noimage">no image</div>'
        context = html.escape(item.visual_context) if item.visual_context else "<i>none: text-only view</i>"
        sources = html.escape(", ".join(item.context_sources)) if item.context_sources else "<i>none</i>"
        problem = (
            f'<div class="context"><b>Why not more:</b> {html.escape(item.alignment_error)}</div>'
            if item.alignment_error
            else ""
        )
        cards.append(
            f'<div class="card">{picture}<div><div class="title">{html.escape(item.title)}</div>'
            f'<div class="tweet">{highlight(item.text, item.entities)}</div>'
            f'<div class="context"><b>Visual context:</b> {context}</div>'
            f'<div class="context"><b>Where it came from:</b> {sources}</div>{problem}</div></div>'
        )
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>ITA demo</title><style>{STYLE}</style></head>'
        f'<body><h1>ITA: multimodal NER demo</h1><div class="summary">{html.escape(summary)}</div>'
        + "\n".join(cards)
        + "</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path
