"""`python -m demo` (what `make demo` runs): a tiny end-to-end run, its reuse on a second run, and the no-data failure."""

import base64
import os
import shutil
import subprocess
import sys
import time

import pytest

from helpers import REPO

pytestmark = pytest.mark.onnx  # the demo exports and runs the ONNX model


def run_demo(cwd, output, timeout, **env):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "DEMO_OUTPUT": str(output), **env}
    environment.pop("DATA_DIR", None) if "DATA_DIR" not in env else None
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "demo"], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )
    return result, time.perf_counter() - started


def test_without_data_or_network_it_fails_in_seconds_saying_what_to_put_where(tmp_path):
    # A copy of the checkout with no ../shared beside it, and every download refused at once by a dead proxy.
    clone = tmp_path / "fresh" / "main"
    files = subprocess.run(
        ["git", "ls-files", "demo"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, clone / name)
    dead_proxy = "http://127.0.0.1:9"
    result, seconds = run_demo(
        clone,
        tmp_path / "out",
        120,
        HTTPS_PROXY=dead_proxy,
        HTTP_PROXY=dead_proxy,
        https_proxy=dead_proxy,
        http_proxy=dead_proxy,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert seconds < 30
    assert "Traceback" not in result.stderr
    for needed in ("<DATA_DIR>/twitter2017/train.txt", "<DATA_DIR>/captions/blip2/BLIP2_17.txt", "make demo DATA_DIR="):
        assert needed in result.stderr


def test_an_incomplete_data_dir_is_named(tmp_path):
    (tmp_path / "data" / "twitter2017").mkdir(parents=True)
    result, _ = run_demo(REPO, tmp_path / "out", 120, DATA_DIR=str(tmp_path / "data"))
    assert result.returncode == 2 and "lacks" in result.stderr and "BLIP2_17.txt" in result.stderr


@pytest.mark.slow
def test_a_tiny_demo_runs_end_to_end_and_a_second_run_reuses_it(tmp_path, shared_data, minilm_dir):
    output = tmp_path / "demo-output"
    settings = {"DEMO_TRAIN_STEPS": "4", "DEMO_EVAL_TWEETS": "32"}
    first, first_seconds = run_demo(REPO, output, 1500, **settings)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in range(1, 7):
        assert f"[{step}/6]" in first.stdout
    assert "transformers_modules." in first.stdout and "MultimodalNERPipeline" in first.stdout
    assert "context: GOLDEN STATE WARRIORS\n      sources: ocr:rapidocr" in first.stdout, "OCR did not read the sign"
    # Trained on the ablation's best context, and served reading new images through its live OCR.
    assert "live aligner for new images: ['rapidocr']" in first.stdout and "PGIM knowledge" in first.stdout
    assert "identical entities for" in first.stdout
    for produced in (
        "shards/twitter2017-blip2-pgim/dataset_dict.json",
        "model/model.safetensors",
        "model/pipeline_ita.py",
        "model/README.md",
        "onnx/model.onnx",
        "onnx/crf.safetensors",
        "report.html",
        "onnx-comparison.json",
    ):
        assert (output / produced).is_file(), produced
    report = (output / "report.html").read_text()
    assert report.count('class="card"') == len(list((shared_data / "images" / "twitter2015").glob("*.jpg"))) + 3
    assert "GOLDEN STATE WARRIORS" in report
    # Each real image's caption and knowledge, and where the context came from.
    assert (
        report.count("knowledge:precomputed") >= len(list((shared_data / "images" / "twitter2015").glob("*.jpg"))) - 1
    )
    assert "Named entities" in report and "caption:precomputed" in report
    # The served checkpoint (what `make serve` runs) reads an image it never saw, and says from where.
    from handler import EndpointHandler

    sign = base64.b64encode((output / "rendered-sign.png").read_bytes()).decode()
    served = EndpointHandler(str(output / "model"))(
        {"inputs": {"text": "Warriors parade today", "image": sign}, "parameters": {"return_visual_context": True}}
    )
    assert served["visual_context"] == "GOLDEN STATE WARRIORS" and served["context_sources"] == ["ocr:rapidocr"]

    second, second_seconds = run_demo(REPO, output, 900, **settings)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing" in second.stdout and "trained in" not in second.stdout and "exported to" not in second.stdout
    # What remains is serving: OCR on the images and the ONNX comparison (the real demo's training takes minutes).
    assert second_seconds < 180, (first_seconds, second_seconds)
