"""Half precision: `dtype=` puts the whole model in that dtype, the pipeline decodes in float64 and agrees with float32."""

import copy

import pytest
import torch
from transformers import AutoModelForTokenClassification, pipeline

from helpers import TWEETS, tiny_ita_model

HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_tokenizer):
    folder = tmp_path_factory.mktemp("half") / "ckpt"
    model = tiny_ita_model(minilm_tokenizer, seed=5)
    model.save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_from_pretrained_puts_the_whole_model_in_the_dtype(checkpoint, dtype):
    model = AutoModelForTokenClassification.from_pretrained(checkpoint, trust_remote_code=True, dtype=dtype)
    assert {parameter.dtype for parameter in model.parameters()} == {dtype}
    assert model.encoder.dtype == dtype
    # The CRF keeps its learned scores (rounded to the dtype) and computes in float32.
    reference = AutoModelForTokenClassification.from_pretrained(checkpoint, trust_remote_code=True)
    assert torch.equal(model.crf.transitions, reference.crf.transitions.to(dtype))
    # Computing in float32 means: exactly what a float32 CRF holding the same (rounded) scores computes.
    emissions = torch.randn(2, 5, model.config.num_labels).to(dtype)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    upcast = copy.deepcopy(model.crf).float()
    marginals = model.crf.marginals(emissions, mask)
    assert marginals.dtype == torch.float32
    assert torch.equal(marginals, upcast.marginals(emissions.float(), mask))
    assert torch.equal(model.crf.viterbi_decode(emissions, mask)[0], upcast.viterbi_decode(emissions.float(), mask)[0])
    nll = model.crf.neg_log_likelihood(emissions, torch.zeros(2, 5, dtype=torch.long), mask)
    assert nll.dtype == torch.float32 and torch.isfinite(nll).all()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_pipeline_in_half_precision_agrees_with_float32(checkpoint, dtype):
    full = pipeline(model=str(checkpoint), trust_remote_code=True)
    half = pipeline(model=str(checkpoint), trust_remote_code=True, dtype=dtype)
    assert {parameter.dtype for parameter in half.model.parameters()} == {dtype}
    inputs = TWEETS + [{"text": TWEETS[0], "visual_context": "a basketball player holding a trophy"}]
    expected = full(inputs, aggregation_strategy="none", ignore_labels=[])
    actual = half(inputs, aggregation_strategy="none", ignore_labels=[])
    words = [(e["word"], e["entity"]) for r in expected for e in r]
    agree = sum(a == b for a, b in zip(words, [(e["word"], e["entity"]) for r in actual for e in r]))
    assert len(words) > 30 and agree / len(words) >= 0.9
    # Scores are probabilities computed in float64 from the half-precision emissions.
    assert all(isinstance(e["score"], float) and 0.0 <= e["score"] <= 1.0 for r in actual for e in r)


def test_unknown_dtype_is_transformers_own_error(checkpoint, tmp_path, minilm_dir):
    """The same error a stock transformers model gives for that dtype, not a model half in one dtype."""
    with pytest.raises(Exception) as stock:
        AutoModelForTokenClassification.from_pretrained(minilm_dir, dtype="float17")
    with pytest.raises(Exception) as ours:
        AutoModelForTokenClassification.from_pretrained(checkpoint, trust_remote_code=True, dtype="float17")
    assert (type(ours.value), str(ours.value)) == (type(stock.value), str(stock.value))
