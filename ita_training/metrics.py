"""Where ITA's entity-level NER metric lives, and loading it (docs/method.md §4).

The metric is the `evaluate` module `ita_seqeval.py` beside this file (see its docstring for what it computes).
It ships inside the package, so it is found in a wheel install as in the checkout, and loads offline::

    >>> import evaluate
    >>> from ita_training.metrics import METRIC_PATH
    >>> metric = evaluate.load(METRIC_PATH)
"""

from pathlib import Path
from typing import Any

import evaluate

METRIC_PATH = str(Path(__file__).with_name("ita_seqeval.py"))


def load_ner_metric(**kwargs: Any) -> evaluate.EvaluationModule:
    """`evaluate.load(METRIC_PATH)`, kept in memory unless told otherwise.

    Args:
        **kwargs: further `evaluate.load` arguments (`experiment_id`, `num_process`, ...).

    Returns:
        The `ita_seqeval` metric: `compute(predictions=..., references=...)` gives its flat dict of scores.
    """
    # Scores of one evaluation fit in memory; evaluate's default writes an Arrow cache file per computation.
    kwargs.setdefault("keep_in_memory", kwargs.get("num_process", 1) == 1)
    return evaluate.load(METRIC_PATH, **kwargs)
