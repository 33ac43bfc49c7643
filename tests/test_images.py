"""Images from anywhere, bounded: one loader (`images_ita.load_image`) for PIL images, paths, URLs, base64 and
`data:` URIs, checked against local HTTP servers on loopback that drip, never end, send a huge image, redirect and
send a non-image or a secret; URLs that lead to non-public addresses refused (checked on loopback only: every other
address is only ever a value handed to the classifier); and what of it reaches the pipeline's aligners."""

import base64
import contextlib
import functools
import http.server
import io
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aligners_ita import Aligner
from helpers import tiny_ita_model
from images_ita import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_IMAGE_REDIRECTS,
    RefusedURLError,
    URLPolicy,
    download,
    find_image_file,
    image_id_from_source,
    image_source_kind,
    load_image,
    private_address_kind,
)
from pipeline_ita import MultimodalNERPipeline

TIMEOUT = 2.0
# Scheduling noise on shared cores; a deadline per read instead of per URL overshoots by whole seconds.
SLACK = 0.75
TWEET = "Chris Paul in Los Angeles w/ Blake Griffin"
# The server answers at most this many requests and drips for at most DRIP_SECONDS, whatever a test does.
MAX_REQUESTS = 300
DRIP_SECONDS = 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What a private page starts with: it must never appear in an error or a log line.
SECRET = b"SECRET-TOKEN-123"
# The test servers listen on loopback, which image URLs reach only when allowed.
load_local = functools.partial(load_image, allow_private_urls=True)


# --- the pictures, in every mode the loader converts ------------------------------------------------


def encoded(image: Image.Image, format: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **save)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """40x20 pixels, left half white, with EXIF orientation 6 ("rotate 90° clockwise to display")."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)


GREY16 = np.linspace(0, 65535, 16 * 64).round().astype(np.uint16).reshape(16, 64)


def pictures() -> dict[str, tuple[Image.Image | None, bytes]]:
    """Name → (the picture as an in-memory PIL image, or None for a lossy format; its file's bytes)."""
    grey16 = Image.fromarray(GREY16)
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    palette.paste(1, (0, 0, 4, 8))  # left half red, right half index 0: transparent
    palette.info["transparency"] = 0
    grey_alpha = np.zeros((8, 8, 2), dtype=np.uint8)
    grey_alpha[:, :, 0] = 40
    grey_alpha[:, :4, 1] = 255  # left half opaque grey 40, right half transparent
    grey_alpha[:2, 4:, 1] = 128  # top right: black-ish at half opacity
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :, 1] = 200
    rgba[:, :4, 3] = 255
    cmyk = np.zeros((8, 8, 4), dtype=np.uint8)
    cmyk[:, :, 0] = 255  # pure cyan
    images = {
        "grey16": grey16,
        "palette": palette,
        "grey_alpha": Image.fromarray(grey_alpha, "LA"),
        "rgba": Image.fromarray(rgba, "RGBA"),
    }
    found = {name: (image, encoded(image, "PNG")) for name, image in images.items()}
    assert Image.open(io.BytesIO(found["grey16"][1])).mode == "I;16"
    assert Image.open(io.BytesIO(found["palette"][1])).mode == "P"
    found["cmyk"] = (None, encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95))
    found["exif_jpeg"] = (None, exif_rotated_jpeg())
    return found


PICTURES = pictures()


def huge_png() -> bytes:
    """9000x9000 = 81 megapixels (over DEFAULT_MAX_PIXELS, under Pillow's own warning limit) in ~100 kB."""
    image = Image.new("L", (9000, 9000), 255)
    image.paste(0, (100, 100, 400, 200))
    return encoded(image, "PNG")


# --- the server ---------------------------------------------------------------------------------------


