"""Tiny training shards in the column schema `python -m preprocess` writes, for the tests that train a model."""

import json
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict

from alignment_ita import VisualContextBuilder
from helpers import LABELS
from preprocess.align import output_features
from preprocess.shards import SETTINGS_FILE

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


def write_caption_shards(folder: Path) -> Path:
    """Saves train (all 8 tweets), validation (the first 4) and test (the last 4) to `folder`, with its settings file.

    Every column of `preprocess.align.output_features` is there: `caption` holds the caption, `objects` and
    `ocr` are empty, and `visual_context` / `context_sources` are what `VisualContextBuilder` makes of that.
    """
    builder = VisualContextBuilder()
    rows: dict[str, list] = {name: [] for name in output_features(ClassLabel(names=LABELS))}
    for i, (text, tags, caption) in enumerate(TWEETS):
        segments = {"caption": [caption] if caption else [], "objects": [], "ocr": []}
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
    split = Dataset.from_dict(rows, features=output_features(ClassLabel(names=LABELS)))
    DatasetDict({"train": split, "validation": split.select(range(4)), "test": split.select(range(4, 8))}).save_to_disk(
        str(folder)
    )
    (folder / SETTINGS_FILE).write_text(json.dumps({"aligners": [], "builder": builder.to_dict()}), encoding="utf-8")
    return folder
