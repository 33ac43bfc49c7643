"""A run killed inside a checkpoint save resumes from the newest complete checkpoint and ends as if never killed."""

import json
import logging
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

import train
from helpers import run_python, save_tiny_encoder, tiny_train_argv
from ita_training.checkpoints import (
    IncompleteCheckpointError,
    check_resumable,
    missing_files,
    resumable_checkpoint,
)
from ita_training.trainer import ITATrainer, ITATrainingArguments
from tiny_shards import write_caption_shards

# Kills the process with SIGKILL inside the save of checkpoint-<argv[1]>: after `Trainer._save_rng_state`
# (the model, tokenizer, training_args.bin, optimizer.pt, scheduler.pt and rng_state.pth are on disk) and
# before `trainer_state.json`, the same call order in transformers 4.57 and 5.x.
KILL_IN_SAVE = """
import os, signal, sys
import transformers
import train

kill_step = sys.argv[1]
save_rng_state = transformers.Trainer._save_rng_state

def save_rng_state_then_die(self, output_dir):
    save_rng_state(self, output_dir)
    if os.path.basename(output_dir) == f"checkpoint-{kill_step}":
        os.kill(os.getpid(), signal.SIGKILL)

transformers.Trainer._save_rng_state = save_rng_state_then_die
sys.exit(train.main(sys.argv[2:]))
"""
# 8 tweets, batch 4, 2 epochs: checkpoint-2 after epoch 1, checkpoint-4 after epoch 2. Comparing the last
# weights (not the best epoch's) makes the comparison cover the resumed epoch; the CRF rate gets the tiny
# model to a non-zero F1 in 4 steps, so that equal metrics mean something.
OPTIONS = ("--load_best_model_at_end", "False", "--save_total_limit", "3", "--crf_learning_rate", "0.5")


@pytest.fixture(scope="module")
def data(tmp_path_factory, minilm_dir) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("resume")
    return write_caption_shards(folder / "shards"), save_tiny_encoder(folder / "encoder", minilm_dir)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> tuple[Path, dict]:
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    return output_dir, train.run(*train.parse_args(tiny_train_argv(*data, output_dir, *OPTIONS)))


def args_for(output_dir: Path, **kwargs) -> ITATrainingArguments:
    return ITATrainingArguments(output_dir=str(output_dir), **kwargs)