class ImageServer(http.server.ThreadingHTTPServer):
    """Serves `files` by path, and the hostile routes of `Handler`, on a loopback address; counts connections,
    requests and the bytes of endless bodies, and keeps the `Host` header of every request."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), Handler)
        self.files: dict[str, tuple[str, bytes]] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.endless_sent = 0
        self.hosts: list[str] = []

    def verify_request(self, request, client_address) -> bool:
        with self.lock:
            self.connections += 1
        return True

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server: ImageServer = self.server
        with server.lock:
            server.requests += 1
            server.hosts.append(self.headers["Host"])
            over = server.requests > MAX_REQUESTS
        try:
            if over:
                self.send_error(503, "request budget of the test server spent")
            elif self.path in server.files:
                content_type, body = server.files[self.path]
                self.head(200, content_type, len(body))
                self.wfile.write(body)
            elif self.path == "/drip":  # a PNG, one byte a second
                self.head(200, "image/png", 10_000)
                self.drip((PNG_SIGNATURE * 10)[:DRIP_SECONDS])
            elif self.path == "/drip-headers":  # even the status line comes a byte a second
                self.drip(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\n\r\n"[:DRIP_SECONDS])
            elif self.path in ("/endless", "/endless-declared"):
                self.head(200, "image/jpeg", 10**12 if self.path == "/endless-declared" else None)
                self.endless()
            elif self.path.startswith("/hops/"):  # /hops/n redirects n times, then to the EXIF JPEG
                left = int(self.path.rsplit("/", 1)[1])
                self.redirect(f"/hops/{left - 1}" if left > 1 else "/exif_jpeg")
            elif self.path.startswith("/to/"):  # /to/<name> redirects to the file <name>
                self.redirect("/" + self.path.split("/", 2)[2])
            elif self.path.startswith("/away/"):  # /away/<URL> redirects to that URL
                self.redirect(self.path.split("/", 2)[2])
            elif self.path == "/endless-redirect":  # a redirect with a body that never ends
                self.send_response(302)
                self.send_header("Location", "/exif_jpeg")
                self.end_headers()
                self.endless()
            elif self.path == "/private-status":  # the secret in the status line and the body of an error
                self.send_response(500, SECRET.decode())
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(SECRET)
            elif self.path in ("/loop-a", "/loop-b"):
                self.redirect("/loop-b" if self.path == "/loop-a" else "/loop-a")
            elif self.path == "/slow-redirect":  # a slow first hop, then a drip: one deadline covers both
                if not server.stop.wait(TIMEOUT * 0.6):
                    self.redirect("/drip")
            elif self.path == "/page.html":
                body = b"<!DOCTYPE html><html><body>Sorry, this image is not available.</body></html>"
                self.head(200, "text/html; charset=utf-8", len(body))
                self.wfile.write(body)
            else:
                self.send_error(404)
        except OSError:  # the client gave up (timed out, or stopped reading at its byte cap)
            pass

    def head(self, status: int, content_type: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def redirect(self, target: str) -> None:
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def endless(self) -> None:
        server: ImageServer = self.server
        block = b"\xff" * 65536
        while not server.stop.is_set() and server.endless_sent < 50 * DEFAULT_MAX_IMAGE_BYTES:
            self.wfile.write(block)
            with server.lock:
                server.endless_sent += len(block)

    def drip(self, data: bytes) -> None:
        self.wfile.flush()
        for byte in data:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            if self.server.stop.wait(1.0):
                return


@contextlib.contextmanager
def serving(host: str = "127.0.0.1"):
    """An `ImageServer` on loopback address `host` (a free port) with the test pictures, running in a thread."""
    try:
        server = ImageServer(host)
    except OSError as err:  # e.g. a machine without IPv6
        pytest.skip(f"cannot listen on {host}: {err}")
    for name, (_, data) in PICTURES.items():
        server.files[f"/{name}"] = ("image/jpeg" if data[:2] == b"\xff\xd8" else "image/png", data)
    server.files["/huge.png"] = ("image/png", huge_png())
    server.files["/private-page.txt"] = ("text/plain", SECRET + b" and the rest of the private page")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive() and server.requests <= MAX_REQUESTS


@pytest.fixture(scope="module")
def server():
    with serving() as server:
        yield server


def timed(function, *args, **kwargs):
    """`(result or exception, seconds)` of one call."""
    start = time.monotonic()
    try:
        result = function(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - the tests look at the exception
        result = err
    return result, time.monotonic() - start


# Run in a fresh process: in this one, memory freed by earlier tests stays resident and would hide a decode. Linux
# keeps the peak resident memory (VmHWM) since the last reset through /proc/self/clear_refs.
PEAK_PROBE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from images_ita import load_image

def rss(field):
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024

load_image(sys.argv[2], allow_private_urls=True)  # the first call imports Pillow's plugins and urllib's handlers
try:
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    sys.exit("this kernel does not let a process reset its peak resident memory")
before = rss("VmRSS")
try:
    outcome = "decoded %dx%d" % load_image(sys.argv[3], int(sys.argv[4]), timeout=30, allow_private_urls=True).size
except ValueError as err:
    outcome = str(err)
print(json.dumps({"growth": rss("VmHWM") - before, "outcome": outcome}))
"""


def fresh_peak_rss_growth(warm_up: str, source: str, max_pixels: int) -> tuple[int, str]:
    """`(bytes the resident memory rose, outcome)` of `load_image(source, max_pixels)` in a fresh process.

    The peak counts every allocation, Pillow's decoders included, which tracemalloc does not see.
    """
    args = [str(Path(__file__).resolve().parents[1]), warm_up, source, str(max_pixels)]
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, *args], capture_output=True, text=True, timeout=60)
    if "does not let a process reset" in done.stdout + done.stderr:
        pytest.skip("this kernel does not let a process reset its peak resident memory")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["growth"], result["outcome"]


# --- one normalisation for every source ----------------------------------------------------------------


