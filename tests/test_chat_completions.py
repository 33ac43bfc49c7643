"""The chat-completions aligner (knowledge_ita.ChatCompletionsAligner) against OpenAI-compatible servers on 127.0.0.1:
a scripted one (what is sent, parallel requests, retries, every failure), and a real `transformers serve` on a tiny
vision-language model built here, whose answers equal the same model's run in this process."""

import base64
import io
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import constants
from PIL import Image

from helpers import TWEETS, free_port, noise_image, prompt_text, save_tiny_vlm, stop_process
from knowledge_ita import PGIM_PROMPT, ChatCompletionsAligner, ImageTextToTextAligner
from precomputed_ita import PrecomputedAligner
from visual_context_ita import VisualContextBuilder, align_images, aligner_from_dict

KEY_ENV = "ITA_TEST_ENDPOINT_KEY"
KEY = "sk-test-0123456789-SECRET"
IMAGES = [noise_image(seed, size=(60, 40)) for seed in range(4)]


@pytest.fixture(autouse=True)
def online_with_a_key(hub_client_online, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def aligner(endpoint, **settings) -> ChatCompletionsAligner:
    return ChatCompletionsAligner(endpoint.url, model="tiny", **{"max_retries": 2, "timeout": 5.0, **settings})


def data_uri_image(uri: str) -> Image.Image:
    header, _, data = uri.partition(",")
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_each_tweet_is_one_request_with_its_filled_prompt_its_image_and_temperature_0(endpoint):
    chat = aligner(endpoint, prompt="Post: {text}", max_tokens=77, api_key_env=KEY_ENV, max_image_side=32)
    results = chat.align(IMAGES[:2], None, texts=TWEETS[:2], segments=[{}, {}])
    assert results == [{"knowledge": [f"Named entities: 1. Post: {tweet}"]} for tweet in TWEETS[:2]]
    requests = sorted(endpoint.requests, key=prompt_text)
    assert [r["messages"][-1]["content"][1] for r in requests] == [
        {"type": "text", "text": f"Post: {tweet}"} for tweet in sorted(TWEETS[:2])
    ]
    for request in requests:
        assert request["model"] == "tiny" and request["temperature"] == 0 and request["max_tokens"] == 77
        assert request["stream"] is True and request["path"] == "/v1/chat/completions"
        assert request["authorization"] == f"Bearer {KEY}"
        image_part = request["messages"][-1]["content"][0]
        picture = data_uri_image(image_part["image_url"]["url"])
        assert image_part["type"] == "image_url" and max(picture.size) == 32 and picture.mode == "RGB"


def test_without_a_key_no_token_of_this_machine_is_sent(endpoint, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_machine_token_not_for_this_endpoint")
    aligner(endpoint).align(IMAGES[:1], None, texts=["x"])
    assert endpoint.requests[0]["authorization"] is None


def test_answers_go_to_their_own_tweets_and_requests_run_in_parallel(endpoint):
    endpoint.delay = 0.4
    endpoint.answer = lambda request: f"about {prompt_text(request)}"
    chat = aligner(endpoint, prompt="{text}", concurrency=3)
    texts = [f"tweet number {i}" for i in range(6)]
    start = time.monotonic()
    results = chat.align([IMAGES[i % 4] for i in range(6)], None, texts=texts)
    elapsed = time.monotonic() - start
    assert results == [{"knowledge": [f"about {text}"]} for text in texts]
    assert endpoint.most_in_flight == 3 and elapsed < 6 * 0.4, elapsed


def test_throttling_and_server_errors_are_retried_with_back_off_and_retry_after(endpoint):
    endpoint.script.extend([(429, {"Retry-After": "0.3"}, b"slow down"), (503, {}, b"busy"), "ok"])
    chat = aligner(endpoint, prompt="{text}")
    start = time.monotonic()
    [result] = chat.align(IMAGES[:1], None, texts=["Kawhi"])
    assert result == {"knowledge": [endpoint.answer(endpoint.requests[-1])]}
    # 0.3 s asked by the 429, then the back-off of the second retry (1 s, up to 25% more).
    assert len(endpoint.requests) == 3 and 0.3 + 1.0 <= time.monotonic() - start < 5


def captions(tmp_path: Path, caption: str) -> PrecomputedAligner:
    """Precomputed captions: image 1 has `caption`."""
    path = tmp_path / "captions.jsonl"
    path.write_text(json.dumps({"image_id": "1", "caption": caption}) + "\n", encoding="utf-8")
    return PrecomputedAligner(path)


def test_a_failing_endpoint_costs_the_tweet_its_knowledge_only_and_says_host_and_status_never_the_key(
    endpoint, caplog, tmp_path
):
    endpoint.script.extend([(500, {}, f"internal error, key {KEY}".encode())] * 3)
    chat = aligner(endpoint, api_key_env=KEY_ENV)
    first = captions(tmp_path, "a man on a court")
    with caplog.at_level(logging.DEBUG):
        [context] = align_images(IMAGES[:1], ["1"], [first, chat], VisualContextBuilder(), texts=["Kawhi wins"])
    host = f"127.0.0.1:{endpoint.server_address[1]}"
    assert context.text == "a man on a court" and context.sources == ["caption:precomputed"]
    assert context.errors == [
        f"chat-completions: chat-completions aligner, model 'tiny' at {host}: HTTP 500 after 3 attempt(s)"
    ]
    assert len(endpoint.requests) == 3  # the first attempt and max_retries=2, not again image by image
    assert KEY not in caplog.text and KEY not in json.dumps(chat.to_dict()) and KEY not in repr(chat)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_not_retried_and_names_the_variable_not_the_key(endpoint, status):
    endpoint.script.append((status, {}, b"bad key"))
    chat = aligner(endpoint, api_key_env=KEY_ENV)
    with pytest.raises(Exception) as raised:
        chat.align(IMAGES[:1], None, texts=["x"])
    [error] = raised.value.errors
    assert f"HTTP {status}: the endpoint refused the key in ${KEY_ENV} after 1 attempt(s)" in error
    assert KEY not in error and len(endpoint.requests) == 1


@pytest.mark.parametrize(
    "step, reason",
    [
        ((200, {"Content-Type": "text/event-stream"}, b"data: {not json\n\n"), "JSONDecodeError (no answer"),
        ((200, {"Content-Type": "text/event-stream"}, b'data: {"error": "model exploded"}\n\n'), "(no answer"),
        ((404, {}, b"no such route"), "HTTP 404"),
    ],
)
def test_a_malformed_or_refused_answer_is_an_error_for_the_tweet(endpoint, step, reason):
    endpoint.script.append(step)
    with pytest.raises(Exception) as raised:
        aligner(endpoint, max_retries=0).align(IMAGES[:1], None, texts=["x"])
    [error] = raised.value.errors
    assert error.startswith("chat-completions aligner, model 'tiny' at 127.0.0.1:") and reason in error, error
    assert "exploded" not in error


def test_a_slow_endpoint_times_out_within_its_retries(endpoint):
    endpoint.delay = 3.0
    start = time.monotonic()
    with pytest.raises(Exception) as raised:
        aligner(endpoint, timeout=0.5, max_retries=1).align(IMAGES[:1], None, texts=["x"])
    assert "after 2 attempt(s)" in raised.value.errors[0] and "Timeout" in raised.value.errors[0]
    assert time.monotonic() - start < 0.5 * 2 + 0.5 * 1.25 + 1.5


def test_an_endpoint_that_is_down_is_an_error_naming_it(endpoint):
    port = free_port()
    chat = ChatCompletionsAligner(f"http://127.0.0.1:{port}/v1", model="tiny", max_retries=1, timeout=2.0)
    with pytest.raises(Exception) as raised:
        chat.align(IMAGES[:1], None, texts=["x"])
    assert (
        f"model 'tiny' at 127.0.0.1:{port}: " in raised.value.errors[0]
        and "is the endpoint up" in raised.value.errors[0]
    )


def test_pgim_setting_a_text_only_model_reads_the_caption_and_no_image_is_sent(endpoint, tmp_path):
    chat = aligner(endpoint, prompt=PGIM_PROMPT, send_image=False)
    assert not chat.needs_images and chat.needs_text
    first = captions(tmp_path, "a man holding a trophy")
    [context] = align_images([None], ["1"], [first, chat], VisualContextBuilder(), texts=["Kawhi wins"])
    [request] = endpoint.requests
    assert request["messages"] == [
        {"role": "user", "content": PGIM_PROMPT.format(text="Kawhi wins", caption="a man holding a trophy")}
    ]
    assert context.sources == ["caption:precomputed", "knowledge:chat-completions"]


def test_endless_or_garbled_answers_are_capped_and_cleaned(endpoint):
    endpoint.answer = lambda request: "Named\x00 entities:\x1b " + " ".join(f"w{i}" for i in range(5000))
    [result] = aligner(endpoint, max_words=50).align(IMAGES[:1], None, texts=["x"])
    assert result["knowledge"] == [" ".join(["Named", "entities:", *(f"w{i}" for i in range(48))])]


def test_a_large_image_is_sent_within_the_byte_cap():
    chat = ChatCompletionsAligner("http://127.0.0.1:1/v1", model="tiny", max_image_side=512, max_image_bytes=6000)
    uri = chat.image_uri(noise_image(0, size=(1600, 1200)))
    picture = data_uri_image(uri)
    assert len(base64.b64decode(uri.partition(",")[2])) <= 6000 and max(picture.size) <= 512


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"base_url": "ftp://127.0.0.1/v1"}, "base_url must be an http"),
        ({"prompt": "{txt}"}, r"placeholder \{txt\} is unknown"),
        (
            {"api_key_env": "ITA_NO_SUCH_VARIABLE"},
            "names the environment variable 'ITA_NO_SUCH_VARIABLE', which is not set",
        ),
        ({"concurrency": 0}, "`concurrency` must be a positive int"),
        ({"max_retries": -1}, "`max_retries` must be an int >= 0"),
    ],
)
def test_bad_settings_are_errors_when_built(settings, message):
    with pytest.raises(ValueError, match=message):
        ChatCompletionsAligner(**{"base_url": "http://127.0.0.1:1/v1", "model": "tiny", **settings})


