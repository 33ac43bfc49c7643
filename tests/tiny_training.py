"""A tiny random encoder and `train.py` arguments, for the tests that train or evaluate end to end."""

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def save_tiny_encoder(folder: Path, minilm_dir: Path) -> Path:
    """Saves a one-layer random BERT (seed 0) with the MiniLM tokenizer to `folder`, like a Hub encoder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


def tiny_train_argv(shards: Path, encoder: Path, output_dir: Path, *extra: str) -> list[str]:
    """`train.py` options for a few quick epochs of the tiny encoder on `shards` (later `extra` options win)."""
    return [
        "--dataset_path",
        str(shards),
        "--encoder_name_or_path",
        str(encoder),
        "--output_dir",
        str(output_dir),
        "--learning_rate",
        "3e-3",
        "--crf_learning_rate",
        "5e-2",
        "--per_device_train_batch_size",
        "4",
        "--num_train_epochs",
        "2",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "True",
        "--seed",
        "0",
        *extra,
    ]


def run_python(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Runs this interpreter with `args` in a fresh process, cwd the checkout, offline, with extra `env`."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout
    )
