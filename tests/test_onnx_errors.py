"""Broken, incomplete and interrupted ITA ONNX folders: each error names the file and says what to do.

One tiny random ITA checkpoint (real MiniLM tokenizer) is exported once per module with the documented command
`python -m ita_onnx export <checkpoint> <out> --int8 --overwrite`, under umask 027, the way an interrupted user
makes it: over an older folder, killed midway, then run again. Each other test copies that export and breaks
the copy in one way (truncated, missing or mismatched file), then opens it the two documented ways:
`ORTModelForITA.from_pretrained` in this process, and `pipeline(model=<copy>, trust_remote_code=True)` in a
fresh process that runs the copy's own remote code.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from configuration_ita import ITAConfig
from fresh_process import run_fresh_python
from helpers import LABELS, REPO
from modeling_ita import ITAForTokenClassification

pytest.importorskip("optimum.onnxruntime", reason="the onnx extra (optimum, onnxruntime) is not installed")
pytestmark = pytest.mark.onnx

# The umask of the module's export: not the usual 022, so that following it is told apart from a fixed mode.
UMASK = 0o027
REEXPORT = "python -m ita_onnx export <checkpoint> <out>"


def ita_onnx_command(*arguments, workdir: Path, umask: int = 0o022) -> subprocess.Popen:
    """`python -m ita_onnx ...` as a user runs it: no PYTHONPATH, offline, a private HF modules cache."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "hf_modules"))
    return subprocess.Popen(
        [sys.executable, "-m", "ita_onnx", *map(str, arguments)],
        cwd=REPO,
        env=env,
        umask=umask,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_ita_onnx(*arguments, workdir: Path, umask: int = 0o022) -> subprocess.CompletedProcess:
    process = ita_onnx_command(*arguments, workdir=workdir, umask=umask)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_tokenizer) -> Path:
    torch.manual_seed(0)
    encoder = {
        "model_type": "bert",
        "vocab_size": len(minilm_tokenizer),
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
    folder = tmp_path_factory.mktemp("onnx_errors") / "checkpoint"
    ITAForTokenClassification(ITAConfig(encoder_config=encoder, labels=LABELS)).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def hidden(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@pytest.fixture(scope="module")
def interrupted_export(checkpoint) -> dict:
    """The module's export, made as an interrupted user makes it: over an older folder, killed midway, rerun.

    `python -m ita_onnx export <checkpoint> <out> --int8 --overwrite` runs over a folder holding an older,
    broken export; it is killed as soon as its graph is on disk (config, CRF, code, README and the int8 graph
    are still to come), then run again to completion. Both runs use umask 027.
    """
    root, output = checkpoint.parent, checkpoint.parent / "onnx"
    output.mkdir()
    (output / "model.onnx").write_bytes(b"an older export's graph")
    (output / "stale.json").write_text("{}")
    run = {"before": files(output)}
    command = ("export", checkpoint, output, "--int8", "--overwrite")
    process = ita_onnx_command(*command, workdir=root, umask=UMASK)
    deadline = time.monotonic() + 300
    while not list(root.glob(".onnx.partial-*/model.onnx")) and process.poll() is None:
        assert time.monotonic() < deadline, "the export wrote no model.onnx in 300 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    run.update(killed_returncode=process.returncode, after_kill=files(output), hidden_after_kill=hidden(root))
    result = run_ita_onnx(*command, workdir=root, umask=UMASK)
    assert result.returncode == 0, result.stderr[-3000:]
    run.update(output=output, hidden_after_rerun=hidden(root))
    return run


@pytest.fixture(scope="module")
def export_dir(interrupted_export) -> Path:
    return interrupted_export["output"]


def test_killed_export_leaves_the_output_as_it_was_and_the_rerun_replaces_it(interrupted_export):
    run = interrupted_export
    assert run["killed_returncode"] == -signal.SIGKILL, "the export finished before it could be killed"
    # The older folder stayed whole through the kill: the export was being written under a hidden name.
    assert run["after_kill"] == run["before"]
    assert [name.split("-")[0] for name in run["hidden_after_kill"]] == [".onnx.partial"]
    # The rerun neither used nor removed the killed run's folder, and left no folder of its own.
    assert run["hidden_after_rerun"] == run["hidden_after_kill"]
    # The older folder was replaced as a whole: none of its files survive, beside a complete export.
    names = {path.name for path in run["output"].iterdir()}
    assert "stale.json" not in names
    assert {"model.onnx", "model_quantized.onnx", "crf.safetensors", "config.json", "README.md"} <= names
    assert (run["output"] / "model.onnx").read_bytes() != run["before"]["model.onnx"]


def test_every_file_of_an_export_follows_the_umask(export_dir):
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in export_dir.iterdir()}
    assert {"crf.safetensors", "model.onnx", "model_quantized.onnx", "config.json", "configuration_ita.py"} <= set(
        modes
    )
    # 0o666 & ~0o027: safetensors' save_file left crf.safetensors at 0o600, and transformers' copy of the
    # checkpoint's configuration_ita.py carried the source file's mode.
    assert {name: mode for name, mode in modes.items() if mode != 0o640} == {}
    assert stat.S_IMODE(export_dir.stat().st_mode) == 0o750


def truncate(path: Path, size: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:size])


