"""The Gradio app (`app.py`), started as a visitor meets it: a real server on 127.0.0.1 in a subprocess, used through
`gradio_client` and in a real headless Chromium (the system package, driven by selenium).

Gradio 6 needs huggingface_hub>=1.16, so these tests run on the transformers-5 stack and skip on the pinned one.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

# Skipped before the imports below, which load torch and the model code for nothing on the pinned stack.
gradio_client = pytest.importorskip(
    "gradio_client", reason="Gradio 6 is not installed (the `app` extra; it needs the transformers-5 stack)"
)
pytest.importorskip("gradio", reason="Gradio 6 is not installed (the `app` extra; it needs the transformers-5 stack)")

from test_handler import assert_requirements_met, image_server, save_captioned_checkpoint, save_images  # noqa: E402

from helpers import CHROMIUM_FLAGS, REPO, T15_LABELS, stop_process  # noqa: E402

TWEET = "Obama visits Paris with Merkel"
# The app under test caps tweets at this many characters (ITA_MAX_TEXT_CHARS), not at its default.
TEXT_CAP = 1000
EXAMPLE_TWEET = ["RT", "@NBA", ":", "Kyrie", "plays", "with", "LeBron"]
START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory, minilm_dir, minilm_tokenizer):
    """The app on a tiny captioned checkpoint, with a data folder of the shared layout for its examples."""
    base = tmp_path_factory.mktemp("app")
    checkpoint = save_captioned_checkpoint(base / "ckpt", minilm_tokenizer, minilm_dir, labels=T15_LABELS)
    images = save_images(base / "images")
    data = base / "data"
    save_images(data / "images" / "twitter2015", seeds=(7,))
    (data / "twitter2015").mkdir()
    # One tweet per split; only the test tweet's image (7.jpg) is in the folder.
    for image_id, split, words in ((5, "train", ["Paris"]), (6, "valid", ["Rome"]), (7, "test", EXAMPLE_TWEET)):
        lines = "".join(f"{word}\tO\n" for word in words)
        (data / "twitter2015" / f"{split}.txt").write_text(f"IMGID:{image_id}\n{lines}")
    url = f"http://127.0.0.1:{free_port()}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(base / "hf_modules"), ITA_MAX_TEXT_CHARS=str(TEXT_CAP))
    log = base / "app.log"
    command = [
        sys.executable,
        str(REPO / "app.py"),
        "--model",
        str(checkpoint),
        "--data",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--allow-private-urls",  # the image server of the tests is on loopback
    ]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=base, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        ready = threading.Event()

        def wait_for_start():
            while process.poll() is None and "Running on local URL" not in log.read_text():
                ready.wait(0.2)
            ready.set()

        threading.Thread(target=wait_for_start, daemon=True).start()
        if not ready.wait(START_TIMEOUT) or process.poll() is not None:
            pytest.fail(f"the app did not start within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
        yield {"url": url, "checkpoint": checkpoint, "images": images, "log": log}
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def expected(site):
    """What the checkpoint's pipeline answers, called directly, for the tweet with image 0 and with image 1."""
    from transformers import pipeline

    ner = pipeline(model=str(site["checkpoint"]), trust_remote_code=True)
    return {seed: ner(TWEET, image=str(site["images"] / f"{seed}.jpg"), return_visual_context=True) for seed in (0, 1)}


def test_gradio_client_gets_the_pipelines_answer_and_clear_errors(site, expected):
    client = gradio_client.Client(site["url"], verbose=False)
    assert "/tag" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    image = gradio_client.handle_file(str(site["images"] / "0.jpg"))
    highlighted, context, result, notes = client.predict(TWEET, image, "", "", api_name="/tag")
    assert result == expected[0] and context == expected[0]["visual_context"] and len(context.split()) == 6
    assert expected[0]["entities"], "the random model should tag something"
    # The highlighted text is the tweet, its entity spans labelled with their types.
    assert "".join(token["token"] for token in highlighted) == TWEET
    labelled = [(token["token"], token["class_or_confidence"]) for token in highlighted if token["class_or_confidence"]]
    assert labelled == [(e["word"], e["entity_group"]) for e in expected[0]["entities"]]
    assert notes.startswith(f"{len(expected[0]['entities'])} entit")
    # An image linked by URL (served on 127.0.0.1) gives the same answer as the same file uploaded.
    with image_server(site["images"]) as files:
        assert client.predict(TWEET, None, f"{files.url}/1.jpg", "", api_name="/tag")[2] == expected[1]

    not_an_image = site["images"] / "not-an-image.jpg"
    not_an_image.write_text("plain text behind a .jpg name")
    bad = [
        (("", None, "", ""), "Type a tweet first"),
        (("   ", None, "", ""), "Type a tweet first"),
        (
            ("x" * (TEXT_CAP + 1), None, "", ""),
            f"The text has {TEXT_CAP + 1} characters; this app tags at most {TEXT_CAP}",
        ),
        ((TWEET, image, "https://example.com/a.jpg", ""), "not both"),
        ((TWEET, None, "file:///etc/passwd", ""), "must start with http:// or https://"),
        ((TWEET, None, "", "someone/else"), "serves one model only"),
        ((TWEET, gradio_client.handle_file(str(not_an_image)), "", ""), "not an image this app can read"),
    ]
    for arguments, phrase in bad:
        with pytest.raises(gradio_client.exceptions.AppError) as caught:
            client.predict(*arguments, api_name="/tag")
        assert phrase in str(caught.value) and "Traceback" not in str(caught.value), (arguments[:2], str(caught.value))
    # An unreachable image URL is no error: the tweet is tagged text-only, and the page says why.
    _, context, result, notes = client.predict(TWEET, None, "http://127.0.0.1:9/gone.jpg", "", api_name="/tag")
    assert context == "" and "cannot read the image" in notes and "text-only" in notes
    assert "Traceback" not in site["log"].read_text()


