"""A saved ITA checkpoint loads through the Auto classes in a fresh process that cannot see the checkout."""

import json

import pytest
import torch

from configuration_ita import ITAConfig
from encoding_ita import encode_example, pad_batch
from fresh_process import run_fresh_python
from helpers import REPO, TWEETS, tiny_encoder_config
from modeling_ita import ITAForTokenClassification

LOAD_AND_RUN = """
import json, sys, torch
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer
config = AutoConfig.from_pretrained("ckpt", trust_remote_code=True)
model = AutoModelForTokenClassification.from_pretrained("ckpt", trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained("ckpt", trust_remote_code=True)  # transformers 5 reads the config first
batch = torch.load("batch.pt")
with torch.no_grad():
    out = model(**batch, return_tags=True)
torch.save({"logits": out.logits, "tags": out.tags}, "out.pt")
print(json.dumps({
    "config_class": type(config).__module__ + "." + type(config).__name__,
    "model_class": type(model).__module__ + "." + type(model).__name__,
    "checkout_modules": sorted(m for m in ("configuration_ita", "modeling_ita", "crf_ita") if m in sys.modules),
    "labels": [config.id2label[i] for i in range(config.num_labels)],
    "input_ids": tokenizer(["Kawhi", "Leonard"], is_split_into_words=True)["input_ids"],
}))
"""


@pytest.fixture(params=["bert", "xlm-roberta"])
def checkpoint(request, tmp_path, minilm_tokenizer, tiny_xlmr_tokenizer):
    tokenizer = minilm_tokenizer if request.param == "bert" else tiny_xlmr_tokenizer
    torch.manual_seed(0)
    config = ITAConfig(
        encoder_config=tiny_encoder_config(request.param, len(tokenizer)), labels=["O", "B-PER", "I-PER"]
    )
    model = ITAForTokenClassification(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    features = [encode_example(tokenizer, t.split(), "a man on a court", max_length=100) for t in TWEETS]
    batch = pad_batch(features, tokenizer.pad_token_id)
    torch.save(batch, tmp_path / "batch.pt")
    return tmp_path, model, tokenizer, batch


def test_fresh_process_loads_remote_code_with_identical_logits(checkpoint):
    workdir, model, tokenizer, batch = checkpoint
    saved = json.loads((workdir / "ckpt" / "config.json").read_text())
    assert saved["auto_map"] == {
        "AutoConfig": "configuration_ita.ITAConfig",
        "AutoModelForTokenClassification": "modeling_ita.ITAForTokenClassification",
    }
    for name in ("configuration_ita.py", "modeling_ita.py", "crf_ita.py"):
        assert (workdir / "ckpt" / name).is_file(), name
    result = run_fresh_python(LOAD_AND_RUN, workdir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["config_class"].startswith("transformers_modules.") and report["config_class"].endswith(".ITAConfig")
    assert report["model_class"].startswith("transformers_modules.")
    assert report["model_class"].endswith("modeling_ita.ITAForTokenClassification")
    assert report["checkout_modules"] == [], "the remote code fell back to absolute imports"
    assert report["labels"] == ["O", "B-PER", "I-PER"]
    assert report["input_ids"] == tokenizer(["Kawhi", "Leonard"], is_split_into_words=True)["input_ids"]
    fresh = torch.load(workdir / "out.pt")
    with torch.no_grad():
        own = model(**batch, return_tags=True)
    assert torch.equal(fresh["logits"], own.logits)
    assert torch.equal(fresh["tags"], own.tags)


def test_without_trust_remote_code_transformers_refuses_clearly(checkpoint):
    workdir = checkpoint[0]
    code = (
        "from transformers import AutoModelForTokenClassification\n"
        "AutoModelForTokenClassification.from_pretrained('ckpt')\n"
    )
    result = run_fresh_python(code, workdir)
    assert result.returncode != 0
    assert "trust_remote_code=True" in result.stderr
    assert "contains custom code" in result.stderr
    # The refusal comes before any of our code runs.
    assert 'modeling_ita.py", line' not in result.stderr and 'configuration_ita.py", line' not in result.stderr


def test_remote_code_files_need_only_torch_numpy_and_transformers():
    # transformers refuses to load remote code if any import statement in these files (outside try blocks,
    # inside functions included) names a package that is not installed: a checkpoint must load with just these.
    import sys

    from transformers.dynamic_module_utils import get_imports

    files = sorted(REPO.glob("*_ita.py"))
    assert {"configuration_ita.py", "modeling_ita.py", "crf_ita.py", "pipeline_ita.py"} <= {f.name for f in files}
    for path in files:
        needed = set(get_imports(path)) - set(sys.stdlib_module_names)
        assert needed <= {"torch", "numpy", "transformers"}, (path.name, needed)


@pytest.mark.parametrize("entry", ["configuration_ita.py", "modeling_ita.py", "pipeline_ita.py"])
def test_every_module_an_entry_file_needs_is_one_it_imports_itself(entry):
    # Loading from a local folder, transformers 4 copies into its module cache only the files the entry module
    # (named by `auto_map` / `custom_pipelines`) imports itself, not what those import in turn: a sibling reached only
    # through another sibling would be missing in a fresh process.
    from transformers.dynamic_module_utils import get_relative_imports

    direct = set(get_relative_imports(REPO / entry))
    reachable, pending = set(), list(direct)
    while pending:
        module = pending.pop()
        if module not in reachable:
            reachable.add(module)
            pending.extend(get_relative_imports(REPO / f"{module}.py"))
    assert reachable - {entry[:-3]} <= direct, f"{entry} must import {sorted(reachable - direct)} itself"
    if entry == "pipeline_ita.py":
        assert {"visual_context_ita", "precomputed_ita", "aligners_ita", "images_ita", "crf_ita"} <= direct
