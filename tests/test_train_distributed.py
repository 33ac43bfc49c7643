"""train.py on 2 CPU processes (gloo) under torchrun and accelerate launch: one log, one writer, every row once.

A recording wrapper (`RECORDER`) runs `train.main` in each process and notes, per process, the id of every
row an evaluation collator encodes and every call that writes the output folder, so the tests see which
process decoded what and who wrote.
"""

import json
import shutil
import socket
from pathlib import Path

import pytest
from datasets import DatasetDict, load_from_disk

import train
from helpers import run_python, save_tiny_encoder, tiny_train_argv
from ita_training.hub import check_hub_folder
from preprocess.shards import SETTINGS_FILE
from tiny_shards import write_caption_shards

RECORDER = """
import json, os, sys
import train
from ita_training.collator import ITADataCollator

rank = os.environ.get("RANK", "0")
record = open(os.path.join(sys.argv[1], f"rank{rank}.jsonl"), "a")

def note(*item):
    record.write(json.dumps(item) + "\\n")
    record.flush()

encode = ITADataCollator.__call__
def recording_encode(self, rows):
    if not self.text_view:  # evaluation batches; the training collator also builds the text view
        for row in rows:
            note("decoded", row["id"], self.use_context)
    return encode(self, rows)
ITADataCollator.__call__ = recording_encode

for name in ("save_hub_folder", "write_model_card"):
    def wrapper(*args, _name=name, _call=getattr(train, name), **kwargs):
        note("wrote", _name)
        return _call(*args, **kwargs)
    setattr(train, name, wrapper)
sys.exit(train.main(sys.argv[2:]))
"""
# Odd sizes, so that an even split across 2 processes (or DistributedSampler's padding) would show.
SPLIT_ROWS = {"train": range(8), "validation": range(7), "test": range(3, 8)}
ID_PREFIX = {"train": "t", "validation": "d", "test": "s"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, minilm_dir) -> dict:
    """Shards with a distinct id per row and split, the tiny encoder, and a checkpoint trained in one process."""
    folder = tmp_path_factory.mktemp("distributed")
    tweets = load_from_disk(str(write_caption_shards(folder / "caption-shards")))["train"]
    shards = folder / "shards"
    DatasetDict(
        {
            split: tweets.select(rows).map(lambda row, i, p=ID_PREFIX[split]: {"id": f"{p}{i}"}, with_indices=True)
            for split, rows in SPLIT_ROWS.items()
        }
    ).save_to_disk(str(shards))
    shutil.copy(folder / "caption-shards" / SETTINGS_FILE, shards / SETTINGS_FILE)
    encoder = save_tiny_encoder(folder / "encoder", minilm_dir)
    checkpoint = folder / "checkpoint"
    train.run(*train.parse_args(tiny_train_argv(shards, encoder, checkpoint, "--num_train_epochs", "4")))
    return {"shards": shards, "encoder": encoder, "checkpoint": checkpoint, "folder": folder}


@pytest.fixture(scope="module")
def one_process(setup) -> dict:
    """Dev and test metrics of the checkpoint evaluated by one process."""
    return train.run(*train.parse_args(eval_argv(setup, setup["folder"] / "eval-1")))


def eval_argv(setup: dict, output_dir: Path) -> list[str]:
    return [
        "--model_name_or_path",
        str(setup["checkpoint"]),
        "--do_train",
        "False",
        "--dataset_path",
        str(setup["shards"]),
        "--output_dir",
        str(output_dir),
        "--disable_tqdm",
        "True",
        "--per_device_eval_batch_size",
        "2",
    ]