def test_by_default_image_urls_to_loopback_go_unfetched_and_notes_name_an_upload_not_its_folder(site, tmp_path):
    import gradio as gr
    from PIL import Image

    from app import MAX_TEXT_CHARS, Tagger

    tagger = Tagger(str(site["checkpoint"]))
    with image_server(site["images"]) as files:
        _, context, _, notes = tagger.tag(TWEET, None, f"{files.url}/1.jpg", "")
        assert files.connections == 0, "refused before any connection"
    assert context == "" and "a non-public address (loopback)" in notes and "text-only" in notes, notes
    allowed = Tagger(str(site["checkpoint"]), allow_private_urls=True)
    with image_server(site["images"]) as files:
        assert allowed.tag(TWEET, None, f"{files.url}/1.jpg", "")[1], "allowed, the image gives a visual context"
    # An upload over the pixel cap (81 megapixels, refused before decoding): the note names the file only.
    uploads = tmp_path / "a-folder-of-the-server"
    uploads.mkdir()
    Image.new("1", (9000, 9000)).save(uploads / "huge.png")
    _, context, _, notes = tagger.tag(TWEET, str(uploads / "huge.png"), "", "")
    assert context == "" and "image huge.png is 9000x9000" in notes and str(uploads) not in notes, notes
    with pytest.raises(gr.Error, match=f"this app tags at most {MAX_TEXT_CHARS}"):
        tagger.tag("x" * (MAX_TEXT_CHARS + 1), None, "", "")
    capped = Tagger(str(site["checkpoint"]), max_text_chars=5)
    assert capped.tag("Obama", None, "", "")[3].startswith(("0 entities", "1 entity")), "at the cap: tagged"
    with pytest.raises(gr.Error, match="The text has 6 characters; this app tags at most 5"):
        capped.tag("Obamas", None, "", "")


def test_the_app_settings_come_from_options_else_the_environment(monkeypatch):
    from app import MAX_TEXT_CHARS, parse_args

    for name in ("ITA_ALLOW_PRIVATE_URLS", "ITA_MAX_TEXT_CHARS"):
        monkeypatch.delenv(name, raising=False)
    args = parse_args(["--model", "a-model"])
    assert (args.allow_private_urls, args.max_text_chars) == (False, MAX_TEXT_CHARS)
    monkeypatch.setenv("ITA_ALLOW_PRIVATE_URLS", "1")
    monkeypatch.setenv("ITA_MAX_TEXT_CHARS", "99")
    args = parse_args(["--model", "a-model"])
    assert (args.allow_private_urls, args.max_text_chars) == (True, 99)
    assert parse_args(["--model", "a-model", "--max-text-chars", "5"]).max_text_chars == 5
    with pytest.raises(SystemExit):
        parse_args(["--model", "a-model", "--max-text-chars", "0"])


@pytest.fixture
def browser(tmp_path):
    """Debian's headless Chromium through its chromedriver, with a new empty profile."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the `app` extra)")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (`apt-get install chromium chromium-driver`)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, "--window-size=1280,1400", f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


def test_in_chromium_upload_type_submit_and_read_the_entities(site, expected, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    def text_of(selector: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, selector).text

    wait = WebDriverWait(browser, 30)
    browser.get(site["url"])
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#tweet textarea"))
    # The examples come from the data folder: its tweet, with its image.
    wait.until(lambda _: " ".join(EXAMPLE_TWEET) in browser.find_element(By.TAG_NAME, "body").text)

    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(site["images"] / "0.jpg"))
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#image img"))
    browser.find_element(By.CSS_SELECTOR, "#tweet textarea").send_keys(TWEET)
    browser.find_element(By.CSS_SELECTOR, "#submit").click()
    wait.until(lambda _: "found in" in text_of("#notes"))

    # Each highlighted span, and its type read through the legend's colour for that type.
    legend = {
        item.value_of_css_property("background-color"): item.text
        for item in browser.find_elements(By.CSS_SELECTOR, "#entities .legend-item")
    }
    spans = [
        (span.text, legend.get(span.value_of_css_property("background-color")))
        for span in browser.find_elements(By.CSS_SELECTOR, "#entities .token.highlighted")
    ]
    assert spans == [(e["word"], e["entity_group"]) for e in expected[0]["entities"]], (spans, legend)
    assert len(set(legend)) == len(legend) == 4, "each type has its own colour"
    context = browser.find_element(By.CSS_SELECTOR, "#context textarea").get_attribute("value")
    assert context == expected[0]["visual_context"]
    assert json.loads(json.dumps(expected[0]))["entities"][0]["word"] in text_of("#json")

    screenshot = tmp_path / "app.png"  # kept in pytest's tmp folder, to look at
    assert browser.save_screenshot(str(screenshot))
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 500 and pixels.std() > 20, pixels.std()

    # A bad input is a message in the page.
    # Deleted by keys, as a person does (the page hears no input event from a programmatic clear()).
    browser.find_element(By.CSS_SELECTOR, "#tweet textarea").send_keys(Keys.CONTROL, "a", Keys.DELETE)
    browser.find_element(By.CSS_SELECTOR, "#submit").click()
    wait.until(lambda _: "Type a tweet first" in browser.find_element(By.TAG_NAME, "body").text)
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text


def test_the_space_requirements_accept_this_stack():
    assert_requirements_met(REPO / "requirements-space.txt")
