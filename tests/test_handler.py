"""The Inference Endpoints handler, used as a deployment uses it: imported from the checkpoint folder alone in a fresh
process, and served over HTTP by a real ASGI server (`handler_server.py`, uvicorn) on 127.0.0.1.

The checkpoint has a live captioner (a tiny random ViT→GPT-2) as its aligner, so an image reaches the model as a
caption that depends on its pixels: the same image by path, URL, base64 or data: URI must give the same answer.
"""

import base64
import http.client
import json
import os
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aligners_ita import CaptionAligner
from fresh_process import run_fresh_python
from handler import ALLOW_PRIVATE_URLS_ENV, MAX_TEXT_CHARS, MAX_TEXT_CHARS_ENV, PayloadError
from helpers import REPO, noise_image, save_tiny_captioner, stop_process, tiny_ita_model

TEXT = "Kawhi Leonard wins the fan vote for Block of the Year"
OTHER_TEXT = "RT @NBA : the Golden State Warriors visit the White House"
WORDS = ["Obama", "visits", "Paris", "with", "Merkel"]
CONTEXT = "a man in a suit at a podium"
# Greedy and exactly 6 words, so that every image gets a caption and different images get different ones.
GENERATE = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "no_repeat_ngram_size": 1}
SERVER_START_TIMEOUT = 60
# What a private page starts with: it must never appear in an answer or in the server's log.
SECRET = "SECRET-TOKEN-123"