def every_form(name: str, data: bytes, tmp_path: Path, server: ImageServer) -> dict[str, object]:
    """The same picture as a PIL image (opened lazily, with its EXIF), a path, a URL, base64, a data: URI, bytes."""
    path = tmp_path / f"{name}.img"  # no telling extension: the format comes from the content
    path.write_bytes(data)
    encoded_text = base64.b64encode(data).decode()
    media = "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"
    return {
        "pil": Image.open(io.BytesIO(data)),
        "str path": str(path),
        "Path": path,
        "url": f"{server.url}/{name}",
        "redirected url": f"{server.url}/to/{name}",
        "base64": encoded_text,
        "wrapped base64": "\n".join(encoded_text[i : i + 76] for i in range(0, len(encoded_text), 76)),
        "data uri": f"data:{media};base64,{encoded_text}",
        "bytes": data,
    }


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_the_same_picture_gives_the_same_rgb_bytes_from_every_source(name, tmp_path, server):
    original, data = PICTURES[name]
    forms = every_form(name, data, tmp_path, server)
    if original is not None:
        forms["in-memory pil"] = original
    results = {form: load_local(source) for form, source in forms.items()}
    reference = results["str path"]
    assert reference.mode == "RGB"
    for form, image in results.items():
        assert (image.mode, image.size, image.tobytes()) == ("RGB", reference.size, reference.tobytes()), form
    if original is not None:
        assert original.mode == Image.open(io.BytesIO(data)).mode  # normalised, never modified in place
    pixels = np.asarray(reference).astype(int)
    if name == "exif_jpeg":  # upright: 40x20 turned to 20x40, the white half on top
        assert reference.size == (20, 40) and pixels[:5].mean() > 200 and pixels[-5:].mean() < 50
    elif name == "grey16":  # every level scaled by 255/65535, none clipped (Pillow's convert("L") clips 99.6%)
        assert (pixels == pixels[..., :1]).all()
        assert np.abs(pixels[..., 0] - GREY16 / 257).max() <= 0.5
        assert len(np.unique(pixels)) == 256 and (pixels == 255).mean() < 0.01
    elif name == "palette":  # red, and the transparent index on white
        assert (pixels[:, :4] == [255, 0, 0]).all() and (pixels[:, 4:] == 255).all()
    elif name == "grey_alpha":
        assert (pixels[:, :4] == 40).all() and (pixels[2:, 4:] == 255).all()
        assert (np.abs(pixels[:2, 4:] - (40 * 128 + 255 * 127) / 255) <= 1).all()
    elif name == "rgba":
        assert (pixels[:, :4] == [0, 200, 0]).all() and (pixels[:, 4:] == 255).all()
    elif name == "cmyk":  # pure cyan
        assert (np.abs(pixels - [0, 255, 255]) <= 12).all()


