"""`optimum-cli export onnx` on an ITA checkpoint writes the folder `python -m ita_onnx export` writes.

One tiny random ITA checkpoint (real MiniLM tokenizer, non-zero CRF scores) is exported once per module by both
commands, each run as a user runs it: a subprocess started outside the checkout, without PYTHONPATH. The CLI is
this venv's real `optimum-cli` entry point, which finds the plugin `optimum/commands/register/register_ita.py`
through optimum's `optimum.commands.register` namespace package. The export is then opened the ways a user
opens it: `ORTModelForITA`, and `pipeline(model=<export>, trust_remote_code=True)` in a process that cannot
import this project at all, so the folder's own remote code is what runs.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from encoding_ita import encode_example, pad_batch
from fresh_process import run_fresh_python
from helpers import REPO, TWEETS, decisive_ita_model

pytest.importorskip("optimum.exporters.onnx", reason="the onnx extra (optimum, optimum-onnx) is not installed")
pytestmark = pytest.mark.onnx

CONTEXT = "a man playing basketball on a court with a crowd"
OPTIMUM_CLI = Path(sys.executable).with_name("optimum-cli")
# The project's own modules: hidden from the process that opens the export, so only the folder's code can run.
PROJECT_MODULES = (
    "configuration_ita",
    "modeling_ita",
    "crf_ita",
    "pipeline_ita",
    "images_ita",
    "aligners_ita",
    "precomputed_ita",
    "visual_context_ita",
    "encoding_ita",
    "pretokenizer_ita",
    "ita_onnx",
    "ita_training",
    "preprocess",
    "train",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_tokenizer):
    """A one-layer random ITA model with emissions and CRF scores large enough to decide the tags, saved."""
    model = decisive_ita_model(minilm_tokenizer)
    folder = tmp_path_factory.mktemp("onnx_cli") / "checkpoint"
    model.save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return model, folder


def run_as_user(command: list, workdir: Path) -> subprocess.CompletedProcess:
    """`command` from `workdir` (outside the checkout), without PYTHONPATH, offline, with its own modules cache."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "hf_modules"))
    result = subprocess.run(
        [str(part) for part in command], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def exports(checkpoint):
    _, folder = checkpoint
    root = folder.parent
    run_as_user(
        [
            OPTIMUM_CLI,
            "export",
            "onnx",
            "--model",
            folder,
            "--task",
            "token-classification",
            "--trust-remote-code",
            root / "cli",
        ],
        root,
    )
    run_as_user([sys.executable, "-m", "ita_onnx", "export", folder, root / "python"], root)
    return {"cli": root / "cli", "python": root / "python"}


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_the_plugin_is_a_module_of_optimums_namespace_package(tmp_path):
    # PEP 420: an __init__.py in our tree would make it a regular package that hides optimum's own modules.
    assert [path for path in (REPO / "optimum").rglob("__init__.py")] == []
    code = textwrap.dedent("""
        import importlib.util, json
        locations = importlib.util.find_spec("optimum.commands.register").submodule_search_locations
        print(json.dumps(sorted(p for p in locations if not p.startswith("__editable__"))))
    """)
    result = run_as_user([sys.executable, "-c", code], tmp_path)
    locations = [Path(path) for path in json.loads(result.stdout.strip().splitlines()[-1])]
    assert REPO / "optimum" / "commands" / "register" in locations
    # optimum-onnx's own `export onnx` registration lives in another folder of the same namespace package.
    assert any((path / "register_export.py").is_file() for path in locations)


def test_cli_and_python_exports_write_the_same_folder(exports):
    cli, python = files(exports["cli"]), files(exports["python"])
    assert {
        "model.onnx",
        "crf.safetensors",
        "config.json",
        "README.md",
        "tokenizer.json",
        "configuration_ita.py",
        "modeling_ita_onnx.py",
        "crf_file.py",
        "pipeline_ita.py",
        "crf_ita.py",
    } <= set(cli)
    assert sorted(cli) == sorted(python)
    assert [name for name in cli if cli[name] != python[name]] == []


def test_crf_file_holds_the_models_crf_scores(exports, checkpoint):
    model, _ = checkpoint
    for folder in exports.values():
        tensors = load_file(str(folder / "crf.safetensors"))
        assert sorted(tensors) == ["end_transitions", "start_transitions", "transitions"]
        for name, tensor in tensors.items():
            assert tensor.abs().min() > 0
            assert torch.equal(tensor, getattr(model.crf, name).detach())


def test_ort_logits_equal_pytorch_on_real_encodings(exports, checkpoint, minilm_tokenizer):
    from ita_onnx import ORTModelForITA

    model, _ = checkpoint
    features = [encode_example(minilm_tokenizer, tweet.split(), CONTEXT, text_view=False) for tweet in TWEETS]
    batch = pad_batch(features, minilm_tokenizer.pad_token_id)
    # Neither the batch size, the token length nor the word count is that of optimum's dummy inputs (2, 16, 7).
    assert batch["input_ids"].shape[0] != 2 and batch["input_ids"].shape[1] > 16 and batch["word_index"].shape[1] > 7
    with torch.no_grad():
        reference = model(**batch).logits
    for folder in exports.values():
        ort_model = ORTModelForITA.from_pretrained(folder)
        assert torch.equal(ort_model.crf.transitions, model.crf.transitions.detach())
        logits = ort_model(**batch).logits
        mask = batch["word_index"] >= 0
        assert (logits - reference)[mask].abs().max().item() <= 1e-5
        assert reference[mask].abs().max().item() > 1


def test_config_names_only_files_the_folder_has(exports, checkpoint):
    from transformers.dynamic_module_utils import get_relative_import_files

    _, source = checkpoint
    folder = exports["cli"]
    text = (folder / "config.json").read_text()
    config = json.loads(text)
    references = list(config["auto_map"].values()) + [entry["impl"] for entry in config["custom_pipelines"].values()]
    modules = [folder / f"{reference.rsplit('.', 1)[0]}.py" for reference in references]
    needed = set(modules) | {Path(f) for module in modules for f in get_relative_import_files(module)}
    assert [path.name for path in needed if not path.is_file()] == []
    # The checkpoint's PyTorch model class would need weights this folder does not have.
    assert config["auto_map"]["AutoModelForTokenClassification"] == "modeling_ita_onnx.ITAOnnxForTokenClassification"
    assert not (folder / "modeling_ita.py").exists()
    assert str(source.parent) not in text


OPEN_WITH_PIPELINE = """
import importlib.abc, json, sys

class HideProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PROJECT_MODULES:
            raise ModuleNotFoundError(f"{name} is hidden: the export must run on its own code", name=name)
        return None

sys.meta_path.insert(0, HideProject())
from transformers import AutoModelForTokenClassification, pipeline

export, checkpoint = sys.argv[1:3]
inputs = [{"tokens": tweet.split(), "visual_context": CONTEXT} for tweet in TWEETS]
results = {}
for name, ner in (("onnx", pipeline(model=export, trust_remote_code=True)),
                  ("onnx_by_task", pipeline("multimodal-ner", model=export, trust_remote_code=True)),
                  ("pytorch", pipeline(model=checkpoint, trust_remote_code=True))):
    results[name] = {"pipeline": type(ner).__module__ + "." + type(ner).__name__,
                     "model": type(ner.model).__module__ + "." + type(ner.model).__name__,
                     "entities": ner(inputs, aggregation_strategy="none")}
auto = AutoModelForTokenClassification.from_pretrained(export, trust_remote_code=True)
results["auto_model"] = type(auto).__module__ + "." + type(auto).__name__
results["project_modules_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in PROJECT_MODULES)
print(json.dumps(results))
"""


def test_pipeline_opens_the_export_on_its_own_code_and_matches_pytorch(exports, checkpoint, tmp_path):
    _, source = checkpoint
    prelude = f"PROJECT_MODULES = {PROJECT_MODULES!r}\nTWEETS = {TWEETS!r}\nCONTEXT = {CONTEXT!r}\n"
    result = run_fresh_python(prelude + OPEN_WITH_PIPELINE, tmp_path, args=[str(exports["cli"]), str(source)])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["project_modules_loaded"] == []
    export_module = f"transformers_modules.{exports['cli'].name}"
    for name in ("onnx", "onnx_by_task"):
        assert report[name]["pipeline"] == f"{export_module}.pipeline_ita.MultimodalNERPipeline"
        assert report[name]["model"] == f"{export_module}.modeling_ita_onnx.ORTModelForITA"
    assert report["auto_model"] == f"{export_module}.modeling_ita_onnx.ORTModelForITA"
    assert report["pytorch"]["model"].endswith("modeling_ita.ITAForTokenClassification")
    reference = report["pytorch"]["entities"]
    assert sum(len(found) for found in reference) >= len(TWEETS)
    for name in ("onnx", "onnx_by_task"):
        for found, expected in zip(report[name]["entities"], reference, strict=True):
            assert [(e["entity"], e["index"], e["start"], e["end"]) for e in found] == [
                (e["entity"], e["index"], e["start"], e["end"]) for e in expected
            ]
            assert max((abs(a["score"] - b["score"]) for a, b in zip(found, expected)), default=0) <= 1e-5


def test_readme_describes_exactly_the_files_of_the_folder(exports):
    folder = exports["cli"]
    readme = (folder / "README.md").read_text()
    named = set(re.findall(r"`([\w.-]+\.(?:onnx|safetensors|json|py))`", readme))
    # Written only by the int8 step, and the README says so.
    int8 = {"model_quantized.onnx", "ort_config.json"}
    present = {path.name for path in folder.iterdir()}
    assert named - int8 <= present
    assert {name for name in present if name.endswith((".py", ".onnx", ".safetensors"))} <= named
    assert int8 <= named and "python -m ita_onnx quantize" in readme
    assert 'pipeline(model="<this folder>", trust_remote_code=True)' in readme
