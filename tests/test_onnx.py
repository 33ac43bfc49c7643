"""ONNX export (optimum), the ONNX Runtime model and int8: parity with PyTorch on tweets of varied shapes.

One tiny random ITA model (real MiniLM tokenizer) is exported once per module through the documented command
`python -m ita_onnx export <checkpoint> <out> --int8`; every test reads that export. The batches come from
40 seeded synthetic tweets of 3 to 30 words, most with a caption as visual context, so their batch sizes, token
lengths and word counts all differ from the dummy shapes optimum traced with (batch 2, 16 tokens, 7 words).
"""

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from seqeval.metrics.sequence_labeling import get_entities

from configuration_ita import ITAConfig
from crf_ita import PAD_TAG, marginals_numpy, viterbi_decode_numpy
from encoding_ita import encode_example, pad_batch
from fresh_process import run_fresh_python
from helpers import LABELS, REPO, TWEETS, decisive_ita_model, tiny_encoder_config
from modeling_ita import ITAForTokenClassification

pytest.importorskip("optimum.onnxruntime", reason="the onnx extra (optimum, onnxruntime) is not installed")
pytestmark = pytest.mark.onnx

# Shapes of optimum's dummy inputs at export time (DEFAULT_DUMMY_SHAPES and WordIndexInputGenerator).
EXPORT_SHAPES = {"batch_size": 2, "sequence_length": 16, "num_words": 7}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_tokenizer):
    """A one-layer random ITA model whose emissions and CRF scores are large enough to decide the tags."""
    model = decisive_ita_model(minilm_tokenizer)
    checkpoint = tmp_path_factory.mktemp("onnx") / "checkpoint"
    model.save_pretrained(checkpoint)
    minilm_tokenizer.save_pretrained(checkpoint)
    return model, checkpoint


