"""Offline preprocessing for ITA: read MNER datasets, align their images into text, save Arrow shards.

The data is files (`readers`: UMT, JSONL) or a `datasets` dataset (`datasets_reader`: a Hub id, a `save_to_disk`
folder, objects); the shards can go to the Hub (`publish`). Run `python -m preprocess --help`; the Python entry point
is `preprocess.shards.preprocess`. See docs/preprocessing.md for the input formats, recovery after a kill, the Hub and
running on a cluster.
"""

from .readers import DataFormatError, read_file, read_jsonl, read_umt
from .shards import WorkStateError, preprocess

__all__ = ["DataFormatError", "WorkStateError", "preprocess", "read_file", "read_jsonl", "read_umt"]