def test_lone_pil_images_get_the_exif_transpose_a_path_gets(tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(PICTURES["exif_jpeg"][1])
    with Image.open(path) as opened:
        assert opened.size == (40, 20) and opened.getexif()[0x0112] == 6
        assert load_image(opened).tobytes() == load_image(path).tobytes()
        assert load_image(opened).size == (20, 40)


def test_an_existing_file_is_a_path_even_when_its_name_is_base64_of_an_image(tmp_path, monkeypatch):
    small = encoded(Image.new("RGB", (4, 4), (255, 0, 0)), "PNG")
    name = base64.b64encode(small).decode()
    assert len(name) >= 64 and image_source_kind(name) == "base64"
    assert load_image(name).getpixel((0, 0)) == (255, 0, 0)
    # A file whose relative path is that very string holds another picture: the file wins.
    monkeypatch.chdir(tmp_path)
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    Path(name).write_bytes(encoded(Image.new("RGB", (4, 4), (0, 0, 255)), "PNG"))
    assert image_source_kind(name) == "path"
    assert load_image(name).getpixel((0, 0)) == (0, 0, 255)
    # Short strings and strings outside the base64 alphabet are paths, and their absence says so.
    for missing in ("1015799", "photos/1015799.jpg", "C:\\tweets\\1015799"):
        assert image_source_kind(missing) == "path"
        with pytest.raises(FileNotFoundError, match="image not found"):
            load_image(missing)


def test_bad_base64_and_data_uris_are_clear_errors_that_never_print_the_whole_string():
    junk = base64.b64encode(b"not an image, " * 8000).decode()  # ~150,000 characters
    for source, expected in (
        (junk, "neither an image file nor base64 of an image"),
        ("QUJD" * 30 + "Q", "neither an image file nor valid base64"),
        (f"data:image/png;base64,{junk}", "are not an image PIL can identify"),
        ("data:image/png," + "A" * 200, "without base64 data"),
        (b"GIF89a but truncated", "cannot read image"),
        (PICTURES["exif_jpeg"][1][:30], "cannot read image <30 bytes>: "),  # cut inside the EXIF header
    ):
        with pytest.raises(ValueError, match=expected) as caught:
            load_image(source)
        message = str(caught.value)
        assert len(message) < 400, message
        if isinstance(source, str) and len(source) > 100:
            assert f"({len(source)} characters)" in message and source[:60] in message and source[:200] not in message


def test_byte_and_pixel_caps_are_the_same_for_every_source(tmp_path):
    data = PICTURES["rgba"][1]
    path = tmp_path / "small.png"
    path.write_bytes(data)
    for source in (
        path,
        data,
        base64.b64encode(data).decode(),
        "data:image/png;base64," + base64.b64encode(data).decode(),
    ):
        with pytest.raises(ValueError, match=f"more than max_bytes={len(data) - 1}"):
            load_image(source, max_bytes=len(data) - 1)
        assert load_image(source, max_bytes=len(data)).size == (8, 8)
        with pytest.raises(ValueError, match="8x8 = 64 pixels, more than max_pixels=63: refused before decoding"):
            load_image(source, max_pixels=63)
    with pytest.raises(ValueError, match="more than max_pixels=63"):
        load_image(PICTURES["rgba"][0], max_pixels=63)
    for bad, error in (({"timeout": 0}, ValueError), ({"max_bytes": 1.5}, TypeError), ({"max_pixels": -1}, ValueError)):
        with pytest.raises(error, match=next(iter(bad))):
            load_image(path, **bad)
    with pytest.raises(TypeError, match="not int"):
        load_image(12345)


def test_a_huge_image_is_refused_before_decoding_by_path_url_and_pil(tmp_path, server):
    path = tmp_path / "huge.png"
    path.write_bytes(server.files["/huge.png"][1])
    refused = "9000x9000 = 81000000 pixels, more than max_pixels=64000000: refused before decoding"
    for source in (path, f"{server.url}/huge.png", Image.open(path)):
        error, seconds = timed(load_local, source)
        assert isinstance(error, ValueError) and refused in str(error), error
        assert seconds < 1.0
    # Decoding it would need 81 MB (and 243 MB as RGB); refusing it costs a few. The control: the same probe sees
    # the decoding of a smaller image (16 MB grey, 48 MB as RGB).
    warm_up = f"{server.url}/rgba"
    growth, outcome = fresh_peak_rss_growth(warm_up, f"{server.url}/huge.png", DEFAULT_MAX_PIXELS)
    assert refused in outcome and growth < 16 * 2**20, (growth, outcome)
    control = tmp_path / "big.png"
    control.write_bytes(encoded(Image.new("L", (4000, 4000), 255), "PNG"))
    decoded, outcome = fresh_peak_rss_growth(warm_up, str(control), DEFAULT_MAX_PIXELS)
    assert outcome == "decoded 4000x4000" and decoded > 40 * 2**20, (decoded, outcome)
    print(
        f"huge image by URL refused: peak RSS growth {growth / 2**20:.1f} MiB (decoding 16 MP: {decoded / 2**20:.0f} MiB)"
    )


# --- files: content over name, EXIF, corrupt files and bombs, finding an image by its id --------------


def test_load_image_handles_png_behind_jpg_name_and_transparency(shared_data):
    with Image.open(shared_data / "images" / "twitter2015" / "113.jpg") as raw:
        assert raw.format == "PNG" and raw.mode == "RGBA"
    image = load_image(shared_data / "images" / "twitter2015" / "113.jpg")
    assert image.mode == "RGB" and image.size == (600, 211)


def test_load_image_applies_exif_orientation(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[:5].mean(), np.asarray(image)[-5:].mean()
    assert top > 200 and bottom < 50


def test_load_image_refuses_missing_corrupt_truncated_and_bomb_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "junk.jpg")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[:2000])
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(tmp_path / "truncated.jpg")
    # 81 megapixels of 1-bit zeros (under Pillow's own warning limit): a few kB on disk, refused before decoding.
    Image.new("1", (9_000, 9_000)).save(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="81000000 pixels, more than max_pixels=64000000: refused before decoding"):
        load_image(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="more than max_pixels=1000"):
        load_image(tmp_path / "truncated.jpg", max_pixels=1000)


def test_find_image_file_by_id_or_name(tmp_path):
    (tmp_path / "12.png").write_bytes(b"")
    assert find_image_file(tmp_path, "12.jpg") == tmp_path / "12.png"
    assert find_image_file(tmp_path, "12") == tmp_path / "12.png"
    assert find_image_file(tmp_path, "13.jpg") is None


def test_a_path_or_url_names_its_image_id_and_other_sources_none(tmp_path):
    (tmp_path / "1015799.jpg").write_bytes(b"")
    assert image_id_from_source(str(tmp_path / "1015799.jpg")) == image_id_from_source(tmp_path / "1015799.jpg")
    assert image_id_from_source(tmp_path / "1015799.jpg") == "1015799"
    assert image_id_from_source("https://pbs.twimg.com/media/ABC.png") == "ABC"
    png = encoded(Image.new("RGB", (8, 8)), "PNG")
    for source in (None, Image.new("RGB", (8, 8)), png, base64.b64encode(png).decode()):
        assert image_id_from_source(source) is None