def launch(launcher: list[str], record_dir: Path, argv: list[str]):
    record_dir.mkdir(parents=True)
    script = record_dir / "recorder.py"
    script.write_text(RECORDER)
    result = run_python([*launcher, str(script), str(record_dir), *argv], timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = {
        path.stem: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(record_dir.glob("rank*.jsonl"))
    }
    return result, records


def torchrun() -> list[str]:
    return [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]


def assert_each_row_decoded_once_per_mode(records: dict, splits: tuple[str, ...], evaluations: int = 1):
    """Both processes decoded rows; together, each row of each split once per evaluation and mode."""
    assert set(records) == {"rank0", "rank1"}
    decoded = {rank: [tuple(item[1:]) for item in items if item[0] == "decoded"] for rank, items in records.items()}
    assert all(decoded.values()), decoded
    assert not {row_id for row_id, _ in decoded["rank0"]} & {row_id for row_id, _ in decoded["rank1"]}
    for split in splits:
        for use_context in (True, False):
            ids = sorted(
                row_id
                for rank in decoded.values()
                for row_id, mode in rank
                if mode is use_context and row_id.startswith(ID_PREFIX[split])
            )
            expected = sorted(f"{ID_PREFIX[split]}{i}" for i in range(len(SPLIT_ROWS[split])))
            assert ids == sorted(expected * evaluations), (split, use_context, ids)


def assert_same_metrics(got: dict, expected: dict):
    names = [name for name in expected if not name.endswith("runtime") and name != "epoch"]
    assert names and {name: got[name] for name in names} == {name: expected[name] for name in names}


def test_torchrun_evaluation_covers_every_row_once_with_the_one_process_f1(setup, one_process, tmp_path):
    output_dir = tmp_path / "eval-2"
    result, records = launch(torchrun(), tmp_path / "records", eval_argv(setup, output_dir))
    assert_each_row_decoded_once_per_mode(records, ("validation", "test"))
    for split in ("eval", "test"):
        assert_same_metrics(json.loads((output_dir / f"{split}_results.json").read_text()), one_process[split])
    # Some F1 is not 0, so the comparison is not between two empty predictions.
    assert one_process["test"]["test_with_context_f1"] > 0 and one_process["eval"]["eval_text_only_f1"] > 0
    # One copy of the logs: the script's lines and the metrics Trainer prints.
    assert result.stderr.count("INFO train: Evaluating") == 1
    assert result.stderr.count("INFO train: eval F1:") == 1 and result.stderr.count("INFO train: test F1:") == 1
    assert result.stdout.count("'eval_mean_f1'") == 1


def test_torchrun_training_runs_data_parallel_and_only_the_main_process_logs_and_writes(setup, tmp_path):
    output_dir = tmp_path / "run"
    argv = tiny_train_argv(
        setup["shards"],
        setup["encoder"],
        output_dir,
        "--per_device_train_batch_size",
        "2",
        "--load_best_model_at_end",
        "False",
    )
    result, records = launch(torchrun(), tmp_path / "records", argv)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    # 8 tweets, 2 processes of batch 2: 2 steps per epoch (one process would take 4).
    assert state["global_step"] == 4 and state["epoch"] == 2.0
    # Dev decoded after each of the 2 epochs and once more at the end; test once.
    assert_each_row_decoded_once_per_mode(records, ("validation",), evaluations=3)
    assert_each_row_decoded_once_per_mode(records, ("test",))
    assert [item for item in records["rank0"] if item[0] == "wrote"] == [
        ["wrote", "save_hub_folder"],
        ["wrote", "write_model_card"],
    ]
    assert not [item for item in records["rank1"] if item[0] == "wrote"]
    assert "README.md" in check_hub_folder(output_dir)
    assert result.stderr.count("INFO train: Training on 8 tweets") == 1
    assert result.stderr.count("INFO train: test F1:") == 1
    # Trainer's metric lines: dev after each epoch and at the end, test once.
    assert result.stdout.count("'eval_mean_f1'") == 3 and result.stdout.count("'test_mean_f1'") == 1


def test_accelerate_launch_evaluation_matches_one_process(setup, one_process, tmp_path):
    # `accelerate launch --cpu --num_processes 2` starts a single process (multi-CPU needs mpirun); without a
    # GPU, --multi_gpu starts 2 processes through torch.distributed.run, and ITA's arguments pick gloo.
    launcher = [
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
    ]
    output_dir = tmp_path / "eval-2"
    result, records = launch(launcher, tmp_path / "records", eval_argv(setup, output_dir))
    assert_each_row_decoded_once_per_mode(records, ("validation", "test"))
    for split in ("eval", "test"):
        assert_same_metrics(json.loads((output_dir / f"{split}_results.json").read_text()), one_process[split])
    assert result.stderr.count("INFO train: eval F1:") == 1