def edit_crf(path: Path, **tensors) -> None:
    """Rewrites crf.safetensors with `tensors` replaced (a None value drops the tensor)."""
    scores = load_file(str(path))
    scores.update(tensors)
    save_file({name: tensor for name, tensor in scores.items() if tensor is not None}, str(path))


def edit_config(path: Path, **values) -> None:
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


FIVE_LABELS = {"id2label": dict(enumerate(LABELS[:5])), "label2id": {label: i for i, label in enumerate(LABELS[:5])}}
FIVE_TAG_CRF = {
    "transitions": torch.zeros(5, 5),
    "start_transitions": torch.zeros(5),
    "end_transitions": torch.zeros(5),
}
QUANTIZE = "python -m ita_onnx quantize {folder}"

# id -> (how the copy is broken, from_pretrained options, error type, file named, what the message must also say)
BROKEN = {
    "crf_truncated": (
        lambda d: truncate(d / "crf.safetensors"),
        {},
        OSError,
        "crf.safetensors",
        ["not a readable safetensors file", REEXPORT],
    ),
    "crf_wrong_shapes": (
        lambda d: edit_crf(d / "crf.safetensors", transitions=torch.zeros(5, 5)),
        {},
        ValueError,
        "crf.safetensors",
        ["transitions (9, 9), start_transitions (9,), end_transitions (9,)", "transitions (5, 5)", REEXPORT],
    ),
    "crf_missing_tensor": (
        lambda d: edit_crf(d / "crf.safetensors", end_transitions=None),
        {},
        ValueError,
        "crf.safetensors",
        ["but holds transitions (9, 9), start_transitions (9,):", REEXPORT],
    ),
    "crf_missing": (lambda d: (d / "crf.safetensors").unlink(), {}, FileNotFoundError, "crf.safetensors", [REEXPORT]),
    # optimum alone loads the int8 graph instead, silently.
    "graph_missing": (lambda d: (d / "model.onnx").unlink(), {}, FileNotFoundError, "model.onnx", [REEXPORT]),
    # optimum alone tries to export the folder again, and fails on trust_remote_code.
    "no_graph_at_all": (
        lambda d: [(d / name).unlink() for name in ("model.onnx", "model_quantized.onnx")],
        {},
        FileNotFoundError,
        "model.onnx",
        [REEXPORT],
    ),
    "graph_truncated": (
        lambda d: truncate(d / "model.onnx", 5000),
        {},
        OSError,
        "model.onnx",
        ["not a loadable ONNX graph", REEXPORT],
    ),
    "int8_missing": (
        lambda d: (d / "model_quantized.onnx").unlink(),
        {"file_name": "model_quantized.onnx"},
        FileNotFoundError,
        "model_quantized.onnx",
        [QUANTIZE],
    ),
    "int8_truncated": (
        lambda d: truncate(d / "model_quantized.onnx", 5000),
        {"file_name": "model_quantized.onnx"},
        OSError,
        "model_quantized.onnx",
        ["not a loadable ONNX graph", QUANTIZE],
    ),
    # transformers alone reads a folder without config.json as the default ITAConfig.
    "config_missing": (lambda d: (d / "config.json").unlink(), {}, FileNotFoundError, "config.json", [REEXPORT]),
    "config_garbage": (
        lambda d: (d / "config.json").write_text('{"model_type": "ita", '),
        {},
        OSError,
        "config.json",
        ["not a readable config", REEXPORT],
    ),
    # optimum-cli rewrites config.json last: an interrupted run leaves optimum's, naming the PyTorch class.
    "config_of_unfinished_export": (
        lambda d: edit_config(
            d / "config.json",
            auto_map={
                "AutoConfig": "configuration_ita.ITAConfig",
                "AutoModelForTokenClassification": "modeling_ita.ITAForTokenClassification",
            },
        ),
        {},
        ValueError,
        "config.json",
        ["not the config of a finished ITA ONNX export", REEXPORT],
    ),
    "config_of_another_model": (
        lambda d: edit_config(d / "config.json", **FIVE_LABELS),
        {},
        ValueError,
        "crf.safetensors",
        ["transitions (5, 5)", "holds transitions (9, 9)", REEXPORT],
    ),
    "graph_of_another_model": (
        lambda d: (edit_config(d / "config.json", **FIVE_LABELS), edit_crf(d / "crf.safetensors", **FIVE_TAG_CRF)),
        {},
        ValueError,
        "model.onnx",
        ["'logits': ['batch_size', 'num_words', 9]", "5 labels", REEXPORT],
    ),
}