# --- URLs: one deadline, a byte cap, redirects ------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    ["/drip", "/drip-headers", "/slow-redirect"],
    ids=["body-a-byte-a-second", "headers-a-byte-a-second", "slow-redirect-then-drip"],
)
def test_a_dripping_server_is_cut_off_at_the_total_deadline(route, server):
    error, seconds = timed(load_local, server.url + route, timeout=TIMEOUT)
    assert isinstance(error, TimeoutError) and f"did not arrive within timeout={TIMEOUT:g}s" in str(error), error
    assert TIMEOUT - 0.05 < seconds < TIMEOUT + SLACK, seconds
    print(f"{route}: gave up after {seconds:.2f} s (timeout {TIMEOUT} s)")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_silent_server_times_out_at_the_deadline_over_http_and_https(scheme):
    # The kernel completes the TCP handshake of a listening socket that never accepts: then nothing, not even TLS.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}/photo.jpg"
        error, seconds = timed(load_local, url, timeout=TIMEOUT)
    assert isinstance(error, TimeoutError) and f"did not arrive within timeout={TIMEOUT:g}s" in str(error), error
    assert TIMEOUT - 0.05 < seconds < TIMEOUT + SLACK, seconds


def test_an_endless_body_stops_at_the_byte_cap_with_bounded_memory(server):
    sent_before = server.endless_sent
    tracemalloc.start()
    try:
        error, seconds = timed(load_local, f"{server.url}/endless", timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, ValueError), error
    assert f"more than max_bytes={DEFAULT_MAX_IMAGE_BYTES} bytes: stopped reading there" in str(error)
    time.sleep(0.2)
    assert server.endless_sent - sent_before > DEFAULT_MAX_IMAGE_BYTES  # the server did send more than the cap
    assert peak < 1.3 * DEFAULT_MAX_IMAGE_BYTES, peak
    growth, outcome = fresh_peak_rss_growth(f"{server.url}/rgba", f"{server.url}/endless", DEFAULT_MAX_PIXELS)
    assert "stopped reading there" in outcome and growth < 2 * DEFAULT_MAX_IMAGE_BYTES, (growth, outcome)
    print(
        f"endless body: {seconds:.2f} s, Python peak {peak / 2**20:.1f} MiB, RSS peak growth {growth / 2**20:.1f} MiB"
    )
    # A declared length over the cap is refused before reading any of the body.
    error, seconds = timed(load_local, f"{server.url}/endless-declared", max_bytes=2**20)
    assert isinstance(error, ValueError) and "(Content-Length), more than max_bytes=1048576" in str(error), error
    assert seconds < 1.0


def test_redirects_are_followed_up_to_the_limit_and_loops_refused(server, tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(PICTURES["exif_jpeg"][1])
    expected = load_image(path).tobytes()
    assert load_local(f"{server.url}/hops/{MAX_IMAGE_REDIRECTS}").tobytes() == expected
    for route in (f"/hops/{MAX_IMAGE_REDIRECTS + 1}", "/loop-a"):
        error, seconds = timed(load_local, server.url + route, timeout=TIMEOUT)
        assert isinstance(error, OSError) and "redirects, or a redirect loop" in str(error), error
        assert seconds < 1.0


def test_non_images_and_http_errors_are_clear(server):
    error, _ = timed(load_local, f"{server.url}/page.html")
    assert isinstance(error, ValueError)
    assert str(error).endswith(
        "its 76 bytes (Content-Type: text/html; charset=utf-8) are not an image PIL can identify"
    )
    error, _ = timed(load_local, f"{server.url}/gone.jpg")
    assert isinstance(error, OSError) and "the server answered HTTP 404" in str(error), error
    error, seconds = timed(load_local, "http://127.0.0.1:9/closed.jpg", timeout=TIMEOUT)
    assert isinstance(error, OSError) and "cannot fetch image http://127.0.0.1:9/closed.jpg" in str(error)
    assert seconds < TIMEOUT


def test_concurrent_loads_give_the_sequential_pixels(server):
    sources = [f"{server.url}/exif_jpeg", Image.open(io.BytesIO(PICTURES["grey16"][1])), PICTURES["palette"][1]] * 6
    sequential = [load_local(source).tobytes() for source in sources]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda source: load_local(source).tobytes(), sources)) == sequential


# --- URLs: public addresses only unless allowed, and errors that quote nothing of an answer -----------------------

# Address → the kind of non-public address the classifier calls it (None: public, allowed). Values only: no test sends
# a packet to any of them but the loopback ones, to servers the tests start there.
ADDRESSES = {
    "127.0.0.1": "loopback",
    "127.45.67.89": "loopback",
    "::1": "loopback",
    "::ffff:127.0.0.1": "loopback",
    "169.254.169.254": "link-local",
    "::ffff:169.254.169.254": "link-local",
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 of 169.254.169.254
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    "10.0.0.1": "private",
    "2002:a00:1::": "private",  # 6to4 of 10.0.0.1
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "fd00::1": "private",
    "198.51.100.7": "private",  # documentation range
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "4000::1": "reserved",
    "::1.2.3.4": "reserved",  # IPv4-compatible, deprecated
    "100.64.0.1": "non-global",  # carrier-grade NAT
    "8.8.8.8": None,
    "1.1.1.1": None,
    "172.32.0.1": None,  # just past 172.16.0.0/12
    "::ffff:8.8.8.8": None,
    "64:ff9b::808:808": None,  # NAT64 of 8.8.8.8
    "2606:4700:4700::1111": None,
}