def test_offline_mode_is_a_clear_error_when_built(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set, and huggingface_hub's InferenceClient then refuses"):
        ChatCompletionsAligner("http://127.0.0.1:1/v1", model="tiny")


def test_the_spec_names_the_key_variable_and_rebuilds(endpoint):
    chat = aligner(endpoint, api_key_env=KEY_ENV, prompt="{text}")
    spec = json.loads(json.dumps(chat.to_dict()))
    assert spec["api_key_env"] == KEY_ENV and KEY not in json.dumps(spec)
    rebuilt = aligner_from_dict(spec)
    assert rebuilt.to_dict() == spec
    assert rebuilt.align(IMAGES[:1], None, texts=["x"]) == chat.align(IMAGES[:1], None, texts=["x"])


# --- a real OpenAI-compatible server: `transformers serve` ---------------------------------------------------------


@pytest.fixture(scope="module")
def served_vlm(tmp_path_factory):
    """`transformers serve` on 127.0.0.1 with a tiny LLaVA built here; its own TMPDIR (4.57 leaves a PNG per image)."""
    folder = save_tiny_vlm(tmp_path_factory.mktemp("served") / "llava", "llava")
    port = free_port()
    scratch = tmp_path_factory.mktemp("serve-tmp")
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(scratch), "NO_PROXY": "127.0.0.1"}
    log = open(scratch / "server.log", "w")  # noqa: SIM115 - closed below, after the server stops
    server = subprocess.Popen([*command, "--device", "cpu", "--dtype", "float32"], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 180  # 4-7 s idle; much longer on a loaded machine
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_process(server)
                log.close()
                pytest.fail(f"transformers serve did not start: {(scratch / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1", folder
    stop_process(server)
    log.close()


def test_a_real_server_answers_what_the_same_model_answers_in_this_process(served_vlm):
    url, folder = served_vlm
    chat = ChatCompletionsAligner(url, model=str(folder), prompt="{text}", max_tokens=8, timeout=120, concurrency=1)
    local = ImageTextToTextAligner(str(folder), prompt="{text}", max_new_tokens=8)
    # The server sees the JPEG the aligner sends: the local model reads that same picture.
    sent = [data_uri_image(chat.image_uri(image)).convert("RGB") for image in IMAGES[:3]]
    served = chat.align(IMAGES[:3], None, texts=TWEETS[:3])
    assert served == local.align(sent, None, texts=TWEETS[:3])
    assert len({result["knowledge"][0] for result in served}) >= 2, served
    chat.concurrency = 3  # the model is loaded now; three requests at once give the same answers
    assert chat.align(IMAGES[:3], None, texts=TWEETS[:3]) == served


def test_preprocessing_keeps_a_tweet_whose_endpoint_failed_and_records_why(endpoint):
    from preprocess.align import BatchAligner

    endpoint.script.extend([(429, {"Retry-After": "0"}, b"slow down")] * 2)
    # One request at a time: the first tweet meets both 429s and fails after its retry, the second is answered.
    spec = {"type": "chat-completions", "base_url": endpoint.url, "model": "tiny", "max_retries": 1, "concurrency": 1}
    spec.update(prompt="{text}", send_image=False)
    batch = {"id": ["0", "1"], "tokens": [["Kawhi", "wins"], ["Obama", "visits"]], "image_id": ["a", "b"]}
    out = BatchAligner([spec], {"order": ["knowledge"]}, images_dir=None)({**batch, "image": ["a.jpg", "b.jpg"]})
    host = f"127.0.0.1:{endpoint.server_address[1]}"
    assert out["alignment_error"] == [
        f"chat-completions: chat-completions aligner, model 'tiny' at {host}: HTTP 429 after 2 attempt(s)",
        "",
    ]
    assert out["visual_context"] == ["", "Named entities: 1. Obama visits"] and out["id"] == ["0", "1"]
