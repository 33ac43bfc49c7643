"""A tiny MNER dataset as it lives in `datasets` (on the Hub or saved to disk): an `Image` column of rendered signs
that OCR reads exactly, and `ClassLabel` (or string) tags in BIO, IOB1 or BIOES; the tweets are `tiny_shards.TWEETS`."""

import io

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value

from helpers import LABELS, render_text
from tiny_shards import TWEETS

# The text on each tweet's image (None: the tweet has no image); RapidOCR reads each exactly.
SIGNS = ["TORONTO", "PARIS", "LONDON", None, "WEMBLEY", None, "NEW YORK", "BARCELONA"]
SCHEMES = ("BIO", "IOB1", "BIOES")


def png(text: str) -> bytes:
    """The PNG bytes of `text` rendered black on white."""
    buffer = io.BytesIO()
    render_text(text).save(buffer, format="PNG")
    return buffer.getvalue()


def convert_bio(tags: list[str], scheme: str) -> list[str]:
    """BIO tags in another scheme: IOB1 starts an entity with I- (B- only right after one of the same type); BIOES
    marks one-word entities S- and ends longer ones with E-."""
    out = []
    for i, tag in enumerate(tags):
        prefix, _, entity = tag.partition("-")
        following = tags[i + 1] if i + 1 < len(tags) else "O"
        before = tags[i - 1] if i else "O"
        if tag == "O" or scheme == "BIO":
            out.append(tag)
        elif scheme == "IOB1":
            touching = prefix == "B" and before != "O" and before[2:] == entity
            out.append(f"{'B' if touching else 'I'}-{entity}")
        else:
            continues = following == f"I-{entity}"
            out.append(f"{('B' if continues else 'S') if prefix == 'B' else ('I' if continues else 'E')}-{entity}")
    return out


def scheme_labels(scheme: str) -> list[str]:
    """LABELS' types in `scheme`: O, then each type's prefixes in LABELS' order."""
    prefixes = {"BIO": "BI", "IOB1": "BI", "BIOES": "BIES"}[scheme]
    types = list(dict.fromkeys(label[2:] for label in LABELS if label != "O"))
    return ["O"] + [f"{prefix}-{entity}" for entity in types for prefix in prefixes]


def tweet_rows(indices: range, scheme: str = "BIO", class_label: bool = True) -> dict[str, list]:
    """Columns `id`, `tokens`, `ner_tags` and `image` ({bytes, path}, None without a sign) of TWEETS[indices]."""
    names = scheme_labels(scheme)
    rows: dict[str, list] = {"id": [], "tokens": [], "ner_tags": [], "image": []}
    for i in indices:
        text, tags, _ = TWEETS[i]
        converted = convert_bio(tags.split(), scheme)
        rows["id"].append(f"t{i}")
        rows["tokens"].append(text.split())
        rows["ner_tags"].append([names.index(tag) for tag in converted] if class_label else converted)
        rows["image"].append({"bytes": png(SIGNS[i]), "path": f"sign{i}.png"} if SIGNS[i] else None)
    return rows


def tiny_mner_dataset(scheme: str = "BIO", class_label: bool = True) -> DatasetDict:
    """train (all 8 TWEETS), validation (the first 4) and test (the last 4), with an `Image` column of signs."""
    tags = ClassLabel(names=scheme_labels(scheme)) if class_label else Value("string")
    features = Features(
        {"id": Value("string"), "tokens": Sequence(Value("string")), "ner_tags": Sequence(tags), "image": Image()}
    )
    halves = {"train": range(8), "validation": range(4), "test": range(4, 8)}
    return DatasetDict(
        {
            split: Dataset.from_dict(tweet_rows(rows, scheme, class_label), features=features)
            for split, rows in halves.items()
        }
    )
