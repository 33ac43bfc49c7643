"""`evaluate` for real: the `ita_seqeval` module loads offline, equals seqeval, and drives `evaluate.evaluator`.

The evaluator test trains MiniLM with `train.py` on `python -m preprocess` shards of a Twitter-2017 subset, then
scores the saved checkpoint with `evaluate.evaluator("token-classification")` in a fresh process, as a user would.
"""

import json
import warnings

import pytest
import transformers
from datasets import load_from_disk
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support
from seqeval.scheme import IOB2
from test_preprocess import write_umt
from test_train import train_args

import train
from fresh_process import run_fresh_python
from ita_training.metrics import METRIC_PATH
from preprocess import read_umt
from preprocess.__main__ import main as preprocess_main
from pretokenizer_ita import TweetPreTokenizer

# Top-level modules of this project (packages and the remote-code files).
PROJECT_MODULES = (
    "ita_training",
    "preprocess",
    "ita_onnx",
    "train",
    "configuration_ita",
    "modeling_ita",
    "crf_ita",
    "encoding_ita",
    "images_ita",
    "aligners_ita",
    "precomputed_ita",
    "visual_context_ita",
    "pipeline_ita",
    "pretokenizer_ita",
)
# (gold, predicted) per case; each exercises one chunk rule of conlleval or seqeval's strict IOB2 mode.
CASES = {
    # conlleval: a gold I-MISC after O starts an entity; strict IOB2: it starts nothing.
    "i_after_o": ([["O", "I-MISC", "O", "B-PER"]], [["O", "B-MISC", "O", "B-PER"]]),
    # An I-LOC after a PER starts a LOC in default mode only; the prediction's B-LOC is valid in both.
    "i_after_another_type": ([["B-PER", "I-LOC", "I-LOC", "O"]], [["B-PER", "B-LOC", "I-LOC", "O"]]),
    # A cut span, a wrong type and a span starting with I-: only exact (type, start, end) matches count.
    "partial_wrong_type_i_start": (
        [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]],
        [["B-PER", "O", "O", "B-ORG"], ["O", "I-ORG", "I-ORG"]],
    ),
    "nothing_predicted": ([["B-PER", "I-PER", "O"], ["O", "B-LOC"]], [["O", "O", "O"], ["O", "O"]]),
    "no_entity_at_all": ([["O", "O"]], [["O", "O"]]),
}