@pytest.mark.parametrize("address, kind", ADDRESSES.items(), ids=list(ADDRESSES))
def test_the_classifier_names_the_kind_of_every_non_public_address_and_passes_public_ones(address, kind):
    assert private_address_kind(address) == kind
    assert private_address_kind(ipaddress.ip_address(address)) == kind


def test_the_classifier_takes_addresses_only():
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        private_address_kind("localhost")


@pytest.fixture(scope="module")
def other_loopback():
    """A second server, on another loopback address: where redirects and rebinding answers must not lead."""
    with serving("127.45.67.89") as server:
        yield server


@pytest.fixture(scope="module")
def ipv6_server():
    with serving("::1") as server:
        yield server


# How a URL may name a loopback address → the fixture of the server listening there.
LOOPBACK_HOSTS = {
    "127.0.0.1": "server",
    "127.45.67.89": "other_loopback",
    "localhost": "server",
    "[::1]": "ipv6_server",
    "[::ffff:127.0.0.1]": "server",
    "2130706433": "server",  # 127.0.0.1 as one integer
}


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_in_every_form_is_refused_before_any_connection_and_served_when_allowed(host, request):
    listening: ImageServer = request.getfixturevalue(LOOPBACK_HOSTS[host])
    url = f"http://{host}:{listening.server_address[1]}/exif_jpeg"
    before = listening.connections
    error, seconds = timed(load_image, url, timeout=TIMEOUT)
    assert isinstance(error, RefusedURLError) and isinstance(error, PermissionError), error
    assert f"cannot fetch image {url}: the host " in str(error) and "a non-public address (loopback)" in str(error)
    assert "allow_private_urls=True" in str(error) and seconds < 1.0
    assert listening.connections == before, "refused before connecting"
    assert load_image(url, allow_private_urls=True).tobytes() == load_image(PICTURES["exif_jpeg"][1]).tobytes()
    assert listening.connections == before + 1


def allowing_only(address: str):
    """A classifier that allows `address` and classifies every other one as `private_address_kind` does.

    The seam `URLPolicy.classify` exists for this: the only addresses a test may send packets to are loopback ones, so
    a redirect refused at its hop can only be seen with a first hop on an allowed loopback address and a redirect to
    another, refused, loopback address.
    """
    return lambda candidate: None if candidate == address else private_address_kind(candidate)


def test_a_redirect_to_a_refused_address_is_refused_at_that_hop(server, other_loopback):
    url = f"{server.url}/away/{other_loopback.url}/exif_jpeg"
    requests, connections = server.requests, other_loopback.connections
    error, seconds = timed(download, url, timeout=TIMEOUT, policy=URLPolicy(classify=allowing_only("127.0.0.1")))
    assert isinstance(error, RefusedURLError), error
    assert f"cannot fetch image {url}: the host '127.45.67.89' is a non-public address (loopback)" in str(error)
    assert seconds < 1.0
    assert (server.requests, other_loopback.connections) == (requests + 1, connections), "refused at the second hop"
    # The control: allowed everywhere, the same redirect leads to the image.
    body, content_type = download(url, timeout=TIMEOUT, policy=URLPolicy(allow_private=True))
    assert (body.getvalue(), content_type) == (PICTURES["exif_jpeg"][1], "image/jpeg")
    assert other_loopback.connections == connections + 1
    # A redirect to another scheme is refused whatever the addresses allowed: an image URL never reads a file.
    for target in ("file:///etc/hostname", "ftp://127.0.0.1/photo.jpg"):
        error, _ = timed(download, f"{server.url}/away/{target}", timeout=TIMEOUT, policy=URLPolicy(allow_private=True))
        assert isinstance(error, RefusedURLError) and "image URLs and their redirects are http or https only" in str(
            error
        ), error
    with pytest.raises(RefusedURLError, match="'file:///etc/hostname' is a file URL"):
        download("file:///etc/hostname")


def test_the_connection_goes_to_the_address_checked_never_to_a_second_lookup(server, monkeypatch):
    # A DNS answer that changes (rebinding): the allowed address first, a refused one for any later lookup.
    answers = iter(["127.0.0.1", "127.45.67.89"])
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (next(answers), port))]

    def no_other_lookup(*args, **kwargs):
        raise AssertionError(f"a lookup outside the policy's resolver: {args}")

    # http.client's own connection would resolve the name again through socket.getaddrinfo.
    monkeypatch.setattr(socket, "getaddrinfo", no_other_lookup)
    port = server.server_address[1]
    policy = URLPolicy(classify=allowing_only("127.0.0.1"), resolve=rebinding)
    body, _ = download(f"http://images.test:{port}/exif_jpeg", timeout=TIMEOUT, policy=policy)
    assert body.getvalue() == PICTURES["exif_jpeg"][1]
    assert lookups == ["images.test"]
    assert server.hosts[-1] == f"images.test:{port}", "the request names the host, though sent to its address"