def test_sigkill_inside_a_checkpoint_save_then_rerun_resumes_and_ends_like_an_uninterrupted_run(
    data, uninterrupted, tmp_path, caplog
):
    output_dir = tmp_path / "run"
    argv = tiny_train_argv(*data, output_dir, *OPTIONS)
    killed = run_python(["-c", KILL_IN_SAVE, "4", *argv])
    assert killed.returncode == -9, killed.stderr[-3000:]
    partial = output_dir / "checkpoint-4"
    # What the kill left: every file of a complete checkpoint-4 (weights, optimizer, scheduler, RNG) but
    # trainer_state.json, beside the complete checkpoint-2; the output folder itself was never written.
    reference_dir, reference = uninterrupted
    complete = {p.name for p in (reference_dir / "checkpoint-4").iterdir()}
    assert {p.name for p in partial.iterdir()} == complete - {"trainer_state.json"}
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} < complete
    assert missing_files(output_dir / "checkpoint-2", args_for(output_dir)) == []
    assert not (output_dir / "model.safetensors").exists()

    with (
        caplog.at_level(logging.INFO),
        mock.patch.object(ITATrainer, "training_step", autospec=True, side_effect=ITATrainer.training_step) as step,
    ):
        results = train.run(*train.parse_args(argv))
    log = caplog.text
    assert f"Removing {partial}: its save was interrupted (missing trainer_state.json (not written))" in log
    assert f"Resuming from {output_dir / 'checkpoint-2'}, the newest complete checkpoint" in log
    assert step.call_count == 2  # epoch 2 only: epoch 1 came with checkpoint-2
    assert results["epoch_steps"] == [2, 2] and results["train"]["epoch"] == 2.0

    assert reference["test"]["test_with_context_f1"] > 0 and reference["eval"]["eval_text_only_f1"] > 0
    for split in ("eval", "test"):
        for name, value in reference[split].items():
            if not name.endswith("runtime"):
                assert results[split][name] == pytest.approx(value, abs=0, rel=0), (split, name)
    expected, got = load_file(reference_dir / "model.safetensors"), load_file(output_dir / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    # The re-saved checkpoint-4 is complete now, with the same history as the uninterrupted run's.
    assert missing_files(partial, args_for(output_dir)) == []
    losses = [
        [e["loss"] for e in json.loads((d / "trainer_state.json").read_text())["log_history"] if "loss" in e]
        for d in (reference_dir, output_dir)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 4


# Each stage of `Trainer._save_checkpoint`, as the files on disk after it: a kill during stage k leaves the
# files of stages < k (and maybe a cut-short file of stage k, covered by the truncated-state case).
SAVE_STAGES = [
    ("save_pretrained config", ["config.json"]),
    ("save_pretrained weights", ["model.safetensors"]),
    ("tokenizer and training_args.bin", ["tokenizer.json", "tokenizer_config.json", "training_args.bin"]),
    ("optimizer", ["optimizer.pt"]),
    ("scheduler", ["scheduler.pt"]),
    ("rng state", ["rng_state.pth"]),
]


@pytest.mark.parametrize("stages_done", range(len(SAVE_STAGES) + 2))
def test_every_kill_point_of_a_save_is_removed_and_the_older_checkpoint_chosen(
    uninterrupted, tmp_path, caplog, stages_done
):
    reference_dir, _ = uninterrupted
    output_dir = tmp_path / "run"
    shutil.copytree(reference_dir / "checkpoint-2", output_dir / "checkpoint-2")
    partial = output_dir / "checkpoint-4"
    partial.mkdir()
    written = [name for _, names in SAVE_STAGES[:stages_done] for name in names]
    for name in written:
        shutil.copy(reference_dir / "checkpoint-4" / name, partial / name)
    state = (reference_dir / "checkpoint-4" / "trainer_state.json").read_text()
    if stages_done == len(SAVE_STAGES) + 1:  # killed while writing trainer_state.json
        (partial / "trainer_state.json").write_text(state[: len(state) // 2])

    with pytest.raises(IncompleteCheckpointError, match="Cannot resume from .*trainer_state.json"):
        check_resumable(partial, args_for(output_dir))
    with caplog.at_level(logging.WARNING):
        chosen = resumable_checkpoint(output_dir, args_for(output_dir), remove=True)
    assert chosen == output_dir / "checkpoint-2"
    assert not partial.exists()
    assert "its save was interrupted" in caplog.text


def test_what_complete_means(uninterrupted, tmp_path):
    reference_dir, _ = uninterrupted
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(reference_dir / "checkpoint-4", folder)
    args = args_for(tmp_path)
    assert missing_files(folder, args) == [] and check_resumable(folder, args) == folder
    # Files both transformers 4.57 and 5.x write, whatever their tokenizer files are.
    for name in (
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "training_args.bin",
    ):
        assert (folder / name).is_file(), name
    # A distributed run's RNG files are per rank.
    (folder / "rng_state.pth").rename(folder / "rng_state_0.pth")
    assert missing_files(folder, args) == []
    (folder / "optimizer.pt").unlink()
    assert missing_files(folder, args) == ["optimizer.pt"]
    # A model-only run never writes optimizer, scheduler or RNG files.
    assert missing_files(folder, args_for(tmp_path, save_only_model=True)) == []
    (folder / "model.safetensors").unlink()
    assert missing_files(folder, args) == ["weights (model.safetensors)", "optimizer.pt"]


def test_a_checkpoint_with_its_state_but_lacking_files_is_skipped_not_removed(uninterrupted, tmp_path, caplog):
    reference_dir, _ = uninterrupted
    for step in (2, 4):
        shutil.copytree(reference_dir / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-4" / "optimizer.pt").unlink()
    with caplog.at_level(logging.WARNING):
        chosen = resumable_checkpoint(tmp_path, args_for(tmp_path), remove=True)
    assert chosen == tmp_path / "checkpoint-2"
    assert (tmp_path / "checkpoint-4" / "model.safetensors").is_file()
    assert "Skipping" in caplog.text and "optimizer.pt" in caplog.text


def test_only_the_saving_process_removes_and_overwrite_starts_again(uninterrupted, tmp_path):
    reference_dir, _ = uninterrupted
    shutil.copytree(reference_dir / "checkpoint-2", tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "config.json").write_text("{}")
    # Another rank (remove=False) skips the interrupted save without touching it.
    assert resumable_checkpoint(tmp_path, args_for(tmp_path), remove=False) == tmp_path / "checkpoint-2"
    assert (tmp_path / "checkpoint-4").is_dir()
    assert train.resume_point(args_for(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert not (tmp_path / "checkpoint-4").exists()
    # An explicit incomplete checkpoint is an error, not a crash inside transformers.
    (tmp_path / "checkpoint-6").mkdir()
    with pytest.raises(IncompleteCheckpointError, match=r"checkpoint-6: it lacks trainer_state.json"):
        train.resume_point(args_for(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-6")))
    assert train.resume_point(args_for(tmp_path, overwrite_output_dir=True)) is None
    assert not any(tmp_path.glob("checkpoint-*"))