def seqeval_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """The metric's keys, each from seqeval's own scoring function (not its classification report)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on 0/0, scored 0 here as in the metric
        scores = {
            "precision": precision_score(gold, predicted, zero_division=0),
            "recall": recall_score(gold, predicted, zero_division=0),
            "f1": f1_score(gold, predicted, zero_division=0),
            "number": len(get_entities(gold)),
            "strict_precision": precision_score(gold, predicted, mode="strict", scheme=IOB2, zero_division=0),
            "strict_recall": recall_score(gold, predicted, mode="strict", scheme=IOB2, zero_division=0),
            "strict_f1": f1_score(gold, predicted, mode="strict", scheme=IOB2, zero_division=0),
        }
        # Per type, in seqeval's sorted order of the types found in either side.
        types = sorted({kind for kind, _, _ in get_entities(gold) + get_entities(predicted)})
        if types:
            per_type = precision_recall_fscore_support(gold, predicted, average=None, zero_division=0)
            for kind, precision, recall, f1, support in zip(types, *per_type):
                scores.update(
                    {
                        f"{kind}_precision": precision,
                        f"{kind}_recall": recall,
                        f"{kind}_f1": f1,
                        f"{kind}_number": support,
                    }
                )
    return {key: float(value) if not key.endswith("number") else int(value) for key, value in scores.items()}


def test_module_loads_offline_in_a_fresh_process_and_equals_seqeval(tmp_path, monkeypatch):
    """Hub offline, sockets refused, empty caches, checkout off sys.path: the module still loads from its path."""
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    code = (
        "import json, socket, sys\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network access in an offline test')\n"
        "socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse\n"
        "import evaluate\n"
        "try:\n"
        "    evaluate.load('seqeval')\n"
        "except Exception as error:\n"
        "    print('HUB SEQEVAL FAILS', type(error).__name__)\n"
        f"metric = evaluate.load({METRIC_PATH!r})\n"
        "print('LOADED', metric.name, type(metric).__module__)\n"
        # The copy in the modules cache cannot reach the project: the script must not import it.
        f"print('PROJECT', sorted(m for m in sys.modules if m.split('.')[0] in {PROJECT_MODULES!r}) or None)\n"
        f"cases = {CASES!r}\n"
        "print('SCORES', json.dumps({name: metric.compute(predictions=predicted, references=gold)\n"
        "                            for name, (gold, predicted) in cases.items()}))\n"
    )
    result = run_fresh_python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tags = ("HUB", "LOADED", "PROJECT", "SCORES")
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(tags))
    # The Hub's script cannot be fetched here, so what loaded came from the path, copied into the modules cache.
    assert "HUB" in lines, result.stdout
    assert lines["PROJECT"] == "None", lines["PROJECT"]
    name, module = lines["LOADED"].split()
    assert name == "ita_seqeval" and module.startswith("evaluate_modules.metrics.ita_seqeval."), module
    assert list((tmp_path / "hf_modules" / "evaluate_modules" / "metrics" / "ita_seqeval").glob("*/ita_seqeval.py"))
    scores = json.loads(lines["SCORES"])
    for case, (gold, predicted) in CASES.items():
        assert scores[case] == seqeval_scores(gold, predicted), case
    # The cases do tell the two modes apart.
    assert scores["i_after_o"]["f1"] == 1.0 and scores["i_after_o"]["strict_f1"] == pytest.approx(2 / 3)


# --- evaluate.evaluator("token-classification") on a checkpoint trained by train.py ---------------------------

# Tweets of each Twitter-2017 split used: the first ones of train and test, and the first 100 dev tweets
# that the pipeline's tweet pre-tokenizer splits exactly as the data does (see `twitter2017_run`).
SUBSET = {"train": 150, "valid": 100, "test": 200}
# 20 MiniLM steps (trained with the captions, without the CVA view) that learn some entities in under a minute.
FAST_TRAINING = (
    "--num_train_epochs",
    "2",
    "--learning_rate",
    "3e-4",
    "--per_device_train_batch_size",
    "16",
    "--cva",
    "False",
    "--eval_strategy",
    "no",
    "--save_strategy",
    "no",
    "--load_best_model_at_end",
    "False",
)
# What the evaluator adds to the metric's keys.
TIMING_KEYS = {"total_time_in_seconds", "samples_per_second", "latency_in_seconds"}


# An upstream bug, for every pipeline object: evaluate 0.4.6's `Evaluator.prepare_pipeline` (also on its main branch)
# tests `isinstance(pipe, transformers.TFPreTrainedModel)`, and transformers 5 has no TensorFlow classes.
class EvaluatorNeedsTFClassesError(Exception):
    """The evaluator failed on `transformers.TFPreTrainedModel` (see `EVALUATOR_NEEDS_TF_CLASSES`)."""


EVALUATOR_NEEDS_TF_CLASSES = pytest.mark.xfail(
    not hasattr(transformers, "TFPreTrainedModel"),
    raises=EvaluatorNeedsTFClassesError,
    strict=True,
    reason="evaluate's evaluator reads transformers.TFPreTrainedModel, which transformers 5 removed",
)


def split_as_in_the_data(words: list[str]) -> bool:
    """Whether the pipeline's tweet pre-tokenizer splits the evaluator's `" ".join(words)` back into `words`."""
    return [word for word, _ in TweetPreTokenizer().pre_tokenize_str(" ".join(words))] == words


@pytest.fixture(scope="module")
def twitter2017_run(shared_data, minilm_dir, tmp_path_factory):
    """`python -m preprocess` shards (BLIP-2 captions) of a Twitter-2017 subset, MiniLM trained on them by
    train.py, and train.py's results (dev and test, both modes, of the saved weights)."""
    work = tmp_path_factory.mktemp("twitter2017")
    data = work / "data"
    data.mkdir()
    for split, count in SUBSET.items():
        tweets = read_umt(shared_data / "twitter2017" / f"{split}.txt")
        if split == "valid":
            tweets = [tweet for tweet in tweets if split_as_in_the_data(tweet.tokens)]
        write_umt(data / f"{split}.txt", [(t.image.removesuffix(".jpg"), t.tokens, t.tags) for t in tweets[:count]])
    shards = work / "shards"
    captions = shared_data / "captions" / "blip2" / "BLIP2_17.txt"
    # `python -m preprocess`, in this process.
    arguments = ["--data", str(data), "--context", str(captions), "--context-source", "BLIP-2 captions, PGIM release"]
    assert preprocess_main([*arguments, "--out", str(shards)]) == 0
    output_dir = work / "ita-minilm"
    results = train.run(*train.parse_args(train_args(shards, minilm_dir, output_dir, *FAST_TRAINING)))
    return shards, output_dir, results