def save_captioned_checkpoint(folder: Path, tokenizer, encoder_dir: Path, labels: list[str] | None = None) -> Path:
    """Saves a tiny ITA checkpoint whose aligner is a tiny live captioner (saved beside it).

    `save_pretrained` writes the serving files into it: this checkout's `handler.py`, and `handler_requirements.txt`
    as `requirements.txt`.
    """
    captioner = save_tiny_captioner(folder.parent / f"{folder.name}-captioner", encoder_dir)
    aligner = CaptionAligner(str(captioner), generate_kwargs=GENERATE)
    model = tiny_ita_model(tokenizer, seed=3, labels=labels, aligners=[aligner.to_dict()])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_images(folder: Path, seeds: tuple[int, ...] = (0, 1)) -> Path:
    """Writes a random JPEG `<seed>.jpg` per seed into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        noise_image(seed, size=(64, 48)).save(folder / f"{seed}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, minilm_dir, minilm_tokenizer) -> dict[str, Path]:
    """A checkpoint folder with its serving files and a live captioner, and two images (JPEG files) to send it."""
    base = tmp_path_factory.mktemp("handler")
    checkpoint = save_captioned_checkpoint(base / "my-ita-model", minilm_tokenizer, minilm_dir)
    return {"base": base, "checkpoint": checkpoint, "images": save_images(base / "images")}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def huge_png() -> bytes:
    """A valid PNG header declaring 20000 x 20000 pixels, with (almost) no pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def bad_payloads(images: Path) -> list[tuple[object, str, str]]:
    """(payload, error_type, a phrase the message must contain): every way a client can get a request wrong."""
    jpeg = (images / "0.jpg").read_bytes()
    return [
        ([{"inputs": TEXT}], "invalid_payload", "must be a JSON object"),
        ("just a tweet", "invalid_payload", "must be a JSON object"),
        ({}, "invalid_payload", 'no "inputs"'),
        ({"input": TEXT}, "invalid_payload", "Unknown key(s) ['input']"),
        ({"inputs": 5}, "invalid_payload", "got a number (5)"),
        ({"inputs": None}, "invalid_payload", "got null"),
        ({"inputs": {"txt": TEXT}}, "invalid_payload", "Unknown key(s) ['txt'] in inputs"),
        ({"inputs": {"image": "https://example.com/x.jpg"}}, "invalid_payload", "inputs.text must be"),
        ({"inputs": {"text": ["Obama", 3]}}, "invalid_payload", "list of strings"),
        ({"inputs": {"text": TEXT, "visual_context": 5}}, "invalid_payload", "inputs.visual_context must be a string"),
        ({"inputs": {"text": TEXT, "image_id": 12345}}, "invalid_payload", 'e.g. "654"'),
        ({"inputs": [TEXT, 7]}, "invalid_payload", "inputs[1] must be"),
        ({"inputs": [TEXT] * 65}, "invalid_payload", "split the batch"),
        (
            {"inputs": "x" * (MAX_TEXT_CHARS + 1)},
            "invalid_payload",
            f"inputs has {MAX_TEXT_CHARS + 1} characters, more than the {MAX_TEXT_CHARS} a text may have",
        ),
        (
            {"inputs": [TEXT, {"text": ["x" * (MAX_TEXT_CHARS // 2)] * 2}]},
            "invalid_payload",
            f"inputs[1].text has {MAX_TEXT_CHARS + 1} characters",
        ),
        (
            {"inputs": {"text": TEXT, "visual_context": "x" * (MAX_TEXT_CHARS + 1)}},
            "invalid_payload",
            f"inputs.visual_context has {MAX_TEXT_CHARS + 1} characters",
        ),
        (
            {"inputs": TEXT, "parameters": {"visual_context": "x" * (MAX_TEXT_CHARS + 1)}},
            "invalid_payload",
            f'Parameter "visual_context" has {MAX_TEXT_CHARS + 1} characters',
        ),
        ({"inputs": TEXT, "parameters": "fast"}, "invalid_parameter", '"parameters" must be a JSON object'),
        ({"inputs": TEXT, "parameters": {"batch_size": 8}}, "unknown_parameter", "Unknown parameter(s) ['batch_size']"),
        ({"inputs": TEXT, "parameters": {"return_visual_context": "yes"}}, "invalid_parameter", "true or false"),
        ({"inputs": TEXT, "parameters": {"stride": True}}, "invalid_parameter", "an integer"),
        ({"inputs": TEXT, "parameters": {"ignore_labels": "O"}}, "invalid_parameter", "a list"),
        ({"inputs": TEXT, "parameters": {"timeout": 3600}}, "invalid_parameter", "must be in (0, 30.0]"),
        ({"inputs": TEXT, "parameters": {"aggregation_strategy": "max"}}, "invalid_input", "aggregation_strategy"),
        ({"inputs": TEXT, "parameters": {"stride": -1}}, "invalid_input", "stride"),
        ({"inputs": {"text": ["Obama", ""]}}, "invalid_input", "non-empty"),
        ({"inputs": {"text": TEXT, "image": 42}}, "invalid_image", "inputs.image must be"),
        ({"inputs": {"text": TEXT, "image": "/etc/passwd"}}, "invalid_image", "Server paths are not read"),
        ({"inputs": {"text": TEXT, "image": "aGVsbG8="}}, "invalid_image", "not a usable image"),
        ({"inputs": {"text": TEXT, "image": "data:image/png,abc"}}, "invalid_image", "without base64 data"),
        (
            {"inputs": {"text": TEXT, "image": base64.b64encode(jpeg[:300]).decode()}},
            "invalid_image",
            "not a usable image",
        ),
        ({"inputs": {"text": TEXT, "image": base64.b64encode(huge_png()).decode()}}, "invalid_image", "pixels"),
    ]


class FileServer(ThreadingHTTPServer):
    """Serves a folder on 127.0.0.1 (a free port) and counts the connections it accepts."""

    def __init__(self, folder: Path):
        super().__init__(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
        self.connections = 0

    def verify_request(self, request, client_address) -> bool:
        self.connections += 1  # only the serving thread accepts
        return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def image_server(folder: Path):
    """Serves `folder` over HTTP on 127.0.0.1 in a thread; yields the `FileServer` (its `url`, its `connections`)."""
    server = FileServer(folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# --- (a) from the checkpoint folder alone, in a fresh process -------------------------------------------------------

FROM_THE_FOLDER = """
import base64, importlib.util, json, os, sys, threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

folder, images, text, other, words, context, bad_file = sys.argv[1:8]
words = json.loads(words)
# As Inference Endpoints does: the model folder first on sys.path, handler.py imported from it by file location, and
# configured by the environment (the image server below is on loopback, which image URLs reach only when allowed).
sys.path.insert(0, folder)
spec = importlib.util.spec_from_file_location("handler", folder + "/handler.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
os.environ["ITA_ALLOW_PRIVATE_URLS"] = "1"
handler = module.EndpointHandler(folder)

from transformers import pipeline
ner = pipeline(model=folder, trust_remote_code=True)

server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=images))
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_address[1]}/0.jpg"
paths = [images + "/0.jpg", images + "/1.jpg"]
encoded = [base64.b64encode(open(p, "rb").read()).decode() for p in paths]
wrapped = "\\n".join(encoded[0][i : i + 76] for i in range(0, len(encoded[0]), 76))
context_flag = {"return_visual_context": True}
cases = {
    "text": ({"inputs": text}, lambda: ner(text)),
    "options_ignored": ({"inputs": text, "options": {"wait_for_model": True}}, lambda: ner(text)),
    "words": ({"inputs": {"text": words}}, lambda: ner(words, is_split_into_words=True)),
    "context": ({"inputs": {"text": text, "visual_context": context}, "parameters": context_flag},
                lambda: ner(text, visual_context=context, return_visual_context=True)),
    "url": ({"inputs": {"text": text, "image": url}, "parameters": context_flag},
            lambda: ner(text, image=paths[0], return_visual_context=True)),
    "base64": ({"inputs": {"text": text, "image": encoded[0]}, "parameters": context_flag},
               lambda: ner(text, image=paths[0], return_visual_context=True)),
    "base64_wrapped": ({"inputs": {"text": text, "image": wrapped}, "parameters": context_flag},
                       lambda: ner(text, image=paths[0], return_visual_context=True)),
    "data_uri": ({"inputs": {"text": text, "image": "data:image/jpeg;base64," + encoded[1]}, "parameters": context_flag},
                 lambda: ner(text, image=paths[1], return_visual_context=True)),
    "batch": ({"inputs": [text, {"text": other, "image": encoded[1], "image_id": "1"}],
               "parameters": {"aggregation_strategy": "none", "ignore_labels": []}},
              lambda: ner([text, {"text": other, "image": paths[1], "image_id": "1"}], aggregation_strategy="none", ignore_labels=[])),
    "empty_batch": ({"inputs": []}, lambda: []),
}
results = {}
for name, (payload, direct) in cases.items():
    answer = handler(payload)
    results[name] = {"handler": json.loads(json.dumps(answer)), "direct": direct()}
errors = []
for payload in json.load(open(bad_file)):
    try:
        handler(payload)
        errors.append({"raised": None})
    except module.PayloadError as err:
        errors.append({"raised": "PayloadError", "status": err.status_code, **err.to_dict(), "str": str(err)})
    except Exception as err:
        errors.append({"raised": type(err).__name__, "error": str(err)})
server.shutdown()
print(json.dumps({"results": results, "errors": errors, "pipeline": type(handler.pipeline).__name__}))
"""


def test_the_handler_from_the_checkpoint_folder_answers_like_the_pipeline(workspace, tmp_path):
    bad = bad_payloads(workspace["images"])
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps([payload for payload, _, _ in bad]))
    args = [
        str(workspace["checkpoint"]),
        str(workspace["images"]),
        TEXT,
        OTHER_TEXT,
        json.dumps(WORDS),
        CONTEXT,
        str(bad_file),
    ]
    result = run_fresh_python(FROM_THE_FOLDER, tmp_path, timeout=120, args=args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pipeline"] == "MultimodalNERPipeline"
    results = report["results"]
    for name, pair in results.items():
        assert pair["handler"] == pair["direct"], name
    # The image reached the model: a caption, the same whatever the way it was sent, and another for another image.
    captions = {
        name: results[name]["handler"]["visual_context"] for name in ("url", "base64", "base64_wrapped", "data_uri")
    }
    assert captions["url"] and len(captions["url"].split()) == 6
    assert captions["url"] == captions["base64"] == captions["base64_wrapped"] != captions["data_uri"]
    assert results["context"]["handler"]["visual_context"] == CONTEXT
    assert any(results["text"]["handler"]), "the random model should tag something in the tweet"
    batch = results["batch"]["handler"]
    assert len(batch) == 2 and [e["word"] for e in batch[1]] == OTHER_TEXT.split()
    joined = " ".join(WORDS)
    assert results["words"]["handler"] and all(
        joined[e["start"] : e["end"]] == e["word"] for e in results["words"]["handler"]
    )

    for (payload, error_type, phrase), error in zip(bad, report["errors"]):
        assert error["raised"] == "PayloadError", (payload if len(str(payload)) < 300 else str(payload)[:300], error)
        assert error["status"] == 400 and error["error_type"] == error_type, (error_type, error)
        # str(error) is what Inference Endpoints sends back as {"error": ...}: the message alone, one line.
        assert error["str"] == error["error"] and "\n" not in error["error"] and "Traceback" not in error["error"]
        assert phrase in error["error"], (phrase, error["error"])


# --- (b) served over HTTP by uvicorn --------------------------------------------------------------------------------


@contextmanager
def served(checkpoint: Path, workdir: Path, *extra_args: str):
    """Runs `handler_server.py` on `checkpoint` in a subprocess (cwd outside the checkout).

    Yields:
        `(url, process, log)`: the server's base URL, its process, and the file its stderr (the log) goes to.
    """
    pytest.importorskip("uvicorn", reason="the `serve` extra (uvicorn, starlette) is not installed")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "hf_modules"), TRANSFORMERS_VERBOSITY="error")
    command = [sys.executable, str(REPO / "handler_server.py"), str(checkpoint), "--port", "0", *extra_args]
    log = workdir / f"server-{len(list(workdir.glob('server-*.log')))}.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(SERVER_START_TIMEOUT)
        if not (ready and ready[0].startswith("serving ")):
            pytest.fail(f"the server did not start within {SERVER_START_TIMEOUT} s: {log.read_text()[-3000:]}")
        yield ready[0].split()[-1], process, log
    finally:
        stop_process(process)
        process.stdout.close()


def post(url: str, body: bytes, timeout: float = 30) -> tuple[int, object, str]:
    """POSTs `body` as JSON; returns (status, decoded JSON, raw text) whatever the status."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read().decode()
    return status, json.loads(raw), raw


def post_oversized(url: str, size: int, declared: bool) -> tuple[int, dict]:
    """POSTs a body of `size` bytes as a careful client does (`Expect: 100-continue`: the answer is read before the
    body is sent, so a refusal arrives intact); declared by Content-Length, or chunked (found only while reading)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Expect", "100-continue")
        connection.putheader(*(("Content-Length", str(size)) if declared else ("Transfer-Encoding", "chunked")))
        connection.endheaders()
        if not declared:
            connection.send(b"%x\r\n" % size + b" " * size + b"\r\n0\r\n\r\n")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_server_help_names_its_defaults_and_the_default_host():
    result = subprocess.run(
        [sys.executable, str(REPO / "handler_server.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert "--host HOST address to listen on (default: 127.0.0.1, this machine only;" in help_text
    assert "(default: 8000); 0 picks a free port" in help_text


def test_served_over_http_bad_payloads_get_400_with_json(workspace, tmp_path):
    from handler import EndpointHandler

    checkpoint, images = workspace["checkpoint"], workspace["images"]
    # The image server is on loopback: allowed here, refused by default (the next test).
    local = EndpointHandler(str(checkpoint), allow_private_urls=True)
    encoded = b64(images / "0.jpg")
    (images / "private.txt").write_text(f"{SECRET} and the rest of a private page")
    at_the_cap = {"inputs": " ".join(["word"] * (MAX_TEXT_CHARS // 5)).ljust(MAX_TEXT_CHARS, "s")}
    with (
        served(checkpoint, tmp_path, "--max-body-bytes", str(1024 * 1024), "--allow-private-urls") as (
            url,
            process,
            log,
        ),
        image_server(images) as files,
    ):
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read()) == {"status": "ok"}
        good = [
            {"inputs": TEXT},
            {"inputs": {"text": TEXT, "image": encoded}, "parameters": {"return_visual_context": True}},
            {"inputs": {"text": TEXT, "image": f"{files.url}/1.jpg"}, "parameters": {"return_visual_context": True}},
            {
                "inputs": [TEXT, {"text": WORDS, "visual_context": CONTEXT}],
                "parameters": {"aggregation_strategy": "none"},
            },
            at_the_cap,
        ]
        for route in ("/", "/predict"):
            for payload in good:
                status, answer, _ = post(url + route, json.dumps(payload).encode())
                assert status == 200 and answer == json.loads(json.dumps(local(payload))), (route, payload)
        assert post(url, json.dumps(good[1]).encode())[1]["visual_context"]
        assert post(url, json.dumps(good[2]).encode())[1]["visual_context"], "the URL on loopback was fetched"
        # A private page: the tweet is tagged text-only, and its answer says nothing of the page.
        secret = {"inputs": {"text": TEXT, "image": f"{files.url}/private.txt"}, "parameters": good[2]["parameters"]}
        status, answer, raw = post(url, json.dumps(secret).encode())
        assert status == 200 and answer["visual_context"] == "" and SECRET not in raw

        for payload, error_type, phrase in bad_payloads(images):
            status, answer, raw = post(url, json.dumps(payload).encode())
            assert status == 400 and answer["error_type"] == error_type and phrase in answer["error"], (
                status,
                raw[:500],
            )
            assert set(answer) == {"error", "error_type"} and "Traceback" not in raw
        transport = [
            (b"not json", 400, "invalid_json"),
            (b"", 400, "invalid_json"),
            (b"\xff\xfe{", 400, "invalid_json"),
        ]
        for body, expected_status, error_type in transport:
            status, answer, raw = post(url, body)
            assert (status, answer["error_type"]) == (expected_status, error_type), raw[:500]
        # Over --max-body-bytes: refused unread, whether the size is declared or only found while reading.
        for declared in (True, False):
            status, answer = post_oversized(url, 1024 * 1024 + 1, declared)
            assert (status, answer["error_type"]) == (413, "payload_too_large"), (declared, answer)
        # A text the tokenizer may not encode (a lone surrogate, valid in JSON): tagged or refused, never a 500.
        status, answer, raw = post(url, b'{"inputs": "Obama \\udcff visits Paris"}')
        assert status in (200, 400) and "Traceback" not in raw, raw[:500]
        for method, route, expected_status in (("GET", "/nowhere", 404), ("PUT", "/predict", 405)):
            request = urllib.request.Request(url + route, data=b"{}" if method == "PUT" else None, method=method)
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == expected_status
            assert json.loads(caught.value.read())["error_type"] == "http_error"
        assert process.poll() is None, "the server must survive every bad request"
    log_text = log.read_text()
    size = len((images / "private.txt").read_bytes())
    assert f"private.txt: its {size} bytes (Content-Type: text/plain) are not an image" in log_text
    assert SECRET not in log_text


def test_served_by_default_image_urls_to_loopback_go_unfetched_and_texts_over_the_cap_are_refused(workspace, tmp_path):
    checkpoint, images = workspace["checkpoint"], workspace["images"]
    cap = 40
    with (
        served(checkpoint, tmp_path, "--max-text-chars", str(cap)) as (url, process, log),
        image_server(images) as files,
    ):
        for host in ("127.0.0.1", "localhost"):
            payload = {"inputs": {"text": TEXT[:cap], "image": f"http://{host}:{files.server_address[1]}/1.jpg"}}
            status, answer, raw = post(
                url, json.dumps({**payload, "parameters": {"return_visual_context": True}}).encode()
            )
            assert status == 200 and answer["visual_context"] == "", raw[:500]
            # The client can tell why its image gave no context.
            assert "RefusedURLError" in answer["alignment_error"] and answer["context_sources"] == [], raw[:500]
        assert files.connections == 0, "refused before any connection"
        for text in ("x" * (cap + 1), ["x" * (cap // 2)] * 2):
            status, answer, raw = post(url, json.dumps({"inputs": {"text": text}}).encode())
            assert status == 400 and answer["error_type"] == "invalid_payload", raw[:500]
            assert f"inputs.text has {cap + 1} characters, more than the {cap} a text may have" in answer["error"]
        assert post(url, json.dumps({"inputs": "x" * cap}).encode())[0] == 200
    log_text = log.read_text()
    assert log_text.count("a non-public address (loopback)") == 2 and "Traceback" not in log_text, log_text[-3000:]


def test_the_handler_reads_its_settings_from_arguments_else_the_environment(workspace, monkeypatch):
    from handler import EndpointHandler

    checkpoint = str(workspace["checkpoint"])
    default = EndpointHandler(checkpoint)
    assert (default.allow_private_urls, default.max_text_chars) == (False, MAX_TEXT_CHARS)
    monkeypatch.setenv(ALLOW_PRIVATE_URLS_ENV, "1")
    monkeypatch.setenv(MAX_TEXT_CHARS_ENV, "123")
    configured = EndpointHandler(checkpoint)
    assert (configured.allow_private_urls, configured.max_text_chars) == (True, 123)
    overridden = EndpointHandler(checkpoint, allow_private_urls=False, max_text_chars=7)
    assert (overridden.allow_private_urls, overridden.max_text_chars) == (False, 7)
    with pytest.raises(PayloadError, match="inputs has 8 characters, more than the 7"):
        overridden({"inputs": "x" * 8})
    # A bad setting stops the handler at once, its message naming the variable but not its value.
    for name, value in ((ALLOW_PRIVATE_URLS_ENV, "yes-please"), (MAX_TEXT_CHARS_ENV, "lots-of-them")):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=name) as caught:
            EndpointHandler(checkpoint)
        assert value not in str(caught.value)
        monkeypatch.delenv(name)
    with pytest.raises(ValueError, match="max_text_chars must be an integer > 0"):
        EndpointHandler(checkpoint, max_text_chars=0)


def test_a_failing_handler_gives_500_json_and_logs_the_traceback_on_the_server(workspace, tmp_path):
    failing = tmp_path / "failing_handler.py"
    failing.write_text(
        "class EndpointHandler:\n"
        "    def __init__(self, path=''):\n"
        "        pass\n"
        "    def __call__(self, data):\n"
        "        raise RuntimeError('secret internal detail')\n"
    )
    with served(workspace["checkpoint"], tmp_path, "--handler", str(failing)) as (url, process, log):
        status, answer, raw = post(url, json.dumps({"inputs": TEXT}).encode())
        assert status == 500 and answer["error_type"] == "internal_error" and "RuntimeError" in answer["error"]
        assert "secret internal detail" not in raw and "Traceback" not in raw
        assert post(url, json.dumps({"inputs": TEXT}).encode())[0] == 500, "the server must survive a failing handler"
    assert "Traceback" in log.read_text() and "secret internal detail" in log.read_text()


def assert_requirements_met(requirements: Path) -> None:
    """Every line of a requirements file parses, and this stack's installed versions satisfy it."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    lines = [line.split("#")[0].strip() for line in requirements.read_text().splitlines()]
    parsed = [Requirement(line) for line in lines if line]
    assert parsed, requirements
    for requirement in parsed:
        installed = version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), (str(requirement), installed)


def test_save_pretrained_writes_the_serving_files_and_their_requirements_accept_this_stack(workspace):
    for name, source in (("handler.py", "handler.py"), ("requirements.txt", "handler_requirements.txt")):
        assert (workspace["checkpoint"] / name).read_bytes() == (REPO / source).read_bytes(), name
    assert_requirements_met(workspace["checkpoint"] / "requirements.txt")