@pytest.fixture
def broken_copy(export_dir, tmp_path):
    def make(case: str) -> Path:
        folder = tmp_path / case
        shutil.copytree(export_dir, folder)
        BROKEN[case][0](folder)
        return folder

    return make


def expected_message(case: str, folder: Path) -> tuple[type, list[str]]:
    _, _, error, file_name, parts = BROKEN[case]
    return error, [str(folder / file_name), *(part.format(folder=folder) for part in parts)]


@pytest.mark.parametrize("case", BROKEN)
def test_ort_model_names_the_broken_file_and_what_to_do(case, broken_copy):
    from ita_onnx import ORTModelForITA

    folder = broken_copy(case)
    error, parts = expected_message(case, folder)
    with pytest.raises(error) as raised:
        ORTModelForITA.from_pretrained(folder, **BROKEN[case][1])
    assert [part for part in parts if part not in str(raised.value)] == []


def test_ort_model_refuses_a_pytorch_checkpoint_and_exporting(checkpoint, export_dir):
    from ita_onnx import ORTModelForITA

    with pytest.raises(ValueError, match="is a PyTorch checkpoint, an export that was interrupted") as raised:
        ORTModelForITA.from_pretrained(checkpoint)
    assert str(checkpoint / "config.json") in str(raised.value) and REEXPORT in str(raised.value)
    with pytest.raises(ValueError, match="does not export") as raised:
        ORTModelForITA.from_pretrained(export_dir, export=True)
    assert REEXPORT in str(raised.value)


OPEN_BROKEN_WITH_PIPELINE = """
import json, sys
from transformers import pipeline

errors = {}
for case, folder, options in json.loads(sys.argv[1]):
    try:
        pipeline(model=folder, trust_remote_code=True, model_kwargs=options)
        errors[case] = None
    except Exception as error:
        errors[case] = [type(error).__name__, str(error)]
print(json.dumps(errors))
"""
PIPELINE_CASES = ["crf_truncated", "crf_wrong_shapes", "no_graph_at_all", "graph_truncated", "int8_missing"]


def test_pipeline_on_the_exports_own_code_names_the_broken_file(broken_copy, tmp_path):
    """The same errors from the runtime copied into the export, as `pipeline(model=<export>)` runs it."""
    folders = {case: broken_copy(case) for case in PIPELINE_CASES}
    no_config = broken_copy("config_missing")
    cases = [[case, str(folder), BROKEN[case][1]] for case, folder in folders.items()]
    cases.append(["config_missing", str(no_config), {}])
    result = run_fresh_python(OPEN_BROKEN_WITH_PIPELINE, tmp_path, args=[json.dumps(cases)])
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    for case, folder in folders.items():
        error, (path, *parts) = expected_message(case, folder)
        # transformers' pipeline() reraises what the model class raised inside a ValueError that quotes it.
        assert errors[case][0] == "ValueError" and f"{error.__name__}: {path}" in errors[case][1], errors[case]
        assert [part for part in parts if part not in errors[case][1]] == [], errors[case]
    # Without config.json nothing tells transformers to run the export's code: its own error names the file.
    assert str(no_config) in errors["config_missing"][1] and "config.json" in errors["config_missing"][1]


def test_quantize_needs_the_exports_graph_and_config(broken_copy):
    from ita_onnx import quantize_int8

    no_config, no_graph = broken_copy("config_missing"), broken_copy("no_graph_at_all")
    for folder, missing in ((no_config, "config.json"), (no_graph, "model.onnx")):
        before = files(folder)
        with pytest.raises(FileNotFoundError) as raised:
            quantize_int8(folder)
        assert str(raised.value).startswith(f"{folder / missing} is missing: ") and REEXPORT in str(raised.value)
        assert files(folder) == before
    # Nothing was written beside the folders either (the quantizer's temporary folder is made only later).
    assert sorted(path.name for path in no_config.parent.iterdir()) == ["config_missing", "no_graph_at_all"]


def test_export_refuses_a_non_empty_folder_without_overwrite(checkpoint, tmp_path, capsys):
    from ita_onnx.__main__ import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exited:
        main(["export", str(checkpoint), str(tmp_path / "out")])
    assert exited.value.code == 1
    message = capsys.readouterr().err
    assert f"{tmp_path / 'out'} is not empty" in message and "--overwrite" in message
    assert files(tmp_path / "out") == {"notes.txt": b"mine"}
    with pytest.raises(SystemExit):
        main(["export", str(checkpoint), str(tmp_path / "out" / "notes.txt")])
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(checkpoint), str(checkpoint.parent), "--overwrite"])
    assert "would delete the checkpoint" in capsys.readouterr().err
    assert (checkpoint / "config.json").is_file()