def test_a_slow_resolver_cannot_hold_a_download_past_its_deadline(server):
    release = threading.Event()

    def slow(*args, **kwargs):
        release.wait(30)
        return []

    before = server.connections
    try:
        policy = URLPolicy(allow_private=True, resolve=slow)
        error, seconds = timed(download, f"{server.url}/exif_jpeg", timeout=TIMEOUT, policy=policy)
    finally:
        release.set()
    assert isinstance(error, TimeoutError) and f"did not arrive within timeout={TIMEOUT:g}s" in str(error), error
    assert TIMEOUT - 0.05 < seconds < TIMEOUT + SLACK, seconds
    assert server.connections == before


def test_a_redirect_body_is_never_read(server):
    # The redirect's body never ends: read, it would hold the download until its deadline.
    image, seconds = timed(load_local, f"{server.url}/endless-redirect", timeout=TIMEOUT)
    assert not isinstance(image, Exception), image
    assert image.tobytes() == load_image(PICTURES["exif_jpeg"][1]).tobytes() and seconds < 1.0


@contextlib.contextmanager
def not_http_service():
    """A service on loopback that answers every request with the secret, as no HTTP server would; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                connection.sendall(SECRET + b" is the admin password\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/photo.jpg"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_secret_an_answer_starts_with_is_in_no_error_and_no_log_line(ner, server, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    with not_http_service() as not_http:
        urls = [f"{server.url}/private-page.txt", f"{server.url}/private-status", not_http]
        errors = [timed(load_local, url, timeout=TIMEOUT)[0] for url in urls]
        results = [ner(TWEET, image=url, timeout=TIMEOUT, return_visual_context=True) for url in urls]
    page, status, not_an_answer = (str(error) for error in errors)
    assert page.endswith(
        f"its {len(server.files['/private-page.txt'][1])} bytes (Content-Type: text/plain) are not an image PIL can identify"
    )
    assert status.endswith("the server answered HTTP 500")
    assert not_an_answer.endswith("the connection broke, or the answer is not HTTP (BadStatusLine)")
    assert [result["visual_context"] for result in results] == ["", "", ""]
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 3 and all(
        error in warning for error, warning in zip((page, status, not_an_answer), warnings)
    )
    printed = capfd.readouterr()
    lines = [page, status, not_an_answer, *(record.getMessage() for record in caplog.records), printed.out, printed.err]
    assert not [line for line in lines if SECRET[:6].decode() in line]


# --- through the pipeline ---------------------------------------------------------------------------------


class RecordingAligner(Aligner):
    """A test aligner that keeps every image it is given, and captions it with its size."""

    type = "test-recording"
    segments = ("caption",)

    def __init__(self):
        self.received = []

    def settings(self):
        return {}

    def align(self, images, image_ids=None):
        self.received.extend(image for image in images if image is not None)
        return [{"caption": [] if image is None else [f"picture {image.width} by {image.height}"]} for image in images]


@pytest.fixture(scope="module")
def recorder():
    return RecordingAligner()


@pytest.fixture(scope="module")
def ner(minilm_tokenizer, recorder):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # No context cache: these tests count what reaches the aligner for every form and limit of one picture. Its image
    # URLs are the test server's, on loopback: allowed once for all its calls, as a deployment would.
    yield MultimodalNERPipeline(
        model=tiny_ita_model(minilm_tokenizer, seed=0),
        tokenizer=minilm_tokenizer,
        aligners=[recorder],
        context_cache_size=0,
        allow_private_urls=True,
    )
    torch.set_num_threads(threads)


ALL_WORDS = {"aggregation_strategy": "none", "ignore_labels": []}


def test_every_source_reaches_the_aligners_as_the_same_picture(ner, recorder, tmp_path, server):
    _, data = PICTURES["exif_jpeg"]
    forms = every_form("exif_jpeg", data, tmp_path, server)
    expected = load_image(forms["str path"])
    with_context = ner(TWEET, visual_context="picture 20 by 40", **ALL_WORDS)
    for form, source in forms.items():
        if form == "bytes":  # the pipeline takes images as a PIL image or a str
            continue
        recorder.received.clear()
        result = ner(TWEET, image=source, return_visual_context=True, timeout=TIMEOUT, **ALL_WORDS)
        assert result == {
            "entities": with_context,
            "visual_context": "picture 20 by 40",
            "context_sources": ["caption:test-recording"],
            "alignment_error": "",
        }, form
        [image] = recorder.received
        assert (image.mode, image.size, image.tobytes()) == ("RGB", expected.size, expected.tobytes()), form


BAD_URLS = [
    ("/drip", "TimeoutError: image http://127.0.0.1:{port}/drip did not arrive within timeout=2s", TIMEOUT),
    ("/drip-headers", "did not arrive within timeout=2s", TIMEOUT),
    ("/slow-redirect", "did not arrive within timeout=2s", TIMEOUT),
    ("/endless", f"more than max_bytes={DEFAULT_MAX_IMAGE_BYTES} bytes", 0),
    ("/endless-declared", "(Content-Length), more than max_bytes", 0),
    ("/huge.png", f"81000000 pixels, more than max_pixels={DEFAULT_MAX_PIXELS}", 0),
    ("/loop-a", "redirect loop", 0),
    (f"/hops/{MAX_IMAGE_REDIRECTS + 1}", f"more than {MAX_IMAGE_REDIRECTS} redirects", 0),
    ("/page.html", "Content-Type: text/html", 0),
    ("/gone.jpg", "HTTP 404", 0),
]


@pytest.mark.parametrize("route, reason, deadline", BAD_URLS, ids=[route for route, _, _ in BAD_URLS])
def test_a_bad_image_url_costs_one_warning_and_the_tweet_is_tagged_text_only(
    route, reason, deadline, ner, recorder, server, caplog
):
    text_only = ner(TWEET, visual_context="", **ALL_WORDS)
    assert len(text_only) == len(TWEET.split())  # every word tagged
    recorder.received.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result, seconds = timed(
            ner, TWEET, image=server.url + route, timeout=TIMEOUT, return_visual_context=True, **ALL_WORDS
        )
    assert result == {**result, "entities": text_only, "visual_context": "", "context_sources": []}
    assert result["alignment_error"].startswith("cannot read the image (")
    assert recorder.received == []
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    [warning] = warnings
    assert warning.startswith("cannot read the image (") and warning.endswith("tagging it text-only.")
    assert reason.format(port=server.server_address[1]) in warning, warning
    assert seconds < (deadline or 1.0) + SLACK, seconds


def test_a_bad_base64_image_warns_once_with_a_preview(ner, recorder, caplog):
    junk = base64.b64encode(os.urandom(300_000)).decode()
    caplog.clear()
    recorder.received.clear()
    with caplog.at_level(logging.WARNING):
        result = ner(TWEET, image=junk, return_visual_context=True, **ALL_WORDS)
    assert result == {**result, "entities": ner(TWEET, visual_context="", **ALL_WORDS), "visual_context": ""}
    assert "neither an image file nor base64 of an image" in result["alignment_error"]
    [warning] = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert "neither an image file nor base64 of an image" in warning and f"({len(junk)} characters)" in warning
    assert len(warning) < 500 and junk[:200] not in warning
    assert recorder.received == []


def test_the_pipeline_limits_are_call_parameters_checked_at_call_time(ner, recorder, server):
    recorder.received.clear()
    url = f"{server.url}/exif_jpeg"
    assert ner(TWEET, image=url, return_visual_context=True)["visual_context"] == "picture 20 by 40"
    small = len(PICTURES["exif_jpeg"][1]) - 1
    assert ner(TWEET, image=url, max_image_bytes=small, return_visual_context=True)["visual_context"] == ""
    assert ner(TWEET, image=url, max_image_pixels=799, return_visual_context=True)["visual_context"] == ""
    assert (
        ner(TWEET, image=url, max_image_pixels=800, return_visual_context=True)["visual_context"] == "picture 20 by 40"
    )
    assert len(recorder.received) == 2
    for bad, error in (
        ({"timeout": 0}, ValueError),
        ({"timeout": "10"}, TypeError),
        ({"max_image_bytes": 0}, ValueError),
        ({"max_image_pixels": 1e6}, TypeError),
    ):
        with pytest.raises(error, match=next(iter(bad))):
            ner(TWEET, image=url, **bad)


def test_the_pipeline_refuses_loopback_urls_unless_allowed(minilm_tokenizer, recorder, server, caplog):
    default = MultimodalNERPipeline(
        model=tiny_ita_model(minilm_tokenizer, seed=0), tokenizer=minilm_tokenizer, aligners=[recorder]
    )
    url = f"{server.url}/exif_jpeg"
    recorder.received.clear()
    before = server.connections
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        result = default(TWEET, image=url, return_visual_context=True, **ALL_WORDS)
    text_only = {
        "entities": default(TWEET, visual_context="", **ALL_WORDS),
        "visual_context": "",
        "context_sources": [],
    }
    assert result == {**text_only, "alignment_error": result["alignment_error"]}
    assert "RefusedURLError" in result["alignment_error"]
    assert recorder.received == [] and server.connections == before
    [warning] = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert "RefusedURLError" in warning and "a non-public address (loopback)" in warning, warning
    assert "allow_private_urls=True" in warning and warning.endswith("tagging it text-only.")
    allowed = default(TWEET, image=url, allow_private_urls=True, return_visual_context=True)
    assert allowed["visual_context"] == "picture 20 by 40" and server.connections == before + 1
    with pytest.raises(TypeError, match="allow_private_urls"):
        default(TWEET, image=url, allow_private_urls="yes")
