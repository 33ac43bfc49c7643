"""What test files share: the checkout's path, tweets and label sets, tiny random encoders and ITA models (also saved
as folders), `train.py` runs in a fresh process, noise images and an offline Hub cache."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
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


# A chat template of the shape vision-language models ship (image parts in the user's content list).
TINY_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tiny_vlm_tokenizer(extra_specials: list[str], tokenizer_class: str = "PreTrainedTokenizerFast"):
    """A character-level tokenizer (printable answers, unlike a byte-level one) with a chat template.

    `tokenizer_class` names the transformers class it is built as (some processors accept only their model's own).
    """
    import string

    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<pad>", "<unk>", "<s>", "<end_of_utterance>", *extra_specials]
    vocab = {
        token: i for i, token in enumerate(specials + list(string.ascii_letters + string.digits + " .,:;!?'()-#@\n"))
    }
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = getattr(transformers, tokenizer_class)(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<end_of_utterance>",
        additional_special_tokens=extra_specials,
        # Without it `generate` is handed token_type_ids, which these models refuse.
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = TINY_VLM_CHAT_TEMPLATE
    return tokenizer


def save_tiny_vlm(folder: Path, kind: str, image_splitting: bool = False) -> Path:
    """Saves a tiny random vision-language model with its processor: `"llava"`, `"idefics3"` (SmolVLM's architecture)
    or `"paligemma"` (whose processor has no chat template).

    The folder loads with `AutoProcessor` + `AutoModelForImageTextToText` on both transformers lines. Weights are drawn
    with std 1 (not 0.02), so that answers depend on the prompt and the image; the same seed gives other weights on
    transformers 4 and 5, so answers are compared within a stack only.
    """
    from transformers import LlamaConfig

    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision = {**text, "initializer_range": 1.0}
    if kind == "llava":
        from transformers import (
            CLIPImageProcessor,
            CLIPVisionConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        tokenizer = tiny_vlm_tokenizer(["<image>"])
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}),
            tokenizer=tokenizer,
            patch_size=10,
            vision_feature_select_strategy="full",
            num_additional_image_tokens=0,
            chat_template=TINY_VLM_CHAT_TEMPLATE,
        )
        vision_config = CLIPVisionConfig(**vision, image_size=30, patch_size=10, projection_dim=16)
        model_class, extra = LlavaForConditionalGeneration, {"vision_feature_layer": -1, "image_seq_length": 9}
        image_token = {"image_token_index": tokenizer.convert_tokens_to_ids("<image>")}
        config_class = LlavaConfig
    elif kind == "idefics3":
        from transformers import (
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            Idefics3ImageProcessor,
            Idefics3Processor,
            Idefics3VisionConfig,
        )

        tokenizer = tiny_vlm_tokenizer(["<image>", "<fake_token_around_image>", "<global-img>"])
        image_processor = Idefics3ImageProcessor(
            do_image_splitting=image_splitting, size={"longest_edge": 64}, max_image_size={"longest_edge": 32}
        )
        processor = Idefics3Processor(
            image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=TINY_VLM_CHAT_TEMPLATE
        )
        vision_config = Idefics3VisionConfig(**vision, image_size=32, patch_size=8).to_dict()
        model_class, extra = Idefics3ForConditionalGeneration, {"scale_factor": 2}
        image_token = {"image_token_id": tokenizer.convert_tokens_to_ids("<image>")}
        config_class = Idefics3Config
    elif kind == "paligemma":
        from transformers import (
            GemmaConfig,
            PaliGemmaConfig,
            PaliGemmaForConditionalGeneration,
            PaliGemmaProcessor,
            SiglipImageProcessor,
            SiglipVisionConfig,
        )

        tokenizer = tiny_vlm_tokenizer(["<image>"], "GemmaTokenizerFast")
        tokenizer.chat_template = None
        image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
        image_processor.image_seq_length = 16  # (32 / 8)² patches, each an image token
        processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
        vision_config = SiglipVisionConfig(**vision, image_size=32, patch_size=8).to_dict()
        model_class, extra = PaliGemmaForConditionalGeneration, {"projection_dim": 16}
        image_token = {"image_token_index": tokenizer.convert_tokens_to_ids("<image>")}
        config_class = PaliGemmaConfig
    else:
        raise ValueError(f"unknown tiny VLM kind {kind!r}")
    text_class = LlamaConfig if kind != "paligemma" else GemmaConfig
    text_config = text_class(
        **text,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        initializer_range=1.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if kind != "llava":
        text_config = text_config.to_dict()
    torch.manual_seed(0)
    config = config_class(vision_config=vision_config, text_config=text_config, **image_token, **extra)
    model_class(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# --- an OpenAI-compatible chat endpoint on 127.0.0.1 ------------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (for a server to start on, or to find nothing there)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ScriptedEndpoint(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint on 127.0.0.1 that answers as it is told and records every request.

    `script` holds the next answers (`(status, headers, body)`, or `"ok"`); when it is empty the answer is
    `answer(request)`, streamed as server-sent events in three chunks. `delay` seconds pass before each answer.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.script: deque = deque()
        self.delay = 0.0
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        self.answer = lambda request: f"Named entities: 1. {prompt_text(request)}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server: ScriptedEndpoint = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append({**body, "authorization": self.headers.get("Authorization"), "path": self.path})
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            step = server.script.popleft() if server.script else "ok"
        try:
            time.sleep(server.delay)
            if step == "ok":
                text = server.answer(body)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                third = max(1, len(text) // 3)
                for piece in (text[:third], text[third : 2 * third], text[2 * third :]):
                    self.wfile.write(b"data: " + json.dumps(_chunk(piece)).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
            else:
                status, headers, payload = step
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
        finally:
            with server.lock:
                server.in_flight -= 1


def prompt_text(request: dict) -> str:
    """The text of a request's last turn (its content is a string, or parts with the image first)."""
    content = request["messages"][-1]["content"]
    return content if isinstance(content, str) else content[-1]["text"]


def _chunk(content: str) -> dict:
    return {
        "id": "chat-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "tiny",
        "system_fingerprint": "test",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None}],
    }


def assert_same_entities(actual, expected) -> None:
    """Same entities, words and offsets; scores equal up to float32 noise (padding changes encoder kernels)."""

    def key(entity):
        return {name: value for name, value in entity.items() if name != "score"}

    def scores(results):
        return [entity["score"] for result in results for entity in result]

    assert [[key(e) for e in r] for r in actual] == [[key(e) for e in r] for r in expected]
    assert scores(actual) == pytest.approx(scores(expected), abs=1e-6)
