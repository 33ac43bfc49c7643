"""Data-parallel preprocessing: torchrun ranks (gloo, CPU) give exactly the one-process output, resume after a kill,
and `map` workers get one device each (`with_rank`)."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from test_preprocess import REPO, write_umt

from aligners_ita import Aligner
from preprocess import preprocess
from preprocess.__main__ import main
from preprocess.align import BatchAligner
from preprocess.shards import KILL_AT_ENV, SETTINGS_FILE

# train: 9 tweets -> rank 0 tweets 0-5, rank 1 tweets 5-9; test: 1 tweet, so rank 1 has none of it.
SPLIT_SIZES = {"train": 9, "valid": 5, "test": 1}


def rows(folder: Path) -> dict:
    shards = load_from_disk(str(folder))
    return {split: (shards[split].features, shards[split].to_list()) for split in shards}


def torchrun(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m preprocess ARGS` on CPU (gloo), offline."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [*command, "-m", "preprocess", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Three splits with captions, the arguments of a run of them, and the one-process output and summary."""
    tmp_path = tmp_path_factory.mktemp("one_process")
    data = tmp_path / "data"
    data.mkdir()
    images = []
    for split, size in SPLIT_SIZES.items():
        tweets = [(f"{split}{i}", ["tweet", str(i), "Obama"], ["O", "O", "B-PER"]) for i in range(size)]
        write_umt(data / f"{split}.txt", tweets)
        images += [image for image, _, _ in tweets]
    captions = tmp_path / "captions.txt"
    # One image without a caption: its tweet keeps an empty context.
    captions.write_text("".join(f"{image}.jpg :a photo of {image}\n" for image in images[1:]), encoding="utf-8")
    common = ["--data", str(data), "--context", str(captions), "--chunk-size", "2"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main([*common, "--out", str(tmp_path / "one")]) == 0
    summary = printed.getvalue()
    assert "train: 9 tweets in (train.txt), 9 out, 8 with visual context" in summary
    assert "test: 1 tweets in (test.txt), 1 out" in summary
    return common, tmp_path / "one", summary


def test_two_torchrun_ranks_write_exactly_the_one_process_output(one_process, tmp_path):
    common, one, summary = one_process
    fresh = torchrun([*common, "--out", str(tmp_path / "fresh")])
    assert fresh.returncode == 0, fresh.stderr
    assert "rank 0/2: train chunk 3/3 (tweets 4-5) done" in fresh.stderr
    assert "rank 1/2: train chunk 2/2 (tweets 7-9) done" in fresh.stderr
    assert "rank 0/2: test chunk 1/1 (tweets 0-1) done" in fresh.stderr and "rank 1/2: test" not in fresh.stderr
    # Rank 0 assembles and speaks for both: one result, one summary, the same as the one process printed.
    assert fresh.stderr.count("INFO preprocess.shards: saved ") == 1
    assert fresh.stdout == summary
    assert rows(tmp_path / "fresh") == rows(one)
    assert json.loads((tmp_path / "fresh" / SETTINGS_FILE).read_text()) == json.loads((one / SETTINGS_FILE).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh"]


def test_killed_torchrun_ranks_resume_their_own_chunks(one_process, tmp_path):
    common, one, summary = one_process
    out = tmp_path / "two"
    killed = torchrun([*common, "--out", str(out)], {KILL_AT_ENV: "chunk-done:2"})
    assert killed.returncode != 0 and not out.exists()
    # Each rank writes its own chunks of its part of train (rank 0: 0-2, 2-4, 4-5; rank 1: 5-7, 7-9). The first rank
    # to die killed itself after its second chunk; torchrun may then have stopped the other one anywhere.
    owners = {"00000000-00000002": (0, 1), "00000002-00000004": (0, 2), "00000005-00000007": (1, 1)}
    owners["00000007-00000009"] = (1, 2)
    finished = {p.name.removeprefix("chunk-") for p in (tmp_path / "two.partial" / "train").glob("chunk-*[0-9]")}
    assert finished <= set(owners) and len(finished) >= 2, finished
    resumed = torchrun([*common, "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    skipped = {
        (int(rank), int(number))
        for rank, number in re.findall(r"rank (\d)/2: train chunk (\d)/\d already done", resumed.stderr)
    }
    assert skipped == {owners[name] for name in finished}
    assert "rank 0/2: train chunk 3/3 (tweets 4-5) done" in resumed.stderr
    assert resumed.stdout == summary
    assert rows(out) == rows(one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]


class DeviceEcho(Aligner):
    """Captions each image with the device the aligner was built on, as a GPU captioner placed by `device` would be."""

    type = "test-device-echo"
    segments = ("caption",)
    precomputed = True

    def __init__(self, device: str | None = None) -> None:
        super().__init__()
        self.device = device

    def settings(self) -> dict:
        return {"device": self.device}

    def align(self, images, image_ids=None):
        return [{"caption": [f"on {self.device} in {os.getpid()}"]} for _ in images]


def test_map_workers_get_one_device_each(tmp_path, capsys):
    data = write_umt(tmp_path / "train.txt", [(str(i), ["tweet", str(i)], ["O", "O"]) for i in range(6)])
    out = tmp_path / "out"
    shards = preprocess(
        data=[data], out=out, aligners=[{"type": "test-device-echo"}], num_proc=2, devices=["dev:a", "dev:b"]
    )
    contexts = shards["train"]["visual_context"]
    # datasets gives each of the 2 map processes 3 contiguous tweets; each process built its aligner on its device.
    assert [c.split(" in ")[0] for c in contexts] == ["on dev:a"] * 3 + ["on dev:b"] * 3
    assert len({c.split(" in ")[1] for c in contexts}) == 2 and str(os.getpid()) not in contexts[0]
    # Devices are placement, not settings: the same run on other devices reuses the result.
    again = preprocess(data=[data], out=out, aligners=[{"type": "test-device-echo"}], devices=["dev:c"])
    assert again["train"]["visual_context"] == contexts
    assert json.loads((out / SETTINGS_FILE).read_text())["aligners"] == [
        {"type": "test-device-echo", "precomputed": True, "device": None}
    ]
    # Under torchrun, the map processes of local rank 1 start after those of local rank 0 (device_offset).
    function = BatchAligner(
        [{"type": "test-device-echo"}, {"type": "precomputed", "paths": []}],
        {},
        None,
        devices=["cuda:0", "cuda:1", "cuda:2", "cuda:3"],
        device_offset=1 * 2,
    )
    assert [function.device(rank) for rank in (None, 0, 1)] == ["cuda:2", "cuda:2", "cuda:3"]
    assert function.specs(1) == [{"type": "test-device-echo", "device": "cuda:3"}, {"type": "precomputed", "paths": []}]
    assert BatchAligner([{"type": "test-device-echo"}], {}, None).specs(1) == [{"type": "test-device-echo"}]
    with pytest.raises(ValueError, match=r"aligners \['test-device-echo'\] set their own device: give devices either"):
        preprocess(
            data=[data],
            out=tmp_path / "x",
            aligners=[{"type": "test-device-echo", "device": "cuda:0"}],
            devices=["cuda:1"],
        )
    if not torch.cuda.is_available():
        assert main(["--data", str(data), "--devices", "auto", "--out", str(tmp_path / "y")]) == 2
        assert "--devices auto found no CUDA device" in capsys.readouterr().err
