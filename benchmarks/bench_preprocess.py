"""Benchmark `python -m preprocess` with real RapidOCR on the real Twitter-2015 images.

Measures, each in a fresh process running the real CLI:

- OCR throughput (images per second, wall clock including model loading) with one process and with
  `--num-proc 2`;
- peak resident memory for 100 and 1000 images, to show that it does not grow with the dataset;
- the same for 100, 1000 and 5000 images with a tiny random object detector instead of OCR, which
  leaves the preprocessing machinery itself (image decoding, batched map, chunks, Arrow writing).

The 15 shared images are cycled to make datasets of the needed size. Results are written as JSON to
`benchmarks/results/preprocess.json`; a run of one part (`--only`) keeps the other part's results.
Run nothing else meanwhile: the machine's cores are what is measured.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_preprocess.py [--only throughput|memory|machinery]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "data" / "images" / "twitter2015"
RESULTS = REPO / "benchmarks" / "results" / "preprocess.json"


def write_dataset(folder: Path, count: int) -> Path:
    """A UMT train file of `count` one-token tweets whose images cycle through the shared images."""
    ids = sorted(p.stem for p in IMAGES.glob("*.jpg"))
    blocks = [f"IMGID:{ids[i % len(ids)]}\ntweet\tO\n" for i in range(count)]
    path = folder / f"train-{count}" / "train.txt"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def run_measured(args: list[str]) -> dict[str, float]:
    """Run the preprocess CLI in a child of a fresh measuring process; return wall time and peak RSS.

    A separate measuring process is used because `RUSAGE_CHILDREN` keeps the maximum over every child
    ever waited for: measuring in this process would report the largest earlier run.
    """
    measure = (
        "import json, resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "subprocess.run([sys.executable, '-m', 'preprocess', *sys.argv[1:]], check=True,"
        " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(json.dumps({'seconds': time.perf_counter() - start,"
        " 'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", measure, *args], cwd=REPO, env=env, check=True, capture_output=True, text=True
    )
    # Other work on the machine skews the timings; the 1-minute load average at the end says how much.
    return {**json.loads(done.stdout), "load_average_after": os.getloadavg()[0]}


def tiny_detector(folder: Path) -> Path:
    """Save a tiny random YOLOS detector (64-pixel input) so the CLI can load it by path."""
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=[64, 64],
        num_detection_tokens=5,
        id2label={0: "dog", 1: "car"},
    )
    YolosForObjectDetection(config).save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--throughput-images", type=int, default=60)
    parser.add_argument("--rss-images", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--machinery-images", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--only", choices=["throughput", "memory", "machinery"], help="measure one part only")
    options = parser.parse_args()
    if not IMAGES.is_dir():
        sys.exit(f"the shared images are not at {IMAGES}")
    results: dict = json.loads(RESULTS.read_text(encoding="utf-8")) if options.only and RESULTS.is_file() else {}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    results["aligner"] = "rapidocr on the 15 real Twitter-2015 images, cycled"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = write_dataset(folder, options.throughput_images)
        configs = [
            ("1 process, library default threads", 1, "rapidocr"),
            ("1 process, 1 thread", 1, "rapidocr:threads=1"),
            ("num_proc=2, 1 thread each", 2, "rapidocr:threads=1"),
        ]
        if options.only in (None, "throughput"):
            results["throughput"] = []
        for number, (label, num_proc, aligner) in enumerate(configs if options.only in (None, "throughput") else []):
            run = run_measured(
                [
                    "--data",
                    str(data),
                    "--images",
                    str(IMAGES),
                    "--aligner",
                    aligner,
                    "--num-proc",
                    str(num_proc),
                    "--out",
                    str(folder / f"tp{number}"),
                ]
            )
            row = {
                "config": label,
                "num_proc": num_proc,
                "images": options.throughput_images,
                **run,
                "images_per_second": options.throughput_images / run["seconds"],
            }
            results["throughput"].append(row)
            print(json.dumps(row), flush=True)
        if options.only in (None, "memory"):
            results["memory"] = []
        for count in options.rss_images if options.only in (None, "memory") else []:
            data = write_dataset(folder, count)
            run = run_measured(
                [
                    "--data",
                    str(data),
                    "--images",
                    str(IMAGES),
                    "--aligner",
                    "rapidocr:threads=1",
                    "--out",
                    str(folder / f"rss{count}"),
                ]
            )
            row = {"images": count, "num_proc": 1, **run, "images_per_second": count / run["seconds"]}
            results["memory"].append(row)
            print(json.dumps(row), flush=True)
        if options.only in (None, "machinery"):
            results["memory_machinery"] = []
            detector = tiny_detector(folder / "yolos")
        for count in options.machinery_images if options.only in (None, "machinery") else []:
            data = write_dataset(folder, count)
            run = run_measured(
                [
                    "--data",
                    str(data),
                    "--images",
                    str(IMAGES),
                    "--aligner",
                    f"object-detection:model={detector},threshold=0.0",
                    "--out",
                    str(folder / f"m{count}"),
                ]
            )
            row = {
                "images": count,
                "num_proc": 1,
                "aligner": "tiny random YOLOS",
                **run,
                "images_per_second": count / run["seconds"],
            }
            results["memory_machinery"].append(row)
            print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
