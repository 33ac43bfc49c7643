"""`python -m demo` reusing a checkpoint an older checkout trained: its remote code becomes this checkout's, and the
folder opens with `pipeline(..., trust_remote_code=True)` in a fresh process."""

import json

import pytest

from demo.__main__ import refresh_remote_code
from fresh_process import run_fresh_python
from helpers import REPO, tiny_ita_model
from pipeline_ita import MultimodalNERPipeline

OPEN = """
EVERY_WORD = {"aggregation_strategy": "none", "ignore_labels": []}
import json
from transformers import pipeline
ner = pipeline(model="ckpt", trust_remote_code=True, aligners=[])
print(json.dumps({"module": type(ner).__module__, "entities": ner("Obama visits Paris", visual_context="a man", **EVERY_WORD)}))
"""


def test_a_reused_checkpoint_gets_the_checkouts_remote_code_and_loses_modules_it_no_longer_has(
    tmp_path, minilm_tokenizer, capsys
):
    model = tiny_ita_model(minilm_tokenizer, seed=0)
    model.save_pretrained(tmp_path / "saved-now")
    expected = sorted(path.name for path in (tmp_path / "saved-now").glob("*_ita.py"))
    assert {"images_ita.py", "aligners_ita.py", "precomputed_ita.py", "visual_context_ita.py"} <= set(expected)
    checkpoint = tmp_path / "ckpt"
    model.save_pretrained(checkpoint)
    minilm_tokenizer.save_pretrained(checkpoint)
    # As an older checkout left it: the module since split, a sibling it did not have, the pipeline of its time.
    (checkpoint / "alignment_ita.py").write_text("raise ImportError('the stale module was imported')\n")
    (checkpoint / "images_ita.py").unlink()
    (checkpoint / "pipeline_ita.py").write_text("from .alignment_ita import load_image\n")
    refresh_remote_code(checkpoint)
    assert "updated ['images_ita.py', 'pipeline_ita.py'], removed ['alignment_ita.py']" in capsys.readouterr().out
    assert sorted(path.name for path in checkpoint.glob("*_ita.py")) == expected
    for name in expected:
        assert (checkpoint / name).read_bytes() == (REPO / name).read_bytes(), name
    refresh_remote_code(checkpoint)
    assert capsys.readouterr().out == ""  # up to date: nothing to do

    result = run_fresh_python(OPEN, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules.") and report["module"].endswith("pipeline_ita")
    here = MultimodalNERPipeline(model=model, tokenizer=minilm_tokenizer, aligners=[])
    expected = here("Obama visits Paris", visual_context="a man", aggregation_strategy="none", ignore_labels=[])
    assert len(expected) == 3
    assert [without_score(entity) for entity in report["entities"]] == [without_score(entity) for entity in expected]
    assert [entity["score"] for entity in report["entities"]] == pytest.approx([e["score"] for e in expected], abs=1e-6)


def without_score(entity: dict) -> dict:
    return {key: value for key, value in entity.items() if key != "score"}