def run_cli(*arguments, hf_modules):
    """`python -m ita_onnx ...` in a subprocess, as the README documents it."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # The export loads the checkpoint's remote code; a private modules cache keeps other runs' code out.
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(hf_modules))
    result = subprocess.run(
        [sys.executable, "-m", "ita_onnx", *map(str, arguments)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def run_export_cli(checkpoint, output, *options):
    run_cli("export", checkpoint, output, *options, hf_modules=checkpoint.parent / "hf_modules")
    return output


@pytest.fixture(scope="module")
def export_dir(tiny_model):
    _, checkpoint = tiny_model
    return run_export_cli(checkpoint, checkpoint.parent / "onnx", "--int8")


# Tokens of real tweets beside TWEETS' words: hashtags, mentions, URLs, emoji, accents, an invisible character.
TWEET_TOKENS = ["#Raptors", "@NBA", "https://t.co/x7Yq", "🏀", "Café", "Leonard's", "RT", ":", "!", "\u200b", "2017"]
CAPTIONS = [
    "a man in a suit at a podium",
    "a basketball player on a court with a crowd | OCR: RAPTORS 2017",
    "a woman singing on stage in front of a large crowd of people at night",
    "the white house",
]


@pytest.fixture(scope="module")
def varied_tweets(minilm_tokenizer):
    """40 seeded tweets (lists of words) of 3 to 30 words and their visual contexts, 35 of them a caption; with
    their ITA features (the tweet and its context encoded as one sequence)."""
    rng = random.Random(0)
    vocabulary = sorted({word for tweet in TWEETS for word in tweet.split()}) + TWEET_TOKENS
    tweets = [rng.choices(vocabulary, k=length) for length in [30, 3] + [rng.randint(3, 30) for _ in range(38)]]
    contexts = ["" if i % 8 == 7 else rng.choice(CAPTIONS) for i in range(40)]
    features = [
        encode_example(minilm_tokenizer, words, context, text_view=False) for words, context in zip(tweets, contexts)
    ]
    return tweets, contexts, features


def batch_of(features, tokenizer, indices):
    return pad_batch([features[i] for i in indices], tokenizer.pad_token_id)


def entities(tags: np.ndarray, id2label: dict) -> list[list[tuple]]:
    return [get_entities([id2label[t] for t in row if t != PAD_TAG]) for row in tags.tolist()]


def test_cli_export_writes_dynamic_graph_crf_and_int8(export_dir, tiny_model):
    import onnx

    model, _ = tiny_model
    names = {path.name for path in export_dir.iterdir()}
    assert {"model.onnx", "model_quantized.onnx", "crf.safetensors", "config.json", "tokenizer.json"} <= names
    graph = onnx.load(str(export_dir / "model.onnx")).graph
    axes = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in list(graph.input) + list(graph.output)
    }
    assert axes == {
        "input_ids": ["batch_size", "sequence_length"],
        "attention_mask": ["batch_size", "sequence_length"],
        "token_type_ids": ["batch_size", "sequence_length"],
        "word_index": ["batch_size", "num_words"],
        "logits": ["batch_size", "num_words", len(LABELS)],
    }
    # The emissions graph does not contain the CRF: none of its scores is a graph constant.
    constants = [onnx.numpy_helper.to_array(t) for t in graph.initializer]
    transitions = model.crf.transitions.detach().numpy()
    assert not any(c.shape == transitions.shape and np.allclose(c, transitions) for c in constants)


def test_ort_matches_pytorch_emissions_tags_and_entities(export_dir, tiny_model, varied_tweets, minilm_tokenizer):
    from ita_onnx import ORTModelForITA

    model, _ = tiny_model
    tweets, _, features = varied_tweets
    ort_model = ORTModelForITA.from_pretrained(export_dir)
    assert torch.equal(ort_model.crf.transitions, model.crf.transitions.detach())
    longest = max(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    compared_words = 0
    for indices in ([longest], list(range(len(features)))):
        batch = batch_of(features, minilm_tokenizer, indices)
        batch_size, length = batch["input_ids"].shape
        words = batch["word_index"].shape[1]
        assert (batch_size, length, words) != tuple(EXPORT_SHAPES.values())
        assert length > EXPORT_SHAPES["sequence_length"] and words > EXPORT_SHAPES["num_words"]
        with torch.no_grad():
            reference = model(**batch, return_tags=True)
        logits = ort_model(**batch).logits
        assert logits.shape == (batch_size, words, len(LABELS))
        assert (logits - reference.logits).abs().max().item() <= 1e-4
        mask = (batch["word_index"] >= 0).numpy()
        decoding = [p.detach().numpy() for p in ort_model.crf.decoding_parameters()]
        tags = viterbi_decode_numpy(logits.numpy(), mask, *decoding)
        np.testing.assert_array_equal(tags, reference.tags.numpy())
        assert entities(tags, model.config.id2label) == entities(reference.tags.numpy(), model.config.id2label)
        plain = [
            p.detach().numpy()
            for p in (ort_model.crf.transitions, ort_model.crf.start_transitions, ort_model.crf.end_transitions)
        ]
        marginals = marginals_numpy(logits.numpy(), mask, *plain)
        scores = np.take_along_axis(marginals, np.maximum(tags, 0)[:, :, None], axis=2)[:, :, 0] * mask
        np.testing.assert_allclose(scores, reference.tag_scores.numpy(), atol=1e-4)
        compared_words += int(mask.sum())
    # Every word of every tweet was compared: padding does not hide words from the check.
    assert compared_words == len(tweets[longest]) + sum(len(words) for words in tweets)
    # A random model still finds entities, so the entity comparison above compared something.
    assert sum(len(e) for e in entities(reference.tags.numpy(), model.config.id2label)) > 10


def test_pipeline_returns_the_same_entities_with_ort_as_with_pytorch(
    export_dir, tiny_model, varied_tweets, minilm_tokenizer
):
    from ita_onnx import ORTModelForITA
    from pipeline_ita import MultimodalNERPipeline

    model, _ = tiny_model
    tweets, contexts, _ = varied_tweets
    inputs = [{"tokens": words, "visual_context": context} for words, context in zip(tweets, contexts)]
    results = {}
    for name, runner in (("pytorch", model), ("ort", ORTModelForITA.from_pretrained(export_dir))):
        ner = MultimodalNERPipeline(model=runner, tokenizer=minilm_tokenizer, aligners=[])
        results[name] = ner(inputs, batch_size=8, aggregation_strategy="none")
    assert len(results["ort"]) == len(tweets)
    assert sum(len(found) for found in results["pytorch"]) > 20
    for reference, ort in zip(results["pytorch"], results["ort"]):
        assert [(e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in ort] == [
            (e["entity"], e["index"], e["word"], e["start"], e["end"]) for e in reference
        ]
        np.testing.assert_allclose([e["score"] for e in ort], [e["score"] for e in reference], atol=1e-4)


def test_int8_graph_is_quantized_and_close_to_fp32(export_dir, varied_tweets, minilm_tokenizer):
    import onnx

    from ita_onnx import ORTModelForITA

    operators = {node.op_type for node in onnx.load(str(export_dir / "model_quantized.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= operators
    assert "MatMulInteger" not in {node.op_type for node in onnx.load(str(export_dir / "model.onnx")).graph.node}
    fp32 = ORTModelForITA.from_pretrained(export_dir)
    int8 = ORTModelForITA.from_pretrained(export_dir, file_name="model_quantized.onnx")
    *_, features = varied_tweets
    batch = batch_of(features, minilm_tokenizer, range(len(features)))
    reference, quantized = fp32(**batch).logits, int8(**batch).logits
    mask = batch["word_index"] >= 0
    error = (quantized - reference).abs()[mask]
    assert error.max().item() > 0, "the int8 graph computed exactly the fp32 emissions: it was not quantized"
    assert error.mean().item() < 0.05 * reference[mask].abs().mean().item()
    decoding = [p.numpy() for p in fp32.crf.decoding_parameters()]
    tags = [viterbi_decode_numpy(x.numpy(), mask.numpy(), *decoding)[mask.numpy()] for x in (reference, quantized)]
    assert (tags[0] == tags[1]).mean() >= 0.95


OPEN_INT8_WITH_PIPELINE = """
import json, sys
from transformers import pipeline

