"""A checkpoint gives the same entities and scores on both supported stacks, loaded the way a user loads it.

The pinned stack (transformers 4.57, `.venv`) and the newest one (transformers 5.x, `.venv-latest`) each load a
checkpoint folder copied away from the checkout, in a fresh process, through `pipeline(model=...)`; each re-saves
it, and each loads the other's re-saved folder. The CRF scores were set to non-zero values before saving, so a
stack that re-initialises them (transformers 5 builds models on the meta device) or fills the constraint masks
with garbage fails here.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from crf_ita import bio_transition_constraints
from fresh_process import run_fresh_python
from helpers import PIPELINE_LABELS as LABELS
from helpers import REPO, TWEETS, tiny_ita_model
from modeling_ita import ITAForTokenClassification

STACKS = {"pinned": REPO / ".venv" / "bin" / "python", "latest": REPO / ".venv-latest" / "bin" / "python"}

TAG_AND_RESAVE = """
import json, sys, warnings
warnings.simplefilter("always")
import torch, transformers
from transformers import pipeline

ckpt, resave, tweets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with warnings.catch_warnings(record=True) as caught:
    ner = pipeline(model=ckpt, trust_remote_code=True)
    # Every word with its tag and score; the second tweet with a visual context, so x' differs from x.
    words = ner(tweets, aggregation_strategy="none", ignore_labels=[])
    with_context = ner(tweets[1], visual_context="a man in a suit at a podium", aggregation_strategy="none", ignore_labels=[])
crf = ner.model.crf
if resave != "-":
    ner.model.save_pretrained(resave)
    ner.tokenizer.save_pretrained(resave)
print(json.dumps({
    "transformers": transformers.__version__,
    "pipeline": type(ner).__name__,
    "crf": [t.tolist() for t in (crf.transitions, crf.start_transitions, crf.end_transitions)],
    "allowed": crf.allowed.tolist(), "allowed_start": crf.allowed_start.tolist(),
    "entities": words + [with_context],
    "warnings": sorted({str(w.message)[:200] for w in caught if "ita" in (w.filename or "")}),
}))
"""


def stack_python(name: str) -> Path:
    python = STACKS[name]
    if not python.exists():
        pytest.skip(f"the {name} stack is not installed at {python.parent.parent} (`make test` installs both)")
    return python


def tag_and_resave(python: Path, checkpoint: Path, resave: Path | None, workdir: Path) -> dict:
    args = [str(checkpoint), str(resave or "-"), json.dumps(TWEETS)]
    # A modules cache of its own per run: the two transformers versions lay theirs out differently.
    workdir = workdir / f"run-{len(list(workdir.glob('run-*')))}"
    workdir.mkdir()
    result = run_fresh_python(TAG_AND_RESAVE, workdir, python=str(python), args=args)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_same_tagging(actual: dict, expected: dict) -> None:
    def key(entity):
        return {name: value for name, value in entity.items() if name != "score"}

    assert [[key(e) for e in r] for r in actual["entities"]] == [[key(e) for e in r] for r in expected["entities"]]
    actual_scores = [e["score"] for r in actual["entities"] for e in r]
    expected_scores = [e["score"] for r in expected["entities"] for e in r]
    assert actual_scores == pytest.approx(expected_scores, abs=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_tokenizer) -> tuple[Path, ITAForTokenClassification]:
    """A checkpoint folder with non-zero CRF scores, copied away from where it was written."""
    written = tmp_path_factory.mktemp("written") / "ckpt"
    model = tiny_ita_model(minilm_tokenizer, seed=3)
    model.save_pretrained(written)
    minilm_tokenizer.save_pretrained(written)
    copied = tmp_path_factory.mktemp("user") / "my-ita-model"
    shutil.copytree(written, copied)
    shutil.rmtree(written)
    return copied, model


def test_both_stacks_load_the_same_model_and_tag_identically(checkpoint, tmp_path):
    folder, model = checkpoint
    reports, resaved = {}, {}
    for name in STACKS:
        resaved[name] = tmp_path / f"resaved-{name}"
        reports[name] = tag_and_resave(stack_python(name), folder, resaved[name], tmp_path)
    assert reports["pinned"]["transformers"].startswith("4.") and reports["latest"]["transformers"].startswith("5.")
    allowed, allowed_start = bio_transition_constraints(LABELS)
    expected_crf = [t.tolist() for t in (model.crf.transitions, model.crf.start_transitions, model.crf.end_transitions)]
    for name, report in reports.items():
        assert report["pipeline"] == "MultimodalNERPipeline", name
        # Loaded exactly: the learned scores, and the constraint masks rebuilt from the labels.
        for loaded, saved in zip(report["crf"], expected_crf):
            assert torch.equal(torch.tensor(loaded), torch.tensor(saved)), name
        assert report["allowed"] == allowed.tolist() and report["allowed_start"] == allowed_start.tolist(), name
        assert report["warnings"] == [], (name, report["warnings"])
    # The decoding is not trivial: some words get entity tags.
    assert any(e["entity"] != "O" for r in reports["pinned"]["entities"] for e in r)
    assert_same_tagging(reports["latest"], reports["pinned"])
    # Each stack's re-saved folder, opened by the other stack, still gives the same answers.
    assert_same_tagging(tag_and_resave(stack_python("pinned"), resaved["latest"], None, tmp_path), reports["pinned"])
    assert_same_tagging(tag_and_resave(stack_python("latest"), resaved["pinned"], None, tmp_path), reports["pinned"])
