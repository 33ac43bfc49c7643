"""The demo's HTML report, rendered by a real headless Chromium: a non-blank page with typed entity spans."""

import shutil
import subprocess

import pytest

from demo.report import ReportItem, highlight, write_report
from helpers import CHROMIUM_FLAGS

TEXT = "RT @nba : Kawhi Leonard 🏀 meets Kawhi fans in San Antonio <3 https://t.co/x"


def entity(text: str, word: str, entity_type: str, occurrence: int = 0) -> dict:
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(word, start + 1)
    return {"entity_group": entity_type, "word": word, "start": start, "end": start + len(word), "score": 0.9}


ENTITIES = [entity(TEXT, "Kawhi Leonard", "PER"), entity(TEXT, "Kawhi", "PER", 1), entity(TEXT, "San Antonio", "LOC")]


def test_highlight_wraps_exactly_the_offsets_and_escapes_html():
    page = highlight(TEXT, ENTITIES)
    assert page.count('class="entity"') == 3
    assert "&lt;3" in page and "<3" not in page.replace("<span", "").replace("</span", "")
    assert '>Kawhi Leonard<span class="type">PER</span></span> 🏀 meets ' in page
    with pytest.raises(ValueError, match="overlapping"):
        highlight(TEXT, ENTITIES + [entity(TEXT, "Leonard", "PER")])


@pytest.fixture(scope="module")
def chromium():
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it as root)")
    return binary


def test_report_renders_in_headless_chromium(tmp_path, chromium, shared_data):
    from PIL import Image

    images = sorted((shared_data / "images" / "twitter2015").glob("*.jpg"))[:2]
    items = [
        ReportItem(
            "with image",
            TEXT,
            ENTITIES,
            "a basketball player on a court | SPURS",
            images[0],
            ["caption:precomputed", "ocr:rapidocr"],
        ),
        ReportItem(
            "PNG data behind .jpg",
            "Visiting New York today",
            [entity("Visiting New York today", "New York", "LOC")],
            "a city street",
            images[1],
            ["caption:precomputed"],
            "ocr: RuntimeError: the engine failed",
        ),
        ReportItem(
            "text only", "No image here, Barack Obama", [entity("No image here, Barack Obama", "Barack Obama", "PER")]
        ),
    ]
    page = write_report(items, tmp_path / "report.html", "3 tweets")
    profile = tmp_path / "profile"
    common = [chromium, *CHROMIUM_FLAGS, "--hide-scrollbars", f"--user-data-dir={profile}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    assert dom.stdout.count('class="entity"') == 5
    assert "<b>Where it came from:</b> caption:precomputed, ocr:rapidocr" in dom.stdout
    assert "<b>Why not more:</b> ocr: RuntimeError: the engine failed" in dom.stdout
    for word, entity_type in (
        ("Kawhi Leonard", "PER"),
        ("San Antonio", "LOC"),
        ("New York", "LOC"),
        ("Barack Obama", "PER"),
    ):
        assert f'data-type="{entity_type}"' in dom.stdout and f">{word}<" in dom.stdout
    assert dom.stdout.count("<img") == 2 and "no image" in dom.stdout
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr
    picture = Image.open(shot).convert("RGB")
    colours = picture.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 1000, "the screenshot is blank or nearly so"
    # The PER highlight colour is on screen.
    pixels = {picture.getpixel((x, y)) for x in range(0, picture.width, 2) for y in range(0, picture.height, 2)}
    assert (0xFF, 0xD6, 0xA5) in pixels
