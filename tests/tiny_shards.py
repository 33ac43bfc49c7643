"""Tiny training shards in the column schema `python -m preprocess` writes, for the tests that train a model."""

import json
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict

from aligners_ita import SEGMENTS
from helpers import LABELS
from preprocess.align import output_features
from preprocess.shards import SETTINGS_FILE
from visual_context_ita import VisualContextBuilder

# (tweet, tags, caption): like the BLIP-2 shards, the only segment is a precomputed caption, and not every
# tweet has one.
TWEETS = [
    ("Kawhi Leonard wins the vote in Toronto", "B-PER I-PER O O O O B-LOC", "a basketball player on a court"),
    ("Obama visits Paris today", "B-PER O B-LOC O", "a man in a suit waving"),
    ("Apple opens a store in London", "B-ORG O O O O B-LOC", "a glass building with a logo"),
    ("RT @NBA : Warriors beat the Lakers", "O O O B-ORG O O B-ORG", ""),
    ("Taylor Swift sings at Wembley", "B-PER I-PER O O B-LOC", "a woman singing on stage"),
    ("Google and Microsoft shares fall", "B-ORG O B-ORG O O", ""),
    ("Happy Christmas from New York", "O B-MISC O B-LOC I-LOC", "a christmas tree in a city"),
    ("Messi scores for Barcelona again", "B-PER O O B-ORG O", "a soccer player celebrating"),
]
CAPTIONED = sum(1 for _, _, caption in TWEETS if caption)
# The other segments of every captioned tweet in `tiny_rows(all_segments=True)`.
OBJECTS, OCR = ["shirt", "ball"], ["SALE"]
FEATURES = output_features(ClassLabel(names=LABELS))


def tiny_rows(all_segments: bool = False) -> dict[str, list]:
    """The columns of `preprocess.align.output_features` for the 8 TWEETS, as `python -m preprocess` writes them.

    The only segment is the caption (the others are empty) unless `all_segments`, which also gives each
    captioned tweet OBJECTS and OCR; `visual_context` and `context_sources` are what `VisualContextBuilder` makes
    of the segments.
    """
    builder = VisualContextBuilder()
    rows: dict[str, list] = {name: [] for name in FEATURES}
    for i, (text, tags, caption) in enumerate(TWEETS):
        segments = {**{name: [] for name in SEGMENTS}, "caption": [caption] if caption else []}
        if caption and all_segments:
            segments.update(objects=OBJECTS, ocr=OCR)
        context, sources = builder.build(segments)
        rows["id"].append(str(i))
        rows["tokens"].append(text.split())
        rows["ner_tags"].append([LABELS.index(tag) for tag in tags.split()])
        rows["image_id"].append(f"img{i}")
        rows["image"].append(f"img{i}.jpg")
        for name, pieces in segments.items():
            rows[name].append(pieces)
        rows["visual_context"].append(context)
        rows["context_sources"].append([f"{name}:precomputed" for name in sources])
        rows["alignment_error"].append("")
    return rows


def dev_and_test(rows: dict[str, list]) -> dict[str, dict[str, list]]:
    """The `validation` (the first 4 tweets) and `test` (the last 4) splits of `tiny_rows`-style columns."""
    return {
        "validation": {name: column[:4] for name, column in rows.items()},
        "test": {name: column[4:] for name, column in rows.items()},
    }


def save_splits(folder: Path, **splits: dict[str, list]) -> Path:
    """Saves `tiny_rows`-style column dicts as the named splits of a DatasetDict in `folder`."""
    DatasetDict({name: Dataset.from_dict(rows, features=FEATURES) for name, rows in splits.items()}).save_to_disk(
        str(folder)
    )
    return folder


def write_caption_shards(folder: Path) -> Path:
    """Saves train (all 8 tweets), validation (the first 4) and test (the last 4) of `tiny_rows()` to `folder`,
    with its settings file."""
    rows = tiny_rows()
    save_splits(folder, train=rows, **dev_and_test(rows))
    settings = {"aligners": [], "builder": VisualContextBuilder().to_dict()}
    (folder / SETTINGS_FILE).write_text(json.dumps(settings), encoding="utf-8")
    return folder
