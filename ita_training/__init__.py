"""Training glue for ITA: data collator, Trainer subclass, offline seqeval metrics, model card and Hub upload.

`train.py` at the top of the repository is the command line built on these pieces.
"""