ner = pipeline(model=sys.argv[1], trust_remote_code=True, model_kwargs={"file_name": "model_quantized.onnx"})
inputs = json.loads(open(sys.argv[2]).read())
print(json.dumps({"graph": ner.model.path.name, "entities": ner(inputs, aggregation_strategy="none")}))
"""


def test_pipeline_opens_the_int8_graph_of_an_export_by_file_name(export_dir, varied_tweets, minilm_tokenizer, tmp_path):
    """`pipeline(model=<export>, trust_remote_code=True, model_kwargs={"file_name": ...})`, as the README says."""
    from ita_onnx import ORTModelForITA
    from pipeline_ita import MultimodalNERPipeline

    tweets, contexts, _ = varied_tweets
    inputs = [{"tokens": words, "visual_context": context} for words, context in zip(tweets[:12], contexts[:12])]
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))
    result = run_fresh_python(OPEN_INT8_WITH_PIPELINE, tmp_path, args=[str(export_dir), str(tmp_path / "inputs.json")])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["graph"] == "model_quantized.onnx"
    int8 = ORTModelForITA.from_pretrained(export_dir, file_name="model_quantized.onnx")
    ner = MultimodalNERPipeline(model=int8, tokenizer=minilm_tokenizer, aligners=[])
    expected = ner(inputs, aggregation_strategy="none")
    assert sum(len(found) for found in expected) > 5
    for found, reference in zip(report["entities"], expected, strict=True):
        assert [(e["entity"], e["index"], e["start"], e["end"]) for e in found] == [
            (e["entity"], e["index"], e["start"], e["end"]) for e in reference
        ]
        np.testing.assert_allclose([e["score"] for e in found], [e["score"] for e in reference], atol=1e-6)


def test_save_pretrained_round_trip_keeps_graph_and_crf(export_dir, tmp_path, varied_tweets, minilm_tokenizer):
    from ita_onnx import ORTModelForITA

    model = ORTModelForITA.from_pretrained(export_dir, file_name="model_quantized.onnx")
    model.save_pretrained(tmp_path / "copy")
    names = {p.name for p in (tmp_path / "copy").iterdir()}
    assert {"model_quantized.onnx", "crf.safetensors", "config.json", "README.md"} <= names
    # The remote code the config names (runtime, pipeline and their imports) travels with the copy, unchanged.
    code = {p.name: p.read_bytes() for p in export_dir.glob("*.py")}
    assert {"modeling_ita_onnx.py", "crf_file.py", "pipeline_ita.py", "configuration_ita.py"} <= set(code)
    assert {p.name: p.read_bytes() for p in (tmp_path / "copy").glob("*.py")} == code
    assert (
        json.loads((tmp_path / "copy" / "config.json").read_text())["auto_map"]
        == json.loads((export_dir / "config.json").read_text())["auto_map"]
    )
    copy = ORTModelForITA.from_pretrained(tmp_path / "copy", file_name="model_quantized.onnx")
    assert copy.config.labels == LABELS and copy.config.crf_bio_constraints
    for name in ("transitions", "start_transitions", "end_transitions"):
        assert torch.equal(getattr(copy.crf, name), getattr(model.crf, name))
    batch = batch_of(varied_tweets[2], minilm_tokenizer, range(5))
    assert torch.equal(copy(**batch).logits, model(**batch).logits)


def test_ort_model_rejects_inputs_outside_the_graph(export_dir, varied_tweets, minilm_tokenizer):
    from ita_onnx import ORTModelForITA

    model = ORTModelForITA.from_pretrained(export_dir)
    batch = batch_of(varied_tweets[2], minilm_tokenizer, range(2))
    with pytest.raises(ValueError, match="text-only view"):
        model(**batch, text_input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="exported with `token_type_ids`"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], word_index=batch["word_index"])


def test_xlmr_style_export_takes_no_token_type_ids_and_matches_pytorch(tmp_path, tiny_xlmr_tokenizer):
    """The paper's encoder family: an XLM-R tokenizer makes no token_type_ids, so the graph must not ask for them.

    Exported without `--int8`, then quantized afterwards by `python -m ita_onnx quantize --target avx2`.
    """
    import onnx

    from ita_onnx import ORTModelForITA

    torch.manual_seed(0)
    config = ITAConfig(encoder_config=tiny_encoder_config("xlm-roberta", len(tiny_xlmr_tokenizer)), labels=LABELS)
    model = ITAForTokenClassification(config).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    tiny_xlmr_tokenizer.save_pretrained(tmp_path / "checkpoint")
    ort_model = ORTModelForITA.from_pretrained(run_export_cli(tmp_path / "checkpoint", tmp_path / "onnx"))
    assert set(ort_model.input_names) == {"input_ids", "attention_mask", "word_index"}
    features = [
        encode_example(tiny_xlmr_tokenizer, tweet.split(), "a man on a court", max_length=100) for tweet in TWEETS
    ]
    batch = pad_batch(features, tiny_xlmr_tokenizer.pad_token_id)
    assert "token_type_ids" not in batch
    with torch.no_grad():
        reference = model(batch["input_ids"], batch["word_index"], batch["attention_mask"]).logits
    logits = ort_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], word_index=batch["word_index"]
    ).logits
    assert (logits - reference).abs().max().item() <= 1e-4

    assert not (tmp_path / "onnx" / "model_quantized.onnx").exists()
    run_cli("quantize", tmp_path / "onnx", "--target", "avx2", hf_modules=tmp_path / "hf_modules")
    operators = {node.op_type for node in onnx.load(str(tmp_path / "onnx" / "model_quantized.onnx")).graph.node}
    assert "MatMulInteger" in operators
    int8 = ORTModelForITA.from_pretrained(tmp_path / "onnx", file_name="model_quantized.onnx")
    quantized = int8(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], word_index=batch["word_index"]
    ).logits
    assert 0 < (quantized - logits).abs().max().item() < 0.1 * logits.abs().max().item()


def test_export_refuses_a_checkpoint_that_is_not_ita(minilm_dir, tmp_path):
    from ita_onnx import export_ita

    with pytest.raises(ValueError, match="not an ITA model"):
        export_ita(minilm_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Makes optimum, onnxruntime and onnx look uninstalled: the path finder no longer sees them, so find_spec
# returns None (as transformers' availability checks expect) and importing them raises ModuleNotFoundError.
BLOCK_ONNX_EXTRA = """
import sys
from importlib.machinery import PathFinder

class HideOnnxExtra(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in ("optimum", "onnxruntime", "onnx"):
            return None
        return PathFinder.find_spec(name, path, target)

sys.meta_path[:] = [HideOnnxExtra if finder is PathFinder else finder for finder in sys.meta_path]
"""


def test_model_pipeline_and_ita_onnx_import_without_the_onnx_extra(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_ONNX_EXTRA)
    code = textwrap.dedent("""
        import importlib.util, json, sys
        assert all(importlib.util.find_spec(name) is None for name in ("optimum", "onnxruntime", "onnx"))
        import configuration_ita, crf_ita, encoding_ita, modeling_ita, pipeline_ita, ita_onnx
        try:
            ita_onnx.ORTModelForITA
        except ImportError as error:
            message = str(error)
        print(json.dumps({"message": message,
                          "leaked": sorted(m for m in sys.modules if m.split(".")[0] in ("optimum", "onnxruntime", "onnx"))}))
    """)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO)])
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    assert "pip install 'ita-mner[onnx]'" in report["message"]
    cli = subprocess.run(
        [sys.executable, "-m", "ita_onnx", "export", "a", "b"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode != 0 and "pip install 'ita-mner[onnx]'" in cli.stderr
