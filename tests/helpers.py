"""What test files share: the checkout's path, tweets and label sets, tiny random encoders and ITA models (also saved
as folders), `train.py` runs in a fresh process, noise images and an offline Hub cache."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, PretrainedConfig

from configuration_ita import DEFAULT_LABELS, ITAConfig
from modeling_ita import ITAForTokenClassification

REPO = Path(__file__).resolve().parents[1]
TWEETS = [
    "Kawhi Leonard wins the fan vote for Block of the Year",
    "New Post : Blackburn Festival of Voice 2017",
    "a man playing basketball on a court with a crowd",
    "RT @NBA : the Golden State Warriors visit the White House",
]
# A fixed commit id for repositories put into a test Hub cache.
CACHE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def noise_image(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A random RGB image: different seeds give different pixels, so a captioner's answers differ."""
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def render_text(text: str, size: tuple[int, int] = (640, 160), font_size: int = 48) -> Image.Image:
    """Black text on white, drawn with Pillow's bundled scalable font: an image OCR reads exactly."""
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((20, 50), text, fill="black", font=ImageFont.load_default(size=font_size))
    return image


def save_tiny_captioner(folder: Path, tokenizer_dir: Path) -> Path:
    """Saves a tiny random ViT→GPT-2 captioner with the tokenizer of `tokenizer_dir` and its image processor.

    The folder loads like a Hub captioner (`AutoModelForImageTextToText`, `AutoImageProcessor`, `AutoTokenizer`).
    Its output embeddings of word pieces (`##...`) and unused tokens are zero, so it writes whole words.
    """
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoder = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=16
    )
    decoder = GPT2Config(
        n_embd=32,
        n_layer=1,
        n_head=2,
        vocab_size=tokenizer.vocab_size,
        n_positions=64,
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.cls_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.sep_token_id
    model = VisionEncoderDecoderModel(config).eval()
    pieces = [index for token, index in tokenizer.vocab.items() if token.startswith(("##", "[unused"))]
    with torch.no_grad():
        # Tied to the input embeddings: these tokens score 0 while the best of ~20k whole words scores above it.
        model.decoder.get_output_embeddings().weight[pieces] = 0.0
    model.generation_config.decoder_start_token_id = tokenizer.cls_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def add_to_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Puts the files of `folder` into the Hub cache `cache` as model repository `repo_id` (at `CACHE_COMMIT`).

    With `HF_HUB_CACHE=cache` and `HF_HUB_OFFLINE=1`, `from_pretrained(repo_id)` then loads it as a downloaded Hub
    model, so a config can name it by its Hub id, as a published checkpoint would.

    Returns:
        The snapshot folder.
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / CACHE_COMMIT
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(CACHE_COMMIT)
    return snapshot


# The tag sets the tests use: Twitter-2017's (configuration_ita's default), Twitter-2015's (OTHER for MISC) and a
# smaller one without MISC.
LABELS = list(DEFAULT_LABELS)
T15_LABELS = [label.replace("MISC", "OTHER") for label in DEFAULT_LABELS]
PIPELINE_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def tiny_encoder_config(
    kind: str, vocab_size: int, hidden_size: int = 32, max_positions: int = 128
) -> PretrainedConfig:
    """A one-layer, two-head random encoder config of the given family ('bert', 'xlm-roberta' or 'deberta-v2')."""
    extra = {"pad_token_id": 1, "type_vocab_size": 1} if kind == "xlm-roberta" else {}
    return AutoConfig.for_model(
        kind,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_positions,
        **extra,
    )


def save_tiny_encoder(folder: Path, minilm_dir: Path) -> Path:
    """Saves a one-layer random BERT (seed 0) with the MiniLM tokenizer to `folder`, like a Hub encoder."""
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(0)
    BertModel(tiny_encoder_config("bert", vocab_size=30522, hidden_size=16)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(folder)
    return folder


def tiny_train_argv(
    shards: Path, encoder: Path | None, output_dir: Path, *extra: str, data_option: str = "--dataset_path"
) -> list[str]:
    """`train.py` options for a few quick epochs of `encoder` on `shards` (later `extra` options win).

    With `encoder` None, `train.py` picks its default encoder (the offline MiniLM when it is installed);
    `data_option="--dataset_name"` reads `shards` with `load_dataset`.
    """
    return [
        data_option,
        str(shards),
        *(["--encoder_name_or_path", str(encoder)] if encoder is not None else []),
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


def tiny_ita_model(
    tokenizer, seed: int = 0, labels: list[str] | None = None, max_positions: int = 512, **config_kwargs
) -> ITAForTokenClassification:
    """A one-layer random ITA model on `tokenizer`'s vocabulary whose CRF has random scores, so decoding is not
    trivial (emission weights are scaled up so that tags differ from word to word)."""
    torch.manual_seed(seed)
    encoder = tiny_encoder_config("bert", len(tokenizer), hidden_size=16, max_positions=max_positions)
    config = ITAConfig(encoder_config=encoder, labels=labels or PIPELINE_LABELS, **config_kwargs)
    model = ITAForTokenClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(100.0)
        for parameter in (model.crf.transitions, model.crf.start_transitions, model.crf.end_transitions):
            parameter.normal_()
    return model


def all_entity_model(tokenizer, max_positions: int = 512) -> ITAForTokenClassification:
    """A model that tags every word, as `B-PER I-PER I-PER ...`: emissions favour PER, transitions B/I → I-PER."""
    model = tiny_ita_model(tokenizer, seed=1, max_positions=max_positions)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0]))
        model.crf.transitions.zero_()
        model.crf.transitions[1:3, 2] = 5.0
        model.crf.start_transitions.zero_()
        model.crf.end_transitions.zero_()
    return model


def decisive_ita_model(tokenizer, labels: list[str] | None = None) -> ITAForTokenClassification:
    """A one-layer random ITA model whose emissions and CRF scores are large enough to decide the tags.

    At the default init (std 0.02) emissions are ~0.1 and every tag would come from the transitions.
    """
    torch.manual_seed(0)
    encoder = tiny_encoder_config("bert", len(tokenizer), hidden_size=16, max_positions=512)
    model = ITAForTokenClassification(ITAConfig(encoder_config=encoder, labels=labels or LABELS)).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(std=1.0)
        for parameter in (model.crf.transitions, model.crf.start_transitions, model.crf.end_transitions):
            parameter.normal_()
    return model


# Headless Chromium that never reaches the network on its own (updates, sync, QUIC probes): the browser tests talk
# only to the servers they start on 127.0.0.1.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def stop_process(process: subprocess.Popen) -> None:
    """Stops a server a test started: terminate, and kill it if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# The special tokens of RoBERTa-family tokenizers (XLM-R, BART), for the tiny ones the tests train offline.
ROBERTA_STYLE_SPECIALS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def roberta_style_post_processor():
    """`<s> A </s>` and `<s> A </s></s> B </s>`, with `<s>` = 0 and `</s>` = 2, as RoBERTa-family tokenizers add them."""
    from tokenizers import processors

    return processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
