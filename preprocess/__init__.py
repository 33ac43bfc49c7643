"""Offline preprocessing for ITA: read MNER datasets, align their images into text, save Arrow shards.

Run ``python -m preprocess --help``; the Python entry point is :func:`preprocess.shards.preprocess`.
"""

from .readers import DataFormatError, read_file, read_jsonl, read_umt
from .shards import preprocess

__all__ = ["DataFormatError", "preprocess", "read_file", "read_jsonl", "read_umt"]