def evaluator_scores(output_dir, shards, split: str, workdir, pipeline_options: str = "") -> dict:
    """`evaluate.evaluator("token-classification")` on a shards split, run in a fresh process on the
    checkpoint's remote code, with the pipeline opened by task name as the Hub's snippet does.

    The pipeline batches 32 tweets, as train.py's evaluation does, so both encode the same padded batches.
    """
    code = (
        "import json, evaluate\n"
        "from datasets import load_from_disk\n"
        "from tokenizers.pre_tokenizers import WhitespaceSplit\n"
        "from transformers import pipeline\n"
        f"ner = pipeline('token-classification', model={str(output_dir)!r}, trust_remote_code=True, batch_size=32,"
        f" {pipeline_options})\n"
        "assert type(ner).__name__ == 'MultimodalNERPipeline' and ner.task == 'token-classification', (ner, ner.task)\n"
        f"data = load_from_disk({str(shards)!r})[{split!r}]\n"
        f"scores = evaluate.evaluator('token-classification').compute(ner, data=data, metric={METRIC_PATH!r})\n"
        "print('SCORES', json.dumps(scores))\n"
    )
    result = run_fresh_python(code, workdir, timeout=600)
    if "has no attribute TFPreTrainedModel" in result.stderr:
        raise EvaluatorNeedsTFClassesError(result.stderr[-1000:])
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("SCORES "))
    scores = json.loads(line.split(" ", 1)[1])
    assert set(scores) >= TIMING_KEYS
    return {key: value for key, value in scores.items() if key not in TIMING_KEYS}


def text_only_scores(results: dict, prefix: str) -> dict:
    """train.py's text-only scores of one split, under the metric's own key names."""
    start = f"{prefix}_text_only_"
    return {
        key[len(start) :]: value for key, value in results.items() if key.startswith(start) and key != f"{start}runtime"
    }


@EVALUATOR_NEEDS_TF_CLASSES
def test_evaluator_on_the_data_words_gives_exactly_train_py_text_only_scores(twitter2017_run, tmp_path):
    """Split on whitespace, the evaluator's joined text gives back the data's words (no Twitter-2017 token holds
    whitespace), so every score equals train.py's, also over tweets the tweet pre-tokenizer would split otherwise."""
    shards, output_dir, results = twitter2017_run
    assert sum(not split_as_in_the_data(words) for words in load_from_disk(str(shards))["test"]["tokens"]) == 6
    expected = text_only_scores(results["test"], "test")
    # The model learned entities, so equal scores mean equal predictions, not two zeros.
    assert expected["number"] == 393 and expected["f1"] > 0.2, expected
    scores = evaluator_scores(output_dir, shards, "test", tmp_path, "pre_tokenizer=WhitespaceSplit()")
    assert scores == expected


@EVALUATOR_NEEDS_TF_CLASSES
def test_evaluator_with_the_hub_snippet_pipeline_gives_train_py_scores_where_words_agree(twitter2017_run, tmp_path):
    """The default tweet pre-tokenizer re-splits the evaluator's joined text; on dev tweets it splits as the data
    does, so the scores equal train.py's there."""
    shards, output_dir, results = twitter2017_run
    expected = text_only_scores(results["eval"], "eval")
    assert expected["f1"] > 0.2, expected
    assert evaluator_scores(output_dir, shards, "validation", tmp_path) == expected
